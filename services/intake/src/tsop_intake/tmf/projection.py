"""The TMF621 read model: every ticket as channels see it, fed by the whole ticket stream.

One row per ticket with an indexed column for every filterable attribute, the
status history, and — in the same transaction — the hub notifications each
event causes (the delivery outbox, see hub.py). Each event is applied once:
its id is recorded, so a redelivery or a republish after an empty broker
changes nothing.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar
from uuid import UUID

import asyncpg

from tsop_events import schemas as wire
from tsop_events.consumer import Incoming, ProjectionSink
from tsop_intake.tmf import model
from tsop_intake.tmf.hub import Outbox

DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS tmf_ticket (
        ticket_id uuid PRIMARY KEY,
        status text, status_change_date timestamptz, status_change_reason text,
        severity text, ticket_type text NOT NULL, priority_name text,
        channel_id text, customer_id text NOT NULL, external_id text,
        creation_date timestamptz NOT NULL, last_update timestamptz NOT NULL,
        deleted boolean NOT NULL DEFAULT false,
        doc jsonb NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS tmf_ticket_created ON tmf_ticket (creation_date DESC, ticket_id)",
    "CREATE INDEX IF NOT EXISTS tmf_ticket_updated ON tmf_ticket (last_update DESC, ticket_id)",
    "CREATE INDEX IF NOT EXISTS tmf_ticket_status ON tmf_ticket (status, creation_date DESC, ticket_id)",
    "CREATE INDEX IF NOT EXISTS tmf_ticket_severity ON tmf_ticket (severity, creation_date DESC, ticket_id)",
    "CREATE INDEX IF NOT EXISTS tmf_ticket_type ON tmf_ticket (ticket_type, creation_date DESC, ticket_id)",
    "CREATE INDEX IF NOT EXISTS tmf_ticket_priority ON tmf_ticket (priority_name, creation_date DESC, ticket_id)",
    "CREATE INDEX IF NOT EXISTS tmf_ticket_channel ON tmf_ticket (channel_id, creation_date DESC, ticket_id)",
    "CREATE INDEX IF NOT EXISTS tmf_ticket_customer ON tmf_ticket (customer_id, creation_date DESC)",
    "CREATE INDEX IF NOT EXISTS tmf_ticket_external ON tmf_ticket (external_id)",
    """CREATE TABLE IF NOT EXISTS tmf_status_change (
        ticket_id uuid NOT NULL, seq int NOT NULL, status text NOT NULL, reason text NOT NULL,
        at timestamptz NOT NULL, PRIMARY KEY (ticket_id, seq))""",
    "CREATE TABLE IF NOT EXISTS tmf_applied (event_id text PRIMARY KEY)",
    # tickets per combination of the categorical filters: X-Total-Count without counting a million rows. One
    # row per combination *and partition* of the tickets topic: a ticket's records all come in one partition,
    # and a partition is applied by one instance at a time, so two instances never update the same row (one
    # shared row per combination made their batches wait on each other and deadlock, each holding a row the
    # other's batch came to next). The answer sums the partitions' rows.
    """CREATE TABLE IF NOT EXISTS tmf_ticket_counts (
        channel_id text NOT NULL, status text NOT NULL, severity text NOT NULL, ticket_type text NOT NULL,
        priority_name text NOT NULL, part int NOT NULL, n bigint NOT NULL,
        PRIMARY KEY (channel_id, status, severity, ticket_type, priority_name, part))""",
    # a read model from before the partitions' rows: its counts move over once, as part -1 (locked first, so no
    # change of a still-running older instance is lost between the copy and the drop; added to what is there, so
    # a table an older instance created again meanwhile moves over too). Stop older instances before upgrading:
    # theirs would fail on the dropped table (services/intake/README.md, Upgrading)
    """DO $$ BEGIN
         IF to_regclass('tmf_ticket_count') IS NOT NULL THEN
           LOCK TABLE tmf_ticket_count IN ACCESS EXCLUSIVE MODE;
           INSERT INTO tmf_ticket_counts SELECT channel_id, status, severity, ticket_type, priority_name, -1, n
             FROM tmf_ticket_count
             ON CONFLICT (channel_id, status, severity, ticket_type, priority_name, part)
             DO UPDATE SET n = tmf_ticket_counts.n + EXCLUDED.n;
           DROP TABLE tmf_ticket_count;
         END IF;
       END $$""",
)
COUNTED = ("channel_id", "status", "severity", "ticket_type", "priority_name")


def count_key(state: dict[str, Any] | None) -> tuple[str, ...] | None:
    if state is None or state["deleted"]:
        return None
    return tuple(str(state[c] or "") for c in COUNTED)

COLUMNS = (
    "ticket_id", "status", "status_change_date", "status_change_reason", "severity", "ticket_type",
    "priority_name", "channel_id", "customer_id", "external_id", "creation_date", "last_update", "deleted", "doc",
)
PLACEHOLDERS = ", ".join(f"${i + 1}" for i in range(len(COLUMNS)))
UPSERT = f"""INSERT INTO tmf_ticket ({", ".join(COLUMNS)}) VALUES ({PLACEHOLDERS})
    ON CONFLICT (ticket_id) DO UPDATE SET {", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS[1:])}"""


def row_state(row: asyncpg.Record) -> dict[str, Any]:
    state = dict(row)
    state["ticket_id"] = str(state["ticket_id"])
    state["doc"] = json.loads(state["doc"])
    return state


class TmfTicketProjection(ProjectionSink):
    name: ClassVar[str] = "intake-tmf-tickets"
    event_types: ClassVar[frozenset[str] | None] = model.RELEVANT
    ddl: ClassVar[tuple[str, ...]] = DDL

    def __init__(self, pool: asyncpg.Pool, outbox: Outbox | None = None) -> None:
        super().__init__(pool)
        self.outbox = outbox  # notifications written with the change

    async def apply(self, conn: asyncpg.Connection, incoming: Incoming) -> None:
        ev = incoming.event
        if not isinstance(ev, wire.TicketEvent):
            return
        if await conn.fetchval(
            "INSERT INTO tmf_applied VALUES ($1) ON CONFLICT DO NOTHING RETURNING true", incoming.envelope.id
        ) is None:
            return  # applied before: a redelivery, or a republish after an empty broker
        ticket_id = UUID(ev.ticket_id)
        row = await conn.fetchrow("SELECT * FROM tmf_ticket WHERE ticket_id = $1 FOR UPDATE", ticket_id)
        evolution = model.evolve(row_state(row) if row else None, ev, incoming.envelope.time)
        if evolution.state is None:
            return
        state = evolution.state
        old, new = count_key(row_state(row) if row else None), count_key(state)
        if old != new:
            deltas = sorted((key, n) for key, n in ((old, -1), (new, 1)) if key is not None)  # one lock order
            await conn.executemany(
                """INSERT INTO tmf_ticket_counts VALUES ($1, $2, $3, $4, $5, $6, $7)
                   ON CONFLICT (channel_id, status, severity, ticket_type, priority_name, part)
                   DO UPDATE SET n = tmf_ticket_counts.n + EXCLUDED.n""",
                [(*key, incoming.partition, n) for key, n in deltas],
            )
        await conn.execute(
            UPSERT, ticket_id, *(json.dumps(state[c]) if c == "doc" else state[c] for c in COLUMNS[1:])
        )
        if (change := evolution.change) is not None:
            await conn.execute(
                """INSERT INTO tmf_status_change
                   SELECT $1, coalesce(max(seq), 0) + 1, $2, $3, $4 FROM tmf_status_change WHERE ticket_id = $1""",
                ticket_id, change.status, change.reason, change.at,
            )
        if self.outbox is not None:
            for notice in evolution.notices:
                await self.outbox.enqueue(conn, incoming, ticket_id, notice)
