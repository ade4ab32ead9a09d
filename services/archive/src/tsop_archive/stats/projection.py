"""The statistics' read model: each ticket's facts folded from the topics, exactly once, and the SQL that
answers a report from them.

``StatsProjection`` consumes the tickets, complaints, incidents and workforce topics. A batch of records
is applied in one transaction with the consumer's position (``ProjectionSink``): the facts of the batch's
tickets are read once, folded (``domain.fold_once``: an event delivered again changes nothing) and written
back. Events of other chapters (a ticket reopened, a complaint filed, an incident declared or restored)
are read by their type's name, as soon as the platform knows the type.

The figures are the SQL twins of ``domain.report`` and ``domain.scorecards``; a test holds them equal.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

import asyncpg
import orjson

from tsop_archive.stats.domain import (
    COMPLAINT_FILED,
    COMPLAINT_LINKED,
    COUNTERS,
    DIMENSIONS,
    INCIDENT_DECLARED,
    INCIDENT_RESCOPED,
    INCIDENT_RESTORED,
    SCORES,
    SELF_SERVICE,
    Assignment,
    Cell,
    CellKey,
    Compliance,
    Durations,
    Figures,
    Question,
    Report,
    Scorecard,
    TicketFacts,
    buckets,
    cell_deltas,
    day_of,
    fold,
    fold_once,
    moment,
    ticket_ids_of,
    value_deltas,
    wanted,
)
from tsop_events import schemas as wire
from tsop_events.consumer import Incoming, ProjectionSink
from tsop_events.topics import Topic

TIMES = (
    "submitted_at", "accepted_at", "rejected_at", "cancelled_at", "linked_at", "first_assigned_at", "responded_at",
    "resolved_at", "ended_at", "closed_at", "feedback_sent_at", "rated_at",
)
FACT_COLUMNS = (
    "ticket_id", "channel", "service_type", "region", "priority", *TIMES, "reject_reason", "resolutions", "reopens",
    "respond_breached", "resolve_breached", "score", "first_fix", "resolved_by", "seen",
)
# open from just after submission until its end, inclusive (a malformed end before the start: never open)
OPEN_SPAN = ("tstzrange(submitted_at, CASE WHEN ended_at IS NULL THEN NULL ELSE greatest(ended_at, submitted_at) END,"
             " '(]')")
# --- per-day rollups (issue 13: figures): the cells a whole-day report reads (``domain.contributions``) ---
_CELL_DIMS = ("day", "channel", "service_type", "region", "priority")
_TICKET_CELL = ("date_trunc('day', submitted_at, 'UTC')", "channel", "service_type", "region", "priority")
ROLLUP_DDL = (
    f"""CREATE TABLE IF NOT EXISTS stats_daily (
        day timestamptz NOT NULL, channel text, service_type text, region text, priority int,
        {", ".join(f"{c} bigint NOT NULL DEFAULT 0" for c in COUNTERS)},
        reasons jsonb NOT NULL DEFAULT '{{}}',
        UNIQUE NULLS NOT DISTINCT (day, channel, service_type, region, priority))""",
    # the durations of each cell, exact: each value once with how many of the cell's tickets have it (a batch
    # adds or takes out occurrences, ``n = n + delta``, and a value at 0 goes: its cost does not grow with the
    # cell; the report reads the values of the cells in its range and interpolates the percentiles itself;
    # ``n`` in the index lets that read be an index-only scan: a third to a half of the read's time on a month of
    # 1,000,000 tickets, for an index entry per change instead of a HOT update)
    """CREATE TABLE IF NOT EXISTS stats_daily_values (
        day timestamptz NOT NULL, channel text, service_type text, region text, priority int,
        kind text NOT NULL, v float8 NOT NULL, n int NOT NULL,
        UNIQUE NULLS NOT DISTINCT (day, channel, service_type, region, priority, kind, v) INCLUDE (n))""",
    # counts by key, summed (zeros dropped)
    """CREATE OR REPLACE FUNCTION stats_counts_add(a jsonb, b jsonb) RETURNS jsonb AS $$
         SELECT coalesce(jsonb_object_agg(k, n), '{}') FROM (
           SELECT k, sum(v::bigint) AS n FROM (SELECT * FROM jsonb_each_text(a) UNION ALL
                                               SELECT * FROM jsonb_each_text(b)) e(k, v)
           GROUP BY k HAVING sum(v::bigint) <> 0) x
       $$ LANGUAGE sql IMMUTABLE""",
    # the cells from the tickets' facts, whole (for a read model that predates them, and for a bench's fill)
    f"""CREATE OR REPLACE FUNCTION stats_daily_rebuild() RETURNS void AS $$
       BEGIN
         DELETE FROM stats_daily;
         DELETE FROM stats_daily_values;
         INSERT INTO stats_daily ({", ".join(_CELL_DIMS)}, {", ".join(COUNTERS)}, reasons)
         SELECT {", ".join(_CELL_DIMS)}, {", ".join(f"sum({c})" for c in COUNTERS)},
           coalesce((array_agg(reasons) FILTER (WHERE reasons IS NOT NULL))[1], '{{}}')
         FROM (
           SELECT {", ".join(_TICKET_CELL)}, count(*) AS submitted, count(accepted_at) AS accepted,
             count(rejected_at) AS rejected, count(cancelled_at) AS cancelled, count(linked_at) AS linked,
             count(resolved_at) AS resolved, count(closed_at) AS closed,
             count(*) FILTER (WHERE channel IN ({{self}})) AS self_service,
             count(*) FILTER (WHERE respond_breached OR responded_at IS NOT NULL) AS respond_measured,
             count(*) FILTER (WHERE NOT respond_breached AND responded_at IS NOT NULL) AS respond_met,
             count(*) FILTER (WHERE resolve_breached OR resolved_at IS NOT NULL) AS resolve_measured,
             count(*) FILTER (WHERE NOT resolve_breached AND resolved_at IS NOT NULL) AS resolve_met,
             count(feedback_sent_at) AS asked, count(score) AS rated, coalesce(sum(score), 0) AS score_sum,
             count(*) FILTER (WHERE resolved_at IS NOT NULL AND reopens > 0) AS reopened,
             count(*) FILTER (WHERE resolved_at IS NOT NULL AND first_fix) AS first_time_fixed,
             {", ".join(f"count(*) FILTER (WHERE score = {i}) AS s{i}" for i in range(1, 6))},
             0 AS ended, 0 AS settled,
             coalesce((SELECT jsonb_object_agg(r, n) FROM (SELECT r, count(*) AS n
                       FROM unnest(array_agg(reject_reason)) r WHERE r IS NOT NULL GROUP BY r) x), '{{}}') AS reasons
           FROM stats_tickets WHERE submitted_at IS NOT NULL GROUP BY 1, 2, 3, 4, 5
           UNION ALL
           SELECT date_trunc('day', ended_at, 'UTC'), channel, service_type, region, priority,
             {", ".join("0" for c in COUNTERS[:-2])}, count(*), 0, NULL
           FROM stats_tickets WHERE submitted_at IS NOT NULL AND ended_at IS NOT NULL GROUP BY 1, 2, 3, 4, 5
           UNION ALL
           SELECT date_trunc('day', greatest(ended_at, submitted_at), 'UTC'), channel, service_type, region, priority,
             {", ".join("0" for c in COUNTERS[:-2])}, 0, count(*), NULL
           FROM stats_tickets WHERE submitted_at IS NOT NULL AND ended_at IS NOT NULL GROUP BY 1, 2, 3, 4, 5
         ) AS parts ({", ".join(_CELL_DIMS)}, {", ".join(COUNTERS)}, reasons)
         GROUP BY {", ".join(_CELL_DIMS)};
         INSERT INTO stats_daily_values
         SELECT {", ".join(_TICKET_CELL)}, 'assign', assign_seconds, count(*) FROM stats_tickets
           WHERE submitted_at IS NOT NULL AND assign_seconds IS NOT NULL GROUP BY 1, 2, 3, 4, 5, 7
         UNION ALL
         SELECT {", ".join(_TICKET_CELL)}, 'resolve', resolve_seconds, count(*) FROM stats_tickets
           WHERE submitted_at IS NOT NULL AND resolve_seconds IS NOT NULL GROUP BY 1, 2, 3, 4, 5, 7;
       END $$ LANGUAGE plpgsql""".replace("{self}", ", ".join(f"'{c}'" for c in sorted(SELF_SERVICE))),
    # a read model from before the cells: build them once (an empty one has nothing to build)
    # (one instance at a time: a second one starting meanwhile waits, then finds the cells built)
    # (and cells from before ``stats_daily_values`` held their values in arrays, re-sorted and rewritten whole at
    # each change: their values are counted into ``stats_daily_values`` once and the arrays dropped)
    """DO $$ BEGIN
         PERFORM pg_advisory_xact_lock(7453504, 1);
         IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'stats_daily'::regclass AND attname = 'assign'
                    AND NOT attisdropped) THEN
           -- no write between the copy and the drop (an older instance's, stopped late): it would be lost with
           -- the arrays while its counters and position stay
           LOCK TABLE stats_daily IN SHARE MODE;
           INSERT INTO stats_daily_values
           SELECT day, channel, service_type, region, priority, k.kind, k.v, count(*)
           FROM stats_daily,
             LATERAL (SELECT 'assign', a FROM unnest(assign) a UNION ALL SELECT 'resolve', r FROM unnest(resolve) r)
               AS k(kind, v)
           GROUP BY 1, 2, 3, 4, 5, 6, 7
           ON CONFLICT (day, channel, service_type, region, priority, kind, v) DO NOTHING;
           ALTER TABLE stats_daily DROP COLUMN assign, DROP COLUMN resolve;
           DROP FUNCTION IF EXISTS stats_values_move(float8[], float8[], float8[]);
         END IF;
         IF NOT EXISTS (SELECT 1 FROM stats_daily) AND EXISTS (SELECT 1 FROM stats_tickets) THEN
           PERFORM stats_daily_rebuild();
         END IF;
       END $$""",
)
UPSERT_CELL = (
    f"INSERT INTO stats_daily ({', '.join(_CELL_DIMS)}, {', '.join(COUNTERS)}, reasons) "
    f"VALUES ({', '.join(f'${i + 1}' for i in range(len(_CELL_DIMS) + len(COUNTERS) + 1))}) "
    f"ON CONFLICT ({', '.join(_CELL_DIMS)}) DO UPDATE SET "
    + ", ".join(f"{c} = stats_daily.{c} + EXCLUDED.{c}" for c in COUNTERS)
    + ", reasons = stats_counts_add(stats_daily.reasons, EXCLUDED.reasons)"
)
# the values' occurrences added (or taken out), in one statement, in key order; the rows left at 0 (or below: a
# value taken out that the cell did not hold, which the arrays ignored) are returned to be deleted. The cells'
# rows are upserted first in the same transaction: a batch holds the lock of every cell whose values it moves,
# so no other batch writes them meanwhile (and the ctids returned stay the rows' until it commits)
_VALUE_COLUMNS = (*_CELL_DIMS, "kind", "v", "n")
_VALUE_TYPES = ("timestamptz", "text", "text", "text", "int", "text", "float8", "int")
UPSERT_VALUES = (
    "WITH up AS (INSERT INTO stats_daily_values AS t SELECT "
    + ", ".join(_VALUE_COLUMNS)
    + " FROM unnest(" + ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(_VALUE_TYPES)) + ") WITH ORDINALITY "
    + f"AS s({', '.join(_VALUE_COLUMNS)}, o) ORDER BY o "
    + f"ON CONFLICT ({', '.join(_VALUE_COLUMNS[:-1])}) DO UPDATE SET n = t.n + EXCLUDED.n RETURNING t.ctid, t.n) "
    + "SELECT ctid FROM up WHERE n <= 0"
)
DELETE_VALUES = "DELETE FROM stats_daily_values WHERE ctid = ANY($1::tid[]) AND n <= 0"


def _key_order(k: Sequence[Any]) -> tuple[Any, ...]:
    return tuple((v is None, "" if v is None else v) for v in k)


def cell_rows(deltas: Mapping[CellKey, Cell]) -> list[tuple[Any, ...]]:
    """The upserts of changed cells, in key order (so concurrent batches lock cells in one order)."""
    return [
        (*key, *(c.counts.get(n, 0) for n in COUNTERS), orjson.dumps(c.reasons).decode())
        for key, c in sorted(deltas.items(), key=lambda kv: _key_order(kv[0]))
    ]


def value_columns(deltas: Mapping[CellKey, Cell]) -> list[list[Any]]:
    """``UPSERT_VALUES``' arguments: one array per column of the values' changes, in key order."""
    rows = sorted(value_deltas(deltas).items(), key=lambda kv: _key_order(kv[0]))
    return [[k[i] for k, _ in rows] for i in range(len(_VALUE_COLUMNS) - 1)] + [[n for _, n in rows]]
# --- end of the per-day rollups' DDL ---


DDL = (
    f"""CREATE TABLE IF NOT EXISTS stats_tickets (
        ticket_id text PRIMARY KEY, channel text, service_type text, region text, priority int,
        {", ".join(f"{t} timestamptz" for t in TIMES)},
        reject_reason text, resolutions int NOT NULL, reopens int NOT NULL,
        respond_breached boolean NOT NULL, resolve_breached boolean NOT NULL, score int,
        first_fix boolean NOT NULL, resolved_by text, seen text[] NOT NULL,
        assign_seconds float8, resolve_seconds float8)""",
    "CREATE INDEX IF NOT EXISTS stats_tickets_submitted ON stats_tickets (submitted_at)",
    "CREATE INDEX IF NOT EXISTS stats_tickets_ended ON stats_tickets (ended_at)",
    # the tickets open at an instant (submitted before it, not ended before it): a stabbing query on a GiST index
    f"CREATE INDEX IF NOT EXISTS stats_tickets_open_span ON stats_tickets USING gist (({OPEN_SPAN})) "
    "WHERE submitted_at IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS stats_assignments (
        ticket_id text NOT NULL, n int NOT NULL, work_order_id text NOT NULL, technician_id text NOT NULL,
        assigned_at timestamptz NOT NULL, ended_at timestamptz, outcome text, PRIMARY KEY (ticket_id, n))""",
    "CREATE INDEX IF NOT EXISTS stats_assignments_assigned ON stats_assignments (assigned_at)",
    "CREATE TABLE IF NOT EXISTS stats_technicians (technician_id text PRIMARY KEY, capacity int NOT NULL)",
    """CREATE TABLE IF NOT EXISTS stats_complaints (
        complaint_id text PRIMARY KEY, ticket_id text, filed_at timestamptz NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS stats_complaints_filed ON stats_complaints (filed_at)",
    # the tickets a complaint is about (ComplaintReceived.ticket_ids, then ComplaintTicketLinked)
    "ALTER TABLE stats_complaints ADD COLUMN IF NOT EXISTS ticket_ids text[] NOT NULL DEFAULT '{}'",
    """CREATE TABLE IF NOT EXISTS stats_incidents (
        incident_id text PRIMARY KEY, declared_at timestamptz, restored_at timestamptz)""",
    "CREATE INDEX IF NOT EXISTS stats_incidents_declared ON stats_incidents (declared_at)",
    # its scope, for the region and service-type filters (every region and service it ever named); NULL: an
    # incident counted before the scope was kept, filled once from the archived log below
    "ALTER TABLE stats_incidents ADD COLUMN IF NOT EXISTS regions text[]",
    "ALTER TABLE stats_incidents ADD COLUMN IF NOT EXISTS services text[]",
    """DO $$ BEGIN
         IF to_regclass('archive_events') IS NOT NULL
            AND EXISTS (SELECT 1 FROM stats_incidents WHERE regions IS NULL OR services IS NULL) THEN
           PERFORM pg_advisory_xact_lock(7453504, 2);
           UPDATE stats_incidents i SET
             regions = ARRAY(SELECT DISTINCT v FROM archive_events e, jsonb_array_elements_text(
                 CASE WHEN jsonb_typeof(e.data -> 'regions') = 'array' THEN e.data -> 'regions' ELSE '[]' END) v
               WHERE e.key = i.incident_id
                 AND e.ce_type ~ '^tsop[.]incidents?[.](incident-)?(declared|severity-changed)[.]'
               ORDER BY 1),
             services = ARRAY(SELECT DISTINCT v FROM archive_events e, jsonb_array_elements_text(
                 CASE WHEN jsonb_typeof(e.data -> 'affected_services') = 'array' THEN e.data -> 'affected_services'
                 ELSE '[]' END) v
               WHERE e.key = i.incident_id
                 AND e.ce_type ~ '^tsop[.]incidents?[.](incident-)?(declared|severity-changed)[.]'
               ORDER BY 1)
           WHERE i.regions IS NULL OR i.services IS NULL;
         END IF;
       END $$""",
    *ROLLUP_DDL,
)


WORKFORCE = frozenset({wire.TechnicianRegistered.event_type, wire.CapacityChanged.event_type})


def facts_of(row: Mapping[str, Any], assignments: Sequence[Mapping[str, Any]]) -> TicketFacts:
    f = TicketFacts(**{c: row[c] for c in FACT_COLUMNS if c != "seen"})
    f.seen = list(row["seen"])
    f.assignments = [
        Assignment(a["n"], a["work_order_id"], a["technician_id"], a["assigned_at"], a["ended_at"], a["outcome"])
        for a in sorted(assignments, key=lambda a: int(a["n"]))
    ]
    return f


def row_of(f: TicketFacts) -> tuple[Any, ...]:
    return (*(getattr(f, c) for c in FACT_COLUMNS), f.time_to_assign, f.time_to_resolve)


UPSERT_TICKET = (
    f"INSERT INTO stats_tickets ({', '.join(FACT_COLUMNS)}, assign_seconds, resolve_seconds) "
    f"VALUES ({', '.join(f'${i + 1}' for i in range(len(FACT_COLUMNS) + 2))}) ON CONFLICT (ticket_id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in (*FACT_COLUMNS[1:], "assign_seconds", "resolve_seconds"))
)
UPSERT_ASSIGNMENT = """INSERT INTO stats_assignments VALUES ($1, $2, $3, $4, $5, $6, $7)
    ON CONFLICT (ticket_id, n) DO UPDATE SET ended_at = EXCLUDED.ended_at, outcome = EXCLUDED.outcome"""
# the same for many tickets (each once) in one statement: one array per column; ``seen`` (an array per ticket, which
# unnest cannot take as a column) as the JSON text of each ticket's list
_TICKET_TYPES = {"ticket_id": "text", "channel": "text", "service_type": "text", "region": "text", "priority": "int",
                 **dict.fromkeys(TIMES, "timestamptz"), "reject_reason": "text", "resolutions": "int",
                 "reopens": "int", "respond_breached": "boolean", "resolve_breached": "boolean", "score": "int",
                 "first_fix": "boolean", "resolved_by": "text", "seen": "text", "assign_seconds": "float8",
                 "resolve_seconds": "float8"}
_TICKET_ROW = (*FACT_COLUMNS, "assign_seconds", "resolve_seconds")
UPSERT_TICKETS = (
    f"INSERT INTO stats_tickets ({', '.join(_TICKET_ROW)}) "
    "SELECT " + ", ".join(
        "ARRAY(SELECT e FROM jsonb_array_elements_text(u.seen::jsonb) WITH ORDINALITY AS s(e, i) ORDER BY i)"
        if c == "seen" else f"u.{c}" for c in _TICKET_ROW)
    + f" FROM unnest({', '.join(f'${i + 1}::{_TICKET_TYPES[c]}[]' for i, c in enumerate(_TICKET_ROW))})"
    f" AS u({', '.join(_TICKET_ROW)}) ON CONFLICT (ticket_id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in _TICKET_ROW[1:])
)
UPSERT_ASSIGNMENTS = """INSERT INTO stats_assignments
    SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[],
                         $7::text[])
    ON CONFLICT (ticket_id, n) DO UPDATE SET ended_at = EXCLUDED.ended_at, outcome = EXCLUDED.outcome"""


@dataclass
class _Batch:
    keys: list[str]
    last: Incoming
    facts: dict[str, TicketFacts] | None = None
    dirty: set[str] = field(default_factory=set)
    loaded: dict[str, TicketFacts] = field(default_factory=dict)  # as read, before the batch (the cells' delta)


class StatsProjection(ProjectionSink):
    name: ClassVar[str] = "archive-stats"
    topics: ClassVar[tuple[Topic, ...]] = (Topic.tickets, Topic.complaints, Topic.incidents, Topic.workforce)
    event_types: ClassVar[frozenset[str] | None] = wanted(wire.EVENT_TYPES) | WORKFORCE
    ddl: ClassVar[tuple[str, ...]] = DDL

    def __init__(self, pool: asyncpg.Pool, prefix: str = "tsop.") -> None:
        super().__init__(pool)
        self.tickets_topic = Topic.tickets.qualified(prefix)
        self._batch: _Batch | None = None

    async def process(
        self, epoch: str, topic: str, partition: int, records: Sequence[Incoming], last_offset: int
    ) -> None:
        # one batch, one transaction: its tickets' facts are read once, and written once at its last record
        if topic == self.tickets_topic and records:
            self._batch = _Batch(sorted({r.key for r in records if r.key is not None}), records[-1])
        try:
            await super().process(epoch, topic, partition, records, last_offset)
        finally:
            self._batch = None

    async def apply(self, conn: asyncpg.Connection, incoming: Incoming) -> None:
        env = incoming.envelope
        data = orjson.loads(bytes(env.data))
        if incoming.topic == self.tickets_topic:
            if incoming.key is None:
                return
            batch = self._batch or _Batch([incoming.key], incoming)
            if batch.facts is None:
                batch.facts = await load_facts(conn, batch.keys)
                batch.loaded = dict(batch.facts)  # fold copies, so these stay as they were read
            key = incoming.key
            batch.facts[key] = fold_once(batch.facts.get(key) or TicketFacts(key), env.id, env.type, data, env.time)
            batch.dirty.add(key)
            if incoming is batch.last:
                dirty = sorted(batch.dirty)
                await save_facts(conn, [batch.facts[k] for k in dirty],
                                 [batch.loaded[k] for k in dirty if k in batch.loaded])
        elif env.type in WORKFORCE:
            ev = incoming.event
            assert isinstance(ev, wire.TechnicianRegistered | wire.CapacityChanged)
            await conn.execute(
                "INSERT INTO stats_technicians VALUES ($1, $2) ON CONFLICT (technician_id) "
                "DO UPDATE SET capacity = EXCLUDED.capacity", ev.technician_id, ev.capacity,
            )
        elif COMPLAINT_FILED.match(env.type):
            tickets = ticket_ids_of(data)
            await conn.execute(
                "INSERT INTO stats_complaints (complaint_id, ticket_id, filed_at, ticket_ids) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (complaint_id) DO UPDATE SET ticket_ids = ARRAY(SELECT DISTINCT unnest("
                "stats_complaints.ticket_ids || EXCLUDED.ticket_ids) ORDER BY 1)",
                str(data.get("complaint_id") or incoming.key or env.id), tickets[0] if tickets else None,
                moment(data.get("filed_at") or data.get("received_at"), env.time), tickets,
            )
        elif env.type == COMPLAINT_LINKED:
            tickets = ticket_ids_of(data)
            await conn.execute(
                "UPDATE stats_complaints SET ticket_ids = ARRAY(SELECT DISTINCT unnest(ticket_ids || $2::text[]) "
                "ORDER BY 1) WHERE complaint_id = $1",
                str(data.get("complaint_id") or incoming.key or env.id), tickets,
            )
        elif INCIDENT_RESCOPED.match(env.type):
            await conn.execute(
                "INSERT INTO stats_incidents (incident_id, regions, services) VALUES ($1, $2, $3) "
                "ON CONFLICT (incident_id) DO UPDATE SET "
                "regions = ARRAY(SELECT DISTINCT unnest(stats_incidents.regions || $2) ORDER BY 1), "
                "services = ARRAY(SELECT DISTINCT unnest(stats_incidents.services || $3) ORDER BY 1)",
                str(data.get("incident_id") or incoming.key or env.id), *incident_scope(data),
            )
        elif INCIDENT_DECLARED.match(env.type) or INCIDENT_RESTORED.match(env.type):
            declared = INCIDENT_DECLARED.match(env.type) is not None
            column = "declared_at" if declared else "restored_at"
            at = moment(data.get(column) or data.get("resolved_at"), env.time)
            await conn.execute(
                f"INSERT INTO stats_incidents (incident_id, {column}, regions, services) VALUES ($1, $2, $3, $4) "
                f"ON CONFLICT (incident_id) DO UPDATE SET {column} = coalesce(stats_incidents.{column}, $2), "
                "regions = ARRAY(SELECT DISTINCT unnest(stats_incidents.regions || $3) ORDER BY 1), "
                "services = ARRAY(SELECT DISTINCT unnest(stats_incidents.services || $4) ORDER BY 1)",
                str(data.get("incident_id") or incoming.key or env.id), at, *incident_scope(data),
            )


async def load_facts(conn: asyncpg.Connection, keys: Sequence[str]) -> dict[str, TicketFacts]:
    rows = await conn.fetch(f"SELECT {', '.join(FACT_COLUMNS)} FROM stats_tickets WHERE ticket_id = ANY($1)", keys)
    held: dict[str, list[Mapping[str, Any]]] = {}
    for a in await conn.fetch("SELECT * FROM stats_assignments WHERE ticket_id = ANY($1)", keys):
        held.setdefault(a["ticket_id"], []).append(a)
    return {r["ticket_id"]: facts_of(r, held.get(r["ticket_id"], [])) for r in rows}


async def save_facts(
    conn: asyncpg.Connection, facts: Sequence[TicketFacts], before: Sequence[TicketFacts] = ()
) -> None:
    """Write the tickets' facts, and move their contributions in the per-day cells from what they were
    (``before``: the same tickets as they were read) to what they are, in the same transaction."""
    assignments = [(f.ticket_id, a.n, a.work_order_id, a.technician_id, a.assigned_at, a.ended_at, a.outcome)
                   for f in facts for a in f.assignments]
    if len({f.ticket_id for f in facts}) == len(facts):  # one statement each for all (a row is updated once)
        rows = [row_of(f) for f in facts]
        seen = _TICKET_ROW.index("seen")
        await conn.execute(UPSERT_TICKETS, *(
            [orjson.dumps(r[i]).decode() for r in rows] if i == seen else [r[i] for r in rows]
            for i in range(len(_TICKET_ROW))
        ))
        if assignments:
            await conn.execute(UPSERT_ASSIGNMENTS, *([a[i] for a in assignments] for i in range(7)))
    else:  # a ticket twice: in order, a statement per row
        await conn.executemany(UPSERT_TICKET, [row_of(f) for f in facts])
        await conn.executemany(UPSERT_ASSIGNMENT, assignments)
    deltas = cell_deltas(before, facts)
    if not deltas:
        return
    await conn.executemany(UPSERT_CELL, cell_rows(deltas))  # first: the cells' locks (``UPSERT_VALUES``)
    values = value_columns(deltas)
    if values[0]:
        emptied = await conn.fetch(UPSERT_VALUES, *values)
        if emptied:
            await conn.execute(DELETE_VALUES, [r["ctid"] for r in emptied])


# --- the report in SQL ---


def _where(filters_from: int, q: Question, alias: str = "") -> tuple[str, list[Any]]:
    """The filters' SQL (``$n`` from ``filters_from``) and their arguments."""
    parts, args = [], []
    for d in DIMENSIONS:
        value = getattr(q.filters, d)
        if value is not None:
            args.append(value)
            parts.append(f"{alias}{d} = ${filters_from + len(args) - 1}")
    return "".join(f" AND {p}" for p in parts), args


def _incident_where(filters_from: int, q: Question) -> tuple[str, list[Any]]:
    """The incidents' share of the filters (``Filters.admits_incident``): their scope's regions and services."""
    parts, args = [], []
    if q.filters.region is not None:
        args.append(q.filters.region)
        parts.append(f"(${filters_from + len(args) - 1} = ANY(regions) OR '*' = ANY(regions))")
    if q.filters.service_type is not None:
        args.append(q.filters.service_type)
        parts.append(f"${filters_from + len(args) - 1} = ANY(services)")
    return "".join(f" AND {p}" for p in parts), args


def incident_scope(data: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(regions, affected services) an incident event's body names (none in an older body)."""
    def names(key: str) -> list[str]:
        value = data.get(key)
        return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []

    return names("regions"), names("affected_services")


def _durations(prefix: str, row: Mapping[str, Any]) -> Durations:
    p50, p90 = row[f"{prefix}_p"] or (None, None)
    return Durations(int(row[f"{prefix}_n"]), row[f"{prefix}_mean"], p50, p90)


def _agg(column: str, prefix: str, where: str = "") -> str:
    """Count, mean, and p50 and p90 from one sort."""
    filt = f" FILTER (WHERE {where})" if where else ""
    return (
        f"count({column}){filt} AS {prefix}_n, avg({column}){filt} AS {prefix}_mean, "
        f"percentile_cont('{{0.5,0.9}}'::float8[]) WITHIN GROUP (ORDER BY {column}){filt} AS {prefix}_p"
    )


SELF = ", ".join(f"'{c}'" for c in sorted(SELF_SERVICE))
MAIN = """SELECT date_trunc($3, submitted_at, 'UTC') AS b, GROUPING(date_trunc($3, submitted_at, 'UTC')) AS whole,
    count(*) AS submitted, count(accepted_at) AS accepted, count(rejected_at) AS rejected,
    count(cancelled_at) AS cancelled, count(linked_at) AS linked, count(resolved_at) AS resolved,
    count(closed_at) AS closed, count(*) FILTER (WHERE channel IN ({self})) AS self_service,
    {assign}, {resolve},
    count(*) FILTER (WHERE respond_breached OR responded_at IS NOT NULL) AS respond_measured,
    count(*) FILTER (WHERE NOT respond_breached AND responded_at IS NOT NULL) AS respond_met,
    count(*) FILTER (WHERE resolve_breached OR resolved_at IS NOT NULL) AS resolve_measured,
    count(*) FILTER (WHERE NOT resolve_breached AND resolved_at IS NOT NULL) AS resolve_met,
    count(feedback_sent_at) AS asked, count(score) AS rated, avg(score)::float8 AS mean_score,
    count(*) FILTER (WHERE resolved_at IS NOT NULL AND reopens > 0) AS reopened,
    count(*) FILTER (WHERE resolved_at IS NOT NULL AND first_fix) AS first_time_fixed
  FROM stats_tickets WHERE submitted_at >= $1 AND submitted_at < $2 {where}
  GROUP BY GROUPING SETS ((date_trunc($3, submitted_at, 'UTC')), ())"""
SPLITS = ("channel", "service_type", "region", "priority", "reject_reason", "score")
BREAKDOWN = """SELECT date_trunc($3, submitted_at, 'UTC') AS b, GROUPING(date_trunc($3, submitted_at, 'UTC')) AS whole,
    {grouping} AS mask, {splits}, count(*) AS n
  FROM stats_tickets WHERE submitted_at >= $1 AND submitted_at < $2 {where}
  GROUP BY GROUPING SETS ({sets})"""
ENDED = """SELECT date_trunc($3, ended_at, 'UTC') AS b, count(*) AS n FROM stats_tickets
  WHERE ended_at >= $1 AND ended_at < $2 AND submitted_at IS NOT NULL {where} GROUP BY 1"""
OPEN_AT_START = f"""SELECT count(*) FROM stats_tickets
  WHERE submitted_at IS NOT NULL AND {OPEN_SPAN} @> $1::timestamptz {{where}}"""
COMPLAINTS = """SELECT date_trunc($3, filed_at, 'UTC') AS b, GROUPING(date_trunc($3, filed_at, 'UTC')) AS whole,
    count(*) AS n FROM stats_complaints c WHERE filed_at >= $1 AND filed_at < $2 {where}
  GROUP BY GROUPING SETS ((date_trunc($3, filed_at, 'UTC')), ())"""
INCIDENTS = """SELECT date_trunc($3, declared_at, 'UTC') AS b, GROUPING(date_trunc($3, declared_at, 'UTC')) AS whole,
    count(*) AS declared, {restore}
  FROM (SELECT declared_at, extract(epoch FROM restored_at - declared_at)::float8 AS r FROM stats_incidents
        WHERE declared_at >= $1 AND declared_at < $2 {where}) i
  GROUP BY GROUPING SETS ((date_trunc($3, declared_at, 'UTC')), ())"""


@dataclass
class _Period:
    main: Mapping[str, Any] | None = None
    splits: dict[str, dict[str, int]] = field(default_factory=lambda: {s: {} for s in SPLITS})
    ended: int = 0
    complaints: int = 0
    incidents: Mapping[str, Any] | None = None


# --- per-day rollups (issue 13: figures): a report over whole UTC days reads the cells, not the tickets ---
_SUMS = ", ".join(f"sum({c})::bigint AS {c}" for c in COUNTERS if c not in ("ended", "settled"))
CELLS_MAIN = f"""SELECT date_trunc($3, day, 'UTC') AS b, GROUPING(date_trunc($3, day, 'UTC')) AS whole, {_SUMS},
    (sum(score_sum)::numeric / nullif(sum(rated), 0))::float8 AS mean_score
  FROM stats_daily WHERE day >= $1 AND day < $2 {{where}}
  GROUP BY GROUPING SETS ((date_trunc($3, day, 'UTC')), ())"""
# the durations' values per period and kind: those held once as they are, the others with their counts
CELLS_VALUES = """SELECT date_trunc($3, day, 'UTC') AS b, kind, array_agg(v) FILTER (WHERE n = 1) AS ones,
    array_agg(v) FILTER (WHERE n > 1) AS many, array_agg(n) FILTER (WHERE n > 1) AS times
  FROM stats_daily_values WHERE day >= $1 AND day < $2 {where} AND n > 0 GROUP BY 1, 2"""
_RANGE = "FROM stats_daily WHERE day >= $1 AND day < $2 {where}"
_CELL_SPLITS = ("channel", "service_type", "region", "priority")
CELLS_SPLITS = f"""SELECT date_trunc($3, day, 'UTC') AS b, GROUPING({", ".join(_CELL_SPLITS)}) AS mask,
    {", ".join(_CELL_SPLITS)}, sum(submitted)::bigint AS n {_RANGE}
  GROUP BY GROUPING SETS ({", ".join(f"(date_trunc($3, day, 'UTC'), {d})" for d in _CELL_SPLITS)})
  HAVING sum(submitted) > 0"""
CELLS_REASONS = f"""SELECT date_trunc($3, day, 'UTC') AS b, r.key AS v, sum(r.value::bigint)::bigint AS n
  {_RANGE.replace("FROM stats_daily", "FROM stats_daily, jsonb_each_text(reasons) r")} AND reasons <> '{{{{}}}}'
  GROUP BY 1, 2 HAVING sum(r.value::bigint) > 0"""
CELLS_ENDED = "SELECT date_trunc($3, day, 'UTC') AS b, sum(ended)::bigint AS n " + _RANGE + " GROUP BY 1"
# open at an instant that starts a day: submitted before it, less those whose span (to the end, never before the
# submission) settled before it (OPEN_SPAN, counted by day)
CELLS_OPEN_AT_START = (
    "SELECT coalesce(sum(submitted) - sum(settled), 0)::bigint FROM stats_daily WHERE day < $1 {where}")


def whole_days(q: Question) -> bool:
    """Whether a report's range starts and ends at UTC midnights: the cells answer it."""
    return day_of(q.start) == q.start and day_of(q.end) == q.end


async def _cells(pool: asyncpg.Pool, q: Question, where: str, fargs: list[Any], swhere: str, sargs: list[Any]) -> (
    tuple[list[dict[str, Any]], list[tuple[datetime, str, str, int]], list[asyncpg.Record], int]
):
    base = [q.start, q.end, q.granularity, *fargs]

    async def fetch(sql: str, *args: Any) -> list[asyncpg.Record]:
        async with pool.acquire() as conn:
            return list(await conn.fetch(sql, *args))

    counts, values, splits, reasons, ended, opened = await asyncio.gather(
        fetch(CELLS_MAIN.format(where=where), *base),
        fetch(CELLS_VALUES.format(where=where), *base),
        fetch(CELLS_SPLITS.format(where=where), *base),
        fetch(CELLS_REASONS.format(where=where), *base),
        fetch(CELLS_ENDED.format(where=where), *base),
        fetch(CELLS_OPEN_AT_START.format(where=swhere), q.start, *sargs),
    )
    # the durations' values, per period and whole: exact (the reference's own computation over the same values)
    found: dict[str, dict[datetime | None, list[float]]] = {"assign": {}, "resolve": {}}
    for r in values:
        held = found[r["kind"]].setdefault(r["b"], [])
        held.extend(r["ones"] or ())
        for v, n in zip(r["many"] or (), r["times"] or (), strict=True):
            held.extend([v] * n)
    durations: dict[tuple[str, datetime | None], Durations] = {}
    for prefix, got in found.items():
        for b in got:
            got[b].sort()
        # the whole range: the periods' sorted values end to end, which a sort merges in one pass per period
        whole_values = [v for b in sorted(got, key=lambda b: b or q.start) for v in got[b]]
        durations[(prefix, None)] = Durations.of(whole_values)
        durations.update({(prefix, b): Durations.of(v) for b, v in got.items()})  # sorted already: cheap
    main = []
    for r in counts:
        row = dict(r)
        b = None if r["whole"] else r["b"]
        for prefix in found:
            d = durations.get((prefix, b)) or Durations.of(())
            row[f"{prefix}_n"], row[f"{prefix}_mean"], row[f"{prefix}_p"] = d.count, d.mean, (d.p50, d.p90)
        main.append(row)
    split_rows: list[tuple[datetime, str, str, int]] = []
    for r in splits:
        mask = int(r["mask"])
        for i, d_ in enumerate(_CELL_SPLITS):
            if not mask & (1 << (len(_CELL_SPLITS) - 1 - i)) and r[d_] is not None:
                split_rows.append((r["b"], d_, str(r[d_]), int(r["n"])))
    split_rows += [(r["b"], "reject_reason", r["v"], int(r["n"])) for r in reasons]
    split_rows += [(r["b"], "score", str(k), int(r[f"s{k}"])) for r in counts if not r["whole"] for k in SCORES
                   if r[f"s{k}"]]
    return main, split_rows, ended, int(opened[0][0])
# --- end of the per-day rollups' report ---


async def report(pool: asyncpg.Pool, q: Question) -> Report:
    """``domain.report``, in SQL over the read model: over whole UTC days from the per-day cells, otherwise a
    few grouped scans of the tickets of the range; the queries run side by side."""
    where, fargs = _where(4, q)
    base = [q.start, q.end, q.granularity, *fargs]
    # per period only: the whole range's counts are their sums
    sets = ", ".join(f"(date_trunc($3, submitted_at, 'UTC'), {s})" for s in SPLITS)
    breakdown = BREAKDOWN.format(grouping=f"GROUPING({', '.join(SPLITS)})", splits=", ".join(SPLITS), where=where,
                                 sets=sets)
    cwhere = ""
    if not q.filters.empty:
        twhere, _ = _where(4, q, "t.")
        cwhere = f" AND EXISTS (SELECT 1 FROM stats_tickets t WHERE t.ticket_id = ANY(c.ticket_ids) {twhere})"
    swhere, sargs = _where(2, q)
    iwhere, iargs = _incident_where(4, q)

    async def fetch(sql: str, *args: Any) -> list[asyncpg.Record]:
        async with pool.acquire() as conn:
            return list(await conn.fetch(sql, *args))

    others = asyncio.gather(
        fetch(COMPLAINTS.format(where=cwhere), *base[:3], *(fargs if cwhere else [])),
        fetch(INCIDENTS.format(restore=_agg("r", "restore"), where=iwhere), q.start, q.end, q.granularity, *iargs),
    )
    periods: dict[datetime | None, _Period] = {}

    def period(row: Mapping[str, Any], key: str = "b") -> _Period:
        return periods.setdefault(None if row.get("whole") else row[key], _Period())

    whole = periods.setdefault(None, _Period())
    if whole_days(q):
        main, cell_splits, ended, backlog = await _cells(pool, q, where, fargs, swhere, sargs)
        for row in main:
            period(row).main = row
        for b, s_, v_, n_ in cell_splits:
            periods.setdefault(b, _Period()).splits[s_][v_] = n_
            whole.splits[s_][v_] = whole.splits[s_].get(v_, 0) + n_
    else:
        main_rows, split, ended, opened = await asyncio.gather(
            fetch(MAIN.format(self=SELF, assign=_agg("assign_seconds", "assign"),
                              resolve=_agg("resolve_seconds", "resolve"), where=where), *base),
            fetch(breakdown, *base),
            fetch(ENDED.format(where=where), *base),
            fetch(OPEN_AT_START.format(where=swhere), q.start, *sargs),
        )
        for row in main_rows:
            period(row).main = row
        for row in split:
            mask = int(row["mask"])
            for i, s in enumerate(SPLITS):
                if not mask & (1 << (len(SPLITS) - 1 - i)) and row[s] is not None:
                    period(row).splits[s][str(row[s])] = int(row["n"])
                    whole.splits[s][str(row[s])] = whole.splits[s].get(str(row[s]), 0) + int(row["n"])
        backlog = int(opened[0][0])
    complaints, incidents = await others
    for row in ended:
        periods.setdefault(row["b"], _Period()).ended = int(row["n"])
    for row in complaints:
        period(row).complaints = int(row["n"])
    for row in incidents:
        period(row).incidents = row
    series = []
    for b in buckets(q.start, q.end, q.granularity):
        p = periods.get(b, _Period())
        backlog += (0 if p.main is None else int(p.main["submitted"])) - p.ended
        series.append(_figures(max(b, q.start), p, backlog))
    return Report(q, _figures(q.start, periods.get(None, _Period()), backlog), series)


def _figures(start: datetime, p: _Period, backlog: int) -> Figures:
    m: Mapping[str, Any] = p.main or {}

    def n(name: str) -> int:
        return int(m.get(name) or 0)

    def durations(prefix: str, row: Mapping[str, Any] | None) -> Durations:
        return Durations(0, None, None, None) if row is None else _durations(prefix, row)

    scores = p.splits["score"]
    return Figures(
        start=start, submitted=n("submitted"), accepted=n("accepted"), rejected=n("rejected"),
        cancelled=n("cancelled"), linked=n("linked"), resolved=n("resolved"), closed=n("closed"),
        self_service=n("self_service"), manual=n("submitted") - n("self_service"),
        by_channel=dict(sorted(p.splits["channel"].items())),
        by_service_type=dict(sorted(p.splits["service_type"].items())),
        by_region=dict(sorted(p.splits["region"].items())),
        by_priority=dict(sorted(p.splits["priority"].items())),
        rejections_by_reason=dict(sorted(p.splits["reject_reason"].items())),
        time_to_assign=durations("assign", p.main), time_to_resolve=durations("resolve", p.main),
        sla_respond=Compliance(n("respond_measured"), n("respond_met")),
        sla_resolve=Compliance(n("resolve_measured"), n("resolve_met")),
        rating_asked=n("asked"), rated=n("rated"), scores={str(s): scores.get(str(s), 0) for s in SCORES},
        mean_score=m.get("mean_score"), reopened=n("reopened"), first_time_fixed=n("first_time_fixed"),
        complaints=p.complaints, backlog=backlog,
        incidents_declared=0 if p.incidents is None else int(p.incidents["declared"]),
        time_to_restore=durations("restore", p.incidents),
    )


SCORECARDS = """SELECT a.technician_id, coalesce(max(w.capacity), 1) AS capacity,
    count(*) FILTER (WHERE a.assigned_at >= $1 AND a.assigned_at < $2) AS assignments,
    count(*) FILTER (WHERE a.assigned_at >= $1 AND a.assigned_at < $2 AND a.outcome = 'declined') AS declined,
    {held},
    count(t.score) FILTER (WHERE {first}) AS rated, avg(t.score) FILTER (WHERE {first})::float8 AS mean_score,
    count(*) FILTER (WHERE {first} AND t.first_fix) AS first_time_fixed,
    count(*) FILTER (WHERE {first} AND t.reopens > 0) AS reopened,
    coalesce(sum(extract(epoch FROM least(coalesce(a.ended_at, $3), $3) - greatest(a.assigned_at, $1))::float8)
      FILTER (WHERE least(coalesce(a.ended_at, $3), $3) > greatest(a.assigned_at, $1)), 0) AS busy
  FROM stats_assignments a JOIN stats_tickets t ON t.ticket_id = a.ticket_id
  LEFT JOIN stats_technicians w ON w.technician_id = a.technician_id
  WHERE a.assigned_at < $2 AND (a.ended_at IS NULL OR a.ended_at >= $1) {where}
  GROUP BY a.technician_id ORDER BY a.technician_id"""
RESOLVED_IN_RANGE = "a.outcome = 'resolved' AND a.ended_at >= $1 AND a.ended_at < $2"


async def scorecards(pool: asyncpg.Pool, q: Question, now: datetime) -> list[Scorecard]:
    """``domain.scorecards`` in SQL."""
    where, fargs = _where(4, q, "t.")
    first = f"{RESOLVED_IN_RANGE} AND t.resolved_by = a.technician_id AND t.resolved_at = a.ended_at"
    held = _agg("extract(epoch FROM a.ended_at - a.assigned_at)::float8", "res", RESOLVED_IN_RANGE)
    horizon = min(q.end, max(now, q.start))
    span = (q.end - q.start).total_seconds()
    rows = await pool.fetch(SCORECARDS.format(held=held, first=first, where=where), q.start, q.end, horizon, *fargs)
    out = []
    for r in rows:
        cap = int(r["capacity"])
        card = Scorecard(
            technician_id=r["technician_id"], assignments=int(r["assignments"]), declined=int(r["declined"]),
            resolved=int(r["res_n"]), time_to_resolve=_durations("res", r), rated=int(r["rated"]),
            mean_score=r["mean_score"], first_time_fixed=int(r["first_time_fixed"]), reopened=int(r["reopened"]),
            busy_seconds=float(r["busy"]), capacity=cap, utilisation=float(r["busy"]) / (cap * span) if span else None,
        )
        if card.assignments or card.resolved or card.busy_seconds:
            out.append(card)
    return out


EXPORT_COLUMNS = (
    "ticket_id", "channel", "service_type", "region", "priority", *TIMES, "reject_reason", "resolutions", "reopens",
    "respond_breached", "resolve_breached", "score", "first_fix", "resolved_by", "assign_seconds", "resolve_seconds",
)


async def export_rows(pool: asyncpg.Pool, q: Question, chunk: int = 2000) -> AsyncIterator[list[asyncpg.Record]]:
    """Every ticket of the range the filters admit (by submission), in chunks from a server-side cursor: no cap,
    bounded memory."""
    where, fargs = _where(3, q)
    sql = (f"SELECT {', '.join(EXPORT_COLUMNS)} FROM stats_tickets WHERE submitted_at >= $1 AND submitted_at < $2"
           f"{where} ORDER BY submitted_at, ticket_id")
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        cursor = await conn.cursor(sql, q.start, q.end, *fargs)
        while rows := await cursor.fetch(chunk):
            yield rows


async def lag_marker(pool: asyncpg.Pool, ticket_id: str) -> bool:
    """Whether the read model holds a ticket (what a bench waits for)."""
    return bool(await pool.fetchval("SELECT EXISTS (SELECT 1 FROM stats_tickets WHERE ticket_id = $1)", ticket_id))


# --- rebuilt from the log ---

STORE_CONSUMER = "archive-store"  # the archive's own store (tsop_archive.projection.ArchiveStore.name)


async def rebuild(pool: asyncpg.Pool, tickets_topic: str, page: int = 25_000) -> int:
    """The statistics' ticket facts rebuilt from the archived log: every ticket's facts folded again from the
    ``tickets`` records the archive stores, in store order (read in one snapshot, with the store's positions),
    then written over ``stats_tickets`` and ``stats_assignments``, the per-day cells rebuilt from them and the
    statistics consumer's positions on the tickets topic set to the store's (in one transaction): the consumer
    then goes on from where the log read ends, and what it applies again is folded once (``fold_once``).

    A ticket some of whose records retention purged cannot be folded again from what is left: its facts are
    kept as they are. Run it with the archive stopped (after a fix of the fold, say): nothing here stops a
    running statistics consumer writing beside it. How many events were folded."""
    facts: dict[str, TicketFacts] = {}
    purged: set[str] = set()
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        positions = await conn.fetch(
            "SELECT epoch, topic, partition, next_offset FROM tsop_consumer_offsets WHERE consumer = $1 AND topic = $2",
            STORE_CONSUMER, tickets_topic)
        loads, get, wanted_types = orjson.loads, facts.get, StatsProjection.event_types or frozenset()
        async for r in conn.cursor(
            "SELECT key, ce_id, ce_type, ce_time, data::text AS data, raw FROM archive_events "
            "WHERE topic = $1 AND key IS NOT NULL ORDER BY seq", tickets_topic, prefetch=page,
        ):
            if r["ce_type"] not in wanted_types:
                continue  # as the consumer: only the types it reads (the others' offsets are done all the same)
            key = r["key"]
            text = r["data"] if r["data"] is not None else r["raw"]  # a body jsonb refused is kept as it came
            if text is None:
                purged.add(key)  # its body is gone (retention): this ticket's facts cannot be folded again
                continue
            try:
                body = loads(text)
            except orjson.JSONDecodeError:
                purged.add(key)
                continue
            f = get(key)
            if f is None:
                f = facts[key] = TicketFacts(key)
            # each stored event once (ce_id is unique in the store): folded in place, no copy per event
            fold(f, r["ce_type"], body if isinstance(body, dict) else {}, r["ce_time"], in_place=True)
            f.seen.append(r["ce_id"])
    seen = sum(len(f.seen) for key, f in facts.items() if key not in purged)
    async with pool.acquire() as conn, conn.transaction():
        kept = await load_facts(conn, sorted(purged))  # as the consumer folded them, before the bodies went
        for key in purged:
            facts.pop(key, None)
        facts.update(kept)
        await conn.execute("TRUNCATE stats_tickets, stats_assignments")  # (the cells: stats_daily_rebuild)
        await conn.copy_records_to_table(
            "stats_tickets", records=[row_of(f) for f in facts.values()],
            columns=[*FACT_COLUMNS, "assign_seconds", "resolve_seconds"])
        await conn.copy_records_to_table("stats_assignments", records=[
            (f.ticket_id, a.n, a.work_order_id, a.technician_id, a.assigned_at, a.ended_at, a.outcome)
            for f in facts.values() for a in f.assignments])
        await conn.execute("SELECT stats_daily_rebuild()")
        await conn.execute(
            "DELETE FROM tsop_consumer_offsets WHERE consumer = $1 AND topic = $2", StatsProjection.name, tickets_topic)
        await conn.executemany(
            "INSERT INTO tsop_consumer_offsets VALUES ($1, $2, $3, $4, $5)",
            [(StatsProjection.name, p["epoch"], p["topic"], p["partition"], p["next_offset"]) for p in positions])
    return seen
