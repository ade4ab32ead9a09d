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
    DIMENSIONS,
    INCIDENT_DECLARED,
    INCIDENT_RESTORED,
    SCORES,
    SELF_SERVICE,
    Assignment,
    Compliance,
    Durations,
    Figures,
    Question,
    Report,
    Scorecard,
    TicketFacts,
    buckets,
    fold_once,
    moment,
    ticket_ids_of,
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


@dataclass
class _Batch:
    keys: list[str]
    last: Incoming
    facts: dict[str, TicketFacts] | None = None
    dirty: set[str] = field(default_factory=set)


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
            key = incoming.key
            batch.facts[key] = fold_once(batch.facts.get(key) or TicketFacts(key), env.id, env.type, data, env.time)
            batch.dirty.add(key)
            if incoming is batch.last:
                await save_facts(conn, [batch.facts[k] for k in sorted(batch.dirty)])
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
        elif INCIDENT_DECLARED.match(env.type) or INCIDENT_RESTORED.match(env.type):
            declared = INCIDENT_DECLARED.match(env.type) is not None
            column = "declared_at" if declared else "restored_at"
            at = moment(data.get(column) or data.get("resolved_at"), env.time)
            await conn.execute(
                f"INSERT INTO stats_incidents (incident_id, {column}) VALUES ($1, $2) "
                f"ON CONFLICT (incident_id) DO UPDATE SET {column} = coalesce(stats_incidents.{column}, $2)",
                str(data.get("incident_id") or incoming.key or env.id), at,
            )


async def load_facts(conn: asyncpg.Connection, keys: Sequence[str]) -> dict[str, TicketFacts]:
    rows = await conn.fetch(f"SELECT {', '.join(FACT_COLUMNS)} FROM stats_tickets WHERE ticket_id = ANY($1)", keys)
    held: dict[str, list[Mapping[str, Any]]] = {}
    for a in await conn.fetch("SELECT * FROM stats_assignments WHERE ticket_id = ANY($1)", keys):
        held.setdefault(a["ticket_id"], []).append(a)
    return {r["ticket_id"]: facts_of(r, held.get(r["ticket_id"], [])) for r in rows}


async def save_facts(conn: asyncpg.Connection, facts: Sequence[TicketFacts]) -> None:
    await conn.executemany(UPSERT_TICKET, [row_of(f) for f in facts])
    await conn.executemany(UPSERT_ASSIGNMENT, [
        (f.ticket_id, a.n, a.work_order_id, a.technician_id, a.assigned_at, a.ended_at, a.outcome)
        for f in facts for a in f.assignments
    ])


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
        WHERE declared_at >= $1 AND declared_at < $2) i
  GROUP BY GROUPING SETS ((date_trunc($3, declared_at, 'UTC')), ())"""


@dataclass
class _Period:
    main: Mapping[str, Any] | None = None
    splits: dict[str, dict[str, int]] = field(default_factory=lambda: {s: {} for s in SPLITS})
    ended: int = 0
    complaints: int = 0
    incidents: Mapping[str, Any] | None = None


async def report(pool: asyncpg.Pool, q: Question) -> Report:
    """``domain.report``, in SQL over the read model: a few grouped scans of the range, run side by side."""
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

    async def fetch(sql: str, *args: Any) -> list[asyncpg.Record]:
        async with pool.acquire() as conn:
            return list(await conn.fetch(sql, *args))

    main, split, ended, opened, complaints, incidents = await asyncio.gather(
        fetch(MAIN.format(self=SELF, assign=_agg("assign_seconds", "assign"),
                          resolve=_agg("resolve_seconds", "resolve"), where=where), *base),
        fetch(breakdown, *base),
        fetch(ENDED.format(where=where), *base),
        fetch(OPEN_AT_START.format(where=swhere), q.start, *sargs),
        fetch(COMPLAINTS.format(where=cwhere), *base[:3], *(fargs if cwhere else [])),
        fetch(INCIDENTS.format(restore=_agg("r", "restore")), q.start, q.end, q.granularity),
    )
    periods: dict[datetime | None, _Period] = {}

    def period(row: Mapping[str, Any], key: str = "b") -> _Period:
        return periods.setdefault(None if row.get("whole") else row[key], _Period())

    for row in main:
        period(row).main = row
    whole = periods.setdefault(None, _Period())
    for row in split:
        mask = int(row["mask"])
        for i, s in enumerate(SPLITS):
            if not mask & (1 << (len(SPLITS) - 1 - i)) and row[s] is not None:
                period(row).splits[s][str(row[s])] = int(row["n"])
                whole.splits[s][str(row[s])] = whole.splits[s].get(str(row[s]), 0) + int(row["n"])
    for row in ended:
        periods.setdefault(row["b"], _Period()).ended = int(row["n"])
    for row in complaints:
        period(row).complaints = int(row["n"])
    for row in incidents:
        period(row).incidents = row
    backlog = int(opened[0][0])
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
