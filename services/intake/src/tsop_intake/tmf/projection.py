"""The TMF621 read model: every ticket as channels see it, fed by the whole ticket stream.

One row per ticket with an indexed column for every filterable attribute, the
status history, and — in the same transaction — the hub notifications each
event causes (the delivery outbox, see hub.py). Each event is applied once:
its id is recorded, so a redelivery or a republish after an empty broker
changes nothing.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, cast
from uuid import UUID

import asyncpg

from tsop_events import schemas as wire
from tsop_events.batched import BatchedSink
from tsop_events.consumer import Incoming
from tsop_events.envelope import Envelope
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
    # a ticket's steps kept until their turn: a step of a ticket not submitted yet, or one that happened after a step
    # of its ticket still waiting (see TmfTicketProjection); its id is in tmf_applied (a redelivery keeps it once)
    """CREATE TABLE IF NOT EXISTS tmf_early (
        seq bigserial PRIMARY KEY, ticket_id uuid NOT NULL, event_id text NOT NULL, event_type text NOT NULL,
        source text NOT NULL, at timestamptz NOT NULL, subject text, correlation_id text, causation_id text,
        data bytea NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS tmf_early_ticket ON tmf_early (ticket_id)",
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
TYPES = ("uuid", "text", "timestamptz", "text", "text", "text", "text", "text", "text", "text", "timestamptz",
         "timestamptz", "boolean", "text")
UPSERT_MANY = f"""INSERT INTO tmf_ticket ({", ".join(COLUMNS)})
    SELECT {", ".join("doc::jsonb" if c == "doc" else c for c in COLUMNS)}
    FROM unnest({", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(TYPES))}) AS u({", ".join(COLUMNS)})
    ON CONFLICT (ticket_id) DO UPDATE SET {", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS[1:])}"""


WAITING = "stepsWaiting"  # in a ticket's ``doc`` (never rendered) while steps of it wait in tmf_early
KEEP = """INSERT INTO tmf_early
        (ticket_id, event_id, event_type, source, at, subject, correlation_id, causation_id, data)
    SELECT t, i, ty, so, a, su, co, ca, d
    FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $7::text[], $8::text[],
                $9::bytea[]) WITH ORDINALITY AS u(t, i, ty, so, a, su, co, ca, d, n)
    ORDER BY n"""
TAKE = "DELETE FROM tmf_early WHERE ticket_id = ANY($1::uuid[]) RETURNING *"


def when(incoming: Incoming) -> datetime:
    return incoming.envelope.time


async def keep(conn: asyncpg.Connection, steps: Sequence[Incoming]) -> None:
    """Steps kept for their turn, in this order."""
    envs = [s.envelope for s in steps]
    await conn.execute(
        KEEP, [UUID(cast(wire.TicketEvent, s.event).ticket_id) for s in steps], [e.id for e in envs],
        [e.type for e in envs], [e.source for e in envs], [e.time for e in envs], [e.subject for e in envs],
        [e.correlation_id for e in envs], [e.causation_id for e in envs], [e.data for e in envs],
    )


async def take(conn: asyncpg.Connection, ids: Sequence[UUID], partition: int, topic: str) -> dict[UUID, list[Incoming]]:
    """The tickets' kept steps, taken out of tmf_early (those still waiting afterwards are kept again), each
    ticket's in the order they happened (their time; then the order they came)."""
    out: dict[UUID, list[Incoming]] = {}
    for row in sorted(await conn.fetch(TAKE, ids), key=lambda r: (r["at"], r["seq"])):
        env = Envelope(id=row["event_id"], type=row["event_type"], source=row["source"], time=row["at"],
                       subject=row["subject"], correlation_id=row["correlation_id"],
                       causation_id=row["causation_id"], data=row["data"])
        event = wire.parse_event(env.type, env.data)
        out.setdefault(row["ticket_id"], []).append(Incoming(topic, partition, -1, row["subject"], env, event))
    return out


def marked(state: dict[str, Any], waiting: bool) -> dict[str, Any] | None:
    """The state with its waiting mark as it should be; None when it is already."""
    if bool(state["doc"].get(WAITING)) == waiting:
        return None
    doc = {k: v for k, v in state["doc"].items() if k != WAITING}
    if waiting:
        doc[WAITING] = True
    return {**state, "doc": doc}


def row_state(row: asyncpg.Record) -> dict[str, Any]:
    state = dict(row)
    state["ticket_id"] = str(state["ticket_id"])
    state["doc"] = json.loads(state["doc"])
    return state


def as_stored(state: dict[str, Any]) -> dict[str, Any]:
    """A state as ``row_state`` would read it back once written: the document through JSON, times in UTC."""
    out = {k: v.astimezone(UTC) if isinstance(v, datetime) else v for k, v in state.items()}
    out["ticket_id"] = str(out["ticket_id"])
    out["doc"] = json.loads(json.dumps(state["doc"]))
    return out


class TmfTicketProjection(BatchedSink):
    """Applied a batch (one partition's records) at a time: the ids recorded, the rows read and locked, the counts,
    the rows and the status history written with one statement each for the whole batch, each ticket's events
    folded in order in between (``model.evolve``), so the read model ends exactly as record by record. While a
    listener is registered (a ``tmf_hub`` row, read once per batch) the batch is applied record by record instead:
    each notification renders the ticket as its own event left it, not as the batch's end does.

    A step can come before its turn: within a broker epoch never (a ticket's records are in one partition, each
    published by a service that had read the earlier ones), but after a broker change every service's relay
    publishes its outbox again on its own, so dispatch's AssignmentAccepted or Resolved, feedback's Closed, can come
    before intake's RequestSubmitted and RequestAccepted they followed. Such a step is kept (``tmf_early``, its id
    recorded as applied) until its ticket is submitted and ``model.ready`` says its move is valid there, then
    applied with every effect it would have had in order (counts, status history, notifications); the ticket's
    later steps that happened after a waiting one wait behind it (by their time). A ticket with steps waiting is
    marked in its row (``doc``), so a batch reads them only when it submits tickets or holds a marked one: one query,
    none for the others."""

    name: ClassVar[str] = "intake-tmf-tickets"
    event_types: ClassVar[frozenset[str] | None] = model.RELEVANT
    ddl: ClassVar[tuple[str, ...]] = DDL

    def __init__(self, pool: asyncpg.Pool, outbox: Outbox | None = None) -> None:
        super().__init__(pool)
        self.outbox = outbox  # notifications written with the change

    @staticmethod
    async def _listened(conn: asyncpg.Connection) -> bool:
        """Whether a listener is registered, decided once for the batch: the listeners are locked against new ones
        until the batch commits (``SHARE``: batches of other partitions read them alike), so a registration never
        lands between this answer and the batch's commit, told of none of its changes; it waits and hears what
        follows."""
        await conn.execute("LOCK TABLE tmf_hub IN SHARE MODE")
        return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM tmf_hub)"))

    async def apply_batch(self, conn: asyncpg.Connection, records: Sequence[Incoming]) -> None:
        todo = [r for r in records if isinstance(r.event, wire.TicketEvent)]
        if not todo:
            return
        if len(todo) == 1 or (self.outbox is not None and await self._listened(conn)):
            for incoming in todo:
                await self._apply_one(conn, incoming)
            return
        # applied before (a redelivery, or a republish after an empty broker): skipped; an id twice in the batch
        # is applied at its first
        fresh = {r[0] for r in await conn.fetch(
            "INSERT INTO tmf_applied SELECT unnest($1::text[]) ON CONFLICT DO NOTHING RETURNING event_id",
            [r.envelope.id for r in todo],
        )}
        apply = []
        for incoming in todo:
            if incoming.envelope.id in fresh:
                fresh.discard(incoming.envelope.id)
                apply.append(incoming)
        if not apply:
            return
        ids = sorted({UUID(cast(wire.TicketEvent, r.event).ticket_id) for r in apply})
        states: dict[UUID, dict[str, Any] | None] = {
            row["ticket_id"]: row_state(row)
            for row in await conn.fetch(
                "SELECT * FROM tmf_ticket WHERE ticket_id = ANY($1::uuid[]) ORDER BY ticket_id FOR UPDATE", ids
            )
        }
        # the kept steps this batch may apply: of the tickets it submits, and of those with steps waiting
        submits = {UUID(r.event.ticket_id) for r in apply if isinstance(r.event, wire.RequestSubmitted)} - set(states)
        marks = {t for t, st in states.items() if st is not None and st["doc"].get(WAITING)}
        queues: dict[UUID, list[Incoming]] = {t: [] for t in submits | marks}
        if queues:
            queues.update(await take(conn, sorted(queues), apply[0].partition, apply[0].topic))
        kept: list[Incoming] = []  # steps of tickets neither submitted before nor in the batch
        written: dict[UUID, dict[str, Any]] = {}  # each ticket's row after the batch (those the batch changed)
        deltas: dict[tuple[Any, ...], int] = {}  # (*count key, partition) -> n
        changes: list[tuple[UUID, int, str, str, datetime]] = []  # (ticket, n-th of the batch, status, reason, at)
        changed: dict[UUID, int] = {}
        unread: set[UUID] = set()  # written since last read

        def current(ticket_id: UUID) -> dict[str, Any] | None:
            if ticket_id in unread:  # as it would read back from the table
                unread.discard(ticket_id)
                states[ticket_id] = as_stored(written[ticket_id])
            return states.get(ticket_id)

        def fold(incoming: Incoming) -> None:
            ev = cast(wire.TicketEvent, incoming.event)
            ticket_id = UUID(ev.ticket_id)
            row = current(ticket_id)
            evolution = model.evolve(row, ev, incoming.envelope.time)
            if evolution.state is None:
                return
            state = evolution.state
            old, new = count_key(row), count_key(state)
            if old != new:
                for key, n in ((old, -1), (new, 1)):
                    if key is not None:
                        deltas[(*key, incoming.partition)] = deltas.get((*key, incoming.partition), 0) + n
            written[ticket_id] = state
            unread.add(ticket_id)
            if (change := evolution.change) is not None:
                changed[ticket_id] = k = changed.get(ticket_id, 0) + 1
                changes.append((ticket_id, k, change.status, change.reason, change.at))

        for incoming in apply:
            ev = cast(wire.TicketEvent, incoming.event)
            ticket_id = UUID(ev.ticket_id)
            queue = queues.get(ticket_id)
            if current(ticket_id) is None and not isinstance(ev, wire.RequestSubmitted):
                if queue is None:
                    kept.append(incoming)
                else:
                    bisect.insort(queue, incoming, key=when)
                continue
            if queue and not isinstance(ev, wire.RequestSubmitted) and when(incoming) > when(queue[0]):
                bisect.insort(queue, incoming, key=when)  # happened after a step still waiting: waits behind it
            else:
                fold(incoming)
            while queue and model.ready(current(ticket_id), queue[0].event):
                fold(queue.pop(0))
        for ticket_id, queue in queues.items():
            if (state := current(ticket_id)) is not None and (mark := marked(state, bool(queue))) is not None:
                written[ticket_id] = mark
        if waiting := [*kept, *(step for t in sorted(queues) for step in queues[t])]:
            await keep(conn, waiting)
        if deltas:  # one lock order; a net change of 0 still creates its row, as the -1 and +1 would
            rows = sorted(deltas.items())
            await conn.execute(
                """INSERT INTO tmf_ticket_counts
                   SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[],
                                        $7::bigint[])
                   ON CONFLICT (channel_id, status, severity, ticket_type, priority_name, part)
                   DO UPDATE SET n = tmf_ticket_counts.n + EXCLUDED.n""",
                *([key[i] for key, _ in rows] for i in range(6)), [n for _, n in rows],
            )
        if written:
            order = sorted(written)
            await conn.execute(
                UPSERT_MANY, order,
                *([json.dumps(written[t]["doc"]) if c == "doc" else written[t][c] for t in order] for c in COLUMNS[1:]),
            )
        if changes:
            await conn.execute(
                """INSERT INTO tmf_status_change
                   SELECT u.t, coalesce((SELECT max(s.seq) FROM tmf_status_change s WHERE s.ticket_id = u.t), 0) + u.k,
                          u.status, u.reason, u.at
                   FROM unnest($1::uuid[], $2::int[], $3::text[], $4::text[], $5::timestamptz[])
                     AS u(t, k, status, reason, at)""",
                *([c[i] for c in changes] for i in range(5)),
            )

    async def _apply_one(self, conn: asyncpg.Connection, incoming: Incoming) -> None:
        ev = incoming.event
        if not isinstance(ev, wire.TicketEvent):
            return
        if await conn.fetchval(
            "INSERT INTO tmf_applied VALUES ($1) ON CONFLICT DO NOTHING RETURNING true", incoming.envelope.id
        ) is None:
            return  # applied before: a redelivery, or a republish after an empty broker
        ticket_id = UUID(ev.ticket_id)
        row = await conn.fetchrow("SELECT * FROM tmf_ticket WHERE ticket_id = $1 FOR UPDATE", ticket_id)
        state = row_state(row) if row else None
        submits = isinstance(ev, wire.RequestSubmitted)
        if state is None and not submits:
            await keep(conn, [incoming])  # not submitted yet: kept for its turn
            return
        queue: list[Incoming] = []
        if state is None or state["doc"].get(WAITING):
            queue = (await take(conn, [ticket_id], incoming.partition, incoming.topic)).get(ticket_id, [])
        if queue and not submits and when(incoming) > when(queue[0]):
            bisect.insort(queue, incoming, key=when)  # happened after a step still waiting: waits behind it
        else:
            state = await self._fold(conn, state, incoming)
        while queue and model.ready(state, queue[0].event):
            state = await self._fold(conn, state, queue.pop(0))
        if queue:
            await keep(conn, queue)
        if state is not None and (mark := marked(state, bool(queue))) is not None:
            await conn.execute("UPDATE tmf_ticket SET doc = $2::jsonb WHERE ticket_id = $1",
                               ticket_id, json.dumps(mark["doc"]))

    async def _fold(
        self, conn: asyncpg.Connection, row: dict[str, Any] | None, incoming: Incoming,
    ) -> dict[str, Any] | None:
        """One step applied to the ticket as ``row`` holds it: its row, counts, status history and notifications
        written; the ticket as it now reads back."""
        ev = cast(wire.TicketEvent, incoming.event)
        ticket_id = UUID(ev.ticket_id)
        evolution = model.evolve(row, ev, incoming.envelope.time)
        if evolution.state is None:
            return row
        state = evolution.state
        old, new = count_key(row), count_key(state)
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
        return as_stored(state)
