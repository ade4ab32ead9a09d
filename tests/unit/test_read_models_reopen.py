"""Intake's read models accept the customer's-voice events: a reopened ticket is not final."""

from __future__ import annotations

from datetime import UTC, datetime

from tsop_events import schemas as wire
from tsop_intake.projection import FINISHED, RANK, STATUS_OF, current_status
from tsop_intake.tmf.model import RELEVANT, status_change

AT = datetime(2026, 6, 1, 9, tzinfo=UTC)
REOPENED = wire.Reopened(ticket_id="t", reason_code="not_solved", reason="still down", requested_by="channel:p",
                         reopen_count=1, reopened_at=AT)


def test_tmf_reopening_goes_back_to_acknowledged_from_resolved_or_closed_and_nowhere_else() -> None:
    assert wire.Reopened.event_type in RELEVANT
    for current in ("resolved", "closed"):
        change = status_change(REOPENED, current)
        assert change is not None and change.status == "acknowledged" and "still down" in change.reason
    assert status_change(REOPENED, "inProgress") is None
    # and the ticket moves on from there as any acknowledged ticket does
    started = wire.WorkStarted(ticket_id="t", work_order_id="w", technician_id="x", mode="on_site", started_at=AT)
    assert status_change(started, "acknowledged") is not None


def test_the_native_status_goes_back_to_reopened_and_the_new_round_moves_it_on() -> None:
    status = STATUS_OF[wire.Reopened.event_type]
    assert status == "reopened" and status not in FINISHED
    # the status is the furthest since the latest reopening: the new round's work moves it on from reopened
    assert RANK["reopened"] < RANK["assigned"] < RANK["resolved"] < RANK["closed"]
    history = [
        {"status": "closed", "event_type": wire.Closed.event_type},
        {"status": "reopened", "event_type": wire.Reopened.event_type},
    ]
    assert current_status(history) == "reopened"
    assert current_status([*history, {"status": "assigned", "event_type": wire.Assigned.event_type}]) == "assigned"
    for t in (wire.RatingReminded, wire.RatingExpired):
        assert t.event_type not in STATUS_OF  # not a status of the request: nothing to move
