"""The archive store: every event of every topic, appended once, never changed."""

from __future__ import annotations

from typing import Any, ClassVar

import asyncpg
import orjson

from tsop_archive.domain import ArchivedEvent
from tsop_events import schemas as wire
from tsop_events.consumer import Incoming, ProjectionSink
from tsop_events.topics import DOMAIN_TOPICS, Topic

DDL = (
    """CREATE TABLE IF NOT EXISTS archive_events (
        seq bigserial PRIMARY KEY,
        ce_id text NOT NULL UNIQUE,
        topic text NOT NULL,
        kafka_partition int NOT NULL,
        kafka_offset bigint NOT NULL,
        key text,
        ce_type text NOT NULL,
        ce_source text NOT NULL,
        ce_time timestamptz NOT NULL,
        correlation_id text,
        causation_id text,
        data jsonb NOT NULL,
        stored_at timestamptz NOT NULL DEFAULT now())""",
    "CREATE INDEX IF NOT EXISTS archive_events_key ON archive_events (key, seq)",
    # tickets whose final event (closed, or ended at review) the store holds; dossier not yet sealed
    "CREATE TABLE IF NOT EXISTS archive_to_seal (ticket_id text PRIMARY KEY, closed_event_id text NOT NULL)",
    # append-only: the store refuses to change or remove what it holds
    """CREATE OR REPLACE FUNCTION archive_events_immutable() RETURNS trigger AS $$
       BEGIN RAISE EXCEPTION 'the archive is append-only'; END $$ LANGUAGE plpgsql""",
    """DO $$ BEGIN
         CREATE TRIGGER archive_events_no_change BEFORE UPDATE OR DELETE ON archive_events
         FOR EACH ROW EXECUTE FUNCTION archive_events_immutable();
       EXCEPTION WHEN duplicate_object THEN NULL; END $$""",
)

# a ticket's record is complete at its final event: closed after service, or ended at review
FINAL = frozenset(
    {wire.Closed.event_type, wire.RequestRejected.event_type, wire.RequestCancelled.event_type,
     wire.RequestLinked.event_type}
)

SELECT_TICKET = """SELECT seq, ce_id, ce_type, ce_source, ce_time, causation_id, data::text AS data
                   FROM archive_events WHERE key = $1 AND topic = $2 ORDER BY seq"""


def row_to_event(row: Any) -> ArchivedEvent:
    """From an asyncpg record or a psycopg dict row."""
    data = row["data"]
    return ArchivedEvent(
        seq=int(row["seq"]),
        id=str(row["ce_id"]),
        type=str(row["ce_type"]),
        source=str(row["ce_source"]),
        time=row["ce_time"],
        causation_id=row["causation_id"],
        data=orjson.loads(data) if isinstance(data, str | bytes) else data,
    )


class ArchiveStore(ProjectionSink):
    name: ClassVar[str] = "archive-store"
    topics: ClassVar[tuple[Topic, ...]] = (*DOMAIN_TOPICS, Topic.deadletter)
    ddl: ClassVar[tuple[str, ...]] = DDL

    async def apply(self, conn: asyncpg.Connection, incoming: Incoming) -> None:
        env = incoming.envelope
        await conn.execute(
            """INSERT INTO archive_events (ce_id, topic, kafka_partition, kafka_offset, key, ce_type, ce_source,
                 ce_time, correlation_id, causation_id, data)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb) ON CONFLICT (ce_id) DO NOTHING""",
            env.id, incoming.topic, incoming.partition, incoming.offset, incoming.key, env.type, env.source,
            env.time, env.correlation_id, env.causation_id, env.data.decode(),
        )
        if env.type in FINAL and incoming.topic.endswith(Topic.tickets.value):
            # in the same transaction: everything before the final event in the partition is stored by now
            await conn.execute(
                "INSERT INTO archive_to_seal VALUES ($1, $2) ON CONFLICT DO NOTHING", incoming.key, env.id
            )
