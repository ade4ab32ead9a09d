"""Intake's status projection on real PostgreSQL: a request's status only ever moves forward."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from tsop_events import schemas as wire
from tsop_events.consumer import Incoming
from tsop_events.envelope import wrap
from tsop_events.settings import ServiceSettings
from tsop_events.store import ensure_database
from tsop_intake.projection import RequestStatusProjection, current_status

NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)


def incoming(event: wire.TicketEvent, at: datetime, offset: int) -> Incoming:
    env = wrap(event, event_id=f"{event.ticket_id}-{offset}", source="test", time=at)
    return Incoming("tsop.tickets", 0, offset, event.ticket_id, env, event)


async def test_a_late_feedback_sent_never_moves_a_closed_or_archived_request_back(pg: tuple[str, int]) -> None:
    settings = ServiceSettings(service_name=f"status_it_{uuid.uuid4().hex[:8]}", pg_host=pg[0], pg_port=pg[1])
    await ensure_database(settings, RequestStatusProjection.ddl)
    pool = await asyncpg.create_pool(settings.pg_dsn(), min_size=1, max_size=2)
    finished: list[uuid.UUID] = []
    projection = RequestStatusProjection(pool, on_finished=finished.append)
    t = str(uuid.uuid4())
    s = NOW
    events = [
        wire.Resolved(ticket_id=t, work_order_id="wo", technician_id="x", resolution_code="ok", summary="done",
                      resolved_at=s),
        wire.Rated(ticket_id=t, score=5, rated_at=s + timedelta(seconds=1)),
        wire.Closed(ticket_id=t, reason="rated", closed_at=s + timedelta(seconds=1)),
        wire.Archived(ticket_id=t, dossier_hash="h", event_count=3, last_event_id="c",
                      archived_at=s + timedelta(seconds=2)),
        # a delivery outcome recorded after the seal (what older feedback instances published)
        wire.FeedbackSent(ticket_id=t, channel="webhook", attempts=3, status_code=204,
                          rating_due_at=s + timedelta(days=1), sent_at=s + timedelta(seconds=3)),
    ]
    try:
        async with pool.acquire() as conn, conn.transaction():
            for i, e in enumerate(events):
                await projection.apply(conn, incoming(e, s + timedelta(seconds=i), i))
            # a re-delivery of an older event changes nothing either
            await projection.apply(conn, incoming(events[0], s, 0))
        status = await pool.fetchval("SELECT status FROM request_status WHERE ticket_id = $1", uuid.UUID(t))
        history = await pool.fetch(
            "SELECT event_type, status FROM request_history WHERE ticket_id = $1 ORDER BY at", uuid.UUID(t)
        )
        assert status == "archived"
        assert [r["status"] for r in history] == ["resolved", "rated", "closed", "archived", "archived"]
        assert history[-1]["event_type"] == wire.FeedbackSent.event_type  # kept in the history, without regress
        assert len(finished) == 5 and set(finished) == {uuid.UUID(t)}  # a redelivery calls nothing again
    finally:
        await pool.close()


async def test_a_reopened_request_shows_as_reopened_then_moves_on_and_is_open_again(pg: tuple[str, int]) -> None:
    settings = ServiceSettings(service_name=f"status_it_{uuid.uuid4().hex[:8]}", pg_host=pg[0], pg_port=pg[1])
    await ensure_database(settings, RequestStatusProjection.ddl)
    pool = await asyncpg.create_pool(settings.pg_dsn(), min_size=1, max_size=2)
    finished: list[uuid.UUID] = []
    reopened: list[uuid.UUID] = []
    projection = RequestStatusProjection(pool, on_finished=finished.append, on_reopened=reopened.append)
    t = str(uuid.uuid4())
    s = NOW

    async def status_and_view() -> tuple[str, str | None]:
        status = await pool.fetchval("SELECT status FROM request_status WHERE ticket_id = $1", uuid.UUID(t))
        rows = await pool.fetch(
            "SELECT event_type, status, at FROM request_history WHERE ticket_id = $1 ORDER BY at", uuid.UUID(t)
        )
        return status, current_status([dict(r) for r in rows])

    again = wire.Reopened(ticket_id=t, reason_code="not_solved", reason="still down", requested_by="customer",
                          reopen_count=1, reopened_at=s + timedelta(seconds=10))
    try:
        async with pool.acquire() as conn, conn.transaction():
            for i, e in enumerate([
                wire.Resolved(ticket_id=t, work_order_id="wo", technician_id="x", resolution_code="ok",
                              summary="done", resolved_at=s),
                wire.Rated(ticket_id=t, score=1, rated_at=s + timedelta(seconds=1)),
                wire.Closed(ticket_id=t, reason="rated", closed_at=s + timedelta(seconds=2)),
            ]):
                await projection.apply(conn, incoming(e, s + timedelta(seconds=i), i))
        assert await status_and_view() == ("closed", "closed")
        async with pool.acquire() as conn, conn.transaction():
            await projection.apply(conn, incoming(again, s + timedelta(seconds=10), 3))
        assert await status_and_view() == ("reopened", "reopened")
        assert reopened == [uuid.UUID(t)]  # back in the open-request index (a duplicate target again)
        async with pool.acquire() as conn, conn.transaction():
            # a late outcome of the earlier round leaves it reopened (and does not finish it)
            late = wire.FeedbackSent(ticket_id=t, channel="webhook", attempts=2, status_code=204,
                                     rating_due_at=s + timedelta(days=1), sent_at=s + timedelta(seconds=3))
            await projection.apply(conn, incoming(late, s + timedelta(seconds=3), 4))
            await projection.apply(conn, incoming(again, s + timedelta(seconds=10), 3))  # a redelivery
        assert await status_and_view() == ("reopened", "reopened")
        assert len(finished) == 3 and reopened == [uuid.UUID(t)]
        async with pool.acquire() as conn, conn.transaction():  # worked again: the status moves on
            await projection.apply(conn, incoming(
                wire.Assigned(ticket_id=t, work_order_id="wo", technician_id="y", reason="best", candidates=[],
                              assigned_at=s + timedelta(seconds=20)),
                s + timedelta(seconds=20), 5))
        assert await status_and_view() == ("assigned", "assigned")
    finally:
        await pool.close()
