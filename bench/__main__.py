"""``make bench``: complete lifecycles through the embedded stack, measured.

Simulated channels submit over HTTP; simulated technicians learn of their
assignments from the ``tickets`` topic (as a downstream consumer would) and log
and resolve over HTTP; simulated customers rate when FeedbackSent appears; a
lifecycle ends when Archived appears. Latencies between events use the events'
own ``ce_time`` (one machine, one clock), so polling never distorts them.

Phases:
  throughput  N lifecycles with C in flight: lifecycles/s sustained
  latency     open-loop submissions at R/s for S seconds: submit p50/p95/p99,
              submit→Assigned and submit→Archived percentiles
Each service's peak RSS is sampled throughout. Results: bench/results/*.json and *.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from aiokafka import AIOKafkaConsumer
from tsop_devstack.stack import SERVICES, Stack

RESULTS = Path(__file__).parent / "results"
SERVICE_TYPE = "broadband.fault_repair"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def processes(stack: Stack) -> dict[str, psutil.Process]:
    """The stack's processes and this driver, by name."""
    procs = {name: psutil.Process(p.pid) for name, p in stack.procs.items()}
    for name, p in (("postgres", stack.postgres.proc), ("broker", stack.broker.proc)):
        if p is not None:
            procs[name] = psutil.Process(p.pid)
    procs["bench-driver"] = psutil.Process()
    return procs


def cpu_seconds(stack: Stack) -> dict[str, float]:
    """CPU time per process (PostgreSQL with its backends): where the machine's two cores go."""
    out = {}
    for name, proc in processes(stack).items():
        try:
            members = [proc, *proc.children(recursive=True)] if name == "postgres" else [proc]
            out[name] = sum(m.cpu_times().user + m.cpu_times().system for m in members)
        except psutil.Error:
            pass
    return out


class Lifecycle:
    __slots__ = ("archived", "archived_at", "assigned_at", "submit_latency", "submitted_at")

    def __init__(self, submitted_at: float) -> None:
        self.submitted_at = submitted_at  # epoch seconds, taken before the POST
        self.submit_latency = 0.0
        self.assigned_at: float | None = None
        self.archived_at: float | None = None
        self.archived = asyncio.Event()


class Driver:
    def __init__(self, stack: Stack, topic: str, concurrency_limit: int = 256) -> None:
        self.stack = stack
        self.topic = topic
        self.http = httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=concurrency_limit))
        self.tickets: dict[str, Lifecycle] = {}
        self.errors: list[str] = []
        self.rss_peak: dict[str, int] = {}
        self.early: dict[str, list[tuple[str, float, bytes]]] = {}
        self._bg: set[asyncio.Task[None]] = set()
        self.channel_auth: dict[str, str] = {}
        self.technician_tokens: dict[str, str] = {}  # technician id → the credential dispatch issued

    def url(self, service: str, path: str) -> str:
        return self.stack.url(service) + path

    async def register_technicians(self, count: int, capacity: int) -> None:
        for _ in range(count):
            r = await self.http.post(
                self.url("dispatch", "/v1/technicians"),
                json={"name": "Bench", "service_types": [SERVICE_TYPE], "regions": ["north"], "capacity": capacity},
                headers={"Authorization": f"Bearer {self.stack.tokens['supervisor']}"},
            )
            r.raise_for_status()
            self.technician_tokens[r.json()["id"]] = r.json()["token"]

    async def register_channel(self) -> None:
        """Submissions come from a registered channel system, with its own credential."""
        r = await self.http.post(
            self.url("intake", "/v1/channels"),
            json={"name": "bench portal", "kind": "app", "rate_limit_per_minute": 1_000_000},
            headers={"Authorization": f"Bearer {self.stack.tokens['admin']}"},
        )
        r.raise_for_status()
        self.channel_auth = {"Authorization": f"Bearer {r.json()['credential']['token']}"}

    async def submit(self) -> Lifecycle:
        lc = Lifecycle(time.time())
        started = time.perf_counter()
        r = await self.http.post(
            self.url("intake", "/v1/requests"),
            json={
                "channel": "app",
                "customer": {"id": f"c-{uuid.uuid4().hex[:8]}", "tier": "standard"},
                "region": "north",
                "service_type": SERVICE_TYPE,
                "description": "No internet since this morning",
                "location": {"address": f"{uuid.uuid4().hex[:8]} Bench Street"},
            },
            headers={"Idempotency-Key": uuid.uuid4().hex, **self.channel_auth},
        )
        lc.submit_latency = time.perf_counter() - started
        if r.status_code != 201:
            self.errors.append(f"submit {r.status_code}: {r.text[:200]}")
            lc.archived.set()
            return lc
        ticket = r.json()["id"]
        self.tickets[ticket] = lc
        for kind, at, body in self.early.pop(ticket, []):  # events that overtook the HTTP answer
            self._on_event(ticket, lc, kind, at, body)
        return lc

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    async def _work(self, work_order_id: str, technician_id: str) -> None:
        as_technician = {"Authorization": f"Bearer {self.technician_tokens[technician_id]}"}
        steps: list[tuple[str, dict[str, Any] | None]] = [
            ("accept", None),
            ("start", {"mode": "on_site"}),
            ("log", {"action": "replaced the ONT", "mode": "on_site"}),
            ("resolve", {"resolution_code": "hw_replaced", "summary": "line OK"}),
        ]
        try:
            for step, body in steps:
                r = await self.http.post(
                    self.url("dispatch", f"/v1/work-orders/{work_order_id}/{step}"), json=body, headers=as_technician
                )
                r.raise_for_status()
        except httpx.HTTPError as exc:
            self.errors.append(f"work: {exc}")

    async def _rate(self, ticket: str) -> None:
        try:
            r = await self.http.post(
                self.url("feedback", f"/v1/tickets/{ticket}/rating"),
                json={"score": 5},
                headers={"Authorization": f"Bearer {self.stack.tokens['agent']}"},
            )
            if r.status_code != 201:
                self.errors.append(f"rate {r.status_code}: {r.text[:200]}")
        except httpx.HTTPError as exc:
            self.errors.append(f"rate: {exc}")

    async def follow(self) -> None:
        """Technicians and customers react to what the tickets topic says."""
        consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.stack.bootstrap,
            auto_offset_reset="latest",
            enable_auto_commit=False,
            fetch_max_wait_ms=50,
        )
        await consumer.start()
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=100, max_records=2000)
                for records in batch.values():
                    for rec in records:
                        h = dict(rec.headers)
                        kind = h.get("ce_type", b"").decode()
                        ticket = rec.key.decode()
                        at = datetime.fromisoformat(h["ce_time"].decode()).timestamp()
                        lc = self.tickets.get(ticket)
                        if lc is None:
                            self.early.setdefault(ticket, []).append((kind, at, rec.value))
                        else:
                            self._on_event(ticket, lc, kind, at, rec.value)
        finally:
            await consumer.stop()

    def processes(self) -> dict[str, psutil.Process]:
        return processes(self.stack)

    def cpu_seconds(self) -> dict[str, float]:
        return cpu_seconds(self.stack)

    def _on_event(self, ticket: str, lc: Lifecycle, kind: str, at: float, value: bytes) -> None:
        if kind == "tsop.ticket.assigned.v1" and lc.assigned_at is None:
            lc.assigned_at = at
            body = json.loads(value)
            self._spawn(self._work(body["work_order_id"], body["technician_id"]))
        elif kind == "tsop.ticket.feedback-sent.v1":
            self._spawn(self._rate(ticket))
        elif kind == "tsop.ticket.archived.v1" and lc.archived_at is None:
            lc.archived_at = at
            lc.archived.set()

    async def sample_rss(self) -> None:
        procs = {k: v for k, v in self.processes().items() if k in SERVICES}
        while True:
            for name, proc in procs.items():
                try:
                    self.rss_peak[name] = max(self.rss_peak.get(name, 0), proc.memory_info().rss)
                except psutil.Error:
                    pass
            await asyncio.sleep(0.5)

    async def throughput(self, n: int, in_flight: int, timeout: float) -> dict[str, Any]:
        sem = asyncio.Semaphore(in_flight)
        lifecycles: list[Lifecycle] = []

        async def one() -> None:
            async with sem:
                lc = await self.submit()
                lifecycles.append(lc)
                await lc.archived.wait()

        started = time.time()
        cpu_before = self.cpu_seconds()
        try:
            await asyncio.wait_for(asyncio.gather(*(one() for _ in range(n))), timeout)
        except TimeoutError:
            self.errors.append(f"throughput phase timed out after {timeout}s")
        done = [lc for lc in lifecycles if lc.archived_at]
        elapsed = max((lc.archived_at or 0.0) for lc in done) - started if done else float("nan")
        return {
            "lifecycles": n,
            "completed": len(done),
            "in_flight": in_flight,
            "elapsed_s": round(elapsed, 2),
            "lifecycles_per_s": round(len(done) / elapsed, 1) if done else 0.0,
            "cpu_seconds_per_lifecycle_ms": {
                k: round((v - cpu_before.get(k, 0.0)) / max(1, len(done)) * 1000, 2)
                for k, v in self.cpu_seconds().items()
            },
            **self._latencies(lifecycles),
        }

    async def latency(self, rate: float, seconds: float, timeout: float) -> dict[str, Any]:
        lifecycles: list[Lifecycle] = []
        tasks = []
        interval = 1.0 / rate
        started = time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = started + i * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)

            async def one() -> None:
                lc = await self.submit()
                lifecycles.append(lc)
                await lc.archived.wait()

            tasks.append(asyncio.create_task(one()))
        offered = len(tasks) / (time.perf_counter() - started)
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), timeout)
        except TimeoutError:
            self.errors.append(f"latency phase timed out after {timeout}s")
        return {
            "rate_per_s": rate,
            "offered_per_s": round(offered, 1),
            "seconds": seconds,
            **self._latencies(lifecycles),
        }

    @staticmethod
    def _latencies(lifecycles: list[Lifecycle]) -> dict[str, Any]:
        return {
            "submit": summary([lc.submit_latency for lc in lifecycles]),
            "submit_to_assigned": summary([lc.assigned_at - lc.submitted_at for lc in lifecycles if lc.assigned_at]),
            "submit_to_archived": summary([lc.archived_at - lc.submitted_at for lc in lifecycles if lc.archived_at]),
            "_raw": {
                "submit": [lc.submit_latency for lc in lifecycles],
                "assigned": [lc.assigned_at - lc.submitted_at for lc in lifecycles if lc.assigned_at],
                "archived": [lc.archived_at - lc.submitted_at for lc in lifecycles if lc.archived_at],
            },
        }


def on_stack(stack: Stack, work: Callable[[], Coroutine[Any, Any, dict[str, Any]]]) -> dict[str, Any]:
    """Start the stack, run ``work`` on it, and stop it whatever happens (SIGTERM included)."""

    def terminated(*_: object) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, terminated)
    try:
        stack.start(180)
        return asyncio.run(work())
    finally:
        stack.stop()


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, phase in zip(axes, ("throughput", "latency"), strict=True):
        raw = result[phase].pop("_raw")
        for label, values in (
            ("submit", raw["submit"]),
            ("submit→Assigned", raw["assigned"]),
            ("submit→Archived", raw["archived"]),
        ):
            if values:
                xs = sorted(v * 1000 for v in values)
                ax.plot(xs, [i / len(xs) for i in range(len(xs))], label=label)
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log)")
        ax.set_ylabel("fraction of lifecycles")
        ax.set_title(
            "throughput phase" if phase == "throughput" else f"latency phase at {result[phase]['rate_per_s']}/s"
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("TSOP lifecycle latencies (embedded stack, CDF)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def run(args: argparse.Namespace, stack: Stack) -> dict[str, Any]:
    driver = Driver(stack, "tsop.tickets")
    follow = asyncio.create_task(driver.follow())
    rss = asyncio.create_task(driver.sample_rss())
    try:
        await driver.register_channel()
        await driver.register_technicians(args.technicians, args.capacity)
        await asyncio.sleep(2.0)  # the follower joins before the first submission
        warm = await driver.throughput(min(200, args.lifecycles), args.in_flight, args.timeout)
        result: dict[str, Any] = {
            "when": datetime.now(UTC).isoformat(),
            "machine": {"cpus": psutil.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)},
            "warm_up": {k: v for k, v in warm.items() if k != "_raw"},
            "throughput": await driver.throughput(args.lifecycles, args.in_flight, args.timeout),
            "latency": await driver.latency(args.rate, args.seconds, args.timeout),
        }
        result["peak_rss_mb"] = {k: round(v / 2**20, 1) for k, v in sorted(driver.rss_peak.items())}
        result["errors"] = driver.errors[:20]
        result["error_count"] = len(driver.errors)
        return result
    finally:
        follow.cancel()
        rss.cancel()
        await driver.http.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lifecycles", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=100)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--technicians", type=int, default=50)
    parser.add_argument("--capacity", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    stack = Stack(
        Path(tempfile.mkdtemp(prefix="tsop-bench-")),
        pg_port=free_port(),
        broker_port=free_port(),
        ports={name: free_port() for name in SERVICES},
        # the benchmark's bursts of fault tickets in one region would be declared an outage (and held)
        env={"TSOP_LOG_LEVEL": "WARNING",
             "TSOP_CORRELATION_RULES_FILE": str(Path(__file__).with_name("incident_rules.json"))},
    )

    result = on_stack(stack, lambda: run(args, stack))
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    png = RESULTS / f"bench-{stamp}.png"
    plot(result, png)
    result["plot"] = str(png)
    out = RESULTS / f"bench-{stamp}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"\nwritten: {out} and {png}")


if __name__ == "__main__":
    main()
