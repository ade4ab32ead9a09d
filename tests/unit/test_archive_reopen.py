"""The archive and reopening: a reopened ticket has not ended; a closure that may be reopened ends later."""

from __future__ import annotations

from datetime import UTC, datetime

from tsop_archive.domain import has_ended, reopenable_until
from tsop_events import schemas as wire

CLOSED, REOPENED = wire.Closed.event_type, wire.Reopened.event_type
RESOLVED, ARCHIVED = wire.Resolved.event_type, wire.Archived.event_type


def test_the_last_of_closed_and_reopened_decides_whether_a_ticket_has_ended() -> None:
    assert has_ended([RESOLVED, CLOSED])
    assert not has_ended([RESOLVED, CLOSED, REOPENED, RESOLVED])
    assert has_ended([RESOLVED, CLOSED, REOPENED, RESOLVED, CLOSED, ARCHIVED])
    assert not has_ended([RESOLVED])
    assert has_ended([wire.RequestRejected.event_type])


def test_a_closed_event_says_until_when_it_may_be_reopened() -> None:
    at = datetime(2026, 6, 8, 9, tzinfo=UTC)
    closed = wire.Closed(ticket_id="t", reason="rated", basis="rated", reopenable_until=at, closed_at=at)
    assert reopenable_until(closed.model_dump_json().encode()) == at
    final = wire.Closed(ticket_id="t", reason="rated", closed_at=at)
    assert reopenable_until(final.model_dump_json().encode()) is None
    assert reopenable_until(b"not json") is None
