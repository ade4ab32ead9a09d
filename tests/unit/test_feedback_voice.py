"""Feedback's customer loop with the injectable clock: per-type windows, the reminder, RatingExpired, "is it
solved?" and reopening, closure bases, channel ownership, the policy file, sampling and fatigue caps."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.feedback_sync import SyncFeedback
from tsop_events import schemas as wire
from tsop_events.auth import hash_token
from tsop_events.clock import ManualClock
from tsop_events.consumer import Incoming
from tsop_events.envelope import Envelope
from tsop_events.errors import Forbidden, Invalid
from tsop_feedback.commands import FeedbackApp, case_id
from tsop_feedback.domain import AlreadyClosed, FeedbackCase, FeedbackPolicy, ReopenRefused
from tsop_feedback.policies import FollowChannels
from tsop_feedback.wire import WIRE

NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
DAY = timedelta(hours=24)
FAULT = "broadband.fault_repair"


def make_app(**policy: object) -> tuple[SyncFeedback, ManualClock]:
    clock = ManualClock(NOW)
    p = FeedbackPolicy.from_dict({"rating_window_hours": {"business.*": 48}, **policy}, DAY)
    app = FeedbackApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=clock, rating_window=DAY, policy=p)
    return SyncFeedback(app), clock


def resolved(app: SyncFeedback, ticket: str, service_type: str = FAULT, channel: str | None = "ch-1",
             event_id: str = "r1", technician: str = "tech-a") -> FeedbackCase:
    case = app.find(case_id(ticket))
    if case is None:
        case = FeedbackCase(id=case_id(ticket), ticket_id=ticket, callback_url=None, opened_at=NOW,
                            channel_id=channel, service_type=service_type, customer_id="c1")
    policy = app.policy
    case.note_resolution("fixed", "done", "reboot first", app.clock.now(), policy.window_for(service_type), event_id,
                         technician_id=technician, rules=policy.rules)
    app.save(case)
    return case


def wire_events(app: SyncFeedback, ticket: str) -> list[wire.WireEvent]:
    out = [WIRE(e) for e in app.repository.event_store.get(case_id(ticket))]
    return [o.event for o in out if o is not None]


def names(app: SyncFeedback, ticket: str) -> list[str]:
    return [e.event_type.removeprefix("tsop.ticket.").removesuffix(".v1") for e in wire_events(app, ticket)]


def test_the_window_is_the_policys_per_service_type_and_the_default_elsewhere() -> None:
    app, _ = make_app()
    assert resolved(app, "a", "business.leased_line").rating_due_at == NOW + timedelta(hours=48)
    assert resolved(app, "b", FAULT).rating_due_at == NOW + DAY


def test_one_reminder_after_the_share_then_expiry_is_no_answer_never_a_score() -> None:
    app, clock = make_app(remind_at_share=0.5)
    resolved(app, "t")
    clock.advance(timedelta(hours=11))
    app.expire_windows()
    assert "rating-reminded" not in names(app, "t")
    clock.advance(timedelta(hours=2))
    app.expire_windows()
    app.expire_windows()
    assert names(app, "t").count("rating-reminded") == 1
    clock.advance(DAY)
    assert app.expire_windows() == 1
    events = wire_events(app, "t")
    assert names(app, "t") == ["feedback-sent", "rating-reminded", "rating-expired", "closed"]
    closed = events[-1]
    assert isinstance(closed, wire.Closed) and closed.basis == "window_lapsed" and closed.reopenable_until is None
    case = app.load(case_id("t"))
    assert case.score is None and case.rating_expired
    with pytest.raises(AlreadyClosed):
        app.rate("t", 5, None, solved=True)


def test_a_high_score_closes_with_its_tags_and_a_second_rating_is_refused() -> None:
    app, _ = make_app()
    resolved(app, "t")
    case, recorded = app.rate("t", 5, "quick", tags=["on_time", "attitude", "on_time"])
    assert recorded and case.closed_basis == "rated"
    rated = [e for e in wire_events(app, "t") if isinstance(e, wire.Rated)]
    assert rated[0].tags == ["on_time", "attitude"] and rated[0].solved is None
    version = app.load(case_id("t")).version
    with pytest.raises(AlreadyClosed):
        app.rate("t", 4, None)
    assert app.load(case_id("t")).version == version


def test_an_unknown_tag_is_refused_naming_the_field_and_changes_nothing() -> None:
    app, _ = make_app()
    resolved(app, "t")
    version = app.load(case_id("t")).version
    with pytest.raises(Invalid) as err:
        app.rate("t", 4, None, tags=["price"])
    assert err.value.field == "tags" and app.load(case_id("t")).version == version


def test_not_solved_on_a_low_score_reopens_and_the_next_resolution_opens_a_new_window() -> None:
    app, clock = make_app()
    resolved(app, "t")
    clock.advance(timedelta(hours=1))
    case, _ = app.rate("t", 1, "still down", solved=False, tags=["solved"])
    assert case.closed_reason is None and case.reopen_count == 1 and case.rating_due_at is None
    assert names(app, "t") == ["feedback-sent", "rated", "reopened"]
    reopened = wire_events(app, "t")[-1]
    assert isinstance(reopened, wire.Reopened) and reopened.reason_code == "not_solved"
    assert reopened.reason == "still down" and reopened.reopen_count == 1
    resolved(app, "t", event_id="r1")  # the first Resolved again: a redelivery, no new window
    assert app.load(case_id("t")).rating_due_at is None
    clock.advance(timedelta(hours=3))
    resolved(app, "t", event_id="r2")  # worked again and resolved: a new window, a new notification
    case = app.load(case_id("t"))
    assert case.rating_due_at == clock.now() + DAY
    case, recorded = app.rate("t", 4, None)
    assert recorded and case.closed_reason == "rated"
    assert names(app, "t")[-3:] == ["feedback-sent", "rated", "closed"]
    app.follow_ups.refresh()
    assert app.follow_ups.reopen_counts() == (1, {"tech-a": 1}, {FAULT: 1})


def test_solved_but_unhappy_closes_and_says_so_on_rated() -> None:
    app, _ = make_app()
    resolved(app, "t")
    case, _ = app.rate("t", 2, "rude", solved=True, tags=["attitude"])
    assert case.closed_reason == "rated"
    rated = next(e for e in wire_events(app, "t") if isinstance(e, wire.Rated))
    assert rated.solved is True and rated.score == 2  # complaints opens a complaint from this


def test_another_channels_ticket_is_forbidden_and_nothing_changes() -> None:
    app, _ = make_app()
    resolved(app, "t", channel="ch-1")
    version = app.load(case_id("t")).version
    with pytest.raises(Forbidden):
        app.rate("t", 5, None, channel_id="ch-2")
    assert app.load(case_id("t")).version == version
    _, recorded = app.rate("t", 5, None, channel_id="ch-1")
    assert recorded


def test_a_closed_ticket_reopens_within_its_period_and_not_after() -> None:
    app, clock = make_app(reopen_period_days=2)
    resolved(app, "t")
    app.rate("t", 5, None)
    closed = wire_events(app, "t")[-1]
    assert isinstance(closed, wire.Closed) and closed.reopenable_until == NOW + timedelta(days=2)
    clock.advance(timedelta(days=1))
    case = app.reopen("t", "the line dropped again", "agent:alice")
    assert case.closed_reason is None and case.reopen_count == 1
    assert names(app, "t")[-2:] == ["closed", "reopened"]
    resolved(app, "t", event_id="r2")
    app.rate("t", 4, None)
    clock.advance(timedelta(days=2, seconds=1))
    with pytest.raises(ReopenRefused):
        app.reopen("t", "again", "agent:alice")


def test_with_no_reopen_period_a_closure_is_final() -> None:
    app, _ = make_app(reopen_period_days=0)
    resolved(app, "t")
    app.rate("t", 5, None)
    with pytest.raises(ReopenRefused):
        app.reopen("t", "please", "agent:alice")
    with pytest.raises(ReopenRefused):  # and an open ticket is not "reopened"
        resolved(app, "u")
        app.reopen("u", "please", "agent:alice")


def test_channel_credentials_from_the_bus_resolve_until_revoked() -> None:
    app, _ = make_app()
    sink = FollowChannels(app.app)
    token = "tsop_ch_secret"
    digest = hash_token(token)
    events: list[wire.ChannelEvent] = [
        wire.ChannelRegistered(channel_id="ch-1", name="portal", kind="app", registered_at=NOW),
        wire.ChannelCredentialIssued(channel_id="ch-1", credential_id="k1", token_sha256=digest, issued_at=NOW),
    ]
    for i, ev in enumerate(events, 1):
        env = Envelope(f"e{i}", ev.event_type, "intake", NOW, None, None, None, b"{}")
        sink._process("x|0|channels|0", [Incoming("channels", 0, i, ev.channel_id, env, ev)], i)
    view = app.channels
    view.refresh()
    who = view.principal(digest)
    assert who is not None and who.channel_id == "ch-1" and who.subject == "channel:portal"
    revoked = wire.ChannelCredentialRevoked(channel_id="ch-1", credential_id="k1", token_sha256=digest,
                                            revoked_at=NOW)
    env = Envelope("e3", revoked.event_type, "intake", NOW, None, None, None, b"{}")
    sink._process("x|0|channels|0", [Incoming("channels", 0, 3, "ch-1", env, revoked)], 3)
    view.refresh()
    assert view.principal(digest) is None


def test_the_channel_view_never_holds_up_a_request_and_decodes_only_channel_events() -> None:
    """Every request's credential is looked up on the event loop: it must not wait while a refresh (in a worker
    thread) holds the view's lock through a read of the log. And the view decodes only the channel copies' events:
    in an api process (``TSOP_ROLE=api``) it is the one follower refreshed on every save of a log of ratings."""
    app, _ = make_app()
    sink = FollowChannels(app.app)
    digest = hash_token("tsop_ch_secret")
    events: list[wire.ChannelEvent] = [
        wire.ChannelRegistered(channel_id="ch-1", name="portal", kind="app", registered_at=NOW),
        wire.ChannelCredentialIssued(channel_id="ch-1", credential_id="k1", token_sha256=digest, issued_at=NOW),
    ]
    for i, ev in enumerate(events, 1):
        env = Envelope(f"e{i}", ev.event_type, "intake", NOW, None, None, None, b"{}")
        sink._process("x|0|channels|0", [Incoming("channels", 0, i, ev.channel_id, env, ev)], i)
    resolved(app, "t")
    app.rate("t", 5, "quick")  # a rating's events in the log, after the channel's
    view = app.app.channels
    view.refresh()
    kept = view.shared.kept
    assert any(r.topic.startswith("tsop_feedback.domain:FeedbackCase.") for r in kept)
    assert {r.topic.split(":")[1].split(".")[0] for r in kept if r.event is not None} == {"ChannelAccess"}

    held, release = threading.Event(), threading.Event()

    def refreshing() -> None:  # as a refresh reading the log in a worker thread
        with view.lock:
            held.set()
            release.wait(5)

    thread = threading.Thread(target=refreshing)
    thread.start()
    held.wait(5)
    started = time.monotonic()
    who = view.principal(digest)
    waited = time.monotonic() - started
    release.set()
    thread.join()
    assert who is not None and who.channel_id == "ch-1" and who.subject == "channel:portal"
    assert waited < 1.0


@pytest.mark.parametrize(("data", "key"), [
    ({"low_score": 5}, "low_score"),
    ({"sampling": {"*": 1.5}}, "sampling.*"),
    ({"rating_window_hours": {"x": "long"}}, "rating_window_hours.x"),
    ({"fatigue": {"max_surveys": -1}}, "fatigue.max_surveys"),
    ({"surprise": 1}, "surprise"),
])
def test_a_bad_policy_is_refused_naming_the_key(data: dict[str, object], key: str) -> None:
    with pytest.raises(ValueError, match=key.replace("*", r"\*")):
        FeedbackPolicy.from_dict(data, DAY, "policy.json")


@settings(max_examples=60, deadline=None)
@given(share=st.floats(min_value=0, max_value=1), tickets=st.lists(st.uuids(), min_size=1, max_size=30))
def test_sampling_is_a_stable_draw_that_honours_the_extremes(share: float, tickets: list[object]) -> None:
    policy = FeedbackPolicy.from_dict({"sampling": {"broadband.*": share}}, DAY)
    for t in map(str, tickets):
        assert policy.sampled(t, FAULT) == policy.sampled(t, FAULT)  # every instance and replay agrees
        if share == 0:
            assert not policy.sampled(t, FAULT)
        assert policy.sampled(t, "mobile.other")  # no pattern: every ticket is surveyed


@settings(max_examples=60, deadline=None)
@given(cap=st.integers(min_value=1, max_value=5), days=st.integers(min_value=1, max_value=60),
       ages=st.lists(st.floats(min_value=0, max_value=120), max_size=12))
def test_the_fatigue_cap_counts_only_asks_inside_the_period(cap: int, days: int, ages: list[float]) -> None:
    policy = FeedbackPolicy.from_dict({"fatigue": {"max_surveys": cap, "days": days}}, DAY)
    asked = [NOW - timedelta(days=a) for a in ages]
    inside = sum(1 for a in ages if a < days)
    assert policy.fatigued(asked, NOW) == (inside >= cap)




def test_ratings_arriving_together_load_their_cases_in_one_read_and_two_for_one_ticket_give_one_rating() -> None:
    import asyncio

    from tests.feedback_sync import service
    from tsop_events.errors import Conflict
    from tsop_feedback import commands

    sync, _ = make_app()
    app = sync.app
    tickets = [f"t-{i}" for i in range(8)]
    for t in tickets:
        resolved(sync, t)
    loads: list[list[object]] = []
    real = app.find_many

    def counted(ids: object) -> dict[object, object]:
        loads.append(list(ids))  # type: ignore[call-overload]
        return real(ids)  # type: ignore[arg-type]

    app.find_many = counted  # type: ignore[method-assign,assignment]
    svc = service(app)

    async def go() -> list[object]:
        ratings = [commands.rate(svc, t, 5, None, channel_id="ch-1") for t in tickets]
        twice = [commands.rate(svc, "t-0", 4, None, channel_id="ch-1")]  # the same ticket, at the same moment
        return await asyncio.gather(*ratings, *twice, return_exceptions=True)

    results = asyncio.run(go())
    assert len(loads) == 1 and sorted(map(str, loads[0])) == sorted(str(case_id(t)) for t in tickets)
    assert all(isinstance(r, tuple) and r[1] for r in results[:-1])  # the first eight recorded
    assert isinstance(results[-1], Conflict)  # the second rating of t-0: refused, as one after the first
    assert all(app.repository.get(case_id(t)).score == 5 for t in tickets)
