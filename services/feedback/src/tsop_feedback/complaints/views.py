"""The complaint board (an in-memory view that follows feedback's own log) and the deadline timer that reads it.

The board knows each complaint's state, deadlines and escalations, and each improvement action; the timer
(``complaint_deadlines``) escalates every complaint whose acknowledgement or answer is overdue, and every
improvement action still open past its due date (once per due date). Its state is
the event store (``acknowledge_by``, ``answer_by`` and the Escalated events), so a restarted feedback
process, or a second one, picks up where another left off and escalates each passed deadline once: the
aggregate decides again on its own events, and a race between instances is a write conflict.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from tsop_events.runtime import Service
from tsop_events.store import EventStoreApp, LogFollower
from tsop_feedback.complaints.domain import Complaint, ImprovementAction, action_overdue, overdue_deadlines

if TYPE_CHECKING:
    from tsop_feedback.commands import FeedbackApp

log = logging.getLogger(__name__)
# the stored events' topics of the aggregates the board follows (their module path and class name)
OWN_TOPICS = tuple(f"{cls.__module__}:{cls.__qualname__}." for cls in (Complaint, ImprovementAction))


@dataclass
class ComplaintSummary:
    id: UUID
    customer_id: str
    channel_id: str | None
    source: str
    complaint_type: str
    status: str
    received_at: datetime
    acknowledge_by: datetime
    answer_by: datetime
    repeat: bool
    escalation_level: int = 0
    escalated: set[tuple[str, str | None]] = field(default_factory=set)
    ticket_ids: list[str] = field(default_factory=list)

    def overdue(self, now: datetime) -> bool:
        if self.status == "closed":
            return False
        return (self.status == "received" and now > self.acknowledge_by) or (
            self.status != "answered" and now > self.answer_by)


@dataclass
class ActionSummary:
    id: UUID
    title: str
    kind: str
    origin: str
    origin_id: str
    owner: str
    due: datetime
    status: str
    escalation_level: int = 0
    escalated_dues: set[str] = field(default_factory=set)

    def overdue(self, now: datetime) -> bool:
        return action_overdue(self.status, self.due, set(), now)


class ComplaintBoard(LogFollower):
    """Every complaint and improvement action, by id, as feedback's log tells them."""

    topics = OWN_TOPICS  # decodes only this context's events (feedback's cases are most of the log)

    def __init__(self, app: EventStoreApp) -> None:
        super().__init__(app)
        self.by_id: dict[UUID, ComplaintSummary] = {}
        self.action_by_id: dict[UUID, ActionSummary] = {}

    def apply(self, e: Any) -> None:
        if isinstance(e, Complaint.Received):
            self.by_id[e.originator_id] = ComplaintSummary(
                e.originator_id, e.customer_id, e.channel_id, e.source, e.complaint_type, "received", e.received_at,
                e.acknowledge_by, e.answer_by, bool(e.repeat_of), ticket_ids=list(e.ticket_ids))
            return
        if isinstance(e, Complaint.Event):
            self._complaint(self.by_id[e.originator_id], e)
        elif isinstance(e, ImprovementAction.Opened):
            self.action_by_id[e.originator_id] = ActionSummary(
                e.originator_id, e.title, e.kind, e.origin, e.origin_id, e.owner, e.due, "open")
        elif isinstance(e, ImprovementAction.Reassigned):
            a = self.action_by_id[e.originator_id]
            a.owner, a.due = e.owner, e.due
        elif isinstance(e, ImprovementAction.Verified):
            self.action_by_id[e.originator_id].status = "verified" if e.effective else "open"
        elif isinstance(e, ImprovementAction.Closed):
            self.action_by_id[e.originator_id].status = "closed"
        elif isinstance(e, ImprovementAction.Escalated):
            a = self.action_by_id[e.originator_id]
            a.escalation_level = e.level
            a.escalated_dues.add(e.due.isoformat())

    @staticmethod
    def _complaint(c: ComplaintSummary, e: Complaint.Event) -> None:
        if isinstance(e, Complaint.Acknowledged):
            c.status = "acknowledged"
        elif isinstance(e, Complaint.NoteAdded) and c.status == "acknowledged":
            c.status = "investigating"
        elif isinstance(e, Complaint.Categorised):
            c.complaint_type, c.repeat = e.complaint_type, bool(e.repeat_of)
        elif isinstance(e, Complaint.TicketLinked):
            c.ticket_ids.append(e.ticket_id)
        elif isinstance(e, Complaint.Answered):
            c.status = "answered"
        elif isinstance(e, Complaint.AnswerRejected):
            c.status, c.answer_by = "investigating", e.answer_by
        elif isinstance(e, Complaint.Escalated):
            c.escalation_level = e.level
            c.escalated.add((e.reason, e.deadline.isoformat() if e.deadline else None))
        elif isinstance(e, Complaint.Closed):
            c.status = "closed"

    def due(self, now: datetime) -> list[UUID]:
        """The complaints with a deadline passed and not yet escalated."""
        with self.lock:
            return [c.id for c in self.by_id.values()
                    if overdue_deadlines(c.status, c.acknowledge_by, c.answer_by, c.escalated, now)]

    def complaints(
        self, channel: str | None, now: datetime, *, status: str | None = None, customer_id: str | None = None,
        complaint_type: str | None = None, overdue: bool | None = None, repeat: bool | None = None,
        escalated: bool | None = None, limit: int = 100,
    ) -> list[ComplaintSummary]:
        with self.lock:
            found = [
                c for c in self.by_id.values()
                if (channel is None or c.channel_id == channel)
                and (status is None or c.status == status)
                and (customer_id is None or c.customer_id == customer_id)
                and (complaint_type is None or c.complaint_type == complaint_type)
                and (overdue is None or c.overdue(now) == overdue)
                and (repeat is None or c.repeat == repeat)
                and (escalated is None or (c.escalation_level > 0) == escalated)
            ]
        found.sort(key=lambda c: (c.received_at, str(c.id)), reverse=True)
        return found[:limit]

    def actions_due(self, now: datetime) -> list[UUID]:
        """The improvement actions past their due date unfinished and not yet escalated for it."""
        with self.lock:
            return [a.id for a in self.action_by_id.values()
                    if action_overdue(a.status, a.due, a.escalated_dues, now)]

    def actions(self, status: str | None, origin: str | None, now: datetime | None = None,
                overdue: bool | None = None) -> list[ActionSummary]:
        with self.lock:
            found = [a for a in self.action_by_id.values()
                     if (status is None or a.status == status) and (origin is None or a.origin == origin)
                     and (overdue is None or now is None or a.overdue(now) == overdue)]
        found.sort(key=lambda a: (a.due, str(a.id)))
        return found


async def complaint_deadlines(svc: Service[FeedbackApp], every: float = 1.0) -> None:
    """The deadline timer: escalate every overdue complaint and improvement action, each ``every`` seconds."""
    from tsop_feedback.complaints import commands

    while True:
        # one failing step never stops the other (the next round decides again); it is logged once while it
        # lasts and shown in /readyz (tsop_events.faults)
        await svc.faults.step("escalate_overdue complaints", lambda: commands.escalate_overdue(svc))
        await svc.faults.step("escalate_overdue improvement actions", lambda: commands.escalate_overdue_actions(svc))
        await asyncio.sleep(every)
