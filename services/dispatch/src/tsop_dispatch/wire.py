"""Dispatch's domain events on the wire: one row per event that leaves the service.

A wire field takes the domain event's attribute of the same name; only the real
differences are written out. Events not listed (Took, Released, Reserved, Freed,
CredentialIssued, Opened, Unassigned, Withdrawn, Retargeted, Adopted, IncidentHold's) stay inside.
Held and HoldLifted (an incident's hold, §5.3) go out as TicketHeld and TicketReleased.
"""

from __future__ import annotations

from tsop_dispatch.domain import PeakMode, Resource, Technician, WorkOrder, registered
from tsop_events import schemas as wire
from tsop_events.wiremap import Source, WireMap, previous_event


def _id(e: Technician.Event | Resource.Event | WorkOrder.Event) -> str:
    return str(e.originator_id)


def _qualifications(e: Technician.Registered) -> list[wire.Qualification]:
    return [wire.Qualification.model_validate(registered(q, e.registered_at)) for q in e.qualifications]


def _service_types(e: Technician.Registered) -> list[str]:
    return sorted(q["service_type"] for q in e.qualifications)


def _granted(e: Technician.QualificationGranted) -> wire.Qualification:
    return wire.Qualification(
        service_type=e.service_type,
        certificate=e.certificate,
        level=e.level,
        valid_from=e.valid_from,
        valid_until=e.valid_until,
    )


def _candidates(e: WorkOrder.Assigned) -> list[wire.AssignmentCandidate]:
    return [wire.AssignmentCandidate.model_validate(c) for c in e.candidates]


def _assignment_cause(e: WorkOrder.Assigned) -> str:
    """The first assignment follows from the acceptance of the request; later ones from what came before."""
    return e.causation_id if e.originator_version == 2 else previous_event(e)


def _resources(e: WorkOrder.Assigned) -> list[str]:
    return e.resources or []


def _equipment(e: WorkOrder.WorkLogged) -> list[str]:
    return e.equipment or []


def _measurements(e: WorkOrder.WorkLogged) -> dict[str, float | str]:
    return e.measurements or {}


TECHNICIAN: dict[str, Source] = {"technician_id": _id}
WORK_ORDER: dict[str, Source] = {"work_order_id": _id}

WIRE = (
    WireMap()
    .add(
        Technician.Registered,
        wire.TechnicianRegistered,
        fields={**TECHNICIAN, "service_types": _service_types, "qualifications": _qualifications},
    )
    .add(
        Technician.QualificationGranted,
        wire.QualificationGranted,
        fields={**TECHNICIAN, "qualification": _granted},
        causation=previous_event,
    )
    .add(Technician.ShiftScheduled, wire.ShiftScheduled, fields=TECHNICIAN, causation=previous_event)
    .add(Technician.LeaveScheduled, wire.LeaveScheduled, fields=TECHNICIAN, causation=previous_event)
    .add(Technician.CapacityChanged, wire.CapacityChanged, fields=TECHNICIAN, causation=previous_event)
    .add(Resource.Registered, wire.ResourceRegistered, fields={"resource_id": _id})
    .add(PeakMode.Changed, wire.PeakModeChanged, fields={"changed_by": "by"}, causation=previous_event)
    .add(
        WorkOrder.Assigned,
        wire.Assigned,
        fields={**WORK_ORDER, "candidates": _candidates, "resources": _resources},
        causation=_assignment_cause,
    )
    .add(WorkOrder.Accepted, wire.AssignmentAccepted, fields=WORK_ORDER, causation=previous_event)
    .add(WorkOrder.Declined, wire.AssignmentDeclined, fields=WORK_ORDER, causation=previous_event)
    .add(WorkOrder.Started, wire.WorkStarted, fields=WORK_ORDER, causation=previous_event)
    .add(
        WorkOrder.WorkLogged,
        wire.WorkLogged,
        fields={**WORK_ORDER, "equipment": _equipment, "measurements": _measurements},
        causation=previous_event,
    )
    .add(WorkOrder.Paused, wire.WorkPaused, fields=WORK_ORDER, causation=previous_event)
    .add(WorkOrder.Resumed, wire.WorkResumed, fields=WORK_ORDER, causation=previous_event)
    .add(WorkOrder.Resolved, wire.Resolved, fields=WORK_ORDER, causation=previous_event)
    .add(WorkOrder.Held, wire.TicketHeld, fields=WORK_ORDER, causation=previous_event)
    .add(WorkOrder.HoldLifted, wire.TicketReleased, fields={**WORK_ORDER, "released_at": "lifted_at"},
         causation=previous_event)
    .add(WorkOrder.ThresholdCrossed, wire.SlaThresholdCrossed, causation=previous_event)
    .add(WorkOrder.Escalated, wire.Escalated, causation=previous_event)
)
"""The relay's mapper: ``WIRE(domain_event)`` is the ``Outgoing`` record, or None for events that stay inside."""
