"""Incident's domain events on the wire: one row per event that leaves the service, all on ``incidents``.

A wire field takes the domain event's attribute of the same name. Watch and TicketLink events stay inside.
"""

from __future__ import annotations

from typing import Any

from tsop_events import schemas as wire
from tsop_events.wiremap import Source, WireMap, previous_event
from tsop_incident.domain import Incident


def _id(e: Incident.Event) -> str:
    return str(e.originator_id)


def _steps(e: Incident.PlanActivated) -> list[wire.PlanStep]:
    return [wire.PlanStep.model_validate(s) for s in e.steps]


def _review(name: str) -> Source:
    def read(e: Incident.ReviewPublished) -> Any:
        return e.review[name]

    return read


def _late(e: Incident.ReviewPublished) -> list[wire.LateStep]:
    return [wire.LateStep.model_validate(s) for s in e.review["late_steps"]]


def _timeline(e: Incident.ReviewPublished) -> list[wire.ReviewTimelineEntry]:
    return [wire.ReviewTimelineEntry.model_validate(t) for t in e.review["timeline"]]


def _tickets_linked(e: Incident.Resolved) -> int:
    return len(e.ticket_ids)


def _actions(e: Incident.ReviewPublished) -> list[wire.ImprovementAction]:
    return [wire.ImprovementAction.model_validate(a) for a in e.improvement_actions]


INCIDENT: dict[str, Source] = {"incident_id": _id}
REVIEW_FIELDS = (
    "title", "severity", "affected_services", "regions", "detected_at", "declared_at", "acknowledged_at",
    "restored_at", "resolved_at", "time_to_detect_seconds", "time_to_acknowledge_seconds",
    "time_to_restore_seconds", "tickets_affected", "tickets_unlinked", "customers_affected", "sla_paused_seconds",
)

WIRE = (
    WireMap()
    .add(Incident.Declared, wire.IncidentDeclared, fields=INCIDENT)
    .add(Incident.Acknowledged, wire.IncidentAcknowledged, fields=INCIDENT, causation=previous_event)
    .add(Incident.SeverityChanged, wire.IncidentSeverityChanged, fields=INCIDENT, causation=previous_event)
    .add(Incident.TicketLinked, wire.IncidentTicketLinked, fields=INCIDENT, causation=previous_event)
    .add(Incident.TicketsLinked, wire.IncidentTicketsLinked, fields=INCIDENT, causation=previous_event)
    .add(Incident.TicketUnlinked, wire.IncidentTicketUnlinked, fields=INCIDENT, causation=previous_event)
    .add(Incident.PlanActivated, wire.EmergencyPlanActivated, fields={**INCIDENT, "steps": _steps},
         causation=previous_event)
    .add(Incident.StepFinished, wire.PlanStepFinished, fields=INCIDENT, causation=previous_event)
    .add(Incident.StepEscalated, wire.PlanStepEscalated, fields=INCIDENT, causation=previous_event)
    .add(Incident.Restored, wire.ServiceRestored, fields=INCIDENT, causation=previous_event)
    .add(Incident.Verified, wire.RestorationVerified, fields=INCIDENT, causation=previous_event)
    .add(Incident.Resolved, wire.IncidentResolved, fields={**INCIDENT, "tickets_linked": _tickets_linked},
         causation=previous_event)
    .add(
        Incident.ReviewPublished,
        wire.ReviewPublished,
        fields={
            **INCIDENT,
            **{name: _review(name) for name in REVIEW_FIELDS},
            "late_steps": _late,
            "timeline": _timeline,
            "improvement_actions": _actions,
        },
        causation=previous_event,
    )
)
"""The relay's mapper: ``WIRE(domain_event)`` is the ``Outgoing`` record, or None for events that stay inside."""
