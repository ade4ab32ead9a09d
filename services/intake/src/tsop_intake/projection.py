"""Intake's read model: where each request stands, fed by the whole ticket stream."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar
from uuid import UUID

import asyncpg

from tsop_events import schemas as wire
from tsop_events.consumer import Incoming, ProjectionSink

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
# a reopened ticket is worked again: it shows as reopened (not final) until it is closed; the work in between
# (assigned, resolved, rated again) ranks below it and leaves the status as is
# no longer open: a new application for the same customer, type and location is not its duplicate
FINISHED = frozenset({"resolved", "feedback_sent", "rated", "closed", "archived", "cancelled"})


class RequestStatusProjection(ProjectionSink):
    name: ClassVar[str] = "intake-status"
    event_types: ClassVar[frozenset[str] | None] = frozenset(STATUS_OF)
    ddl: ClassVar[tuple[str, ...]] = (
        """CREATE TABLE IF NOT EXISTS request_status (
            ticket_id uuid PRIMARY KEY, status text NOT NULL, rank int NOT NULL, updated_at timestamptz NOT NULL)""",
        """CREATE TABLE IF NOT EXISTS request_history (
            event_id text PRIMARY KEY, ticket_id uuid NOT NULL, event_type text NOT NULL,
            status text NOT NULL, at timestamptz NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS request_history_ticket ON request_history (ticket_id, at)",
    )

    def __init__(self, pool: asyncpg.Pool, on_finished: Callable[[UUID], None] | None = None) -> None:
        super().__init__(pool)
        self.on_finished = on_finished  # e.g. drop the ticket from the open-request index

    async def apply(self, conn: asyncpg.Connection, incoming: Incoming) -> None:
        status = STATUS_OF[incoming.envelope.type]
        env = incoming.envelope
        # only ever forward: a late or re-delivered event never moves a request back. Its history entry
        # records the status the request has after it (a FeedbackSent after Closed leaves it closed).
        await conn.execute(
            """WITH moved AS (
                 INSERT INTO request_status VALUES ($2, $4, $6, $5)
                 ON CONFLICT (ticket_id) DO UPDATE SET status = EXCLUDED.status, rank = EXCLUDED.rank,
                 updated_at = EXCLUDED.updated_at WHERE request_status.rank < EXCLUDED.rank
                 RETURNING status)
               INSERT INTO request_history VALUES ($1, $2, $3,
                 COALESCE((SELECT status FROM moved), (SELECT status FROM request_status WHERE ticket_id = $2), $4),
                 $5)
               ON CONFLICT DO NOTHING""",
            env.id, incoming.key, env.type, status, env.time, RANK[status],
        )
        if status in FINISHED and self.on_finished is not None and incoming.key:
            self.on_finished(UUID(incoming.key))

