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
from tsop_intake.projection import RequestStatusProjection

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
        assert len(finished) == 6 and set(finished) == {uuid.UUID(t)}
    finally:
        await pool.close()
