"""The lifecycle driver shared by ``python -m bench`` (embedded stack) and ``python -m bench.scale`` (Apache Kafka).

Simulated channels submit over HTTP; simulated technicians learn of their assignments from the
``tickets`` topic (as a downstream consumer would) and accept, start, log and resolve over HTTP;
simulated customers rate when FeedbackSent appears; a lifecycle ends when Archived appears, or
when one of its steps fails (the failure is recorded, and the phase does not wait for it).

Every failure names its phase, its ticket, its step, the request and what went wrong (the
exception's type and message, or the status and the body); a phase's timeout is reported only
when lifecycles of that phase were still unfinished, and names them and where each stood.

CPU is read per process (user + system, PostgreSQL with its backends, reaped children included),
so a phase's CPU per lifecycle and the stack's idle CPU come from the same counters.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import orjson
import psutil
from aiokafka import AIOKafkaConsumer, ConsumerRecord

from bench.client import Answer, Client, ConnectFailed, ConnectionDropped, HTTPFailure, StatusError

SERVICE_TYPE = "broadband.fault_repair"
TICKETS = "tsop.tickets"
ASSIGNED = "tsop.ticket.assigned.v1"
FEEDBACK_SENT = "tsop.ticket.feedback-sent.v1"
ARCHIVED = "tsop.ticket.archived.v1"
FOLLOWED = frozenset(kind.encode() for kind in (ASSIGNED, FEEDBACK_SENT, ARCHIVED))  # ce_type headers acted on
TRANSITIONS = ("accept", "start", "resolve", "rate")  # a repeat of one that took effect answers 409
RETRYABLE = (ConnectionDropped, ConnectFailed)  # no answer came: the request may be sent again
WORK_STEPS: tuple[tuple[str, dict[str, Any] | None], ...] = (
    ("accept", None),
    ("start", {"mode": "on_site"}),
    ("log", {"action": "replaced the ONT", "mode": "on_site"}),
    ("resolve", {"resolution_code": "hw_replaced", "summary": "line OK"}),
)


# ------------------------------------------------------------------------------- what went wrong


def describe(exc: BaseException) -> str:
    """An exception as ``Type: message`` (an answer outside 2xx as ``HTTP 409: <body>``); an empty message says so."""
    if isinstance(exc, StatusError):
        return str(exc)
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else f"{type(exc).__name__} (no message)"


@dataclass(frozen=True)
class Failure:
    """One thing that went wrong, with everything needed to find it again."""

    phase: str
    step: str  # submit, accept, start, log, resolve, rate, follow, or "phase" for a phase's own timeout
    what: str  # the exception (type: message) or the answer (status: body)
    ticket: str | None = None
    request: str | None = None  # "POST /v1/work-orders/<id>/accept"

    def __str__(self) -> str:
        where = f"ticket {self.ticket} " if self.ticket else ""
        req = f" ({self.request})" if self.request else ""
        return f"[{self.phase}] {where}{self.step}{req}: {self.what}"


def error_summary(failures: list[Failure], keep: int = 20) -> dict[str, Any]:
    """The errors for the report: how many in each phase and of each step, and the first ``keep`` in full."""
    return {
        "count": len(failures),
        "by_phase": dict(Counter(f.phase for f in failures)),
        "by_phase_and_step": dict(Counter(f"{f.phase}/{f.step}" for f in failures)),
        "first": [str(f) for f in failures[:keep]],
    }


# ----------------------------------------------------------------------------------- lifecycles


class Lifecycle:
    """One submission's way through the platform, as the driver sees it."""

    __slots__ = ("archived_at", "assigned_at", "done", "failure", "phase", "rated", "stage", "submit_latency",
                 "submitted_at", "ticket")

    def __init__(self, phase: str, submitted_at: float) -> None:
        self.phase = phase
        self.submitted_at = submitted_at  # epoch seconds, taken before the POST
        self.submit_latency = 0.0
        self.ticket: str | None = None
        self.stage = "submit"  # where it stands: what it waits for, or the step in progress
        self.assigned_at: float | None = None
        self.archived_at: float | None = None
        self.failure: Failure | None = None
        self.rated = False
        self.done = asyncio.Event()  # archived, or failed

    @property
    def finished(self) -> bool:
        return self.archived_at is not None or self.failure is not None

    def where(self) -> str:
        return f"{self.ticket or '(not yet answered)'} at {self.stage}"


def phase_outcome(phase: str, lifecycles: list[Lifecycle], expected: int, timeout: float) -> Failure | None:
    """The phase's timeout, as a failure naming what was unfinished; None when every lifecycle ended.

    ``expected`` counts the lifecycles the phase started, including those whose submission had not
    been answered when the time ran out (they are not in ``lifecycles`` yet).
    """
    unfinished = [lc for lc in lifecycles if not lc.finished]
    unanswered = expected - len(lifecycles)
    if not unfinished and unanswered <= 0:
        return None
    stages = Counter(lc.stage for lc in unfinished)
    parts = [f"{len(unfinished) + max(0, unanswered)} of {expected} lifecycles unfinished"]
    if unanswered > 0:
        parts.append(f"{unanswered} not yet submitted or answered")
    if stages:
        parts.append("waiting: " + ", ".join(f"{n} at {stage}" for stage, n in stages.most_common()))
        parts.append("e.g. " + "; ".join(lc.where() for lc in unfinished[:5]))
    return Failure(phase, "phase", f"timed out after {timeout:g}s: " + "; ".join(parts))


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return round(ordered[k] * 1000, 2)  # ms


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "count": len(values),
        "p50_ms": pct(values, 50),
        "p95_ms": pct(values, 95),
        "p99_ms": pct(values, 99),
        "mean_ms": round(statistics.fmean(values) * 1000, 2) if values else None,
    }


def latencies(lifecycles: list[Lifecycle]) -> dict[str, Any]:
    ok = [lc for lc in lifecycles if lc.ticket is not None]
    return {
        "submit": summary([lc.submit_latency for lc in ok]),
        "submit_to_assigned": summary([lc.assigned_at - lc.submitted_at for lc in ok if lc.assigned_at]),
        "submit_to_archived": summary([lc.archived_at - lc.submitted_at for lc in ok if lc.archived_at]),
        "_raw": {
            "submit": [lc.submit_latency for lc in ok],
            "assigned": [lc.assigned_at - lc.submitted_at for lc in ok if lc.assigned_at],
            "archived": [lc.archived_at - lc.submitted_at for lc in ok if lc.archived_at],
        },
    }


# ------------------------------------------------------------------------------------------ CPU


def cpu_of(proc: psutil.Process, with_children: bool) -> float:
    """User + system seconds of ``proc`` (and its live descendants), plus what its reaped children spent."""
    members = [proc, *proc.children(recursive=True)] if with_children else [proc]
    total = 0.0
    for m in members:
        try:
            t = m.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def cpu_per_lifecycle(before: Mapping[str, float], after: Mapping[str, float], n: int,
                      outside: tuple[str, ...] = ("bench-driver",)) -> dict[str, Any]:
    """Each process's CPU per lifecycle (ms) between two readings, and the platform's total (all but ``outside``)."""
    per = {k: round((v - before.get(k, 0.0)) / max(1, n) * 1000, 2) for k, v in after.items()}
    return {"per_process_ms": per, "platform_ms": round(sum(v for k, v in per.items() if k not in outside), 2)}


def net_of_idle(per_process_ms: Mapping[str, float], idle_pct: Mapping[str, float], elapsed_s: float, n: int,
                outside: tuple[str, ...] = ("bench-driver",)) -> dict[str, Any]:
    """CPU per lifecycle less what each process spends anyway when idle (its idle % over the phase's time).

    At a few lifecycles/s on a shared machine, idle polling is a large part of the raw figure
    (0.4 of a core at 1.3 lifecycles/s is 300 ms per lifecycle); this is the part that scales with load.
    """
    per = {k: round(v - idle_pct.get(k, 0.0) / 100 * elapsed_s / max(1, n) * 1000, 2)
           for k, v in per_process_ms.items() if k not in outside}
    return {"per_process_ms": per, "platform_ms": round(sum(per.values()), 2)}


def idle_report(before: Mapping[str, float], after: Mapping[str, float], seconds: float,
                outside: tuple[str, ...] = ("bench-driver",), target_pct: float = 3.0) -> dict[str, Any]:
    """CPU with nothing submitted, in % of one core, per process and for the whole stack."""
    per = {k: round((v - before.get(k, 0.0)) / seconds * 100, 2) for k, v in after.items() if k not in outside}
    total = round(sum(per.values()), 2)
    return {"seconds": seconds, "per_process_pct": per, "stack_pct_of_one_core": total,
            "target_pct": target_pct, "met": total <= target_pct}


class Target(Protocol):
    """What the driver needs of a running platform."""

    bootstrap: str
    tokens: dict[str, str]

    def url(self, service: str) -> str: ...

    def processes(self) -> dict[str, tuple[psutil.Process, bool]]:
        """Process by name, and whether its descendants count with it (PostgreSQL's backends)."""
        ...

    def services(self) -> dict[str, str]:
        """Service process name → service (``intake-1`` → ``intake``); for RSS."""
        ...


def cpu_seconds(target: Target) -> dict[str, float]:
    out = {}
    for name, (proc, with_children) in target.processes().items():
        try:
            out[name] = cpu_of(proc, with_children)
        except psutil.Error:
            pass
    return out


def rss_mb(target: Target) -> dict[str, float]:
    """Each service process's resident memory now (MB)."""
    procs = target.processes()
    out = {}
    for name in target.services():
        try:
            out[name] = round(procs[name][0].memory_info().rss / 2**20, 1)
        except (psutil.Error, KeyError):
            pass
    return out


async def measure_idle(target: Target, seconds: float) -> dict[str, Any]:
    before = cpu_seconds(target)
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    return idle_report(before, cpu_seconds(target), time.monotonic() - t0)


# --------------------------------------------------------------------------------------- driver


class Driver:
    def __init__(self, target: Target, concurrency_limit: int = 256, http_timeout: float = 30.0) -> None:
        self.target = target
        # uvicorn closes a keep-alive connection idle for 5 s: a request sent on a connection the server is
        # closing gets no answer (ConnectionDropped, sent again). Expire ours well before.
        self.http = Client(timeout=http_timeout, max_connections=concurrency_limit, keepalive_expiry=2.0)
        self.tickets: dict[str, Lifecycle] = {}
        self.errors: list[Failure] = []
        self.rss_peak: dict[str, int] = {}
        self.early: dict[str, list[tuple[str, float, bytes]]] = {}
        self._bg: set[asyncio.Task[None]] = set()
        self.channel_auth: dict[str, str] = {}
        self.technician_tokens: dict[str, str] = {}  # technician id → the credential dispatch issued
        self.capacity: dict[str, int] = {}
        self.follower_ready = asyncio.Event()
        self.retried: Counter[str] = Counter()  # requests sent again after no answer, by step and cause

    def url(self, service: str, path: str) -> str:
        return self.target.url(service) + path

    def fail(self, lc: Lifecycle | None, phase: str, step: str, what: str, request: str | None = None,
             ticket: str | None = None) -> None:
        failure = Failure(phase, step, what, ticket or (lc.ticket if lc else None), request)
        self.errors.append(failure)
        if lc is not None and lc.failure is None:
            lc.failure = failure
            lc.done.set()

    async def register_technicians(self, count: int, capacity: int) -> None:
        for _ in range(count):
            r = await self.http.post(
                self.url("dispatch", "/v1/technicians"),
                {"name": "Bench", "service_types": [SERVICE_TYPE], "regions": ["north"], "capacity": capacity},
                {"Authorization": f"Bearer {self.target.tokens['supervisor']}"},
            )
            technician = r.check().json()
            self.technician_tokens[technician["id"]] = technician["token"]
            self.capacity[technician["id"]] = capacity

    async def register_channel(self) -> None:
        """Submissions come from a registered channel system, with its own credential."""
        r = await self.http.post(
            self.url("intake", "/v1/channels"),
            {"name": "bench portal", "kind": "app", "rate_limit_per_minute": 1_000_000},
            {"Authorization": f"Bearer {self.target.tokens['admin']}"},
        )
        self.channel_auth = {"Authorization": f"Bearer {r.check().json()['credential']['token']}"}

    async def submit(self, phase: str) -> Lifecycle:
        lc = Lifecycle(phase, time.time())
        started = time.perf_counter()
        request = "POST /v1/requests"
        try:
            r = await self.post(
                "submit",
                "intake",
                "/v1/requests",
                {
                    "channel": "app",
                    "customer": {"id": f"c-{uuid.uuid4().hex[:8]}", "tier": "standard"},
                    "region": "north",
                    "service_type": SERVICE_TYPE,
                    "description": "No internet since this morning",
                    "location": {"address": f"{uuid.uuid4().hex[:8]} Bench Street"},
                },
                {"Idempotency-Key": uuid.uuid4().hex, **self.channel_auth},
            )
        except HTTPFailure as exc:
            lc.submit_latency = time.perf_counter() - started
            self.fail(lc, phase, "submit", describe(exc), request)
            return lc
        lc.submit_latency = time.perf_counter() - started
        if r.status not in (200, 201):  # 200: a repeat after a dropped connection, replayed by its key
            self.fail(lc, phase, "submit", f"HTTP {r.status}: {r.text[:200]}", request)
            return lc
        try:
            ticket = r.json()["id"]
        except (ValueError, KeyError, TypeError) as exc:
            self.fail(lc, phase, "submit", f"an answer without a ticket id ({describe(exc)}): {r.text[:200]}",
                      request)
            return lc
        lc.ticket = ticket
        lc.stage = "waiting for Assigned"
        self.tickets[ticket] = lc
        for kind, at, body in self.early.pop(ticket, []):  # events that overtook the HTTP answer
            self._on_event(lc, kind, at, body)
        return lc

    async def post(self, step: str, service: str, path: str, body: Any, headers: dict[str, str]) -> Answer:
        r, _ = await self.post_again(step, service, path, body, headers)
        return r

    async def post_again(self, step: str, service: str, path: str, body: Any,
                         headers: dict[str, str]) -> tuple[Answer, bool]:
        """POST, sent again (at most twice) when the connection failed before an answer came.

        A kept-alive connection the server has just closed fails (ConnectionDropped) before any
        answer: not the platform's failure, and the same request
        is safe to send again (submissions and work-log entries carry an Idempotency-Key; a
        transition that did take effect answers 409 to the repeat, which then counts as done).
        Every repeat is counted in ``retried``; a timeout is not repeated, it is a failure.
        Returns the answer and whether it was a 409 to a repeat (the step is then done).
        """
        for attempt in range(3):
            try:
                r = await self.http.post(self.url(service, path), body, headers)
            except RETRYABLE as exc:
                if attempt == 2:
                    raise
                self.retried[f"{step}: {type(exc).__name__}"] += 1
                continue
            return r, bool(attempt) and r.status == 409 and step in TRANSITIONS
        raise AssertionError("unreachable")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def _work(self, lc: Lifecycle, work_order_id: str, technician_id: str) -> None:
        step, request = "work", f"work order {work_order_id}"
        try:
            as_technician = {"Authorization": f"Bearer {self.technician_tokens[technician_id]}"}
            for step, body in WORK_STEPS:
                lc.stage = step
                path = f"/v1/work-orders/{work_order_id}/{step}"
                request = f"POST {path}"
                headers = {**as_technician, "Idempotency-Key": uuid.uuid4().hex} if step == "log" else as_technician
                r, done_before = await self.post_again(step, "dispatch", path, body, headers)
                if not done_before:
                    r.check()
            lc.stage = "waiting for FeedbackSent"
        except Exception as exc:  # noqa: BLE001 - every failure is recorded with its step, none is lost
            self.fail(lc, lc.phase, step, describe(exc), request)

    async def _rate(self, lc: Lifecycle) -> None:
        request = f"POST /v1/tickets/{lc.ticket}/rating"
        lc.stage = "rate"
        try:
            r, done_before = await self.post_again("rate", "feedback", f"/v1/tickets/{lc.ticket}/rating",
                                                   {"score": 5},
                                                   {"Authorization": f"Bearer {self.target.tokens['agent']}"})
            if r.status != 201 and not done_before:
                self.fail(lc, lc.phase, "rate", f"HTTP {r.status}: {r.text[:200]}", request)
                return
            if not lc.finished:
                lc.stage = "waiting for Archived"
        except Exception as exc:  # noqa: BLE001 - every failure is recorded with its step
            self.fail(lc, lc.phase, "rate", describe(exc), request)

    async def follow(self) -> None:
        """Technicians and customers react to what the tickets topic says.

        Most of the topic's records are of kinds the driver does not act on: a record is judged by its
        ``ce_type`` header alone, and only one of the three kinds acted on has its key, time and body read.
        """
        consumer = AIOKafkaConsumer(
            TICKETS,
            bootstrap_servers=self.target.bootstrap,
            auto_offset_reset="latest",
            enable_auto_commit=False,
            # a fetch waits up to 50 ms for 256 KiB: a few fetches a second carry many records each, instead of
            # one fetch (a request to encode, a response to decode) for each few records
            fetch_min_bytes=256 * 1024,
            fetch_max_wait_ms=50,
            max_partition_fetch_bytes=8 * 2**20,
        )
        await consumer.start()
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=100, max_records=10_000)
                self.follower_ready.set()
                for records in batch.values():
                    self.read(records)
        finally:
            await consumer.stop()

    def read(self, records: Iterable[ConsumerRecord[bytes, bytes]]) -> None:
        """A fetch's records: those of the kinds acted on are handed to their lifecycle (or kept until it is known)."""
        for rec in records:
            kind = at = None
            for name, value in rec.headers:
                if name == "ce_type":
                    kind = value
                elif name == "ce_time":
                    at = value
            if kind is not None and kind not in FOLLOWED:
                continue
            try:
                if kind is None or at is None:
                    raise KeyError("ce_type" if kind is None else "ce_time")
                when = datetime.fromisoformat(at.decode()).timestamp()
                ticket = (rec.key or b"").decode()
            except (KeyError, ValueError) as exc:
                where = f"{rec.topic}[{rec.partition}]@{rec.offset}"
                self.fail(None, "follow", "follow", f"unreadable record {where}: {describe(exc)}")
                continue
            lc = self.tickets.get(ticket)
            if lc is None:
                self.early.setdefault(ticket, []).append((kind.decode(), when, rec.value or b""))
            else:
                self._on_event(lc, kind.decode(), when, rec.value or b"")

    def _on_event(self, lc: Lifecycle, kind: str, at: float, value: bytes) -> None:
        if lc.failure is not None:
            return
        if kind == ASSIGNED and lc.assigned_at is None:
            lc.assigned_at = at
            try:
                body = orjson.loads(value)
                wo, tech = body["work_order_id"], body["technician_id"]
            except (ValueError, KeyError, TypeError) as exc:
                self.fail(lc, lc.phase, "read Assigned", describe(exc))
                return
            self._spawn(self._work(lc, wo, tech))
        elif kind == FEEDBACK_SENT and not lc.rated:  # a republished FeedbackSent is rated once
            lc.rated = True
            self._spawn(self._rate(lc))
        elif kind == ARCHIVED and lc.archived_at is None:
            lc.archived_at = at
            lc.stage = "archived"
            lc.done.set()

    async def sample_rss(self) -> None:
        procs = self.target.processes()
        names = list(self.target.services())
        while True:
            for name in names:
                try:
                    self.rss_peak[name] = max(self.rss_peak.get(name, 0), procs[name][0].memory_info().rss)
                except (psutil.Error, KeyError):
                    pass
            await asyncio.sleep(0.5)

    async def _phase(self, phase: str, tasks: list[asyncio.Task[None]], lifecycles: list[Lifecycle],
                     timeout: float) -> bool:
        """Wait for the phase's lifecycles; on timeout record what was unfinished. True if it timed out."""
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for t in pending:
            t.cancel()
        late = phase_outcome(phase, lifecycles, len(tasks), timeout) if pending else None
        if late is not None:
            self.errors.append(late)
        return late is not None

    async def closed_loop(self, phase: str, n: int, in_flight: int, timeout: float) -> dict[str, Any]:
        """``n`` lifecycles with ``in_flight`` at a time: lifecycles/s and CPU per lifecycle."""
        sem = asyncio.Semaphore(in_flight)
        lifecycles: list[Lifecycle] = []

        async def one() -> None:
            async with sem:
                lc = await self.submit(phase)
                lifecycles.append(lc)
                await lc.done.wait()

        errors_before = len(self.errors)
        started = time.time()
        cpu_before = cpu_seconds(self.target)
        timed_out = await self._phase(phase, [asyncio.create_task(one()) for _ in range(n)], lifecycles, timeout)
        cpu_after = cpu_seconds(self.target)
        done = [lc for lc in lifecycles if lc.archived_at]
        elapsed = max((lc.archived_at or 0.0) for lc in done) - started if done else float("nan")
        return {
            "lifecycles": n,
            "completed": len(done),
            "failed": sum(1 for lc in lifecycles if lc.failure),
            "timed_out": timed_out,
            "errors": len(self.errors) - errors_before,
            "in_flight": in_flight,
            "elapsed_s": round(elapsed, 2),
            "lifecycles_per_s": round(len(done) / elapsed, 1) if done else 0.0,
            "cpu_per_lifecycle": cpu_per_lifecycle(cpu_before, cpu_after, len(done)),
            **latencies(lifecycles),
        }

    async def open_loop(self, phase: str, rate: float, seconds: float, timeout: float) -> dict[str, Any]:
        """Submissions at ``rate``/s for ``seconds`` whatever the answers: latencies under a steady load."""
        lifecycles: list[Lifecycle] = []
        tasks = []
        interval = 1.0 / rate
        errors_before = len(self.errors)

        async def one() -> None:
            lc = await self.submit(phase)
            lifecycles.append(lc)
            await lc.done.wait()

        started = time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = started + i * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        offered = len(tasks) / (time.perf_counter() - started)
        timed_out = await self._phase(phase, tasks, lifecycles, timeout)
        return {
            "rate_per_s": rate,
            "offered_per_s": round(offered, 1),
            "seconds": seconds,
            "completed": sum(1 for lc in lifecycles if lc.archived_at),
            "failed": sum(1 for lc in lifecycles if lc.failure),
            "timed_out": timed_out,
            "errors": len(self.errors) - errors_before,
            **latencies(lifecycles),
        }

    async def aclose(self) -> None:
        for t in list(self._bg):
            t.cancel()
        await self.http.aclose()


@dataclass
class Targets:
    """The issue's targets, checked against a report."""

    idle_pct: float = 3.0
    rss_mb: float = 150.0
    submit_p99_ms: float = 50.0
    assigned_p99_ms: float = 250.0
    archived_p99_ms: float = 2000.0
    checks: dict[str, Any] = field(default_factory=dict)

    def check(self, name: str, value: float | None, target: float) -> None:
        self.checks[name] = {"value": value, "target": target, "met": value is not None and value <= target}

    def of(self, result: Mapping[str, Any]) -> dict[str, Any]:
        if "idle_fresh" in result:
            self.check("idle CPU, fresh stack (% of one core)", result["idle_fresh"]["stack_pct_of_one_core"],
                       self.idle_pct)
        if "idle_after" in result:
            self.check("idle CPU after the load (% of one core)", result["idle_after"]["stack_pct_of_one_core"],
                       self.idle_pct)
        if result.get("peak_rss_mb"):
            self.check("largest service peak RSS (MB)", max(result["peak_rss_mb"].values()), self.rss_mb)
        lat = result.get("latency")
        if lat:
            self.check(f"open loop {lat['rate_per_s']:g}/s submit p99 (ms)", lat["submit"]["p99_ms"],
                       self.submit_p99_ms)
            self.check(f"open loop {lat['rate_per_s']:g}/s submit→Assigned p99 (ms)",
                       lat["submit_to_assigned"]["p99_ms"], self.assigned_p99_ms)
            self.check(f"open loop {lat['rate_per_s']:g}/s submit→Archived p99 (ms)",
                       lat["submit_to_archived"]["p99_ms"], self.archived_p99_ms)
        return self.checks


def strip_raw(phase: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in phase.items() if k != "_raw"}



def commit() -> str:
    """The checked-out commit (short), with ``+dirty`` when the work tree has changes: the figures' provenance."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def report_text(result: Mapping[str, Any]) -> str:
    """The run in a few lines: each phase's outcome, the errors by phase, and the targets met or missed."""
    load = result.get("machine", {}).get("loadavg_at_start")
    lines = [f"commit {result.get('commit')}, load average at start {load}"]
    for phase in ("warm_up", "throughput", "latency"):
        p = result.get(phase)
        if not p:
            continue
        cpu = p.get("cpu_per_lifecycle", {}).get("platform_ms")
        net = p.get("cpu_per_lifecycle_net_of_idle", {}).get("platform_ms")
        lines.append(
            f"  {phase:<10} completed {p.get('completed')}, failed {p.get('failed')}, timed out {p.get('timed_out')}"
            + (f", {p['lifecycles_per_s']}/s, platform CPU {cpu} ms per lifecycle" if cpu is not None else "")
            + (f" ({net} ms net of idle)" if net is not None else "")
        )
    pg = result.get("throughput", {}).get("postgres")
    if pg:
        lines.append(f"  PostgreSQL per lifecycle (throughput): {pg['transactions']} transactions"
                     + (f", {pg['statements']} statements, {pg['exec_ms']} ms executing" if "statements" in pg else ""))
    work = result.get("throughput", {}).get("units")
    if work:
        t = work["totals"]
        lines.append(f"  per lifecycle (throughput): {t['http']} HTTP requests, {t['published']} events published, "
                     f"{t['consumed']} records consumed")
    errors = result.get("errors", {})
    lines.append(f"  errors     {errors.get('count', 0)} by phase {errors.get('by_phase', {})}")
    lines.extend(f"    {e}" for e in errors.get("first", [])[:10])
    if result.get("retried_requests"):
        lines.append(f"  sent again after no answer (not errors): {result['retried_requests']}")
    for name, check in result.get("targets", {}).items():
        verdict = "met   " if check["met"] else "MISSED"
        lines.append(f"  {verdict} {name}: {check['value']} (target ≤ {check['target']})")
    return "\n".join(lines)
