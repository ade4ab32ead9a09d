"""Feedback's webhook deliverer: bounded retries ending in a visible dead letter, refused destinations, and a
slow receiver that does not hold up the others (in-memory store, a mock transport, a fake resolver)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import httpx

from tests.feedback_sync import service
from tsop_events.clock import ManualClock
from tsop_events.outbound import OutboundGuard, RetryPolicy, parse_rules
from tsop_feedback.commands import FeedbackApp, case_id
from tsop_feedback.domain import FeedbackCase
from tsop_feedback.views import Deliverer, Share

NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
DNS = {"ok.example": ["93.184.216.34"], "down.example": ["93.184.216.35"], "slow.example": ["93.184.216.36"],
       "sneaky.example": ["10.1.1.1"]}


async def resolver(host: str, port: int) -> list[str]:
    if host not in DNS:
        raise OSError(host)
    return DNS[host]


def app_with(*urls: str) -> tuple[FeedbackApp, list[UUID]]:
    app = FeedbackApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=ManualClock(NOW),
                      rating_window=timedelta(hours=24))
    ids = []
    for url in urls:
        t = str(uuid4())
        case = FeedbackCase(id=case_id(t), ticket_id=t, callback_url=url, opened_at=NOW)
        case.note_resolution("fixed", "done", None, NOW, app.rating_window, f"resolved-{t}")
        app.save(case)
        ids.append(case.id)
    return app, ids


def deliverer(app: FeedbackApp, dead: list[tuple[str, int, str]], attempts: int = 4) -> Deliverer:
    async def on_dead(case: FeedbackCase, n: int, error: str) -> None:
        dead.append((case.ticket_id, n, error))

    return Deliverer(service(app), "s3cret", OutboundGuard(parse_rules(""), (), resolver),
                     RetryPolicy(max_attempts=attempts, base_seconds=0.01, max_seconds=0.02), dead=on_dead)


async def until(d: Deliverer, client: httpx.AsyncClient, done: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:  # type: ignore[operator]
        await d.run_once(client)
        await asyncio.sleep(0.005)


def test_a_failing_receiver_is_tried_max_attempts_times_then_dead_lettered_and_shown_on_the_case() -> None:
    app, (ok, down) = app_with("https://ok.example/cb", "https://down.example/cb")
    hits: dict[str, int] = {}
    dead: list[tuple[str, int, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        host = request.headers["host"]
        hits[host] = hits.get(host, 0) + 1
        return httpx.Response(204 if host == "ok.example" else 503, text="unavailable")

    async def go() -> None:
        d = deliverer(app, dead)
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            await until(d, client, lambda: dead and app.load(ok).notified)
            for _ in range(20):  # nothing more is tried after the dead letter
                await d.run_once(client)
                await asyncio.sleep(0.005)

    asyncio.run(go())
    assert hits == {"ok.example": 1, "down.example": 4}
    case: FeedbackCase = app.load(down)
    assert not case.notified and case.notification_failed is not None
    assert case.notification_failed["attempts"] == 4 and case.notification_failed["status_code"] == 503
    assert len(dead) == 1 and dead[0][1] == 4 and "503" in dead[0][2]
    app.follow_ups.refresh()
    assert app.follow_ups.to_notify == set()


def test_a_callback_that_now_resolves_inside_is_refused_at_delivery_without_retries() -> None:
    app, (sneaky,) = app_with("http://sneaky.example/cb")  # registered when it resolved outside, say
    sent: list[httpx.Request] = []
    dead: list[tuple[str, int, str]] = []

    async def go() -> None:
        d = deliverer(app, dead)
        transport = httpx.MockTransport(lambda r: sent.append(r) or httpx.Response(204))
        async with httpx.AsyncClient(transport=transport) as client:
            await until(d, client, lambda: dead)

    asyncio.run(go())
    assert sent == [] and len(dead) == 1 and dead[0][1] == 1 and "private" in dead[0][2]
    assert app.load(sneaky).notification_failed["error"].startswith("refused")


def test_a_slow_receiver_does_not_delay_the_others() -> None:
    app, ids = app_with("https://slow.example/cb", *["https://ok.example/cb"] * 5)
    release = asyncio.Event

    async def go() -> float:
        gate = release()

        async def handler(request: httpx.Request) -> httpx.Response:
            if request.headers["host"] == "slow.example":
                await gate.wait()
            return httpx.Response(204)

        d = deliverer(app, [])
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            start = time.monotonic()
            await until(d, client, lambda: all(app.load(i).notified for i in ids[1:]))
            took = time.monotonic() - start
            assert not app.load(ids[0]).notified  # still waiting on its receiver
            gate.set()
            await until(d, client, lambda: app.load(ids[0]).notified)
        return took

    assert asyncio.run(go()) < 1.0
    assert all(app.load(i).notified for i in ids)


def test_two_instances_share_the_result_webhooks_and_one_alone_takes_the_others_when_late() -> None:
    app, ids = app_with(*["https://ok.example/cb"] * 30)
    posted: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        posted.append(request.headers["x-tsop-delivery"])
        return httpx.Response(204)

    def instance(index: int, takeover: float) -> Deliverer:
        return Deliverer(service(app), "s3cret", OutboundGuard(parse_rules(""), (), resolver),
                         RetryPolicy(max_attempts=3, base_seconds=0.01, max_seconds=0.02),
                         share=Share(index, 2, takeover))

    mine = [i for i in ids if Share(0, 2).mine(i)]
    assert 0 < len(mine) < len(ids)

    async def go() -> float:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            first = instance(0, takeover=0.5)  # the other instance is down
            start = time.monotonic()
            await until(first, client, lambda: all(app.load(i).notified for i in mine))
            assert not any(app.load(i).notified for i in ids if i not in mine)  # not yet: not late enough
            await until(first, client, lambda: all(app.load(i).notified for i in ids))
            return time.monotonic() - start

    took = asyncio.run(go())
    assert all(app.load(i).notified for i in ids) and len(posted) == len(set(posted)) == len(ids)
    assert took >= 0.5  # the other share once it was late by the takeover time
