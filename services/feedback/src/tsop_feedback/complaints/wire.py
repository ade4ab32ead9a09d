"""Complaints, improvement actions and assessments on the wire: one row per event, on the ``complaints`` topic.

A wire field takes the domain event's attribute of the same name; only the ids are written out (the wire
names the complaint, the action or the ticket; the store names the aggregate). ComplaintHistory and
PatternWatch stay inside: they only make repeats and patterns exact.
"""

from __future__ import annotations

from typing import Any

from tsop_events import schemas as wire
from tsop_events.wiremap import Source, WireMap, previous_event
from tsop_feedback.complaints.domain import Assessment, Complaint, ImprovementAction


def _originator(e: Any) -> str:
    return str(e.originator_id)


C: dict[str, Source] = {"complaint_id": _originator}
A: dict[str, Source] = {"action_id": _originator}

WIRE = (
    WireMap()
    .add(Complaint.Received, wire.ComplaintReceived, fields={**C, "repeat": lambda e: bool(e.repeat_of)})
    .add(Complaint.Acknowledged, wire.ComplaintAcknowledged, fields=C, causation=previous_event)
    .add(Complaint.Categorised, wire.ComplaintCategorised, fields={**C, "repeat": lambda e: bool(e.repeat_of)},
         causation=previous_event)
    .add(Complaint.TicketLinked, wire.ComplaintTicketLinked, fields=C, causation=previous_event)
    .add(Complaint.NoteAdded, wire.ComplaintNoteAdded, fields=C, causation=previous_event)
    .add(Complaint.Answered, wire.ComplaintAnswered, fields=C, causation=previous_event)
    .add(Complaint.AnswerRejected, wire.ComplaintAnswerRejected, fields=C, causation=previous_event)
    .add(Complaint.Escalated, wire.ComplaintEscalated, fields=C, causation=previous_event)
    .add(Complaint.Closed, wire.ComplaintClosed, fields=C, causation=previous_event)
    .add(ImprovementAction.Opened, wire.ImprovementActionOpened, fields=A)
    .add(ImprovementAction.Reassigned, wire.ImprovementActionReassigned, fields=A, causation=previous_event)
    .add(ImprovementAction.Verified, wire.ImprovementActionVerified, fields=A, causation=previous_event)
    .add(ImprovementAction.Closed, wire.ImprovementActionClosed, fields=A, causation=previous_event)
    .add(ImprovementAction.Escalated, wire.ImprovementActionEscalated, fields=A, causation=previous_event)
    .add(Assessment.Recorded, wire.TicketAssessed)
)


def with_service(service: WireMap) -> WireMap:
    """The service's mapper: its own table and this context's (one relay, one event store; no class is in both)."""
    return service.including(WIRE)
