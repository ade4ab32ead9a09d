"""Incident's read model of the ticket stream: each ticket's scope, customer and how far it got (§5.3).

It answers the open-ticket summary, which tickets are open in an incident's scope (to link them) and how
many customers stand behind an incident's tickets (for the review).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import asyncpg

from tsop_events import schemas as wire
from tsop_events.batched import BatchedSink, Statements
from tsop_events.consumer import Incoming

STAGE = {
    wire.RequestSubmitted.event_type: (0, "submitted"),
    wire.RequestAccepted.event_type: (1, "open"),
    wire.Assigned.event_type: (2, "assigned"),
    wire.WorkLogged.event_type: (3, "in_progress"),
    wire.Resolved.event_type: (4, "resolved"),
    wire.Closed.event_type: (5, "closed"),
    wire.RequestRejected.event_type: (5, "rejected"),
    wire.RequestCancelled.event_type: (5, "cancelled"),  # an accepted request withdrawn is no longer open
    wire.Reopened.event_type: (2, "reopened"),  # open again: back with a technician (§2.4)
}


class OpenTickets(BatchedSink):
    """Each ticket's region, service type, priority, customer and stage.

    Stages only move forward, whatever order redelivery brings, except that a reopening (the newest event
    so far) takes a resolved or closed ticket back to open; an event older than the last reopening no
    longer raises the stage. A batch's upserts go as one pipelined run (``tsop_events.batched``), in order.
    """

    name: ClassVar[str] = "incident-open-tickets"
    event_types: ClassVar[frozenset[str] | None] = frozenset(STAGE)
    ddl: ClassVar[tuple[str, ...]] = (
        """CREATE TABLE IF NOT EXISTS tickets (
            ticket_id uuid PRIMARY KEY, region text, service_type text, priority int,
            stage int NOT NULL, status text NOT NULL, updated_at timestamptz NOT NULL)""",
        "ALTER TABLE tickets ADD COLUMN IF NOT EXISTS customer_id text",
        "ALTER TABLE tickets ADD COLUMN IF NOT EXISTS reopened_at timestamptz",
        "CREATE INDEX IF NOT EXISTS tickets_open ON tickets (region, service_type) WHERE stage < 4",
    )

    async def apply_batch(self, conn: asyncpg.Connection, records: Sequence[Incoming]) -> None:
        statements = Statements()
        for incoming in records:
            self._upsert(statements, incoming)
        await statements.run(conn)

    def _upsert(self, statements: Statements, incoming: Incoming) -> None:
        stage, status = STAGE[incoming.envelope.type]
        ev = incoming.event
        region = service_type = customer = None
        priority = None
        if isinstance(ev, wire.RequestAccepted):
            region, service_type, priority = ev.region, ev.service_type, ev.priority
        elif isinstance(ev, wire.RequestSubmitted):
            customer = ev.customer_id or None
        if isinstance(ev, wire.Reopened):
            statements.add(
                """INSERT INTO tickets (ticket_id, stage, status, updated_at, reopened_at)
                   VALUES ($1, $2, $3, $4, $4)
                   ON CONFLICT (ticket_id) DO UPDATE SET
                     stage = CASE WHEN EXCLUDED.updated_at >= tickets.updated_at THEN EXCLUDED.stage
                                  ELSE tickets.stage END,
                     status = CASE WHEN EXCLUDED.updated_at >= tickets.updated_at THEN EXCLUDED.status
                                   ELSE tickets.status END,
                     updated_at = GREATEST(tickets.updated_at, EXCLUDED.updated_at),
                     reopened_at = GREATEST(tickets.reopened_at, EXCLUDED.reopened_at)""",
                incoming.key, stage, status, incoming.envelope.time,
            )
            return
        # "only if newer": stages only move forward, whatever order redelivery brings (since the last reopening)
        statements.add(
            """INSERT INTO tickets (ticket_id, region, service_type, priority, stage, status, updated_at, customer_id)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
               ON CONFLICT (ticket_id) DO UPDATE SET
                 region = COALESCE(tickets.region, EXCLUDED.region),
                 service_type = COALESCE(tickets.service_type, EXCLUDED.service_type),
                 priority = COALESCE(tickets.priority, EXCLUDED.priority),
                 customer_id = COALESCE(tickets.customer_id, EXCLUDED.customer_id),
                 stage = CASE WHEN EXCLUDED.updated_at < COALESCE(tickets.reopened_at, '-infinity') THEN tickets.stage
                              ELSE GREATEST(tickets.stage, EXCLUDED.stage) END,
                 status = CASE WHEN EXCLUDED.updated_at < COALESCE(tickets.reopened_at, '-infinity') THEN tickets.status
                               WHEN EXCLUDED.stage > tickets.stage THEN EXCLUDED.status ELSE tickets.status END,
                 updated_at = GREATEST(tickets.updated_at, EXCLUDED.updated_at)""",
            incoming.key, region, service_type, priority, stage, status, incoming.envelope.time, customer,
        )


async def open_ticket_groups(pool: asyncpg.Pool, region: str | None) -> list[asyncpg.Record]:
    """Open (accepted, not yet resolved) tickets counted by region and service type, optionally of one region."""
    rows: list[asyncpg.Record] = await pool.fetch(
        """SELECT region, service_type, count(*) AS open FROM tickets
           WHERE stage BETWEEN 1 AND 3 AND region IS NOT NULL AND ($1::text IS NULL OR region = $1)
           GROUP BY region, service_type ORDER BY region, service_type""",
        region,
    )
    return rows


async def open_tickets_in(pool: asyncpg.Pool, scope: tuple[list[str], list[str]]) -> list[str]:
    """The open tickets of the given regions and service types (an incident's scope)."""
    regions, services = scope
    rows = await pool.fetch(
        """SELECT ticket_id FROM tickets WHERE stage BETWEEN 1 AND 3
           AND region = ANY($1::text[]) AND service_type = ANY($2::text[]) ORDER BY ticket_id""",
        regions, services,
    )
    return [str(r["ticket_id"]) for r in rows]


async def customers_of(pool: asyncpg.Pool, ticket_ids: list[str]) -> int | None:
    """Distinct customers behind the tickets (a ticket whose customer is unknown counts as one); None if none known."""
    if not ticket_ids:
        return 0
    row = await pool.fetchrow(
        """SELECT count(DISTINCT customer_id) AS known, count(*) FILTER (WHERE customer_id IS NULL) AS unknown,
                  count(*) AS seen
           FROM tickets WHERE ticket_id = ANY($1::uuid[])""",
        ticket_ids,
    )
    if row is None or row["seen"] == 0:
        return None
    return int(row["known"]) + int(row["unknown"]) + (len(ticket_ids) - int(row["seen"]))
