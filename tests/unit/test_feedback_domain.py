from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from tsop_events.clock import ManualClock
from tsop_feedback.application import FeedbackApp, case_id, sign
from tsop_feedback.domain import AlreadyClosed, FeedbackCase, NotYetResolved

NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
DAY = timedelta(hours=24)


def resolved_case(app: FeedbackApp, ticket: str) -> FeedbackCase:
    case = FeedbackCase(id=case_id(ticket), ticket_id=ticket, callback_url=None, opened_at=NOW)
    case.note_resolution("fixed", "done", None, app.clock.now(), app.rating_window, "resolved-event")
    app.save(case)
    return case


def make_app() -> tuple[FeedbackApp, ManualClock]:
    clock = ManualClock(NOW)
    return FeedbackApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=clock, rating_window=DAY), clock


def test_rating_within_the_window_rates_and_closes():
    app, clock = make_app()
    t = str(uuid4())
    resolved_case(app, t)
    clock.advance(DAY - timedelta(seconds=1))
    case = app.rate(t, 4, "quick")
    assert case.score == 4 and case.closed_reason == "rated"
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


def test_rating_before_resolution_is_refused():
    app, _ = make_app()
    t = str(uuid4())
    app.save(FeedbackCase(id=case_id(t), ticket_id=t, callback_url=None, opened_at=NOW))
    with pytest.raises(NotYetResolved):
        app.rate(t, 5, None)


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
