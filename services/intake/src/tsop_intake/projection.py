"""Intake's read models: where each request stands, fed by the whole ticket stream; and the legal holds the
archive announced, with the incidents tickets were linked to (an erasure a hold covers is refused)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, ClassVar
from uuid import UUID

import asyncpg

from tsop_events import schemas as wire
from tsop_events.batched import BatchedSink, Statements
from tsop_events.consumer import Incoming, ProjectionSink
from tsop_events.topics import Topic

# Native lifecycle statuses, in the order a ticket moves through them.
STATUS_OF: dict[str, str] = {
    wire.RequestSubmitted.event_type: "submitted",
    wire.RequestPendingInformation.event_type: "pending_information",
    wire.RequestQueuedForReview.event_type: "queued_for_review",
    wire.RequestAccepted.event_type: "accepted",
    wire.RequestRejected.event_type: "rejected",
    wire.RequestLinked.event_type: "linked",
    wire.Assigned.event_type: "assigned",
    wire.WorkLogged.event_type: "in_progress",
    wire.Resolved.event_type: "resolved",
    wire.FeedbackSent.event_type: "feedback_sent",
    wire.Rated.event_type: "rated",
    wire.Reopened.event_type: "reopened",
    wire.Closed.event_type: "closed",
    wire.Archived.event_type: "archived",
    wire.RequestCancelled.event_type: "cancelled",
}
RANK = {status: i for i, status in enumerate(dict.fromkeys(STATUS_OF.values()))}
# a reopened ticket is worked again: its status goes back to reopened (ranked as accepted, so the work that
# follows moves it on: assigned, in progress, resolved, rated, closed); the status is the furthest reached since the
# latest reopening, and events of the earlier round that arrive late leave it as is
RANK["reopened"] = RANK["accepted"]
REOPENED = wire.Reopened.event_type
# no longer open: a new application for the same customer, type and location is not its duplicate
FINISHED = frozenset({"resolved", "feedback_sent", "rated", "closed", "archived", "cancelled"})


# forward only within a round: a late or re-delivered event never moves a request back, except a newer reopening,
# which starts a round (its time is ``since``; events from before it leave the status as is)
_MOVES = """ON CONFLICT (ticket_id) DO UPDATE SET status = EXCLUDED.status, rank = EXCLUDED.rank,
                 updated_at = EXCLUDED.updated_at, since = COALESCE(EXCLUDED.since, request_status.since)
                 WHERE CASE WHEN EXCLUDED.since IS NOT NULL
                       THEN request_status.since IS NULL OR request_status.since < EXCLUDED.since
                       ELSE request_status.rank < EXCLUDED.rank
                            AND (request_status.since IS NULL OR request_status.since <= EXCLUDED.updated_at) END"""

# ``_status``'s statement for many records, each of another ticket: one row per record, its ordinal ``n`` and
# ``after`` (its history entry's status; NULL for a redelivery). As there, every subquery reads the rows as they
# were before the statement: a ticket the statement did not move keeps its status
MANY = f"""WITH u AS (
             SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::timestamptz[], $6::int[],
                                  $7::timestamptz[]) WITH ORDINALITY AS u(event_id, ticket_id, event_type, status, at,
                                                                         rank, since, n)),
           moved AS (
             INSERT INTO request_status (ticket_id, status, rank, updated_at, since)
             SELECT ticket_id, status, rank, at, since FROM u ORDER BY ticket_id
             {_MOVES}
             RETURNING ticket_id, status),
           recorded AS (
             INSERT INTO request_history
             SELECT u.event_id, u.ticket_id, u.event_type,
                    COALESCE(m.status, (SELECT s.status FROM request_status s WHERE s.ticket_id = u.ticket_id),
                             u.status), u.at
             FROM u LEFT JOIN moved m ON m.ticket_id = u.ticket_id
             ON CONFLICT DO NOTHING RETURNING event_id, status)
         SELECT u.n, r.status AS after FROM u LEFT JOIN recorded r ON r.event_id = u.event_id"""


class RequestStatusProjection(BatchedSink):
    name: ClassVar[str] = "intake-status"
    event_types: ClassVar[frozenset[str] | None] = frozenset(STATUS_OF)
    ddl: ClassVar[tuple[str, ...]] = (
        """CREATE TABLE IF NOT EXISTS request_status (
            ticket_id uuid PRIMARY KEY, status text NOT NULL, rank int NOT NULL, updated_at timestamptz NOT NULL)""",
        # the time of the latest reopening: events from before it no longer move the status
        "ALTER TABLE request_status ADD COLUMN IF NOT EXISTS since timestamptz",
        """CREATE TABLE IF NOT EXISTS request_history (
            event_id text PRIMARY KEY, ticket_id uuid NOT NULL, event_type text NOT NULL,
            status text NOT NULL, at timestamptz NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS request_history_ticket ON request_history (ticket_id, at)",
    )

    def __init__(
        self,
        pool: asyncpg.Pool,
        on_finished: Callable[[UUID], None] | None = None,
        on_reopened: Callable[[UUID], None] | None = None,
    ) -> None:
        super().__init__(pool)
        self.on_finished = on_finished  # e.g. drop the ticket from the open-request index
        self.on_reopened = on_reopened  # e.g. put it back there

    async def apply_batch(self, conn: asyncpg.Connection, records: Sequence[Incoming]) -> None:
        """The records of tickets that appear once in the batch with one statement for them all (``MANY``); a
        ticket's several records with a statement each, pipelined in order (``tsop_events.batched``): one
        statement cannot update a row twice. The tickets' rows are disjoint, so the effect is the records' one by
        one. Then the callbacks, in the batch's order."""
        tickets = Counter(r.key for r in records)
        single = [i for i, r in enumerate(records) if tickets[r.key] == 1]
        afters: list[str | None] = [None] * len(records)
        if len(single) > 1:
            envs = [records[i].envelope for i in single]
            statuses = [STATUS_OF[e.type] for e in envs]
            for row in await conn.fetch(
                MANY, [e.id for e in envs], [records[i].key for i in single], [e.type for e in envs], statuses,
                [e.time for e in envs], [RANK[s] for s in statuses],
                [e.time if e.type == REOPENED else None for e in envs],
            ):
                afters[single[row["n"] - 1]] = row["after"]
            rest = [i for i in range(len(records)) if tickets[records[i].key] != 1]
        else:
            rest = list(range(len(records)))
        statements = Statements()
        for i in rest:
            self._status(statements, records[i])
        for i, row in zip(rest, await statements.run(conn), strict=True):
            afters[i] = None if row is None else row["after"]
        for incoming, after in zip(records, afters, strict=True):
            # after: the status after it (None: a redelivery)
            reopening = incoming.envelope.type == REOPENED
            if after in FINISHED and self.on_finished is not None and incoming.key:
                self.on_finished(UUID(incoming.key))
            if reopening and after == "reopened" and self.on_reopened is not None and incoming.key:
                self.on_reopened(UUID(incoming.key))

    def _status(self, statements: Statements, incoming: Incoming) -> None:
        status = STATUS_OF[incoming.envelope.type]
        env = incoming.envelope
        reopening = env.type == REOPENED
        # forward only within a round: a late or re-delivered event never moves a request back, except a newer
        # reopening, which starts a round (its time is ``since``; events from before it leave the status as is).
        # Its history entry records the status the request has after it (a FeedbackSent after Closed leaves it
        # closed). One row, always: its ``after`` is NULL for a redelivery, recorded before.
        statements.add(
            f"""WITH moved AS (
                 INSERT INTO request_status (ticket_id, status, rank, updated_at, since) VALUES ($2, $4, $6, $5, $7)
                 {_MOVES}
                 RETURNING status)
               , recorded AS (INSERT INTO request_history VALUES ($1, $2, $3,
                 COALESCE((SELECT status FROM moved), (SELECT status FROM request_status WHERE ticket_id = $2), $4),
                 $5)
               ON CONFLICT DO NOTHING RETURNING status)
               SELECT (SELECT status FROM recorded) AS after""",
            env.id, incoming.key, env.type, status, env.time, RANK[status], env.time if reopening else None,
            fetch=True,
        )



def current_status(history: list[dict[str, Any]]) -> str | None:
    """The status a request's history (entries with ``status``, ``event_type``, ``at``, in time order) shows: the
    furthest reached (by ``RANK``) since the latest reopening, never merely the last to arrive (a FeedbackSent
    recorded after Archived does not send the request back to feedback_sent)."""
    start = 0
    for i, h in enumerate(history):
        if h["event_type"] == REOPENED:
            start = i
    since = history[start:]
    if since and since[0]["event_type"] == REOPENED:
        # the reopening itself shows as reopened, whatever status its entry recorded
        since = [{**since[0], "status": "reopened"}, *since[1:]]
    return max((h["status"] for h in since), key=lambda st: RANK.get(st, -1), default=None)


# ---------------------------------------------------------------- legal holds (docs/erasure.md)

HOLD_EVENTS = frozenset({
    wire.LegalHoldPlaced.event_type, wire.LegalHoldReleased.event_type, wire.LegalHoldPlacedAgain.event_type,
    wire.IncidentTicketLinked.event_type, wire.IncidentTicketsLinked.event_type,
})


class LegalHoldProjection(ProjectionSink):
    """The legal holds the archive announced (on the customers topic) and which tickets were ever linked to which
    incident (the archive's holds cover an incident's tickets whether or not they were unlinked since)."""

    name: ClassVar[str] = "intake-legal-holds"
    topics: ClassVar[tuple[Topic, ...]] = (Topic.customers, Topic.incidents)
    event_types: ClassVar[frozenset[str] | None] = HOLD_EVENTS
    ddl: ClassVar[tuple[str, ...]] = (
        """CREATE TABLE IF NOT EXISTS legal_holds (
            hold_id text PRIMARY KEY, kind text NOT NULL, subject text NOT NULL, active boolean NOT NULL,
            placed_by text NOT NULL, reason text NOT NULL, placed_at timestamptz NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS legal_holds_subject ON legal_holds (kind, subject) WHERE active",
        """CREATE TABLE IF NOT EXISTS incident_tickets (
            ticket_id text NOT NULL, incident_id text NOT NULL, PRIMARY KEY (ticket_id, incident_id))""",
    )

    async def apply(self, conn: asyncpg.Connection, incoming: Incoming) -> None:
        e = incoming.event
        if isinstance(e, wire.LegalHoldPlaced):
            await conn.execute(
                "INSERT INTO legal_holds VALUES ($1, $2, $3, true, $4, $5, $6) ON CONFLICT (hold_id) DO NOTHING",
                e.hold_id, e.kind, e.subject, e.placed_by, e.reason, e.placed_at)
        elif isinstance(e, wire.LegalHoldPlacedAgain):
            if e.kind is not None and e.subject is not None:  # in force, whether or not its placement was heard
                await conn.execute(
                    "INSERT INTO legal_holds VALUES ($1, $2, $3, true, $4, $5, $6) ON CONFLICT (hold_id) DO UPDATE "
                    "SET active = true, placed_by = $4, reason = $5, placed_at = $6",
                    e.hold_id, e.kind, e.subject, e.placed_by, e.reason, e.placed_at)
            else:
                await conn.execute(
                    "UPDATE legal_holds SET active = true, placed_by = $2, reason = $3, placed_at = $4 "
                    "WHERE hold_id = $1", e.hold_id, e.placed_by, e.reason, e.placed_at)
        elif isinstance(e, wire.LegalHoldReleased):
            await conn.execute("UPDATE legal_holds SET active = false WHERE hold_id = $1", e.hold_id)
        elif isinstance(e, wire.IncidentTicketLinked):
            await conn.execute("INSERT INTO incident_tickets VALUES ($1, $2) ON CONFLICT DO NOTHING",
                               e.ticket_id, e.incident_id)
        elif isinstance(e, wire.IncidentTicketsLinked):  # a chunk of tickets: one statement
            await conn.execute("INSERT INTO incident_tickets SELECT unnest($1::text[]), $2 ON CONFLICT DO NOTHING",
                               e.ticket_ids, e.incident_id)


async def covering_holds(pool: asyncpg.Pool, customer_id: str, tickets: list[str]) -> list[dict[str, Any]]:
    """The holds in force on the customer, on one of ``tickets`` (theirs), or on an incident one of them was
    linked to; each with ``ticket_id`` when it covers the customer through a ticket."""
    rows = await pool.fetch(
        """SELECT h.hold_id, h.kind, h.subject, h.reason, h.placed_by, h.placed_at, NULL AS ticket_id
             FROM legal_holds h WHERE h.active AND h.kind = 'customer' AND h.subject = $1
           UNION ALL
           SELECT h.hold_id, h.kind, h.subject, h.reason, h.placed_by, h.placed_at, NULL
             FROM legal_holds h WHERE h.active AND h.kind = 'ticket' AND h.subject = ANY($2::text[])
           UNION ALL
           SELECT DISTINCT ON (h.hold_id) h.hold_id, h.kind, h.subject, h.reason, h.placed_by, h.placed_at,
                  l.ticket_id
             FROM legal_holds h JOIN incident_tickets l ON l.incident_id = h.subject
             WHERE h.active AND h.kind = 'incident' AND l.ticket_id = ANY($2::text[])
           ORDER BY 6, 1""",
        customer_id, tickets,
    )
    return [
        {"hold_id": r["hold_id"], "kind": r["kind"], "subject": r["subject"], "reason": r["reason"],
         "placed_by": r["placed_by"], "placed_at": r["placed_at"].isoformat(),
         **({"ticket_id": r["ticket_id"]} if r["ticket_id"] else {})}
        for r in rows
    ]
