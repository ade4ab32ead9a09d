"""The step notifier never takes the ``FollowUps`` lock on the event loop: while a consumer's thread holds it for a
long refresh (``FollowTickets.before_batch``: database reads, key look-ups, the whole log at start-up), every other
task of the loop — each HTTP request of feedback — still runs, and the notifier goes on once the refresh ends
(in-memory store, a mock transport)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx

from tests.unit.test_feedback_notifications import notifier, queue, subscribed_app
from tsop_feedback.policies import FollowTickets

HOLD_SECONDS = 3.0  # how long the blocked refresh holds the lock at most (the test's own safety net)


def test_the_event_loop_runs_while_a_consumers_refresh_holds_the_views_lock() -> None:
    app, _, bus = subscribed_app()
    nid = queue(app, bus, "https://ok.example/cb", "t1")
    hits: list[str] = []
    held, release = threading.Event(), threading.Event()
    recorder: Any = app.recorder
    select = recorder.select_notifications

    def blocked_select(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name == "consumer":  # the consumer's refresh, under the view's lock
            held.set()
            release.wait(HOLD_SECONDS)
        return select(*args, **kwargs)

    recorder.select_notifications = blocked_select
    consumer = threading.Thread(target=FollowTickets(app).before_batch, name="consumer")

    def handler(request: httpx.Request) -> httpx.Response:
        hits.append(request.headers["x-tsop-delivery"])
        return httpx.Response(204)

    async def go() -> tuple[float, int, bool, int]:
        loop = asyncio.get_running_loop()
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            n = notifier(app, [])
            consumer.start()
            assert held.wait(5)
            run = asyncio.create_task(n.run_once(client))  # its first round: listen, then read what is pending
            beats = 0

            async def heartbeat() -> None:  # any other task of the loop (an HTTP request)
                nonlocal beats
                while True:
                    beats += 1
                    await asyncio.sleep(0.01)

            beat = asyncio.create_task(heartbeat())
            started = loop.time()
            await asyncio.sleep(0.2)
            lag = loop.time() - started - 0.2  # how long the loop was kept from this task
            beats_then = beats
            waiting = not run.done() and not release.is_set()  # the notifier waits off the loop for the view
            release.set()
            consumer.join(5)
            started_now = await asyncio.wait_for(run, 5)
            await asyncio.wait_for(asyncio.gather(*n.inflight.values()), 5)
            beat.cancel()
            return lag, beats_then, waiting, started_now

    lag, beats, waiting, started_now = asyncio.run(go())
    assert lag < 1.0, f"the event loop was blocked for {lag:.2f}s by the view's lock"
    assert beats >= 5  # the other task ran all along
    assert waiting
    assert started_now == 1 and hits == [str(nid)]  # then it went on: the pending notification was delivered
    assert app.repository.get(nid).delivered


def test_complaint_and_action_lists_never_wait_for_the_boards_lock_on_the_event_loop() -> None:
    """The same class for the complaints desk: ``GET /v1/complaints`` and ``GET /v1/improvement-actions`` read the
    board in a worker thread, so a refresh that holds its lock in another thread never stops the loop."""
    from tests.feedback_sync import service
    from tsop_events.auth import Principal, Role
    from tsop_feedback.complaints import commands as complaints

    app, _, _ = subscribed_app()
    svc = service(app)
    board = complaints.desk(svc).board
    board.refresh = lambda: None  # type: ignore[method-assign]  # nothing new in the log: only the lock is held
    agent = Principal("agent-1", frozenset({Role.agent}))
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with board.lock:
            held.set()
            release.wait(HOLD_SECONDS)

    async def go() -> tuple[int, bool, list[Any], list[Any]]:
        holder = threading.Thread(target=hold, name="refresh")
        holder.start()
        assert held.wait(5)
        listed = asyncio.create_task(complaints.complaints(svc, agent))
        acts = asyncio.create_task(complaints.actions(svc, None, None))
        beats = 0
        for _ in range(20):  # the loop's other tasks run while both lists wait for the lock
            beats += 1
            await asyncio.sleep(0.01)
        waiting = not listed.done() and not acts.done()
        release.set()
        holder.join(5)
        return beats, waiting, await asyncio.wait_for(listed, 5), await asyncio.wait_for(acts, 5)

    beats, waiting, listed, acts = asyncio.run(go())
    assert beats == 20 and waiting and listed == [] and acts == []
