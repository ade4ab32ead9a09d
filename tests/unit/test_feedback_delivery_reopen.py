"""The result webhook across a reopening: each resolution is its own delivery (its own ``X-TSOP-Delivery``), and a
delivery that lands after the customer said "not solved" is ignored instead of crashing the deliverer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

from tsop_feedback.domain import FeedbackCase
from tsop_feedback.views import delivery_id

NOW = datetime(2026, 6, 1, 9, tzinfo=UTC)


def resolved_case(event_id: str = "ev1") -> FeedbackCase:
    c = FeedbackCase(id=uuid4(), ticket_id="t", callback_url="https://x.example/cb", opened_at=NOW, channel_id="ch")
    c.note_resolution("fixed", "ok", None, NOW, timedelta(hours=24), event_id)
    return c


def test_a_delivery_recorded_after_the_customer_reopened_is_ignored() -> None:
    c = resolved_case()
    c.rate(1, "still down", NOW + timedelta(seconds=5), solved=False)  # while the webhook is in flight
    assert c.closed_reason is None and c.reopen_count == 1
    version = c.version
    c.mark_notified("webhook", 1, 200, NOW + timedelta(seconds=6), "ev1")
    c.abandon_notification(3, 500, "HTTP 500", NOW + timedelta(seconds=6), "ev1")
    assert c.version == version and not c.notified and c.notification_failed is None


def test_a_late_delivery_of_the_previous_resolution_does_not_count_for_the_next() -> None:
    c = resolved_case()
    c.rate(1, "still down", NOW + timedelta(seconds=5), solved=False)
    c.note_resolution("fixed", "again", None, NOW + timedelta(hours=1), timedelta(hours=24), "ev2")
    c.mark_notified("webhook", 1, 200, NOW + timedelta(hours=1, seconds=1), "ev1")
    assert not c.notified  # the second result still has to be delivered
    c.mark_notified("webhook", 1, 200, NOW + timedelta(hours=1, seconds=2), "ev2")
    assert c.notified


def test_each_resolution_has_its_own_delivery_id_and_every_retry_the_same() -> None:
    cid = uuid4()
    assert delivery_id(cid, "ev1") == delivery_id(cid, "ev1")
    assert delivery_id(cid, "ev1") != delivery_id(cid, "ev2")
    assert delivery_id(cid, "ev1") != delivery_id(uuid4(), "ev1")
