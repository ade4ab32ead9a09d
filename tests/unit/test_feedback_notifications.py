"""Step notifications (§2.3): queued at each step the channel subscribed to, rendered from its template; every
attempt recorded; a restarted notifier resumes with the attempts already made; after the last one, dead-lettered
(in-memory store, a mock transport, a fake resolver)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from uuid import UUID

import httpx
import pytest

from tests.feedback_sync import service
from tsop_events import schemas as wire
from tsop_events.clock import ManualClock
from tsop_events.consumer import Incoming
from tsop_events.envelope import Envelope
from tsop_events.outbound import OutboundGuard, RetryPolicy, parse_rules
from tsop_feedback import commands
from tsop_feedback.commands import FeedbackApp, case_id, notification_id
from tsop_feedback.domain import Notification, Templates
from tsop_feedback.policies import FollowChannels, FollowTickets
from tsop_feedback.views import Notifier, Share

NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
TEMPLATES = Path(__file__).resolve().parents[2] / "services/feedback/src/tsop_feedback/notification_templates.json"
DNS = {"ok.example": ["93.184.216.34"], "flaky.example": ["93.184.216.35"], "slow.example": ["93.184.216.36"]}


async def resolver(host: str, port: int) -> list[str]:
    return DNS[host]


class Bus:
    """Hands wire events to feedback's sinks as the consumer would."""

    def __init__(self, app: FeedbackApp) -> None:
        self.tickets, self.channels, self.offset = FollowTickets(app), FollowChannels(app), 0

    def __call__(self, ev: wire.WireEvent) -> str:
        self.offset += 1
        eid = f"ev-{self.offset}"
        key = ev.key()
        env = Envelope(eid, ev.event_type, "test", NOW, key, None, None, b"{}")
        sink, topic = (self.channels, "channels") if isinstance(ev, wire.ChannelEvent) else (self.tickets, "tickets")
        sink._process(f"t|0|{topic}|0", [Incoming(topic, 0, self.offset, key, env, ev)], self.offset)
        return eid


def make_app() -> tuple[FeedbackApp, ManualClock]:
    clock = ManualClock(NOW)
    templates = Templates.from_dict(json.loads(TEMPLATES.read_text()))
    app = FeedbackApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=clock, templates=templates)
    return app, clock


def submitted(ticket: str, url: str, channel: str = "ch-1") -> wire.RequestSubmitted:
    return wire.RequestSubmitted(
        ticket_id=ticket, channel="app", channel_id=channel, customer_id="c1", customer_tier="gold", region="north",
        service_type="broadband.fault_repair", description="down", time_requirement=wire.TimeRequirement(),
        callback_url=url, submitted_at=NOW)


def accepted(ticket: str) -> wire.RequestAccepted:
    return wire.RequestAccepted(ticket_id=ticket, service_type="broadband.fault_repair", region="north", priority=2,
                                customer_tier="gold", resolve_by=NOW + timedelta(hours=24), accepted_at=NOW)


def test_only_the_subscribed_steps_are_queued_rendered_in_the_channels_template_and_language() -> None:
    app, _ = make_app()
    bus = Bus(app)
    bus(wire.ChannelRegistered(channel_id="ch-1", name="portal", kind="web", registered_at=NOW))
    bus(submitted("t1", "https://ok.example/cb"))
    cause = bus(accepted("t1"))
    assert list(app.repository.event_store.get(notification_id(cause))) == []  # default: the result only
    svc = service(app)
    asyncio.run(commands.subscribe(
        svc, "ch-1", ["accepted", "assigned", "closed"], "email", "en", "channel:portal"))
    cause = bus(accepted("t1"))  # (a second acceptance event, as after a review change)
    n: Notification = app.repository.get(notification_id(cause))
    assert n.step == "accepted" and n.template == "email" and n.language == "en"
    assert "has been accepted" in n.text and "2026-06-02T09:00+00:00" in n.text
    again = bus(accepted("t1"))
    assert app.repository.get(notification_id(again)).version == 1
    with pytest.raises(Exception, match="steps"):
        asyncio.run(commands.subscribe(
            svc, "ch-1", ["teleport"], "sms", "zh", "x"))


def queue(app: FeedbackApp, bus: Bus, url: str, ticket: str) -> UUID:
    bus(submitted(ticket, url))
    return notification_id(bus(accepted(ticket)))


def subscribed_app() -> tuple[FeedbackApp, ManualClock, Bus]:
    app, clock = make_app()
    bus = Bus(app)
    bus(wire.ChannelRegistered(channel_id="ch-1", name="portal", kind="app", registered_at=NOW))
    asyncio.run(commands.subscribe(
        service(app), "ch-1", ["accepted"], "sms", "zh", "channel:portal"))
    return app, clock, bus


def notifier(app: FeedbackApp, dead: list[str], attempts: int = 6) -> Notifier:
    async def on_dead(n: Notification) -> None:
        dead.append(n.ticket_id)

    return Notifier(service(app), "s3cret", OutboundGuard(parse_rules(""), (), resolver),
                    RetryPolicy(max_attempts=attempts, base_seconds=0.01, max_seconds=0.02), dead=on_dead)


async def until(n: Notifier, client: httpx.AsyncClient, clock: ManualClock, done: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:  # type: ignore[operator]
        await n.run_once(client)
        await asyncio.sleep(0.005)
        clock.advance(timedelta(seconds=0.05))  # the back-off runs on the service's clock


def test_a_receiver_failing_four_times_gets_it_on_the_fifth_even_across_a_restart_and_every_attempt_is_kept() -> None:
    app, clock, bus = subscribed_app()
    nid = queue(app, bus, "https://flaky.example/cb", "t1")
    hits: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        hits.append({"sig": request.headers["x-tsop-signature"], "delivery": request.headers["x-tsop-delivery"]})
        return httpx.Response(204 if len(hits) > 4 else 503, text="busy")

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            first = notifier(app, [])
            await until(first, client, clock, lambda: len(hits) >= 2)
            while first.inflight:
                await asyncio.sleep(0.005)
            second = notifier(app, [])  # a restarted process: what is pending, and how often tried, is in the log
            await until(second, client, clock, lambda: app.repository.get(nid).delivered)

    asyncio.run(go())
    n: Notification = app.repository.get(nid)
    assert n.delivered and n.attempts == 5 and len(hits) == 5
    events = [type(e).__name__ for e in app.repository.event_store.get(nid)]
    assert events == ["Queued", "Attempted", "Attempted", "Attempted", "Attempted", "Attempted"]
    assert {h["delivery"] for h in hits} == {str(nid)}


def test_after_the_last_attempt_it_is_dead_lettered_and_listed_while_a_slow_receiver_delays_no_other() -> None:
    app, clock, bus = subscribed_app()
    down = queue(app, bus, "https://flaky.example/cb", "t-down")
    slow = [queue(app, bus, "https://slow.example/cb", f"t-slow-{i}") for i in range(3)]
    fast = [queue(app, bus, "https://ok.example/cb", f"t-ok-{i}") for i in range(20)]
    dead: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        host = request.headers["host"]
        if host == "slow.example":
            await asyncio.sleep(10)
        return httpx.Response(503 if host == "flaky.example" else 204)

    async def go() -> float:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            n = notifier(app, dead, attempts=3)
            t0 = time.monotonic()
            await until(n, client, clock, lambda: all(app.repository.get(i).delivered for i in fast) and dead)
            took = time.monotonic() - t0
            for t in list(n.inflight.values()):
                t.cancel()
            return took

    took = asyncio.run(go())
    assert took < 5, "the fast receivers waited for the slow one (10 s)"
    assert dead == ["t-down"] and app.repository.get(down).attempts == 3 and app.repository.get(down).dead
    app.follow_ups.refresh()
    assert down in app.follow_ups.dead_notifications and down not in app.follow_ups.notifications
    assert all(app.repository.get(i).attempts == 0 for i in slow)  # still in flight, nothing held up by them


def resolved(ticket: str) -> wire.Resolved:
    return wire.Resolved(ticket_id=ticket, work_order_id="w", technician_id="tech", resolution_code="fixed",
                         summary="ONT replaced", resolved_at=NOW)


def test_the_fatigue_cap_spares_a_customer_asked_too_often_and_sampling_skips_the_rest() -> None:
    clock = ManualClock(NOW)
    policy = commands.FeedbackPolicy.from_dict(
        {"fatigue": {"max_surveys": 2, "days": 30}, "sampling": {"mobile.*": 0}}, timedelta(hours=24))
    app = FeedbackApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=clock, policy=policy)
    bus = Bus(app)
    for t in ("t1", "t2", "t3"):  # the same customer (c1) three times
        bus(submitted(t, "https://ok.example/cb"))
        bus(resolved(t))
    surveyed = [app.repository.get(commands.case_id(t)).surveyed for t in ("t1", "t2", "t3")]
    assert surveyed == [True, True, False]
    other = submitted("m1", "https://ok.example/cb").model_copy(
        update={"service_type": "mobile.sim_swap", "customer_id": "c9"})
    bus(other)
    bus(resolved("m1"))
    case = app.repository.get(commands.case_id("m1"))
    assert not case.surveyed  # not in the sample
    clock.advance(timedelta(hours=23))
    asyncio.run(commands.expire_windows(service(app)))
    assert not case.reminded and not app.repository.get(commands.case_id("m1")).reminded  # never asked, never reminded


def test_a_receiver_is_its_host_and_port_busy_one_holds_up_no_other_and_attempts_are_saved_together() -> None:
    app, clock, bus = subscribed_app()
    busy = [queue(app, bus, "https://ok.example:8443/cb", f"t-busy-{i}") for i in range(12)]
    other = queue(app, bus, "https://ok.example:9443/cb", "t-other")  # the same host, another receiver
    release = asyncio.Event()
    at_once: list[int] = []
    now = [0]
    saves: list[int] = []
    app.on_saved(lambda: saves.append(1))

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.port == 8443:
            now[0] += 1
            at_once.append(now[0])
            await release.wait()
            now[0] -= 1
        return httpx.Response(204)

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            n = Notifier(service(app), "s3cret", OutboundGuard(parse_rules(""), (), resolver),
                         RetryPolicy(max_attempts=3, base_seconds=0.01, max_seconds=0.02), per_receiver=3)
            await until(n, client, clock, lambda: app.repository.get(other).delivered)
            assert max(at_once) == 3 and not any(app.repository.get(i).attempts for i in busy)
            saves.clear()
            release.set()
            await until(n, client, clock, lambda: all(app.repository.get(i).delivered for i in busy))

    asyncio.run(go())
    assert all(app.repository.get(i).attempts == 1 for i in [*busy, other])
    assert max(at_once) == 3  # never more than per_receiver at once at the busy receiver
    assert len(saves) < len(busy)  # attempts finishing together were saved together, not one save each


def test_a_confirmation_passed_on_by_intake_closes_or_is_kept_and_never_stops_the_consumer() -> None:
    """A TMF621 channel's confirmation (§2.4) reaches feedback as ResolutionConfirmed on the tickets topic."""
    from tsop_feedback.commands import case_id

    app, _ = make_app()
    bus = Bus(app)

    def confirmed(ticket: str) -> wire.ResolutionConfirmed:
        return wire.ResolutionConfirmed(ticket_id=ticket, confirmed_by="channel:crm", comment="works again",
                                        confirmed_at=NOW + timedelta(hours=1))

    def resolved(ticket: str) -> wire.Resolved:
        return wire.Resolved(ticket_id=ticket, work_order_id="wo", technician_id="tech", resolution_code="fixed",
                             summary="ONT replaced", resolved_at=NOW)

    bus(submitted("t1", "https://ok.example/cb"))
    bus(resolved("t1"))
    bus(confirmed("t1"))
    case = app.repository.get(case_id("t1"))
    assert (case.closed_basis, case.confirmed_by) == ("confirmed", "channel:crm")
    bus(confirmed("t1"))  # again (a channel's retry recorded twice): nothing more
    assert app.repository.get(case_id("t1")).version == case.version
    # before the resolution reached feedback: kept, and the ticket closes on it when the resolution arrives
    bus(submitted("t2", "https://ok.example/cb"))
    bus(confirmed("t2"))
    assert app.repository.get(case_id("t2")).closed_basis is None
    bus(resolved("t2"))
    assert app.repository.get(case_id("t2")).closed_basis == "confirmed"
    # after a rating closed it: the closure stands, and the consumer goes on
    bus(submitted("t3", "https://ok.example/cb"))
    bus(resolved("t3"))
    asyncio.run(commands.rate(service(app), "t3", 5, None))
    bus(confirmed("t3"))
    assert app.repository.get(case_id("t3")).closed_basis == "rated"
    # before the resolution reached feedback, another early answer was kept: a rating, or a confirmation with
    # other words (two PATCHes): the first stands, and the record never stops the consumer (no dead letter)
    bus(submitted("t4", "https://ok.example/cb"))
    asyncio.run(commands.rate(service(app), "t4", 4, None, patience=0))
    bus(confirmed("t4"))
    bus(resolved("t4"))
    assert app.repository.get(case_id("t4")).closed_basis == "rated"
    bus(submitted("t5", "https://ok.example/cb"))
    bus(confirmed("t5"))
    bus(wire.ResolutionConfirmed(ticket_id="t5", confirmed_by="channel:crm", comment="other words",
                                 confirmed_at=NOW + timedelta(hours=2)))
    bus(resolved("t5"))
    assert app.repository.get(case_id("t5")).closed_basis == "confirmed"


def test_two_instances_share_the_deliveries_each_once_and_one_alone_takes_over_the_others_share_when_late() -> None:
    app, clock, bus = subscribed_app()
    ids = [queue(app, bus, "https://ok.example/cb", f"t-share-{i}") for i in range(40)]
    hits: Counter[str] = Counter()
    by: dict[str, str] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        hits[request.headers["x-tsop-delivery"]] += 1
        return httpx.Response(204)

    def instance(index: int, takeover: float = 10.0) -> Notifier:
        return Notifier(service(app), "s3cret", OutboundGuard(parse_rules(""), (), resolver),
                        RetryPolicy(max_attempts=3, base_seconds=0.01, max_seconds=0.02),
                        share=Share(index, 2, takeover))

    async def both() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            first, second = instance(0), instance(1)
            deadline = time.monotonic() + 5
            while not all(app.repository.get(i).delivered for i in ids) and time.monotonic() < deadline:
                for name, n in (("first", first), ("second", second)):
                    before = set(hits)
                    await n.run_once(client)
                    while n.inflight:
                        await asyncio.sleep(0.001)
                    by.update({d: name for d in set(hits) - before})
                clock.advance(timedelta(seconds=0.05))  # far less than the takeover time in all

    asyncio.run(both())
    assert all(app.repository.get(i).delivered for i in ids)
    assert set(hits) == {str(i) for i in ids} and set(hits.values()) == {1}  # each once, none twice
    assert {by[str(i)] for i in ids if Share(0, 2).mine(i)} == {"first"}
    assert {by[str(i)] for i in ids if Share(1, 2).mine(i)} == {"second"}
    assert 0 < sum(Share(0, 2).mine(i) for i in ids) < len(ids)  # both had a share

    later = [queue(app, bus, "https://ok.example/cb", f"t-alone-{i}") for i in range(20)]
    hits.clear()

    async def alone() -> float:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            only = instance(0, takeover=2.0)  # the other instance is down
            await until(only, client, clock, lambda: all(app.repository.get(i).delivered for i in later
                                                         if Share(0, 2).mine(i)))
            started = clock.now()
            assert not any(app.repository.get(i).delivered for i in later if not Share(0, 2).mine(i))
            await until(only, client, clock, lambda: all(app.repository.get(i).delivered for i in later))
            return (clock.now() - started).total_seconds()

    waited = asyncio.run(alone())
    assert all(app.repository.get(i).delivered for i in later) and set(hits.values()) == {1}
    assert waited >= 1.5  # the other share only once late by the takeover time (2 s on the service's clock)


def test_an_instance_making_progress_elsewhere_keeps_its_share_however_long_one_waits() -> None:
    """A backlog at one receiver is not a reason to take over: only an instance silent for the takeover time is."""
    app, clock, bus = subscribed_app()
    foreign: list[UUID] = []
    i = 0
    while len(foreign) < 3:  # instance 1's share: one waits, the others show instance 1 at work
        nid = queue(app, bus, "https://ok.example/cb", f"t-backlog-{i}")
        i += 1
        if not Share(0, 2).mine(nid):
            foreign.append(nid)
    waiting, *worked_on = foreign
    posted: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        posted.append(request.headers["x-tsop-delivery"])
        return httpx.Response(204)

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            n = Notifier(service(app), "s3cret", OutboundGuard(parse_rules(""), (), resolver),
                         RetryPolicy(max_attempts=3, base_seconds=0.01, max_seconds=0.02), share=Share(0, 2, 2.0))

            async def at(seconds: float) -> None:
                clock.advance(timedelta(seconds=seconds))
                await n.run_once(client)
                while n.inflight:
                    await asyncio.sleep(0.001)

            await at(0)
            for nid in worked_on:  # instance 1 attempts its own, 1.5 s apart (its receivers fail)
                await at(1.5)
                await commands.record_attempts(service(app), [commands.Attempt(nid, False, 503, "busy")], 3)
            await at(1.5)  # 4.5 s since the waiting one was queued, 1.5 s since instance 1 was last seen at work
            assert str(waiting) not in posted
            await at(1.0)  # instance 1 silent for 2.5 s: its waiting deliveries are taken over
            assert str(waiting) in posted

    asyncio.run(go())


def test_an_attempt_just_recorded_is_not_made_again_while_the_board_has_not_read_it_yet() -> None:
    """The board reads the log in its own time: a refresh that read just before this process saved an attempt
    still shows the notification pending. The notifier must not post it again on that stale view (a duplicate)."""
    app, _, bus = subscribed_app()
    nid = queue(app, bus, "https://ok.example/cb", "t-stale")
    posted: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        posted.append(request.headers["x-tsop-delivery"])
        return httpx.Response(204)

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            n = notifier(app, [])
            await n.run_once(client)
            while n.inflight:  # posted and recorded; the board has not read the record yet
                await asyncio.sleep(0.001)
            real = app.follow_ups.refresh
            app.follow_ups.refresh = lambda: None  # type: ignore[method-assign]  # a refresh that read just before
            for _ in range(3):
                await n.run_once(client)
                while n.inflight:
                    await asyncio.sleep(0.001)
            app.follow_ups.refresh = real  # type: ignore[method-assign]
            for _ in range(3):
                await n.run_once(client)
                while n.inflight:
                    await asyncio.sleep(0.001)

    asyncio.run(go())
    assert posted == [str(nid)]
    got: Notification = app.repository.get(nid)
    assert got.delivered and got.attempts == 1
    assert nid not in app.follow_ups.notifications


def closed(ticket: str) -> wire.Closed:
    return wire.Closed(ticket_id=ticket, reason="rated", closed_at=NOW, basis="rated")


def test_a_step_nobody_is_told_of_reads_no_case_and_a_subscribed_one_is_still_queued(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Feedback's own Closed of every rating comes back on ``tickets``: when the board says nobody is told of it
    (no callback, or a channel not subscribed to the step), the consumer reads no case for it; a subscribed
    channel's case with a callback is still told, and a case the board has not read yet is still read."""
    app, _, bus = subscribed_app()  # ch-1: "accepted" (and the result) only
    bus(submitted("t1", "https://ok.example/cb"))
    bus(submitted("t2", "https://ok.example/cb").model_copy(update={"callback_url": None}))  # nobody to tell
    reads: list[set[UUID]] = []
    find_many = app.find_many

    def counted(ids: object) -> object:
        reads.append(set(ids))  # type: ignore[call-overload]
        return find_many(ids)  # type: ignore[arg-type]

    monkeypatch.setattr(app, "find_many", counted)
    for ev in (closed("t1"), closed("t2"), assigned("t1")):
        cause = bus(ev)
        assert list(app.repository.event_store.get(notification_id(cause))) == []
    assert reads == []  # not subscribed (t1), no callback (t2): no read of the case or its channel
    # the channel subscribes to "closed": its case is read and told
    asyncio.run(commands.subscribe(service(app), "ch-1", ["closed"], "sms", "en", "channel:portal"))
    cause = bus(closed("t1"))
    n: Notification = app.repository.get(notification_id(cause))
    assert n.step == "closed" and n.ticket_id == "t1" and reads
    reads.clear()
    assert list(app.repository.event_store.get(notification_id(bus(closed("t2"))))) == [] and reads == []
    # a case the board has not read yet (opened by another instance a moment ago) is read, as before
    assert app.follow_ups.may_tell(UUID(int=0), "closed") and not app.follow_ups.may_tell(case_id("t2"), "closed")


def assigned(ticket: str) -> wire.Assigned:
    return wire.Assigned(ticket_id=ticket, work_order_id=f"wo-{ticket}", technician_id="tech-1", reason="skills",
                         candidates=[], assigned_at=NOW)


def test_batches_that_need_nothing_wait_for_the_next_save_and_after_a_crash_come_again_to_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every rating's own Closed comes back on ``tickets`` with its Rated (a type not followed here): such batches
    save no tracking row of their own while a save is recent; the next batch that does something, or the next one
    after ``idle_tracking_seconds``, saves the position past them. Redelivered after a crash, they again do nothing;
    a step someone is told of is never held back."""
    app, _, bus = subscribed_app()  # ch-1: "accepted" (and the result) only
    monkeypatch.setattr(FollowTickets, "idle_tracking_seconds", 3600.0)
    now = [1000.0]
    monkeypatch.setattr("tsop_feedback.policies.time", SimpleNamespace(monotonic=lambda: now[0]), raising=False)
    bus(submitted("t1", "https://ok.example/cb"))
    bus(submitted("t2", "https://ok.example/cb").model_copy(update={"callback_url": None}))  # nobody to tell
    name = "t|0|tickets|0"
    saved = app.tracked_position(name)
    saves: list[object] = []
    save_tracked = app.save_tracked

    def counted(aggregates: object, tracking: object) -> None:
        saves.append(tracking)
        save_tracked(aggregates, tracking)  # type: ignore[arg-type]

    monkeypatch.setattr(app, "save_tracked", counted)
    held = [bus(closed("t1")), bus(closed("t2")), bus(assigned("t2"))]
    bus.offset += 1
    bus.tickets._process(name, [], bus.offset)  # a batch of Rated only: nothing of it is decoded here
    assert saves == [] and app.tracked_position(name) == saved
    # after a crash: a new consumer starts from the saved position, the held batches come again, again to nothing
    again = Bus(app)
    again.offset = saved or 0
    for ev in (closed("t1"), closed("t2"), assigned("t2")):
        again(ev)
    for cause in held:
        assert list(app.repository.event_store.get(notification_id(cause))) == []
    assert not app.follow_ups.notifications  # nothing queued, in either pass
    # a batch that does something is tracked at once and covers the held ones
    saves.clear()
    cause = bus(accepted("t1"))
    assert app.repository.get(notification_id(cause)).step == "accepted"
    assert len(saves) == 1 and app.tracked_position(name) == bus.offset
    # and a held position waits at most idle_tracking_seconds
    bus(closed("t2"))
    assert app.tracked_position(name) == bus.offset - 1
    now[0] += 3600.0
    bus(closed("t2"))
    assert app.tracked_position(name) == bus.offset


def test_a_dead_letters_position_is_kept_at_once_even_while_batches_needing_nothing_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The consumer keeps the position past a dead-lettered record at once (``keep_position``): left to wait like a
    batch that needs nothing, a crash would have the record dead-lettered a second time."""
    app, _, bus = subscribed_app()
    monkeypatch.setattr(FollowTickets, "idle_tracking_seconds", 3600.0)
    bus(submitted("t1", "https://ok.example/cb"))
    name = bus.tickets._tracking_name("0", "tickets", 0)
    bus.tickets._process(name, [], bus.offset)  # a save, just now
    saved = app.tracked_position(name)
    bus.tickets._process(name, [], bus.offset + 1)  # a batch needing nothing waits
    assert app.tracked_position(name) == saved
    asyncio.run(bus.tickets.keep_position("0", "tickets", 0, bus.offset + 2))  # a record dead-lettered
    assert app.tracked_position(name) == bus.offset + 2
