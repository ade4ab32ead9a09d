from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest
from eventsourcing.persistence import StoredEvent

from tests.feedback_sync import SyncFeedback
from tsop_events.clock import ManualClock
from tsop_events.envelope import stable_event_id
from tsop_events.errors import Conflict, NotFound
from tsop_feedback.commands import FeedbackApp, case_id
from tsop_feedback.domain import AlreadyClosed, AlreadyRated, FeedbackCase
from tsop_feedback.views import sign
from tsop_feedback.wire import WIRE

NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
DAY = timedelta(hours=24)


def resolved_case(app: SyncFeedback, ticket: str) -> FeedbackCase:
    case = FeedbackCase(id=case_id(ticket), ticket_id=ticket, callback_url=None, opened_at=NOW)
    case.note_resolution("fixed", "done", None, app.clock.now(), app.rating_window, "resolved-event")
    app.save(case)
    return case


def make_app() -> tuple[SyncFeedback, ManualClock]:
    clock = ManualClock(NOW)
    app = FeedbackApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=clock, rating_window=DAY)
    return SyncFeedback(app), clock


def test_rating_within_the_window_rates_and_closes():
    app, clock = make_app()
    t = str(uuid4())
    resolved_case(app, t)
    clock.advance(DAY - timedelta(seconds=1))
    case, recorded = app.rate(t, 4, "quick")
    assert recorded and case.score == 4 and case.closed_reason == "rated"
    with pytest.raises(AlreadyClosed):
        app.rate(t, 5, None)


def test_the_window_expires_on_the_durable_timer_and_late_ratings_are_refused():
    app, clock = make_app()
    t = str(uuid4())
    resolved_case(app, t)
    assert app.expire_windows() == 0
    clock.advance(DAY + timedelta(seconds=1))
    assert app.expire_windows() == 1
    assert app.expire_windows() == 0  # once only
    with pytest.raises(AlreadyClosed):
        app.rate(t, 5, None)
    case: FeedbackCase = app.load(case_id(t))
    assert case.closed_reason == "rating_window_expired"


def test_a_rating_before_the_resolution_arrives_is_kept_and_recorded_with_it():
    """Read-your-writes: resolve then rate at once, and feedback has not heard of Resolved yet."""
    app, clock = make_app()
    t = str(uuid4())
    app.save(FeedbackCase(id=case_id(t), ticket_id=t, callback_url=None, opened_at=NOW))
    case, recorded = app.rate(t, 5, "fast")
    assert not recorded and case.score is None and case.closed_reason is None
    assert app.rate(t, 5, "fast")[1] is False  # the same rating again: a retry, nothing new
    with pytest.raises(AlreadyRated):
        app.rate(t, 2, None)
    clock.advance(timedelta(seconds=3))
    case = app.load(case_id(t))
    case.note_resolution("fixed", "done", None, NOW + timedelta(seconds=1), DAY, "resolved-event")
    new = list(case.pending_events)
    app.save(case)
    assert case.score == 5 and case.closed_reason == "rated"
    wire = [o.event for o in (WIRE(e) for e in new) if o is not None]
    # no callback: the notification is settled first, so FeedbackSent never follows Closed
    assert [type(w).__name__ for w in wire] == ["FeedbackSent", "Rated", "Closed"]
    assert wire[1].rated_at == NOW + timedelta(seconds=1)  # not before the resolution it rates
    assert wire[0].sent_at == wire[1].rated_at and wire[0].channel == "none"


def test_a_redelivered_resolution_changes_nothing():
    app, _ = make_app()
    case = resolved_case(app, str(uuid4()))
    version = case.version
    case.note_resolution("fixed", "done", None, NOW, DAY, "resolved-event")
    assert case.version == version


def test_webhook_signature_is_hmac_sha256():
    body = b"{}"
    assert sign("s", body).startswith("sha256=") and len(sign("s", body)) == 7 + 64
    assert sign("s", b"{}") != sign("t", b"{}")


def wire_types(app: SyncFeedback, ticket: str) -> list[str]:
    """What the relay publishes for the case, in order."""
    out = [WIRE(e) for e in app.repository.event_store.get(case_id(ticket))]
    return [o.event.event_type.removeprefix("tsop.ticket.").removesuffix(".v1") for o in out if o is not None]


def test_a_rating_before_the_notification_without_callback_settles_it_first() -> None:
    app, _ = make_app()
    t = str(uuid4())
    resolved_case(app, t)  # no callback: nowhere to deliver
    case, recorded = app.rate(t, 5, None)
    assert recorded and case.notified and case.closed_reason == "rated"
    assert wire_types(app, t) == ["feedback-sent", "rated", "closed"]
    app.mark_notified([(case_id(t), "none", 1, None, None)])  # the deliverer, a moment late
    assert wire_types(app, t) == ["feedback-sent", "rated", "closed"]
    assert app.load(case_id(t)).version == case.version


def test_a_delivery_that_ends_after_the_rating_is_kept_but_never_follows_closed_on_the_bus() -> None:
    app, clock = make_app()
    t = str(uuid4())
    case = FeedbackCase(id=case_id(t), ticket_id=t, callback_url="https://example.test/cb", opened_at=NOW)
    case.note_resolution("fixed", "done", None, NOW, DAY, "resolved-event")
    app.save(case)
    app.follow_ups.refresh()
    assert case_id(t) in app.follow_ups.to_notify
    app.rate(t, 4, None)  # the webhook is still on its way
    assert wire_types(app, t) == ["rated", "closed"]
    clock.advance(timedelta(seconds=3))
    app.mark_notified([(case_id(t), "webhook", 2, 204, None)])
    done: FeedbackCase = app.load(case_id(t))
    assert done.notified and done.notified_after_closure and done.closed_reason == "rated"
    assert wire_types(app, t) == ["rated", "closed"]  # nothing after Closed: the dossier's chain holds it all
    app.follow_ups.refresh()
    assert case_id(t) not in app.follow_ups.to_notify  # and the webhook is not tried again


def test_a_window_expiring_without_callback_notifies_before_it_closes() -> None:
    app, clock = make_app()
    t = str(uuid4())
    resolved_case(app, t)
    clock.advance(DAY + timedelta(seconds=1))
    assert app.expire_windows() == 1
    assert wire_types(app, t) == ["feedback-sent", "rating-expired", "closed"]  # no answer, never a score


def test_a_delivery_before_the_rating_is_published_in_order() -> None:
    app, _ = make_app()
    t = str(uuid4())
    resolved_case(app, t)
    app.mark_notified([(case_id(t), "none", 1, None, None)])
    app.rate(t, 3, None)
    assert wire_types(app, t) == ["feedback-sent", "rated", "closed"]


def test_a_rating_for_a_ticket_feedback_never_heard_of_is_not_found_once_its_patience_runs_out() -> None:
    app, _ = make_app()
    with pytest.raises(NotFound, match="awaiting feedback"):
        app.rate(str(uuid4()), 4, None, patience=0.2)
    with pytest.raises(NotFound, match="no feedback for ticket"):
        app.feedback_of(str(uuid4()))


def test_refusals_are_the_platforms_conflicts_with_the_titles_clients_know() -> None:
    assert issubclass(AlreadyClosed, Conflict) and issubclass(AlreadyRated, Conflict)
    assert (AlreadyClosed.status, AlreadyClosed.title) == (409, "Ticket closed")
    assert (AlreadyRated.status, AlreadyRated.title) == (409, "Not allowed now")


def test_the_event_classes_keep_the_names_stored_history_carries() -> None:
    names = ["Opened", "ResolutionNoted", "NotificationAbandoned", "Notified", "NotifiedAfterClosure",
             "RatingKept", "Rated", "RatingReminded", "RatingExpired", "Reopened", "Closed"]
    for name in names:
        cls = getattr(FeedbackCase, name)
        assert (cls.__module__, cls.__qualname__) == ("tsop_feedback.domain", f"FeedbackCase.{name}")
    assert {c.__qualname__ for c in WIRE.mapped()} == {
        "FeedbackCase.Notified", "FeedbackCase.ResolutionNoted", "FeedbackCase.Rated", "FeedbackCase.RatingReminded",
        "FeedbackCase.RatingExpired", "FeedbackCase.Reopened", "FeedbackCase.Closed"}


def published(app: SyncFeedback, ticket: str) -> list[tuple[str, str, dict[str, object], str | None]]:
    """What the relay publishes for the case, in order: (ce_id, type, body, cause)."""
    out = []
    for e in app.repository.event_store.get(case_id(ticket)):
        o = WIRE(e)
        if o is not None:
            out.append((stable_event_id(e.originator_id, e.originator_version),
                        o.event.event_type.removeprefix("tsop.ticket.").removesuffix(".v1"), o.event.model_dump(),
                        o.causation_id))
    return out


def test_a_resolution_with_nobody_to_tell_is_one_event_and_the_same_feedback_sent_on_the_wire() -> None:
    """Issue 12: a case with no callback notes its resolution and settles its notification in one event
    (``ResolutionNoted`` with ``notified``), published as the FeedbackSent the ``Notified`` event gave: channel
    "none", one attempt, at the resolution's time, caused by the Resolved; its ce_id is the stored event's (the same
    when published again), and the case's next event (Rated) names it as its cause."""
    app, _ = make_app()
    t = str(uuid4())
    case = FeedbackCase(id=case_id(t), ticket_id=t, callback_url=None, opened_at=NOW)
    case.note_resolution("fixed", "done", None, NOW + timedelta(minutes=1), DAY, "resolved-event")
    noted = [e for e in case.pending_events if not isinstance(e, FeedbackCase.Opened)]
    assert [type(e) for e in noted] == [FeedbackCase.ResolutionNoted]
    assert noted[0].notified and noted[0].ticket_id == t and case.notified
    app.save(case)
    app.rate(t, 5, None)
    (sent_id, sent, body, cause), (rated_id, rated, _, rated_cause), (_, closed, _, closed_cause) = published(app, t)
    assert (sent, rated, closed) == ("feedback-sent", "rated", "closed")
    assert body == {"ticket_id": t, "channel": "none", "attempts": 1, "status_code": None,
                    "rating_due_at": NOW + timedelta(minutes=1) + DAY, "sent_at": NOW + timedelta(minutes=1)}
    assert cause == "resolved-event" and rated_cause == sent_id and closed_cause == rated_id
    assert sent_id == stable_event_id(case_id(t), 2)  # Opened 1, ResolutionNoted 2
    assert published(app, t)[0][0] == sent_id  # published again (a new broker epoch): the same id
    app.follow_ups.refresh()
    assert case_id(t) not in app.follow_ups.to_notify  # nothing for the deliverer
    # a case with a callback notes its resolution alone, published as nothing; the delivery is its Notified
    u = str(uuid4())
    other = FeedbackCase(id=case_id(u), ticket_id=u, callback_url="https://example.test/cb", opened_at=NOW)
    other.note_resolution("fixed", "done", None, NOW, DAY, "resolved-event-2")
    assert [type(e) for e in other.pending_events][1:] == [FeedbackCase.ResolutionNoted] and not other.notified
    app.save(other)
    assert published(app, u) == []
    app.follow_ups.refresh()
    assert case_id(u) in app.follow_ups.to_notify


def store_old_form_resolution(app: SyncFeedback, ticket: str, resolved_at: datetime, resolved_event_id: str) -> None:
    """A case with no callback resolved as stores written before session 9 hold it: ``ResolutionNoted`` (its stored
    state without ``ticket_id`` or ``notified``) and then ``Notified`` (channel "none"), in one save."""
    cid = case_id(ticket)
    app.save(FeedbackCase(id=cid, ticket_id=ticket, callback_url=None, opened_at=NOW))
    noted = FeedbackCase.ResolutionNoted(
        originator_id=cid, originator_version=2, timestamp=NOW, resolution_code="fixed", summary="done", advice=None,
        resolved_at=resolved_at, rating_due_at=resolved_at + DAY, resolved_event_id=resolved_event_id,
        technician_id=None, text="done", surveyed=True)
    notified = FeedbackCase.Notified(
        originator_id=cid, originator_version=3, timestamp=NOW, ticket_id=ticket, channel="none", attempts=1,
        status_code=None, rating_due_at=resolved_at + DAY, sent_at=resolved_at, causation_id=resolved_event_id)
    first, second = (app.mapper.to_stored_event(e) for e in (noted, notified))
    state = app.mapper.transcoder.decode(first.state)
    del state["ticket_id"], state["notified"]
    first = StoredEvent(first.originator_id, first.originator_version, first.topic, app.mapper.transcoder.encode(state))
    app.recorder.insert_events([first, second])


def test_a_resolution_stored_in_the_old_two_event_form_loads_and_behaves_the_same() -> None:
    app, clock = make_app()
    old, new = str(uuid4()), str(uuid4())
    at = NOW + timedelta(minutes=1)
    store_old_form_resolution(app, old, at, "resolved-old")
    case = app.load(case_id(old))
    assert case.notified and case.resolution is not None and case.rating_due_at == at + DAY and case.version == 3
    app.follow_ups.refresh()
    assert case_id(old) not in app.follow_ups.to_notify and case_id(old) in app.follow_ups.windows
    # the same case resolved in the new form: the wire carries the same FeedbackSent (only its id differs: it comes
    # from another stored event), and what follows names it as its cause either way
    app.save(FeedbackCase(id=case_id(new), ticket_id=new, callback_url=None, opened_at=NOW))
    c = app.load(case_id(new))
    c.note_resolution("fixed", "done", None, at, DAY, "resolved-old")
    app.save(c)
    for t in (old, new):
        app.rate(t, 2, "meh", solved=True)
    (old_sent_id, *old_sent), *old_rest = published(app, old)
    (new_sent_id, *new_sent), *new_rest = published(app, new)
    assert old_sent_id == stable_event_id(case_id(old), 3) and new_sent_id == stable_event_id(case_id(new), 2)
    assert old_sent[0] == "feedback-sent" and old_sent[1] == {**new_sent[1], "ticket_id": old}
    assert old_sent[2] == new_sent[2] == "resolved-old"
    assert [r[1] for r in old_rest] == [r[1] for r in new_rest] == ["rated", "closed"]
    assert old_rest[0][3] == old_sent_id and new_rest[0][3] == new_sent_id
    assert [r[2] for r in old_rest] == [{**r[2], "ticket_id": old} for r in new_rest]
    # the webhook deliverer, late, changes neither
    app.mark_notified([(case_id(old), "none", 1, None, None), (case_id(new), "none", 1, None, None)])
    assert len(published(app, old)) == len(published(app, new)) == 3
    # reopened later (an old-form case too), the next resolution is the new form
    clock.advance(timedelta(minutes=5))
    third = str(uuid4())
    store_old_form_resolution(app, third, at, "resolved-3")
    app.rate(third, 1, "still down", solved=False)  # reopens
    c = app.load(case_id(third))
    assert not c.notified and c.resolution is None
    c.note_resolution("fixed", "done again", None, clock.now(), DAY, "resolved-4")
    assert c.notified and type(list(c.pending_events)[-1]) is FeedbackCase.ResolutionNoted
    app.save(c)
    assert [p[1] for p in published(app, third)] == ["feedback-sent", "rated", "reopened", "feedback-sent"]


def test_a_rating_given_long_before_the_resolution_is_not_recorded_by_it() -> None:
    """Only the resolve-then-rate race is kept: a rating days before the work was done rates nothing."""
    from datetime import UTC, datetime, timedelta
    from uuid import uuid4

    from tsop_feedback.domain import FeedbackCase

    t0 = datetime(2026, 12, 1, 9, tzinfo=UTC)
    case = FeedbackCase(id=uuid4(), ticket_id="t-early", callback_url=None, opened_at=t0)
    assert case.rate(1, "nobody came", t0 + timedelta(seconds=1)) is False  # kept
    resolved = t0 + timedelta(days=3)
    case.note_resolution("fixed", "done", None, resolved, timedelta(hours=24), "r1")
    assert case.closed_reason is None and case.score is None
    assert case.rate(5, "great", resolved + timedelta(minutes=5)) is True
    assert case.score == 5 and case.closed_reason == "rated"

    raced = FeedbackCase(id=uuid4(), ticket_id="t-race", callback_url=None, opened_at=t0)
    raced.rate(4, None, resolved + timedelta(seconds=1))  # just after the resolve, before feedback heard of it
    raced.note_resolution("fixed", "done", None, resolved, timedelta(hours=24), "r2")
    assert raced.score == 4 and raced.closed_reason == "rated"


def test_a_resolution_without_callback_settles_its_notification_in_the_same_save() -> None:
    """Nowhere to deliver: FeedbackSent (channel "none", at the resolution's time) follows the resolution in the
    case's own save, so the webhook deliverer never reads nor saves the case; a case with a callback awaits it."""
    app, clock = make_app()
    t, u = str(uuid4()), str(uuid4())
    case = FeedbackCase(id=case_id(t), ticket_id=t, callback_url=None, opened_at=NOW)
    clock.advance(timedelta(minutes=5))
    case.note_resolution("fixed", "done", None, NOW + timedelta(minutes=1), DAY, "resolved-event")
    wire = [o.event for o in (WIRE(e) for e in case.pending_events) if o is not None]
    assert [type(w).__name__ for w in wire] == ["FeedbackSent"]
    assert wire[0].channel == "none" and wire[0].sent_at == NOW + timedelta(minutes=1)
    app.save(case)
    other = FeedbackCase(id=case_id(u), ticket_id=u, callback_url="https://example.test/cb", opened_at=NOW)
    other.note_resolution("fixed", "done", None, NOW, DAY, "resolved-event-2")
    app.save(other)
    app.follow_ups.refresh()
    assert case_id(t) not in app.follow_ups.to_notify and case_id(u) in app.follow_ups.to_notify
    case.note_resolution("fixed", "done", None, NOW, DAY, "resolved-event")  # redelivered: nothing again
    assert list(case.pending_events) == []
    app.rate(t, 4, None)
    assert wire_types(app, t) == ["feedback-sent", "rated", "closed"]
