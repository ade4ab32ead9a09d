"""Open tickets by region and service type: what outage correlation will need (§5.3)."""

from __future__ import annotations

from typing import ClassVar

import asyncpg

from tsop_events import schemas as wire
from tsop_events.consumer import Incoming, ProjectionSink

STAGE = {
    wire.RequestAccepted.event_type: (1, "open"),
    wire.Assigned.event_type: (2, "assigned"),
    wire.WorkLogged.event_type: (3, "in_progress"),
    wire.Resolved.event_type: (4, "resolved"),
    wire.Closed.event_type: (5, "closed"),
    wire.RequestCancelled.event_type: (5, "cancelled"),  # an accepted request withdrawn is no longer open
}


class OpenTickets(ProjectionSink):
    """Each ticket's region, service type, priority and how far it got (stages only move forward)."""

    name: ClassVar[str] = "incident-open-tickets"
    event_types: ClassVar[frozenset[str] | None] = frozenset(STAGE)
    ddl: ClassVar[tuple[str, ...]] = (
        """CREATE TABLE IF NOT EXISTS tickets (
            ticket_id uuid PRIMARY KEY, region text, service_type text, priority int,
            stage int NOT NULL, status text NOT NULL, updated_at timestamptz NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS tickets_open ON tickets (region, service_type) WHERE stage < 4",
    )

    async def apply(self, conn: asyncpg.Connection, incoming: Incoming) -> None:
        stage, status = STAGE[incoming.envelope.type]
        ev = incoming.event
        region = service_type = None
        priority = None
        if isinstance(ev, wire.RequestAccepted):
            region, service_type, priority = ev.region, ev.service_type, ev.priority
        # "only if newer": stages only move forward, whatever order redelivery brings
        await conn.execute(
            """INSERT INTO tickets VALUES ($1, $2, $3, $4, $5, $6, $7)
               ON CONFLICT (ticket_id) DO UPDATE SET
                 region = COALESCE(tickets.region, EXCLUDED.region),
                 service_type = COALESCE(tickets.service_type, EXCLUDED.service_type),
                 priority = COALESCE(tickets.priority, EXCLUDED.priority),
                 stage = GREATEST(tickets.stage, EXCLUDED.stage),
                 status = CASE WHEN EXCLUDED.stage > tickets.stage THEN EXCLUDED.status ELSE tickets.status END,
                 updated_at = GREATEST(tickets.updated_at, EXCLUDED.updated_at)""",
            incoming.key, region, service_type, priority, stage, status, incoming.envelope.time,
        )


async def open_ticket_groups(pool: asyncpg.Pool, region: str | None) -> list[asyncpg.Record]:
    """Open (not yet resolved) tickets counted by region and service type, optionally of one region."""
    rows: list[asyncpg.Record] = await pool.fetch(
        """SELECT region, service_type, count(*) AS open FROM tickets
           WHERE stage < 4 AND region IS NOT NULL AND ($1::text IS NULL OR region = $1)
           GROUP BY region, service_type ORDER BY region, service_type""",
        region,
    )
    return rows
