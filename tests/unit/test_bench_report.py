"""The lifecycle bench's reporting (bench.lifecycle): every error names what failed and its phase,
a phase's timeout is reported only when lifecycles of it were unfinished, CPU and idle arithmetic."""

from __future__ import annotations

import asyncio
from typing import Any

import psutil
import pytest
from aiokafka import ConsumerRecord

from bench.client import ConnectFailed, StatusError, Timeout
from bench.lifecycle import (
    ARCHIVED,
    ASSIGNED,
    FEEDBACK_SENT,
    Driver,
    Failure,
    Lifecycle,
    Targets,
    cpu_per_lifecycle,
    describe,
    error_summary,
    idle_report,
    phase_outcome,
    report_text,
)
from tests.bench_server import LocalServer, Reply, Request


def test_an_exception_without_a_message_still_names_its_type() -> None:
    # httpx's timeouts carried an empty message: the old report read only "work: "
    assert describe(TimeoutError()) == "TimeoutError (no message)"
    assert describe(Timeout("no whole answer within 30s (POST http://x/a)")) == \
        "Timeout: no whole answer within 30s (POST http://x/a)"
    assert describe(ConnectFailed("connection refused")) == "ConnectFailed: connection refused"
    from bench.client import Answer
    assert describe(StatusError(Answer(409, {}, b'{"detail": "already accepted"}'))) == \
        'HTTP 409: {"detail": "already accepted"}'


def test_a_failure_names_phase_ticket_step_request_and_cause() -> None:
    f = Failure("warm-up", "accept", "ReadTimeout (no message)", "T-1", "POST /v1/work-orders/W-1/accept")
    assert str(f) == "[warm-up] ticket T-1 accept (POST /v1/work-orders/W-1/accept): ReadTimeout (no message)"


def test_the_summary_counts_errors_by_phase_and_step() -> None:
    failures = [
        Failure("warm-up", "accept", "ReadTimeout (no message)", "T-1"),
        Failure("warm-up", "phase", "timed out after 300s: ..."),
        Failure("latency", "submit", "HTTP 503: busy"),
    ]
    s = error_summary(failures, keep=2)
    assert s["count"] == 3
    assert s["by_phase"] == {"warm-up": 2, "latency": 1}
    assert s["by_phase_and_step"] == {"warm-up/accept": 1, "warm-up/phase": 1, "latency/submit": 1}
    assert s["first"] == [str(failures[0]), str(failures[1])]


def lifecycle(stage: str, ticket: str | None = "T", archived: bool = False, failed: bool = False) -> Lifecycle:
    lc = Lifecycle("throughput", 0.0)
    lc.ticket, lc.stage = ticket, stage
    if archived:
        lc.archived_at = 1.0
    if failed:
        lc.failure = Failure("throughput", stage, "boom", ticket)
    return lc


def test_no_timeout_is_reported_when_every_lifecycle_ended() -> None:
    ended = [lifecycle("archived", archived=True), lifecycle("accept", failed=True)]
    assert phase_outcome("throughput", ended, expected=2, timeout=300) is None


def test_a_timeout_names_the_unfinished_lifecycles_and_where_they_stood() -> None:
    lcs = [
        lifecycle("archived", "T-1", archived=True),
        lifecycle("waiting for Archived", "T-2"),
        lifecycle("waiting for Archived", "T-3"),
        lifecycle("resolve", "T-4"),
    ]
    late = phase_outcome("warm-up", lcs, expected=5, timeout=300)
    assert late is not None and late.phase == "warm-up" and late.step == "phase"
    assert "4 of 5 lifecycles unfinished" in late.what  # three waiting, one never answered
    assert "1 not yet submitted or answered" in late.what
    assert "2 at waiting for Archived" in late.what and "1 at resolve" in late.what
    assert "T-2 at waiting for Archived" in late.what and "T-1" not in late.what


def test_cpu_per_lifecycle_and_the_platform_total_leave_the_driver_out() -> None:
    before = {"intake": 1.0, "postgres": 2.0, "bench-driver": 5.0}
    after = {"intake": 2.0, "postgres": 4.0, "bench-driver": 9.0}
    r = cpu_per_lifecycle(before, after, n=100)
    assert r["per_process_ms"] == {"intake": 10.0, "postgres": 20.0, "bench-driver": 40.0}
    assert r["platform_ms"] == 30.0


def test_idle_is_in_percent_of_one_core_and_checked_against_the_target() -> None:
    r = idle_report({"intake": 0.0, "broker": 1.0, "bench-driver": 0.0}, {"intake": 0.3, "broker": 1.6,
                    "bench-driver": 9.0}, seconds=30)
    assert r["per_process_pct"] == {"intake": 1.0, "broker": 2.0}
    assert r["stack_pct_of_one_core"] == 3.0 and r["met"] is True
    r = idle_report({"broker": 0.0}, {"broker": 1.0}, seconds=30)
    assert r["stack_pct_of_one_core"] == 3.33 and r["met"] is False


def test_targets_and_the_text_report() -> None:
    result: dict[str, Any] = {
        "commit": "abc1234",
        "idle_fresh": {"stack_pct_of_one_core": 2.5},
        "peak_rss_mb": {"intake": 90.0, "dispatch": 160.0},
        "latency": {"rate_per_s": 50.0, "submit": {"p99_ms": 40.0}, "submit_to_assigned": {"p99_ms": 300.0},
                    "submit_to_archived": {"p99_ms": None}},
        "errors": error_summary([Failure("warm-up", "accept", "ReadTimeout (no message)", "T-1")]),
    }
    checks = Targets().of(result)
    assert checks["idle CPU, fresh stack (% of one core)"]["met"] is True
    assert checks["largest service peak RSS (MB)"] == {"value": 160.0, "target": 150.0, "met": False}
    assert checks["open loop 50/s submit p99 (ms)"]["met"] is True
    assert checks["open loop 50/s submit→Assigned p99 (ms)"]["met"] is False
    assert checks["open loop 50/s submit→Archived p99 (ms)"]["met"] is False  # nothing archived is not a pass
    result["targets"] = checks
    text = report_text(result)
    assert "by phase {'warm-up': 1}" in text and "[warm-up] ticket T-1 accept: ReadTimeout (no message)" in text
    assert "MISSED largest service peak RSS (MB): 160.0" in text


class FakeTarget:
    """Every service at one local server's address."""

    bootstrap = "127.0.0.1:1"
    tokens = {"agent": "a", "supervisor": "s", "admin": "x"}

    def __init__(self, base: str = "http://127.0.0.1:1") -> None:
        self.base = base

    def url(self, service: str) -> str:
        return self.base

    def processes(self) -> dict[str, tuple[psutil.Process, bool]]:
        return {}

    def services(self) -> dict[str, str]:
        return {}


async def test_a_failed_work_step_ends_its_lifecycle_at_once_with_the_step_named() -> None:
    """The phase must not wait for its timeout when a step failed, and the error says which step."""
    def answer(request: Request) -> Reply:
        if request.path.endswith("/start"):
            return Reply(no_answer="hang")
        return Reply.json(200, {})

    async with LocalServer(answer) as server:
        driver = Driver(FakeTarget(server.url), http_timeout=0.3)
        driver.technician_tokens["tech-1"] = "tok"
        lc = Lifecycle("warm-up", 0.0)
        lc.ticket = "T-9"
        driver.tickets["T-9"] = lc
        driver._on_event(lc, ASSIGNED, 1.0, b'{"work_order_id": "W-9", "technician_id": "tech-1"}')
        await asyncio.wait_for(lc.done.wait(), 5)
        assert lc.finished and lc.archived_at is None
        assert [r.path for r in server.requests] == ["/v1/work-orders/W-9/accept", "/v1/work-orders/W-9/start"]
        assert server.requests[0].headers["authorization"] == "Bearer tok"
        assert [str(e) for e in driver.errors] == [
            "[warm-up] ticket T-9 start (POST /v1/work-orders/W-9/start): Timeout: no whole answer within 0.3s "
            f"(POST {server.url}/v1/work-orders/W-9/start)"
        ]
        await driver.aclose()


async def test_a_republished_feedback_sent_is_rated_once_and_archived_ends_the_lifecycle() -> None:
    async with LocalServer(lambda request: Reply.json(201, {})) as server:
        driver = Driver(FakeTarget(server.url))
        lc = Lifecycle("throughput", 0.0)
        lc.ticket = "T-1"
        driver._on_event(lc, FEEDBACK_SENT, 1.0, b"{}")
        driver._on_event(lc, FEEDBACK_SENT, 1.1, b"{}")  # a relay published it again
        for _ in range(100):
            if lc.stage == "waiting for Archived":
                break
            await asyncio.sleep(0.01)
        assert [r.path for r in server.requests] == ["/v1/tickets/T-1/rating"] and lc.stage == "waiting for Archived"
        assert server.requests[0].json() == {"score": 5} and server.requests[0].headers["authorization"] == "Bearer a"
        driver._on_event(lc, ARCHIVED, 2.0, b"{}")
        assert lc.done.is_set() and lc.archived_at == 2.0 and not driver.errors
        await driver.aclose()


@pytest.mark.parametrize("status", [409, 503])
async def test_a_refused_submission_names_its_status_and_body(status: int) -> None:
    async with LocalServer(lambda request: Reply(status, b"no")) as server:
        driver = Driver(FakeTarget(server.url))
        lc = await driver.submit("latency")
        assert lc.finished and lc.ticket is None
        assert [str(e) for e in driver.errors] == [f"[latency] submit (POST /v1/requests): HTTP {status}: no"]
        assert "idempotency-key" in server.requests[0].headers
        await driver.aclose()


async def test_a_submission_answered_is_followed_by_its_ticket_and_events_that_came_first_are_applied() -> None:
    async with LocalServer(lambda request: Reply.json(201, {"id": "T-42"})) as server:
        driver = Driver(FakeTarget(server.url))
        driver.channel_auth = {"Authorization": "Bearer channel"}
        driver.early["T-42"] = [(ARCHIVED, 5.0, b"{}")]  # the event overtook the HTTP answer
        lc = await driver.submit("throughput")
        assert lc.ticket == "T-42" and driver.tickets["T-42"] is lc and lc.archived_at == 5.0
        body = server.requests[0].json()
        assert isinstance(body, dict) and body["service_type"] == "broadband.fault_repair"
        assert server.requests[0].headers["authorization"] == "Bearer channel" and not driver.errors
        await driver.aclose()


async def test_a_phase_that_times_out_reports_once_and_one_that_completes_reports_nothing() -> None:
    driver = Driver(FakeTarget())
    done, stuck = Lifecycle("p", 0.0), Lifecycle("p", 0.0)
    done.ticket, stuck.ticket, stuck.stage = "T-1", "T-2", "waiting for Assigned"
    done.archived_at = 1.0
    done.done.set()

    async def wait(lc: Lifecycle) -> None:
        await lc.done.wait()

    assert await driver._phase("p", [asyncio.create_task(wait(done))], [done], timeout=1) is False
    assert driver.errors == []
    timed_out = await driver._phase("p", [asyncio.create_task(wait(done)), asyncio.create_task(wait(stuck))],
                                    [done, stuck], timeout=0.2)
    assert timed_out is True
    assert [e.step for e in driver.errors] == ["phase"]
    assert "1 of 2 lifecycles unfinished" in driver.errors[0].what and "T-2 at waiting for Assigned" in \
        driver.errors[0].what
    await driver.aclose()


async def test_a_step_whose_connection_dropped_is_sent_again_and_a_409_to_the_repeat_counts_as_done() -> None:
    """A pooled connection the server closed (ReadError, no answer) is the client's, not the platform's."""
    calls: list[str] = []

    def answer(request: Request) -> Reply:
        calls.append(request.path)
        if request.path.endswith("/start") and calls.count(request.path) == 1:
            return Reply(no_answer="drop")
        if request.path.endswith("/start"):
            return Reply.json(409, {"detail": "already started"})  # the first try took effect
        return Reply.json(200, {})

    async with LocalServer(answer) as server:
        driver = Driver(FakeTarget(server.url))
        driver.technician_tokens["tech-1"] = "tok"
        lc = Lifecycle("throughput", 0.0)
        lc.ticket = "T-5"
        await driver._work(lc, "W-5", "tech-1")
        assert driver.errors == [] and lc.stage == "waiting for FeedbackSent"
        assert calls.count("/v1/work-orders/W-5/start") == 2 and calls[-1] == "/v1/work-orders/W-5/resolve"
        assert dict(driver.retried) == {"start: ConnectionDropped": 1}
        log = next(r for r in server.requests if r.path.endswith("/log"))
        assert log.json() == {"action": "replaced the ONT", "mode": "on_site"} and "idempotency-key" in log.headers
        await driver.aclose()


async def test_a_connection_that_fails_every_time_is_a_failure_and_a_409_without_a_repeat_is_too() -> None:
    def answer(request: Request) -> Reply:
        if request.path.endswith("/accept"):
            return Reply(no_answer="drop")
        return Reply.json(409, {"detail": "not accepted"})

    async with LocalServer(answer) as server:
        driver = Driver(FakeTarget(server.url))
        driver.technician_tokens["tech-1"] = "tok"
        lc = Lifecycle("latency", 0.0)
        lc.ticket = "T-6"
        await driver._work(lc, "W-6", "tech-1")
        assert [str(e) for e in driver.errors] == [
            "[latency] ticket T-6 accept (POST /v1/work-orders/W-6/accept): "
            f"ConnectionDropped: POST {server.url}/v1/work-orders/W-6/accept: the connection closed before an answer"
        ]
        assert dict(driver.retried) == {"accept: ConnectionDropped": 2} and len(server.requests) == 3
        lc2 = Lifecycle("latency", 0.0)
        lc2.ticket = "T-7"
        await driver._rate(lc2)  # a 409 at the first try is an error: nothing was sent before
        assert str(driver.errors[-1]) == \
            '[latency] ticket T-7 rate (POST /v1/tickets/T-7/rating): HTTP 409: {"detail":"not accepted"}'
        await driver.aclose()


def test_cpu_net_of_idle_subtracts_each_process_idle_share_over_the_phase() -> None:
    from bench.lifecycle import net_of_idle

    # 100 lifecycles in 50 s; the broker idles at 20 % of a core: 10 s of its CPU, 100 ms per lifecycle
    r = net_of_idle({"broker": 150.0, "intake": 40.0, "bench-driver": 30.0}, {"broker": 20.0}, 50.0, 100)
    assert r == {"per_process_ms": {"broker": 50.0, "intake": 40.0}, "platform_ms": 90.0}


def record(offset: int, kind: str | None, ticket: str, value: bytes, at: str | None = "2026-12-02T20:00:00+00:00",
           ) -> ConsumerRecord[bytes, bytes]:
    headers = [(name, v.encode()) for name, v in (("ce_id", f"e{offset}"), ("ce_type", kind), ("ce_time", at))
               if v is not None]
    return ConsumerRecord("tsop.tickets", 0, offset, 0, 0, ticket.encode(), value, None, 0, len(value), headers)


async def test_the_follower_reads_only_the_kinds_it_acts_on_and_names_an_unreadable_one() -> None:
    driver = Driver(FakeTarget())
    lc = Lifecycle("throughput", 0.0)
    lc.ticket = "T-1"
    driver.tickets["T-1"] = lc
    driver.read([
        record(1, "tsop.ticket.submitted.v1", "T-1", b"not json at all"),  # not acted on: its body is never read
        record(2, "tsop.ticket.worklogged.v1", "T-1", b"{}", at="not a time"),  # nor its time
        record(3, ARCHIVED, "T-2", b"{}"),  # a ticket whose submission is not answered yet: kept for it
        record(4, ARCHIVED, "T-1", b"{}", at="2026-12-02T20:00:01+00:00"),
        record(5, FEEDBACK_SENT, "T-1", b"{}", at=None),  # acted on, but without its time
        record(6, None, "T-1", b"{}"),  # no ce_type at all
    ])
    assert lc.archived_at == 1796241601.0 and lc.done.is_set() and lc.stage == "archived"
    assert driver.early == {"T-2": [(ARCHIVED, 1796241600.0, b"{}")]}
    assert [str(e) for e in driver.errors] == [
        "[follow] follow: unreadable record tsop.tickets[0]@5: KeyError: 'ce_time'",
        "[follow] follow: unreadable record tsop.tickets[0]@6: KeyError: 'ce_type'",
    ]
    await driver.aclose()


async def test_an_assigned_record_starts_the_technician_s_steps_with_its_credential() -> None:
    async with LocalServer(lambda request: Reply.json(200, {})) as server:
        driver = Driver(FakeTarget(server.url))
        driver.technician_tokens["tech-3"] = "tok-3"
        lc = Lifecycle("throughput", 0.0)
        lc.ticket = "T-3"
        driver.tickets["T-3"] = lc
        driver.read([record(1, ASSIGNED, "T-3", b'{"work_order_id": "W-3", "technician_id": "tech-3"}')])
        assert lc.assigned_at == 1796241600.0
        for _ in range(200):
            if lc.stage == "waiting for FeedbackSent":
                break
            await asyncio.sleep(0.01)
        assert [r.path.rsplit("/", 1)[1] for r in server.requests] == ["accept", "start", "log", "resolve"]
        assert {r.headers["authorization"] for r in server.requests} == {"Bearer tok-3"} and not driver.errors
        driver.read([record(2, ASSIGNED, "T-3", b"not json")])  # a second Assigned is not acted on again
        assert not driver.errors and len(server.requests) == 4
        await driver.aclose()
