"""Intake's legal-hold projection on real PostgreSQL (docs/erasure.md): which holds cover a customer, through the
customer, one of their tickets, or an incident one of them was ever linked to; released, placed again, redelivered."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from tsop_events import schemas as wire
from tsop_events.consumer import Incoming
from tsop_events.envelope import wrap
from tsop_events.settings import ServiceSettings
from tsop_events.store import ensure_database
from tsop_intake.projection import LegalHoldProjection, covering_holds

NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)


def incoming(event: wire.WireEvent, offset: int) -> Incoming:
    env = wrap(event, event_id=f"e-{offset}", source="test", time=NOW + timedelta(seconds=offset))
    return Incoming(f"tsop.{event.topic.value}", 0, offset, event.key(), env, event)


def placed(hold: str, kind: wire.HoldKindName, subject: str) -> wire.LegalHoldPlaced:
    return wire.LegalHoldPlaced(hold_id=hold, kind=kind, subject=subject, placed_by="audit", reason=f"on {subject}",
                                placed_at=NOW)


async def test_holds_cover_a_customer_through_them_their_tickets_and_their_tickets_incidents(
    pg: tuple[str, int],
) -> None:
    settings = ServiceSettings(service_name=f"holds_it_{uuid.uuid4().hex[:8]}", pg_host=pg[0], pg_port=pg[1])
    await ensure_database(settings, LegalHoldProjection.ddl)
    pool = await asyncpg.create_pool(settings.pg_dsn(), min_size=1, max_size=2)
    projection = LegalHoldProjection(pool)
    t1, t2, other, t3 = (str(uuid.uuid4()) for _ in range(4))
    events: list[wire.WireEvent] = [
        placed("h-cust", "customer", "cust-1"),
        placed("h-other", "customer", "cust-2"),
        placed("h-t2", "ticket", t2),
        placed("h-inc", "incident", "inc-1"),
        placed("h-inc-other", "incident", "inc-2"),
        # both of the customer's tickets linked to inc-1 (one hold, named once); t1 later unlinked: still covered,
        # as the archive's retention counts it
        wire.IncidentTicketLinked(incident_id="inc-1", ticket_id=t1, linked_by="auto", linked_at=NOW),
        wire.IncidentTicketLinked(incident_id="inc-1", ticket_id=t2, linked_by="auto", linked_at=NOW),
        wire.IncidentTicketUnlinked(incident_id="inc-1", ticket_id=t1, reason="unrelated", unlinked_by="m",
                                    unlinked_at=NOW),
        # the sweep's chunk (one event for many tickets): each of them linked to inc-2
        wire.IncidentTicketsLinked(incident_id="inc-2", ticket_ids=[other, t3], linked_by="auto", linked_at=NOW),
    ]
    try:
        async with pool.acquire() as conn, conn.transaction():
            for i, e in enumerate(events):
                if incoming(e, i).envelope.type in LegalHoldProjection.event_types:  # as the consumer filters
                    await projection.apply(conn, incoming(e, i))
            await projection.apply(conn, incoming(events[0], 0))  # a redelivery changes nothing

        async def covering(customer: str, tickets: list[str]) -> list[tuple[str, str, str | None]]:
            found = await covering_holds(pool, customer, tickets)
            return [(h["kind"], h["subject"], h.get("ticket_id")) for h in found]

        both = await covering("cust-1", [t1, t2])
        assert [(k, s) for k, s, _ in both] == [("customer", "cust-1"), ("incident", "inc-1"), ("ticket", t2)]
        assert both[1][2] in {t1, t2}  # the incident's hold, named once, with one of the tickets linked to it
        assert await covering("cust-1", [t1]) == [("customer", "cust-1", None), ("incident", "inc-1", t1)]
        assert await covering("cust-3", []) == []
        assert await covering("cust-4", [t3]) == [("incident", "inc-2", t3)]
        async with pool.acquire() as conn, conn.transaction():  # the chunk redelivered changes nothing
            await projection.apply(conn, incoming(events[-1], len(events)))
        assert await covering("cust-4", [t3]) == [("incident", "inc-2", t3)]

        async with pool.acquire() as conn, conn.transaction():
            for i, e in enumerate([
                wire.LegalHoldReleased(hold_id="h-cust", released_by="audit", reason="closed", released_at=NOW),
                wire.LegalHoldReleased(hold_id="h-inc", released_by="audit", reason="closed", released_at=NOW),
                wire.LegalHoldReleased(hold_id="h-t2", released_by="audit", reason="closed", released_at=NOW),
            ], start=100):
                await projection.apply(conn, incoming(e, i))
        assert await covering("cust-1", [t1, t2]) == []
        assert sorted(await covering("cust-2", [other]), key=str) == [
            ("customer", "cust-2", None), ("incident", "inc-2", other)]

        async with pool.acquire() as conn, conn.transaction():
            again = wire.LegalHoldPlacedAgain(hold_id="h-t2", placed_by="sup", reason="reopened", placed_at=NOW)
            await projection.apply(conn, incoming(again, 200))
        assert await covering("cust-1", [t1, t2]) == [("ticket", t2, None)]
        (row,) = await covering_holds(pool, "cust-1", [t1, t2])
        assert (row["placed_by"], row["reason"]) == ("sup", "reopened")

        # a hold placed before holds were announced: its placement never reached intake; released and placed
        # again, it names what it holds, and covers the customer from then on
        async with pool.acquire() as conn, conn.transaction():
            for i, e in enumerate([
                wire.LegalHoldReleased(hold_id="h-old", kind="customer", subject="cust-9", released_by="audit",
                                       reason="to announce it", released_at=NOW),
                wire.LegalHoldPlacedAgain(hold_id="h-old", kind="customer", subject="cust-9", placed_by="audit",
                                          reason="litigation", placed_at=NOW),
            ], start=300):
                await projection.apply(conn, incoming(e, i))
        assert await covering("cust-9", []) == [("customer", "cust-9", None)]
    finally:
        await pool.close()
