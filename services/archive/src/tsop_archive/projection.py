"""The archive's SQL store: every event of every topic, appended once, never changed; and its queries.

Whatever the wire carries is kept. A body PostgreSQL's jsonb refuses (a NUL
character, an unpaired surrogate) is kept byte for byte in ``raw`` instead. A dead
letter about one of a ticket's events is noted as a gap of that ticket (see
``domain``); a dead letter of the archive's own consumer also gives back the
event it carries, so the archive holds it even when it could not read it.

All of the archive's own SQL goes through asyncpg (the event store keeps its
own driver for the sealed dossiers).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar

import asyncpg
import orjson

from tsop_archive.domain import (
    FINAL,
    ArchivedEvent,
    Gap,
    LetterFacts,
    causal_order,
    is_own,
    letter_facts,
    reopenable_until,
)
from tsop_events import schemas as wire
from tsop_events.batched import BatchedSink
from tsop_events.consumer import Incoming
from tsop_events.envelope import Envelope, unwrap
from tsop_events.schemas import Closed, Reopened
from tsop_events.topics import DOMAIN_TOPICS, Topic

ENDS = FINAL | {Reopened.event_type}  # a ticket's events that change whether its dossier is due

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
    # a body jsonb cannot hold is kept as it came (data is then NULL)
    "ALTER TABLE archive_events ADD COLUMN IF NOT EXISTS raw bytea",
    "ALTER TABLE archive_events ALTER COLUMN data DROP NOT NULL",
    # the archive's own dead letter an event was taken back from
    "ALTER TABLE archive_events ADD COLUMN IF NOT EXISTS recovered_from text",
    # arrival marks: what the archive received, in order, across topics
    "CREATE SEQUENCE IF NOT EXISTS archive_arrival",
    # tickets whose final event (closed, or ended at review) the store holds; dossier not yet sealed
    "CREATE TABLE IF NOT EXISTS archive_to_seal (ticket_id text PRIMARY KEY, closed_event_id text NOT NULL)",
    "ALTER TABLE archive_to_seal ADD COLUMN IF NOT EXISTS final_arrival bigint NOT NULL DEFAULT 0",
    # something is missing: not tried again until the missing event arrives
    "ALTER TABLE archive_to_seal ADD COLUMN IF NOT EXISTS blocked boolean NOT NULL DEFAULT false",
    # a closure that may still be reopened (Closed.reopenable_until) is the real end only after that
    "ALTER TABLE archive_to_seal ADD COLUMN IF NOT EXISTS not_before timestamptz",
    # dead-lettered events of tickets; one row per failure (a letter's id and time)
    """CREATE TABLE IF NOT EXISTS archive_gaps (
        letter_id text NOT NULL,
        letter_time timestamptz NOT NULL,
        ticket_id text NOT NULL,
        event_id text NOT NULL,
        event_type text,
        consumer text NOT NULL,
        error text NOT NULL,
        source text NOT NULL,
        failed_at timestamptz,
        noted bigint NOT NULL,
        delivered bigint,
        PRIMARY KEY (letter_id, letter_time))""",
    "CREATE INDEX IF NOT EXISTS archive_gaps_ticket ON archive_gaps (ticket_id)",
    "CREATE INDEX IF NOT EXISTS archive_gaps_event ON archive_gaps (event_id)",
    # append-only: the store refuses to change or remove what it holds
    """CREATE OR REPLACE FUNCTION archive_events_immutable() RETURNS trigger AS $$
       BEGIN RAISE EXCEPTION 'the archive is append-only'; END $$ LANGUAGE plpgsql""",
    """DO $$ BEGIN
         CREATE TRIGGER archive_events_no_change BEFORE UPDATE OR DELETE ON archive_events
         FOR EACH ROW EXECUTE FUNCTION archive_events_immutable();
       EXCEPTION WHEN duplicate_object THEN NULL; END $$""",
)

COLUMNS = "key, seq, ce_id, ce_type, ce_source, ce_time, causation_id, data::text AS data, raw, recovered_from"
SELECT_EVENTS = f"SELECT {COLUMNS} FROM archive_events WHERE key = ANY($1::text[]) AND topic = $2 ORDER BY seq"
GAP_COLUMNS = "ticket_id, event_id, event_type, consumer, error, source, failed_at, noted, delivered"
SELECT_GAPS = f"SELECT {GAP_COLUMNS} FROM archive_gaps WHERE ticket_id = ANY($1::text[]) ORDER BY noted"

# what jsonb refuses: \u0000, and \ud800-\udfff escapes (a valid pair never appears escaped in our JSON)
_JSONB_REFUSES = re.compile(rb"\\u(0000|[dD][89a-fA-F][0-9a-fA-F]{2})")


def jsonb_safe(body: bytes) -> bool:
    """Whether PostgreSQL's jsonb can hold this JSON text as it is."""
    return _JSONB_REFUSES.search(body) is None


def _loads(data: str | bytes | memoryview) -> Any:
    raw = bytes(data) if isinstance(data, memoryview) else data
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:  # unpaired surrogates: the standard parser keeps them
        return json.loads(raw.decode("utf-8", "surrogatepass") if isinstance(raw, bytes) else raw)


def row_to_event(row: Mapping[str, Any]) -> ArchivedEvent:
    """From a row of ``COLUMNS``."""
    data = row["data"]
    if data is None:
        data = row["raw"]
    return ArchivedEvent(
        seq=int(row["seq"]),
        id=str(row["ce_id"]),
        type=str(row["ce_type"]),
        source=str(row["ce_source"]),
        time=row["ce_time"],
        causation_id=row["causation_id"],
        data=_loads(data) if isinstance(data, str | bytes | memoryview) else data,
        recovered_from=row["recovered_from"],
    )


def row_to_gap(row: Mapping[str, Any]) -> Gap:
    return Gap(
        event_id=row["event_id"],
        event_type=row["event_type"],
        consumer=row["consumer"],
        error=row["error"],
        source=row["source"],
        failed_at=row["failed_at"],
        noted=int(row["noted"]),
        delivered=None if row["delivered"] is None else int(row["delivered"]),
    )


Record = tuple[list[ArchivedEvent], list[Gap]]
"""A ticket's stored events (causal order) and its gaps (in the order they were noted)."""


async def ticket_records(pool: asyncpg.Pool, tickets_topic: str, ticket_ids: Sequence[str]) -> dict[str, Record]:
    """The records of several tickets, in two queries; a ticket the archive holds nothing of is absent."""
    ids = list(ticket_ids)
    events: dict[str, list[ArchivedEvent]] = {}
    gaps: dict[str, list[Gap]] = {}
    for row in await pool.fetch(SELECT_EVENTS, ids, tickets_topic):
        events.setdefault(row["key"], []).append(row_to_event(row))
    for row in await pool.fetch(SELECT_GAPS, ids):
        gaps.setdefault(row["ticket_id"], []).append(row_to_gap(row))
    return {t: (causal_order(events.get(t, [])), gaps.get(t, [])) for t in ids if t in events or t in gaps}


async def ticket_record(pool: asyncpg.Pool, tickets_topic: str, ticket_id: str) -> Record:
    """One ticket's record; both lists empty when the archive holds nothing of it."""
    return (await ticket_records(pool, tickets_topic, [ticket_id])).get(ticket_id, ([], []))


async def any_due(pool: asyncpg.Pool, now: datetime | None = None) -> bool:
    """Whether a ticket's dossier is due (its final event stored, its reopen period over) and not blocked by a
    missing event."""
    return bool(await pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM archive_to_seal WHERE NOT blocked "
        "AND (not_before IS NULL OR $1::timestamptz IS NULL OR not_before <= $1))", now))


async def arrival_mark(pool: asyncpg.Pool) -> int:
    """An arrival mark: everything the archive stores from now on gets a higher one."""
    return int(await pool.fetchval("SELECT nextval('archive_arrival')"))


async def due(
    pool: asyncpg.Pool, limit: int, settled_before: int | None, now: datetime | None = None
) -> list[tuple[str, str]]:
    """(ticket, final event) of dossiers due whose final event arrived before ``settled_before`` (and whose
    reopen period, if any, has passed by ``now``)."""
    rows = await pool.fetch(
        "SELECT ticket_id, closed_event_id FROM archive_to_seal WHERE NOT blocked AND final_arrival < $1 "
        "AND (not_before IS NULL OR $3::timestamptz IS NULL OR not_before <= $3) LIMIT $2",
        settled_before if settled_before is not None else 2**62, limit, now,
    )
    return [(r["ticket_id"], r["closed_event_id"]) for r in rows]


async def settle(pool: asyncpg.Pool, done: Sequence[str], blocked: Sequence[str] = ()) -> None:
    """Dossiers sealed are no longer due; blocked ones wait until a missing event arrives (``_store`` clears
    the flag then)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM archive_to_seal WHERE ticket_id = ANY($1::text[])", list(done))
        # only while a gap is still open: the missing event may have arrived since the sealer read the record
        # (``_store`` unblocks only what is blocked, so blocking after that arrival would block for good)
        await conn.execute(
            """UPDATE archive_to_seal s SET blocked = true WHERE s.ticket_id = ANY($1::text[])
               AND EXISTS (SELECT 1 FROM archive_gaps g WHERE g.ticket_id = s.ticket_id
                           AND (g.delivered IS NULL OR g.delivered < g.noted))""",
            list(blocked),
        )


class ArchiveStore(BatchedSink):
    name: ClassVar[str] = "archive-store"
    topics: ClassVar[tuple[Topic, ...]] = (*DOMAIN_TOPICS, Topic.deadletter)
    ddl: ClassVar[tuple[str, ...]] = DDL
    # short transactions: the chainer and retention take a SHARE lock on archive_events with a 200 ms lock_timeout
    batch_partitions: ClassVar[bool] = False

    def __init__(self, pool: asyncpg.Pool, prefix: str = "tsop.") -> None:
        super().__init__(pool)
        self.tickets_topic = Topic.tickets.qualified(prefix)
        self.deadletter_topic = Topic.deadletter.qualified(prefix)

    async def apply_batch(self, conn: asyncpg.Connection, records: Sequence[Incoming]) -> None:
        # a domain topic's records are stored with a statement per table (``_store_many``), not one or two each;
        # dead letters (rare, and each may give back an event) one by one
        run: list[Incoming] = []
        for incoming in records:
            if incoming.topic != self.deadletter_topic:
                run.append(incoming)
                continue
            await self._store_many(conn, run)
            run = []
            await self._apply_one(conn, incoming)
        await self._store_many(conn, run)

    async def _apply_one(self, conn: asyncpg.Connection, incoming: Incoming) -> None:
        """One record alone, as every record was before batches (a dead letter still is)."""
        env = incoming.envelope
        await self._store(conn, env, incoming.topic, incoming.partition, incoming.offset, incoming.key, None)
        if isinstance(incoming.event, wire.DeadLettered):
            facts = letter_facts(incoming.event, self.tickets_topic, self.deadletter_topic)
            if facts is not None:
                await self._note_gap(conn, env, facts)
                if incoming.event.consumer == self.name:
                    await self._recover(conn, env, incoming.event)

    async def _store(
        self, conn: asyncpg.Connection, env: Envelope, topic: str, partition: int, offset: int, key: str | None,
        recovered_from: str | None,
    ) -> None:
        body = bytes(env.data)
        safe = jsonb_safe(body)
        stored = await conn.execute(
            """INSERT INTO archive_events (ce_id, topic, kafka_partition, kafka_offset, key, ce_type, ce_source,
                 ce_time, correlation_id, causation_id, data, raw, recovered_from)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $12, $13) ON CONFLICT (ce_id) DO NOTHING""",
            env.id, topic, partition, offset, key, env.type, env.source, env.time, env.correlation_id,
            env.causation_id, body.decode() if safe else None, None if safe else body, recovered_from,
        )
        if topic != self.tickets_topic:
            return
        # a delivery of a dead-lettered event closes its gaps (noted before it) and lets its dossier be sealed;
        # not the very record a consumer failed on (the archive may read it after the letter), but a republish
        # at another position, or the event taken back from the archive's own letter
        position = None if recovered_from else f"{topic}:{partition}:{offset}"
        await conn.execute(
            """WITH delivered AS (
                 UPDATE archive_gaps SET delivered = nextval('archive_arrival')
                 WHERE event_id = $1 AND ($2::text IS NULL OR source <> $2) RETURNING ticket_id)
               UPDATE archive_to_seal SET blocked = false
               WHERE blocked AND ticket_id IN (SELECT ticket_id FROM delivered)""",
            env.id, position,
        )
        if key is not None:
            await self._ending(conn, env, key, body, stored == "INSERT 0 1")

    async def _store_many(self, conn: asyncpg.Connection, records: Sequence[Incoming]) -> None:
        """What ``_store`` does for each record (none recovered from a letter), in order, with one statement per
        table for the batch: the events (in the batch's order, so ``seq`` follows it), the gaps their delivery
        closes; only a final or reopening event of a ticket still costs statements of its own."""
        if not records:
            return
        bodies = [bytes(r.envelope.data) for r in records]
        safe = [jsonb_safe(b) for b in bodies]
        envs = [r.envelope for r in records]
        stored = await conn.fetch(
            """INSERT INTO archive_events (ce_id, topic, kafka_partition, kafka_offset, key, ce_type, ce_source,
                 ce_time, correlation_id, causation_id, data, raw)
               SELECT ce_id, topic, kafka_partition, kafka_offset, key, ce_type, ce_source, ce_time, correlation_id,
                 causation_id, data::jsonb, raw
               FROM unnest($1::text[], $2::text[], $3::int[], $4::bigint[], $5::text[], $6::text[], $7::text[],
                           $8::timestamptz[], $9::text[], $10::text[], $11::text[], $12::bytea[]) WITH ORDINALITY
                 AS r(ce_id, topic, kafka_partition, kafka_offset, key, ce_type, ce_source, ce_time, correlation_id,
                      causation_id, data, raw, n)
               ORDER BY n
               ON CONFLICT (ce_id) DO NOTHING RETURNING ce_id""",
            [e.id for e in envs], [r.topic for r in records], [r.partition for r in records],
            [r.offset for r in records], [r.key for r in records], [e.type for e in envs], [e.source for e in envs],
            [e.time for e in envs], [e.correlation_id for e in envs], [e.causation_id for e in envs],
            [b.decode() if ok else None for b, ok in zip(bodies, safe, strict=True)],
            [None if ok else b for b, ok in zip(bodies, safe, strict=True)],
        )
        ticket_records = [(r, b) for r, b in zip(records, bodies, strict=True) if r.topic == self.tickets_topic]
        if not ticket_records:
            return
        # a delivery of a dead-lettered event closes its gaps (see ``_store``): every delivery of the batch at once
        await conn.execute(
            """WITH delivered AS (
                 UPDATE archive_gaps g SET delivered = nextval('archive_arrival')
                 WHERE g.event_id = ANY($1::text[]) AND EXISTS (
                   SELECT 1 FROM unnest($1::text[], $2::text[]) AS d(event_id, position)
                   WHERE d.event_id = g.event_id AND g.source <> d.position)
                 RETURNING g.ticket_id)
               UPDATE archive_to_seal SET blocked = false
               WHERE blocked AND ticket_id IN (SELECT ticket_id FROM delivered)""",
            [r.envelope.id for r, _ in ticket_records],
            [f"{r.topic}:{r.partition}:{r.offset}" for r, _ in ticket_records],
        )
        new = {row["ce_id"] for row in stored}  # a ce_id twice in the batch: its first is the one stored
        for r, body in ticket_records:
            if r.key is not None and r.envelope.type in ENDS:
                await self._ending(conn, r.envelope, r.key, body, r.envelope.id in new)
            new.discard(r.envelope.id)

    async def _ending(self, conn: asyncpg.Connection, env: Envelope, key: str, body: bytes, new: bool) -> None:
        """A ticket's final event (or its reopening) puts it on the list of dossiers to seal (or takes it off)."""
        if env.type in (Reopened.event_type, Closed.event_type):
            # a reopened ticket has not ended; a closure that may be reopened ends when its period does
            # (only a newly stored event counts: a redelivered older one never undoes a newer)
            if not new:
                return
            await conn.execute("DELETE FROM archive_to_seal WHERE ticket_id = $1", key)
            if env.type == Closed.event_type:
                await conn.execute(
                    "INSERT INTO archive_to_seal (ticket_id, closed_event_id, final_arrival, not_before) "
                    "VALUES ($1, $2, nextval('archive_arrival'), $3)",
                    key, env.id, reopenable_until(body),
                )
            return
        if env.type in FINAL:
            # in the same transaction: everything before the final event in the partition is stored by now
            await conn.execute(
                "INSERT INTO archive_to_seal (ticket_id, closed_event_id, final_arrival) "
                "VALUES ($1, $2, nextval('archive_arrival')) ON CONFLICT DO NOTHING",
                key, env.id,
            )

    async def _note_gap(self, conn: asyncpg.Connection, letter: Envelope, facts: LetterFacts) -> None:
        await conn.execute(
            """INSERT INTO archive_gaps (letter_id, letter_time, ticket_id, event_id, event_type, consumer, error,
                 source, failed_at, noted)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, nextval('archive_arrival')) ON CONFLICT DO NOTHING""",
            letter.id, letter.time, facts.ticket_id, facts.event_id, facts.event_type, facts.consumer,
            facts.error, facts.source, facts.failed_at,
        )
        if is_own(facts.consumer):
            # one of the archive's own consumers failed on an event the archive already took back from its own
            # letter: that recovery is the remedy, whichever of the two letters the store read first
            await conn.execute(
                """UPDATE archive_gaps SET delivered = nextval('archive_arrival')
                   WHERE letter_id = $1 AND letter_time = $2 AND delivered IS NULL
                   AND EXISTS (SELECT 1 FROM archive_events WHERE ce_id = $3 AND recovered_from IS NOT NULL)""",
                letter.id, letter.time, facts.event_id,
            )

    async def _recover(self, conn: asyncpg.Connection, letter: Envelope, dead: wire.DeadLettered) -> None:
        """The archive could not store a record: keep the event its own dead letter carries, as it came."""
        if dead.source_topic == self.deadletter_topic:
            return  # a letter about a letter: its gap is noted; never a chain of recoveries
        body = dead.source_value.encode("utf-8", "surrogatepass")
        try:
            original = unwrap([(k, v.encode()) for k, v in dead.source_headers.items()], body)
            _loads(body)
        except ValueError:
            return  # not an event (no envelope, no JSON): the letter itself is the evidence
        await self._store(
            conn, original, dead.source_topic, dead.source_partition, dead.source_offset, dead.source_key, letter.id
        )
