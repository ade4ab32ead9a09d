"""The archive's evidence in SQL: record hashes, the whole-archive chain, checkpoints, expiries, past states.

**Record hash.** ``archive_record_hash(...)`` (SQL) hashes a record's stored form: every column, the body as
PostgreSQL holds it (``jsonb`` text, or the raw bytes), times as microseconds since the epoch (so no time
zone setting changes it). The same function recomputes it when verifying.

**Chain order.** The chain follows ``archive_events.seq``. Consumers insert concurrently, so a lower ``seq``
may commit after a higher one; the chainer therefore links only up to a *horizon*: once per round it takes a
SHARE lock on ``archive_events`` for an instant (waiting at most ``LOCK_TIMEOUT`` for the consumers' open
transactions, else trying again next round), reads ``max(seq)``, and lets go. Every ``seq`` up to it is then
committed or never will be (sequence values are handed out one at a time, ``CACHE 1``), and every later insert
gets a higher one. Only the instance holding the chain's advisory lock (``pg_try_advisory_lock``, taken first)
asks for that SHARE lock; the others skip the round. So the chain order is deterministic; consumers wait for
the chain at most that instant per round, and links are computed afterwards, in batches.

**Append-only.** ``archive_chain``, ``archive_checkpoints``, ``archive_keys`` and ``archive_expiries`` refuse
UPDATE and DELETE. ``archive_events`` still refuses DELETE always, and UPDATE except one: the body of a record
whose expiry is recorded in ``archive_expiries`` (in the same transaction), to exactly the form that expiry
names (its ``after_hash``), and only of the form its action allows: a purge drops the body (no body left), an
anonymisation only replaces values with ``"[anonymised]"``; a raw body (one jsonb could not hold) is replaced
whole by ``"[anonymised]"``, its bytes dropped (the trigger cannot check a field-wise change of bytes).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeAlias
from uuid import UUID

import asyncpg
import orjson

from tsop_archive.domain import FINAL
from tsop_archive.projection import _loads, jsonb_safe
from tsop_archive.records.domain import (
    ANNOUNCEMENT_PARTITION,
    ANNOUNCEMENT_TYPE,
    GENESIS,
    NEVER_EXPIRES,
    Candidate,
    Checkpoint,
    Matter,
    announcement,
    announcement_id,
    chain,
    checkpoint_message,
    has_personal_data,
    matter_refs,
    signed,
)
from tsop_events.schemas import Reopened

REOPENED = Reopened.event_type
ARCHIVE_EXPIRED = ANNOUNCEMENT_TYPE
LOCK_TIMEOUT = "200ms"
CHAIN_LOCK = 0x7453_4F50_6368  # advisory lock: one chainer at a time across instances

Reader: TypeAlias = asyncpg.Pool | asyncpg.Connection
"""What the read-only queries run on: the pool, or a connection of a ``snapshot``."""


def hash_sql(a: str, data: str | None = None, raw: str | None = None) -> str:
    """The record hash of alias ``a``'s row, optionally with another body (``data``, ``raw``)."""
    return (
        f"archive_record_hash({a}.seq, {a}.ce_id, {a}.topic, {a}.kafka_partition, {a}.kafka_offset, {a}.key, "
        f"{a}.ce_type, {a}.ce_source, {a}.ce_time, {a}.correlation_id, {a}.causation_id, "
        f"{data or f'{a}.data'}, {raw or f'{a}.raw'}, {a}.recovered_from, {a}.stored_at)"
    )


DDL = (
    # every column, text fields quoted (so no two rows read alike), times as exact epoch seconds (no time zone
    # setting changes them), then the body: J + its jsonb text, R + its raw bytes, or N when dropped. STABLE
    # (not IMMUTABLE) so that PostgreSQL inlines it into the query instead of calling it row by row.
    r"""CREATE OR REPLACE FUNCTION archive_record_hash(
         seq bigint, ce_id text, topic text, kafka_partition int, kafka_offset bigint, key text, ce_type text,
         ce_source text, ce_time timestamptz, correlation_id text, causation_id text, data jsonb, raw bytea,
         recovered_from text, stored_at timestamptz) RETURNS bytea AS $$
         SELECT sha256(convert_to(concat_ws('|', seq, quote_nullable(ce_id), quote_nullable(topic), kafka_partition,
             kafka_offset, quote_nullable(key), quote_nullable(ce_type), quote_nullable(ce_source),
             extract(epoch FROM ce_time), quote_nullable(correlation_id), quote_nullable(causation_id),
             quote_nullable(recovered_from), extract(epoch FROM stored_at), ''), 'UTF8')
           || CASE WHEN data IS NOT NULL THEN '\x4a'::bytea || convert_to(data::text, 'UTF8')
                   WHEN raw IS NOT NULL THEN '\x52'::bytea || raw ELSE '\x4e'::bytea END)
       $$ LANGUAGE sql STABLE PARALLEL SAFE""",
    """CREATE TABLE IF NOT EXISTS archive_chain (
         seq bigint PRIMARY KEY, record_hash bytea NOT NULL, link bytea NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS archive_keys (
         key_id text PRIMARY KEY, public_key bytea NOT NULL, first_used timestamptz NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS archive_checkpoints (
         number bigserial PRIMARY KEY, upto_seq bigint NOT NULL UNIQUE, count bigint NOT NULL, link bytea NOT NULL,
         at timestamptz NOT NULL, key_id text NOT NULL, signature bytea NOT NULL)""",
    # since v2 each checkpoint signs its predecessor's digest (records.domain.checkpoint_message)
    "ALTER TABLE archive_checkpoints ADD COLUMN IF NOT EXISTS previous bytea",
    """CREATE TABLE IF NOT EXISTS archive_expiries (
         seq bigint NOT NULL, action text NOT NULL, event_id text NOT NULL, expiry_id uuid NOT NULL,
         record_class text NOT NULL, matter text NOT NULL, after_hash bytea NOT NULL, at timestamptz NOT NULL,
         witness_before text, witness_after text, customers text[] NOT NULL DEFAULT '{}',
         PRIMARY KEY (seq, action))""",
    "CREATE INDEX IF NOT EXISTS archive_expiries_matter ON archive_expiries (matter)",
    "CREATE INDEX IF NOT EXISTS archive_events_type ON archive_events (ce_type, ce_time)",
    # the archive's announcements of its expiries, by matter: what ``verify`` looks up for each expired record
    f"""CREATE INDEX IF NOT EXISTS archive_events_announcements ON archive_events (key)
        WHERE ce_type = '{ANNOUNCEMENT_TYPE}' AND kafka_partition = {ANNOUNCEMENT_PARTITION}""",
    *(
        f"""DO $$ BEGIN
              CREATE TRIGGER {t}_no_change BEFORE UPDATE OR DELETE ON {t}
              FOR EACH ROW EXECUTE FUNCTION archive_events_immutable();
            EXCEPTION WHEN duplicate_object THEN NULL; END $$"""
        for t in ("archive_chain", "archive_keys", "archive_checkpoints", "archive_expiries")
    ),
    # whether ``new`` is ``old`` with some values (also inside ``changes``) replaced by "[anonymised]" and nothing
    # else changed: what an anonymising expiry may do to a body, and no more
    """CREATE OR REPLACE FUNCTION archive_anonymised_of(old jsonb, new jsonb) RETURNS boolean AS $$
       BEGIN
         IF new = '"[anonymised]"'::jsonb THEN RETURN old IS NOT NULL; END IF;
         IF old IS NULL OR new IS NULL OR jsonb_typeof(old) <> 'object' OR jsonb_typeof(new) <> 'object' THEN
           RETURN false;
         END IF;
         IF (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(old) k)
            IS DISTINCT FROM (SELECT array_agg(k ORDER BY k) FROM jsonb_object_keys(new) k) THEN
           RETURN false;
         END IF;
         RETURN NOT EXISTS (
           SELECT 1 FROM jsonb_each(new) n JOIN jsonb_each(old) o ON o.key = n.key
           WHERE n.value <> o.value AND n.value <> '"[anonymised]"'::jsonb
             AND NOT (n.key = 'changes' AND archive_anonymised_of(o.value, n.value)));
       END $$ LANGUAGE plpgsql IMMUTABLE""",
    # archive_events: DELETE never; UPDATE only to the body a recorded expiry names, of the form its action allows
    f"""CREATE OR REPLACE FUNCTION archive_events_guard() RETURNS trigger AS $$
       BEGIN
         IF TG_OP = 'UPDATE'
            AND (NEW.seq, NEW.ce_id, NEW.topic, NEW.kafka_partition, NEW.kafka_offset, NEW.key, NEW.ce_type,
                 NEW.ce_source, NEW.ce_time, NEW.correlation_id, NEW.causation_id, NEW.recovered_from, NEW.stored_at)
                IS NOT DISTINCT FROM
                (OLD.seq, OLD.ce_id, OLD.topic, OLD.kafka_partition, OLD.kafka_offset, OLD.key, OLD.ce_type,
                 OLD.ce_source, OLD.ce_time, OLD.correlation_id, OLD.causation_id, OLD.recovered_from, OLD.stored_at)
            AND EXISTS (SELECT 1 FROM archive_expiries x WHERE x.seq = NEW.seq AND x.after_hash = {hash_sql('NEW')}
                        AND CASE x.action
                              WHEN 'purged' THEN NEW.data IS NULL AND NEW.raw IS NULL
                              WHEN 'anonymised' THEN CASE WHEN OLD.raw IS NOT NULL
                                THEN NEW.raw IS NULL AND NEW.data = '"[anonymised]"'::jsonb
                                ELSE archive_anonymised_of(OLD.data, NEW.data) END
                              ELSE false END)
         THEN RETURN NEW; END IF;
         RAISE EXCEPTION 'the archive is append-only (a body changes only by a recorded expiry)';
       END $$ LANGUAGE plpgsql""",
    """CREATE OR REPLACE TRIGGER archive_events_no_change BEFORE UPDATE OR DELETE ON archive_events
       FOR EACH ROW EXECUTE FUNCTION archive_events_guard()""",
)


# --------------------------------------------------------------------------- the chain


async def horizon(conn: asyncpg.Connection) -> int | None:
    """The highest ``seq`` below which every record is committed for good; None if the lock was not had
    (within ``LOCK_TIMEOUT``: the consumers then go on, and the chainer tries again next round)."""
    try:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            await conn.execute("LOCK TABLE archive_events IN SHARE MODE")
            return int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM archive_events"))
    except asyncpg.LockNotAvailableError:
        return None


async def chain_pending(pool: asyncpg.Pool, batch: int = 50_000) -> int:
    """Link every record up to the horizon that is not linked yet; return how many were linked.

    Only the chain leader (the instance holding the advisory lock) asks for the SHARE lock: the others return
    at once, so the consumers' inserts queue behind one instance's instant, not every instance's."""
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", CHAIN_LOCK):
            return 0
        try:
            top = await horizon(conn)
            if top is None:
                return 0
            return await _link_up_to(conn, top, batch)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", CHAIN_LOCK)


async def _link_up_to(conn: asyncpg.Connection, top: int, batch: int) -> int:
    linked = 0
    async with conn.transaction():
        last = await conn.fetchrow("SELECT seq, link FROM archive_chain ORDER BY seq DESC LIMIT 1")
        after, prev = (0, GENESIS) if last is None else (int(last["seq"]), bytes(last["link"]))
        while after < top:
            rows = await conn.fetch(
                f"SELECT e.seq, {hash_sql('e')} AS h FROM archive_events e WHERE e.seq > $1 AND e.seq <= $2 "
                "ORDER BY e.seq LIMIT $3",
                after, top, batch,
            )
            if not rows:
                break
            hashes = [bytes(r["h"]) for r in rows]
            links = chain(prev, hashes)
            await conn.copy_records_to_table(
                "archive_chain", records=[(r["seq"], h, lk) for r, h, lk in zip(rows, hashes, links, strict=True)],
                columns=["seq", "record_hash", "link"],
            )
            after, prev = int(rows[-1]["seq"]), links[-1]
            linked += len(rows)
    return linked


@dataclass(frozen=True)
class ChainHead:
    seq: int
    count: int
    link: bytes


async def chain_head(pool: asyncpg.Pool, known_seq: int = 0, known_count: int = 0) -> ChainHead | None:
    """The last link, and how many records the chain holds up to it: counted from a known point (the last
    checkpoint's, or the head an earlier round read: links are only ever appended above the last one, by one
    writer at a time, and never changed or removed, so the count up to a link read once stays true), so a round
    reads only what is new."""
    row = await pool.fetchrow(
        "SELECT seq, link, (SELECT count(*) FROM archive_chain WHERE seq > $1) AS n FROM archive_chain "
        "ORDER BY seq DESC LIMIT 1",
        known_seq,
    )
    return None if row is None else ChainHead(int(row["seq"]), known_count + int(row["n"]), bytes(row["link"]))


async def link_at(pool: asyncpg.Pool, seq: int) -> bytes | None:
    link = await pool.fetchval("SELECT link FROM archive_chain WHERE seq = $1", seq)
    return None if link is None else bytes(link)


async def chained_since(pool: asyncpg.Pool, seq: int) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM archive_chain WHERE seq > $1", seq))


# --------------------------------------------------------------------------- keys and checkpoints


async def publish_key(pool: asyncpg.Pool, kid: str, public_key: bytes, at: datetime) -> None:
    await pool.execute(
        "INSERT INTO archive_keys (key_id, public_key, first_used) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        kid, public_key, at,
    )


async def public_keys(pool: Reader) -> dict[str, tuple[bytes, datetime]]:
    rows = await pool.fetch("SELECT key_id, public_key, first_used FROM archive_keys ORDER BY first_used")
    return {r["key_id"]: (bytes(r["public_key"]), r["first_used"]) for r in rows}


def _checkpoint(r: asyncpg.Record) -> Checkpoint:
    return Checkpoint(
        number=int(r["number"]), upto_seq=int(r["upto_seq"]), count=int(r["count"]), link=bytes(r["link"]),
        at=r["at"], key_id=r["key_id"], signature=bytes(r["signature"]),
        previous=None if r["previous"] is None else bytes(r["previous"]),
    )


async def last_checkpoint(pool: asyncpg.Pool) -> Checkpoint | None:
    r = await pool.fetchrow("SELECT * FROM archive_checkpoints ORDER BY number DESC LIMIT 1")
    return None if r is None else _checkpoint(r)


async def checkpoint_numbered(pool: Reader, number: int) -> Checkpoint | None:
    r = await pool.fetchrow("SELECT * FROM archive_checkpoints WHERE number = $1", number)
    return None if r is None else _checkpoint(r)


CHECKPOINT_LOCK = 0x7453_4F50_6370  # advisory lock: one checkpoint signed at a time, after the last one


async def add_checkpoint(
    pool: asyncpg.Pool, upto_seq: int, count: int, link_: bytes, at: datetime, kid: str,
    sign: Callable[[bytes], bytes],
) -> Checkpoint | None:
    """Sign and store a checkpoint after the last one (whose digest it signs), under a lock so that two
    instances never sign two successors of one checkpoint. None when one at ``upto_seq`` exists already."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", CHECKPOINT_LOCK)
        last = await conn.fetchrow("SELECT * FROM archive_checkpoints ORDER BY number DESC LIMIT 1")
        if last is not None and int(last["upto_seq"]) >= upto_seq:
            return None
        previous = GENESIS if last is None else _checkpoint(last).digest()
        signature = sign(checkpoint_message(upto_seq, count, link_, at, previous))
        row = await conn.fetchrow(
            "INSERT INTO archive_checkpoints (upto_seq, count, link, at, key_id, signature, previous) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (upto_seq) DO NOTHING RETURNING *",
            upto_seq, count, link_, at, kid, signature, previous,
        )
        return None if row is None else _checkpoint(row)


async def checkpoint_before(pool: Reader, number: int) -> Checkpoint | None:
    """The checkpoint just before number ``number`` (numbers may skip: a sequence)."""
    r = await pool.fetchrow(
        "SELECT * FROM archive_checkpoints WHERE number < $1 ORDER BY number DESC LIMIT 1", number)
    return None if r is None else _checkpoint(r)


async def checkpoints(pool: Reader, from_seq: int = 0, to_seq: int = 2**62, limit: int = 10_000) -> list[
    Checkpoint
]:
    rows = await pool.fetch(
        "SELECT * FROM archive_checkpoints WHERE upto_seq >= $1 AND upto_seq <= $2 ORDER BY number LIMIT $3",
        from_seq, to_seq, limit,
    )
    return [_checkpoint(r) for r in rows]


# --------------------------------------------------------------------------- verification

_EXPIRED = f"""SELECT x.action, x.matter FROM archive_expiries x WHERE x.seq = e.seq AND x.after_hash = {hash_sql('e')}
                   AND (x.action <> 'purged' OR (e.data IS NULL AND e.raw IS NULL))"""
# a record is expired only once the expiry's announcement is itself in the chain, naming the record and the action:
# the archive's own announcement (written and linked with the expiry, in one transaction), linked at or below the
# chain's top ($3). Without it, a row dropped or anonymised behind the archive's back, with a forged expiry row,
# would pass. (Whether the announcement is signed by the archive is checked in Python, from ``COVERS``.)
# Both subqueries are fenced (OFFSET 0) so the lookup goes record -> its expiry (by key) -> the matter's
# announcements (by their index), whatever the statistics say: never a scan of every announcement per record.
_ANNOUNCED = f"""SELECT 1 FROM archive_events a JOIN archive_chain ac ON ac.seq = a.seq
      WHERE a.key = x.matter AND a.ce_type = '{ARCHIVE_EXPIRED}' AND a.kafka_partition = {ANNOUNCEMENT_PARTITION}
        AND a.seq <= $3 AND a.data -> 'event_ids' ? e.ce_id AND a.data ->> 'action' = x.action OFFSET 0"""
_STATE = f"""CASE WHEN e.seq IS NULL THEN 'missing' WHEN c.seq IS NULL THEN 'unchained'
      WHEN {hash_sql('e')} = c.record_hash THEN 'intact'
      WHEN EXISTS (SELECT 1 FROM ({_EXPIRED} OFFSET 0) x, LATERAL ({_ANNOUNCED}) a) THEN 'expired'
      WHEN EXISTS ({_EXPIRED}) THEN 'unannounced'
      ELSE 'altered' END"""

VERIFY = f"""SELECT coalesce(c.seq, e.seq) AS seq, c.record_hash, c.link, {_STATE} AS state
  FROM (SELECT seq, record_hash, link FROM archive_chain WHERE seq >= $1 AND seq <= $2) c
  FULL JOIN (SELECT * FROM archive_events WHERE seq >= $1 AND seq <= least($2, $3)) e ON e.seq = c.seq
  ORDER BY 1"""

# the announcements (their bodies) that make each of the given records expired ($1, rows VERIFY found expired;
# chain's top $2). The expiry is the record's only one that can match its body (so no hash is recomputed): a purge
# when no body is left, else an anonymisation (never bodiless) — and (seq, action) is the key of archive_expiries.
# Driven by the window's records (OFFSET 0 keeps each lateral per record: its expiry by key, the announcements by
# their index on the matter): the cost follows the expired records of the window, not every expiry or
# announcement the archive holds.
COVERS = f"""SELECT e.seq, a.body
  FROM unnest($1::bigint[]) AS w(seq) JOIN archive_events e ON e.seq = w.seq
  JOIN LATERAL (
    SELECT x.action, x.matter FROM archive_expiries x
    WHERE x.seq = e.seq AND x.action = CASE WHEN e.data IS NULL AND e.raw IS NULL THEN 'purged' ELSE 'anonymised' END
    OFFSET 0) x ON true
  JOIN LATERAL (
    SELECT a.seq, a.data::text AS body FROM archive_events a
    WHERE a.key = x.matter AND a.ce_type = '{ARCHIVE_EXPIRED}' AND a.kafka_partition = {ANNOUNCEMENT_PARTITION}
      AND a.seq <= $2 AND a.data -> 'event_ids' ? e.ce_id AND a.data ->> 'action' = x.action
    OFFSET 0) a ON true
  JOIN archive_chain ac ON ac.seq = a.seq"""


@contextlib.asynccontextmanager
async def snapshot(pool: asyncpg.Pool, n: int = 2, wait: float = 0.5) -> AsyncIterator[list[asyncpg.Connection]]:
    """Up to ``n`` connections that all read the store as it stood at one instant: read-only REPEATABLE READ
    transactions sharing one exported snapshot (``pg_export_snapshot``). A pass of ``verify`` reads through
    them, so whatever commits meanwhile (a retention round, the chainer's links) it sees entirely or not at all.
    A connection the pool cannot give within ``wait`` seconds is done without (at least one is always had)."""
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(pool.acquire())
        await stack.enter_async_context(first.transaction(isolation="repeatable_read", readonly=True))
        snap = await first.fetchval("SELECT pg_export_snapshot()")
        conns: list[asyncpg.Connection] = [first]
        for _ in range(n - 1):
            try:
                conn = await stack.enter_async_context(pool.acquire(timeout=wait))
            except TimeoutError:
                break
            await stack.enter_async_context(conn.transaction(isolation="repeatable_read", readonly=True))
            await conn.execute(f"SET TRANSACTION SNAPSHOT '{snap}'")
            conns.append(conn)
        yield conns


async def link_before(pool: Reader, seq: int) -> bytes:
    """The stored link just before ``seq`` (the chain's start when none)."""
    v = await pool.fetchval("SELECT link FROM archive_chain WHERE seq < $1 ORDER BY seq DESC LIMIT 1", seq)
    return GENESIS if v is None else bytes(v)


async def verify_rows(
    conns: Sequence[asyncpg.Connection], from_seq: int, to_seq: int, window: int = 25_000,
) -> AsyncGenerator[tuple[Sequence[Any], dict[int, list[str]]], None]:
    """The chain's positions from ``from_seq`` to ``to_seq`` (inclusive), a window of ``seq`` at a time,
    as (seq, record_hash, link, state), with — for the window's expired records — the announcements that name
    them (seq -> their bodies as JSON text). Records above the chained horizon are not yet linked: left out.
    Read through the connections of one ``snapshot``: while the caller works on one window, the next ones are
    read (and their record hashes recomputed by PostgreSQL), one per connection."""
    top = int(await conns[0].fetchval("SELECT coalesce(max(seq), 0) FROM archive_chain"))
    end = min(to_seq, top)
    windows = [(lo, min(lo + window - 1, end)) for lo in range(from_seq, end + 1, window)]
    ahead = len(conns)
    pending: collections.deque[asyncio.Future[list[asyncpg.Record]]] = collections.deque()
    nxt = done = 0
    try:
        while nxt < len(windows) or pending:
            while nxt < len(windows) and len(pending) < ahead:
                # window n goes to connection n mod ahead: the one window n - ahead used, already answered
                pending.append(asyncio.ensure_future(conns[nxt % ahead].fetch(VERIFY, *windows[nxt], top)))
                nxt += 1
            rows = await pending.popleft()
            expired = [int(r[0]) for r in rows if r[3] == "expired"]
            covers: dict[int, list[str]] = {}
            if expired:  # on the connection the window was read on: free until the next window is sent
                for c in await conns[done % ahead].fetch(COVERS, expired, top):
                    covers.setdefault(int(c["seq"]), []).append(c["body"])
            done += 1
            yield rows, covers
    finally:
        for f in pending:
            f.cancel()
        for f in pending:
            with contextlib.suppress(asyncio.CancelledError, asyncpg.PostgresError):
                await f


# --------------------------------------------------------------------------- retention


@dataclass
class MatterRecords:
    matter: Matter
    records: list[Candidate]
    bodies: dict[int, Any]  # seq -> stored body (parsed)
    raw: set[int] = field(default_factory=set)  # seqs whose body is kept raw (jsonb could not hold it)


@dataclass(frozen=True)
class Cursor:
    """Where a retention round has got to: ended tickets by (end, id), other matters by key."""

    ended_at: datetime = datetime(1, 1, 1, tzinfo=UTC)
    key: str = ""
    other: str = ""


async def matters_due(
    pool: asyncpg.Pool, tickets_topic: str, cutoff: datetime, limit: int, after: Cursor = Cursor()
) -> tuple[list[MatterRecords], Cursor | None]:
    """Matters with records old enough that some class may have expired (``cutoff`` = now - the shortest
    period): ended tickets, and the keys of other topics (a complaint, an incident...). Each matter comes with
    ALL its records not purged yet (so what it is about — its customer, its tickets — is read from every one of
    them, not from a page's worth); the archive's own expiry announcements are never candidates, and a ticket
    whose only records left are those is not picked. A page of matters at a time after ``after``; the next
    cursor is None when nothing is left."""
    never = sorted(NEVER_EXPIRES)
    rows = await pool.fetch(
        """WITH last_end AS (
              SELECT DISTINCT ON (key) key, ce_type, ce_time FROM archive_events
              WHERE topic = $1 AND ce_type = ANY($2::text[] || $9::text) AND key IS NOT NULL
              ORDER BY key, seq DESC),
            ended AS (
              SELECT key, ce_time AS ended_at FROM last_end
              WHERE ce_type <> $9 AND ce_time <= $3),
            picked AS (
              SELECT key, ended_at FROM ended e WHERE EXISTS (
                SELECT 1 FROM archive_events r WHERE r.key = e.key AND r.topic = $1 AND r.ce_type <> ALL($8::text[])
                AND NOT EXISTS (SELECT 1 FROM archive_expiries x WHERE x.seq = r.seq AND x.action = 'purged'))
              AND (ended_at, key) > ($5, $6)
              ORDER BY ended_at, key LIMIT $4),
            others AS (
              SELECT DISTINCT coalesce(r.key, r.ce_id) AS key FROM archive_events r
              WHERE r.topic <> $1 AND r.ce_time <= $3 AND coalesce(r.key, r.ce_id) > $7
              AND r.ce_type <> ALL($8::text[])
              AND NOT EXISTS (SELECT 1 FROM archive_expiries x WHERE x.seq = r.seq AND x.action = 'purged')
              ORDER BY 1 LIMIT $4)
            SELECT p.key, p.ended_at, true AS is_ticket, r.seq, r.ce_id, r.topic, r.ce_type, r.ce_time,
                   r.data::text AS data, r.raw,
                   EXISTS (SELECT 1 FROM archive_expiries x WHERE x.seq = r.seq AND x.action = 'anonymised') AS anon
            FROM picked p JOIN archive_events r ON r.key = p.key AND r.topic = $1
            WHERE NOT EXISTS (SELECT 1 FROM archive_expiries x WHERE x.seq = r.seq AND x.action = 'purged')
              AND r.ce_type <> ALL($8::text[])
            UNION ALL
            SELECT o.key, NULL::timestamptz, false, r.seq, r.ce_id, r.topic, r.ce_type, r.ce_time,
                   r.data::text, r.raw,
                   EXISTS (SELECT 1 FROM archive_expiries x WHERE x.seq = r.seq AND x.action = 'anonymised')
            FROM others o JOIN archive_events r ON coalesce(r.key, r.ce_id) = o.key AND r.topic <> $1
            WHERE NOT EXISTS (SELECT 1 FROM archive_expiries x WHERE x.seq = r.seq AND x.action = 'purged')
              AND r.ce_type <> ALL($8::text[])
            ORDER BY 1, 4""",
        tickets_topic, sorted(FINAL), cutoff, limit, after.ended_at, after.key, after.other, never,
        REOPENED,
    )
    if not rows:
        return [], None
    last_ticket = max(((r["ended_at"], r["key"]) for r in rows if r["is_ticket"]), default=None)
    last_other = max((r["key"] for r in rows if not r["is_ticket"]), default=after.other)
    end, key = last_ticket or (after.ended_at, after.key)
    nxt = Cursor(end, key, last_other)
    out: dict[tuple[bool, str], MatterRecords] = {}
    keys = list({r["key"] for r in rows})
    refs: dict[str, set[str]] = {}
    for r in await pool.fetch(
        "SELECT matter, customers FROM archive_expiries WHERE matter = ANY($1::text[])", keys
    ):
        refs.setdefault(r["matter"], set()).update(r["customers"])
    for r in rows:
        body = r["data"] if r["data"] is not None else r["raw"]
        data = _loads(body) if body is not None else None
        m = out.get((r["is_ticket"], r["key"]))
        if m is None:
            m = out[(r["is_ticket"], r["key"])] = MatterRecords(
                Matter(r["key"], r["is_ticket"], r["ended_at"]), [], {}
            )
        m.records.append(Candidate(
            seq=int(r["seq"]), event_id=r["ce_id"], topic=r["topic"], event_type=r["ce_type"], time=r["ce_time"],
            personal=has_personal_data(data), anonymised=bool(r["anon"]),
        ))
        m.bodies[int(r["seq"])] = data
        if r["data"] is None and r["raw"] is not None:
            m.raw.add(int(r["seq"]))
    result = []
    for (_, key), m in out.items():
        customers, incidents, tickets = matter_refs(m.bodies.values())
        customers |= refs.get(key, set())
        tickets.discard(key)
        m.matter = Matter(key, m.matter.is_ticket, m.matter.ended_at, frozenset(customers), frozenset(incidents),
                          frozenset(tickets))
        result.append(m)
    return result, nxt


@dataclass(frozen=True)
class Change:
    """One record's body after an expiry, and what the expiry records of it."""

    seq: int
    event_id: str
    action: str
    data: Any  # the new body (None: purged)
    witness: tuple[str, str] | None


def announcements_topic(prefix: str) -> str:
    """Where the archive's own announcements are stored: a topic of the store only, never of the broker."""
    return f"{prefix}archive"


@dataclass(frozen=True)
class Announcing:
    """What the announcement of an expiry says besides the records: the period that ran out, who announces it
    (``source``, the archive's name), under which topic of the store (``announcements_topic``), and the key
    that signs it (the checkpoints' key: ``key_id``, ``sign``)."""

    days: int
    source: str
    topic: str
    key_id: str
    sign: Callable[[bytes], bytes]


async def apply_expiry(
    pool: asyncpg.Pool, expiry_id: str, matter: str, record_class: str, at: datetime, customers: Sequence[str],
    changes: Sequence[Change], announcing: Announcing, attempts: int = 100,
) -> int:
    """Record each change in ``archive_expiries``, change the body, announce the expiry (``records.domain.
    announcement``, naming the records changed) and link it all into the chain — in one transaction, so that
    no reader ever sees an expired body without its linked announcement. A change already recorded is skipped
    (a decision applied again after a crash; announced then). Returns how many bodies changed.

    The transaction holds the chain's advisory lock (the chainer skips its round meanwhile) and, to link, the
    same instant SHARE lock on ``archive_events`` the chainer takes (``horizon``); when that lock is not had
    within ``LOCK_TIMEOUT`` the whole transaction is tried again."""
    for attempt in range(attempts):
        try:
            return await _apply_expiry(pool, expiry_id, matter, record_class, at, customers, changes, announcing)
        except (asyncpg.LockNotAvailableError, asyncpg.DeadlockDetectedError):
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(min(0.02 * (attempt + 1), 0.5))
    raise AssertionError("unreachable")


async def _apply_expiry(
    pool: asyncpg.Pool, expiry_id: str, matter: str, record_class: str, at: datetime, customers: Sequence[str],
    changes: Sequence[Change], announcing: Announcing,
) -> int:
    done: list[Change] = []
    async with pool.acquire() as conn, conn.transaction():
        # the chain's writer for this transaction: taken first, before any row is changed (the chainer takes
        # it before its SHARE lock too, so the two never wait on each other the wrong way round)
        await conn.execute("SELECT pg_advisory_xact_lock($1)", CHAIN_LOCK)
        for c in changes:
            text: str | None = None
            raw: bytes | None = None
            if c.data is not None:
                body = orjson.dumps(c.data)
                if jsonb_safe(body):
                    text = body.decode()
                else:
                    raw = body
            inserted = await conn.fetchval(
                f"""INSERT INTO archive_expiries (seq, action, event_id, expiry_id, record_class, matter, after_hash,
                      at, witness_before, witness_after, customers)
                    SELECT e.seq, $2, $3, $4::uuid, $5, $6, {hash_sql('e', '$7::jsonb', '$8::bytea')}, $9, $10, $11,
                           $12::text[]
                    FROM archive_events e WHERE e.seq = $1
                    ON CONFLICT DO NOTHING RETURNING seq""",
                c.seq, c.action, c.event_id, expiry_id, record_class, matter, text, raw, at,
                c.witness[0] if c.witness else None, c.witness[1] if c.witness else None, list(customers),
            )
            if inserted is None:
                continue
            await conn.execute("UPDATE archive_events SET data = $2::jsonb, raw = $3 WHERE seq = $1", c.seq, text, raw)
            done.append(c)
        if not done:
            return 0
        xid = UUID(expiry_id)
        said = signed(announcement(xid, matter, record_class, done[0].action, announcing.days, at,
                                   [c.seq for c in done], [c.event_id for c in done]),
                      announcing.key_id, announcing.sign)
        await conn.execute(
            """INSERT INTO archive_events (ce_id, topic, kafka_partition, kafka_offset, key, ce_type, ce_source,
                 ce_time, causation_id, data)
               VALUES ($1, $2, $3, -1, $4, $5, $6, $7, $8, $9::jsonb) ON CONFLICT (ce_id) DO NOTHING""",
            announcement_id(xid), announcing.topic, ANNOUNCEMENT_PARTITION, matter, ANNOUNCEMENT_TYPE,
            announcing.source, at, expiry_id, orjson.dumps(said).decode(),
        )
        # link up to the horizon, the announcement included: committed together with the expiry
        await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        await conn.execute("LOCK TABLE archive_events IN SHARE MODE")
        top = int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM archive_events"))
        await _link_up_to(conn, top, 50_000)
    return len(done)


async def witnesses(pool: asyncpg.Pool, event_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """For expired events of sealed dossiers: the dossier chain's digest before and after each (so the seal
    still verifies without the body)."""
    rows = await pool.fetch(
        "SELECT DISTINCT ON (event_id) event_id, witness_before, witness_after FROM archive_expiries "
        "WHERE event_id = ANY($1::text[]) AND witness_after IS NOT NULL ORDER BY event_id, at",
        list(event_ids),
    )
    return {r["event_id"]: (r["witness_before"], r["witness_after"]) for r in rows}


async def expiries(pool: asyncpg.Pool, matter: str | None, limit: int) -> list[asyncpg.Record]:
    return list(await pool.fetch(
        "SELECT seq, action, event_id, expiry_id, record_class, matter, at FROM archive_expiries "
        "WHERE $1::text IS NULL OR matter = $1 ORDER BY at, seq LIMIT $2",
        matter, limit,
    ))


# --------------------------------------------------------------------------- time travel


async def ticket_events_until(
    pool: asyncpg.Pool, tickets_topic: str, ticket_id: str, as_of: datetime
) -> list[tuple[str, str, datetime, Any]]:
    """A ticket's events with a time up to ``as_of``, in arrival order."""
    rows = await pool.fetch(
        "SELECT ce_id, ce_type, ce_time, data::text AS data, raw FROM archive_events "
        "WHERE key = $1 AND topic = $2 AND ce_time <= $3 ORDER BY seq",
        ticket_id, tickets_topic, as_of,
    )
    out = []
    for r in rows:
        body = r["data"] if r["data"] is not None else r["raw"]
        out.append((r["ce_id"], r["ce_type"], r["ce_time"], _loads(body) if body is not None else None))
    return out


async def held_anything(pool: asyncpg.Pool, tickets_topic: str, ticket_id: str) -> bool:
    return bool(await pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM archive_events WHERE key = $1 AND topic = $2)", ticket_id, tickets_topic
    ))


async def backlog_at(
    pool: asyncpg.Pool, tickets_topic: str, as_of: datetime, opening: Sequence[str], ending: Sequence[str],
    reopening: Sequence[str] = (REOPENED,),
) -> list[asyncpg.Record]:
    """Tickets open at ``as_of``: an opening event at or before it, and of their final and reopening events at
    or before it, the last (in store order) is not final (a reopened ticket is open again)."""
    return list(await pool.fetch(
        """SELECT key, min(ce_time) FILTER (WHERE ce_type = ANY($3::text[])) AS opened_at
           FROM archive_events WHERE topic = $1 AND ce_time <= $2 AND key IS NOT NULL
             AND ce_type = ANY($3::text[] || $4::text[] || $5::text[])
           GROUP BY key
           HAVING count(*) FILTER (WHERE ce_type = ANY($3::text[])) > 0
              AND coalesce((array_agg(ce_type = ANY($4::text[]) ORDER BY seq DESC)
                            FILTER (WHERE ce_type = ANY($4::text[] || $5::text[])))[1], false) = false
           ORDER BY 2, 1""",
        tickets_topic, as_of, list(opening), list(ending), list(reopening),
    ))


async def log_rows(pool: asyncpg.Pool, tickets_topic: str, after: int, limit: int) -> list[asyncpg.Record]:
    """A page of the tickets' log in store order, to rebuild a projection from."""
    return list(await pool.fetch(
        "SELECT seq, key, ce_id, ce_type, ce_time, data::text AS data FROM archive_events "
        "WHERE topic = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        tickets_topic, after, limit,
    ))
