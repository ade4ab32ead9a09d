"""Incidents (§5): declaration, correlation, emergency plans, linked tickets, restoration and the review. No I/O.

Three aggregates:

- ``Incident``: one service interruption or emergency, from declaration to its published review.
- ``Watch``: one scope (region, service type): the recent fault tickets that may add up to an outage,
  and the open incident that covers the scope (new tickets in it are linked to that incident).
- ``TicketLink``: one ticket's link, so that a ticket is linked to at most one open incident.

Operator data (correlation rules, emergency plans) is parsed here from plain dicts; the files are read in main.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from fnmatch import fnmatch
from typing import Any, TypedDict
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from tsop_events.errors import Conflict, Invalid

SEVERITIES: dict[str, str] = {
    "I": "Critical: a core service is down across one or more regions, or more than 10,000 customers are cut off.",
    "II": "Major: a service is down in a region, or more than 1,000 customers are affected.",
    "III": "Minor: a service is degraded, or more than 100 customers are affected.",
    "IV": "Low: a local fault affecting few customers, handled by the plan's basic steps.",
}
"""Severity levels and their criteria (§5.1): I is the most severe."""

ESCALATE_TO = "supervisor"
"""Who an overdue plan step is escalated to, unless the plan names someone else."""


class IncidentError(Conflict):
    """The incident's state refuses the change (answered 409)."""

    title = "Not allowed now"


class AlreadyLinked(IncidentError):
    title = "Ticket linked to another incident"


def check_severity(severity: str, field: str = "severity") -> str:
    if severity not in SEVERITIES:
        raise Invalid(f"must be one of {', '.join(SEVERITIES)}", field)
    return severity


# --- operator data: correlation rules and emergency plans ------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """Fault tickets of one service type in one region: ``threshold`` of them within ``window`` declare an incident."""

    name: str
    service_types: str  # a pattern, e.g. "*.fault_repair"
    threshold: int
    window: timedelta
    severity: str
    scenario: str
    customers_per_ticket: int = 1
    regions: tuple[str, ...] = ("*",)  # region patterns the rule watches

    def matches(self, service_type: str, region: str = "") -> bool:
        return fnmatch(service_type, self.service_types) and any(fnmatch(region, p) for p in self.regions)


@dataclass(frozen=True)
class Rules:
    rules: tuple[Rule, ...]

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Rules:
        out = []
        for i, r in enumerate(raw.get("rules", [])):
            where = f"rules[{i}]"
            threshold, window = int(r["threshold"]), float(r["window_seconds"])
            if threshold < 1 or window <= 0:
                raise ValueError(f"{where}: threshold ≥ 1 and window_seconds > 0")
            severity = str(r.get("severity", "II"))
            if severity not in SEVERITIES:
                raise ValueError(f"{where}: severity {severity} is not one of {', '.join(SEVERITIES)}")
            out.append(
                Rule(
                    str(r.get("name", where)),
                    str(r["service_types"]),
                    threshold,
                    timedelta(seconds=window),
                    severity,
                    str(r.get("scenario", "outage")),
                    int(r.get("customers_per_ticket", 1)),
                    tuple(str(x) for x in r.get("regions", ["*"])),
                )
            )
        return cls(tuple(out))

    def for_type(self, service_type: str, region: str = "") -> Rule | None:
        """The first rule watching this service type in this region."""
        return next((r for r in self.rules if r.matches(service_type, region)), None)


class StepSpec(TypedDict):
    key: str
    title: str
    role: str
    notify: list[str]
    limit_seconds: float


class ActiveStep(TypedDict):
    """A step of an activated plan, as the event records it."""

    key: str
    title: str
    role: str
    notify: list[str]
    limit_seconds: float
    due_at: datetime


@dataclass(frozen=True)
class Plans:
    """Emergency plans per scenario and severity (§5.2): steps, owning role, who is notified, time limits."""

    plans: dict[str, dict[str, list[StepSpec]]]
    escalate_to: str = ESCALATE_TO

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Plans:
        plans: dict[str, dict[str, list[StepSpec]]] = {}
        for scenario, by_severity in raw.get("scenarios", {}).items():
            plans[scenario] = {}
            for severity, steps in by_severity.items():
                if severity not in SEVERITIES:
                    raise ValueError(f"scenarios.{scenario}: severity {severity} is not one of {', '.join(SEVERITIES)}")
                keys: set[str] = set()
                parsed: list[StepSpec] = []
                for i, st in enumerate(steps):
                    key, limit = str(st["key"]), float(st["limit_minutes"]) * 60
                    if key in keys or limit <= 0:
                        raise ValueError(f"scenarios.{scenario}.{severity}[{i}]: duplicate key or limit ≤ 0")
                    keys.add(key)
                    parsed.append(
                        {
                            "key": key,
                            "title": str(st["title"]),
                            "role": str(st["role"]),
                            "notify": [str(n) for n in st.get("notify", [])],
                            "limit_seconds": limit,
                        }
                    )
                plans[scenario][severity] = parsed
        return cls(plans, str(raw.get("escalate_to", ESCALATE_TO)))

    def scenarios(self) -> list[str]:
        return sorted(self.plans)

    def steps(self, scenario: str, severity: str) -> tuple[str, list[StepSpec]]:
        """(plan name, steps) for the scenario and severity; a scenario without plans has none."""
        by_severity = self.plans.get(scenario, {})
        return f"{scenario}/{severity}", list(by_severity.get(severity, []))


def activate(steps: list[StepSpec], at: datetime) -> list[ActiveStep]:
    """Every step starts at activation and is due within its own limit."""
    return [{**s, "due_at": at + timedelta(seconds=s["limit_seconds"])} for s in steps]  # type: ignore[typeddict-item]


# --- correlation -------------------------------------------------------------------------------------


def within_window(seen: Iterable[tuple[str, datetime]], now: datetime, window: timedelta) -> list[tuple[str, datetime]]:
    """The faults seen no earlier than ``window`` before ``now`` (the rest no longer count)."""
    start = now - window
    return [(t, at) for t, at in seen if at >= start]


class Watch(Aggregate):
    """One scope (region, service type): recent fault tickets and the open incident covering it."""

    class Started(Aggregate.Created):
        region: str
        service_type: str

    class FaultSeen(Aggregate.Event):
        ticket_id: str
        seen_at: datetime
        window_seconds: float

    class Covered(Aggregate.Event):
        incident_id: str

    class Uncovered(Aggregate.Event):
        incident_id: str

    @event(Started)
    def __init__(self, id: UUID, region: str, service_type: str) -> None:  # noqa: A002
        self.region, self.service_type = region, service_type
        self.recent: list[tuple[str, datetime]] = []
        self.incident_id: str | None = None
        self.latest: datetime | None = None  # the latest fault time seen (a high-water mark for replays)

    def see(self, ticket_id: str, at: datetime, rule: Rule) -> list[tuple[str, datetime]] | None:
        """Note a fault ticket; the window's faults when they reach the rule's threshold (then the window empties).

        A ticket already in the window, or older than the window behind the latest fault seen (a replay of faults
        counted before), is not counted."""
        if any(t == ticket_id for t, _ in self.recent):
            return None
        if self.latest is not None and at < self.latest - rule.window:
            return None
        self._fault_seen(ticket_id=ticket_id, seen_at=at, window_seconds=rule.window.total_seconds())
        if len(self.recent) >= rule.threshold:
            return list(self.recent)
        return None

    @event(FaultSeen)
    def _fault_seen(self, ticket_id: str, seen_at: datetime, window_seconds: float) -> None:
        self.recent = [*within_window(self.recent, seen_at, timedelta(seconds=window_seconds)), (ticket_id, seen_at)]
        self.latest = seen_at if self.latest is None else max(self.latest, seen_at)

    def cover(self, incident_id: UUID) -> None:
        if self.incident_id is not None and self.incident_id != str(incident_id):
            raise IncidentError(
                f"{self.service_type} in {self.region} is covered by open incident {self.incident_id}"
            )
        if self.incident_id is None:
            self._covered(incident_id=str(incident_id))

    @event(Covered)
    def _covered(self, incident_id: str) -> None:
        self.incident_id = incident_id
        self.recent = []  # those faults are the incident's now

    def uncover(self, incident_id: UUID) -> None:
        if self.incident_id == str(incident_id):
            self._uncovered(incident_id=str(incident_id))

    @event(Uncovered)
    def _uncovered(self, incident_id: str) -> None:
        self.incident_id = None


class TicketLink(Aggregate):
    """Which incident a ticket is linked to (at most one open incident at a time).

    A ticket's first link is one event: ``Started`` with the incident (``NeverLinked.link``). Stores written before
    (session 9) hold the first link as two: ``Started`` without an incident, then ``Linked``; both forms load alike.
    A later link (another incident, once this one is resolved or the ticket unlinked) is ``Linked``."""

    class Started(Aggregate.Created):
        ticket_id: str
        incident_id: str | None = None  # the first link's incident; None in the old two-event form

    class Linked(Aggregate.Event):
        incident_id: str

    class Cleared(Aggregate.Event):
        incident_id: str

    @event(Started)
    def __init__(self, id: UUID, ticket_id: str, incident_id: str | None = None) -> None:  # noqa: A002
        self.ticket_id = ticket_id
        self.incident_id: str | None = incident_id

    def link(self, incident_id: UUID) -> TicketLink:
        if self.incident_id != str(incident_id):
            self._linked(incident_id=str(incident_id))
        return self

    @event(Linked)
    def _linked(self, incident_id: str) -> None:
        self.incident_id = incident_id

    def clear(self, incident_id: UUID) -> None:
        if self.incident_id == str(incident_id):
            self._cleared(incident_id=str(incident_id))

    @event(Cleared)
    def _cleared(self, incident_id: str) -> None:
        self.incident_id = None


@dataclass(frozen=True)
class NeverLinked:
    """A ticket with no ``TicketLink`` yet (never linked): its first link creates one, in one event."""

    id: UUID  # the TicketLink's id, should it be linked
    ticket_id: str
    incident_id: None = None  # linked to no incident, as a ``TicketLink`` that was cleared

    def link(self, incident_id: UUID) -> TicketLink:
        """The ticket's new link record, linked to ``incident_id`` (one ``Started``): for the caller to save."""
        return TicketLink(id=self.id, ticket_id=self.ticket_id, incident_id=str(incident_id))

    def clear(self, incident_id: UUID) -> None:
        """Nothing to clear: it was never linked."""


AnyLink = TicketLink | NeverLinked
"""A ticket's link record, or its absence (``NeverLinked``): what linking and unlinking take."""


# --- the incident ----------------------------------------------------------------------------------


class ImprovementActionRecord(TypedDict):
    title: str
    kind: str  # corrective | preventive
    owner: str
    due: str  # ISO 8601 date (the stored events carry dates as text)


class Incident(Aggregate):
    """A service interruption or emergency: declared, planned, linked, restored, resolved, reviewed."""

    class Declared(Aggregate.Created):
        title: str
        severity: str
        scenario: str
        affected_services: list[str]
        regions: list[str]
        estimated_customers: int
        declared_by: str
        rule: str | None
        detected_at: datetime
        declared_at: datetime

    class Acknowledged(Aggregate.Event):
        acknowledged_by: str
        acknowledged_at: datetime

    class SeverityChanged(Aggregate.Event):
        severity: str
        previous_severity: str
        affected_services: list[str]
        regions: list[str]
        estimated_customers: int
        reason: str
        changed_by: str
        changed_at: datetime

    class TicketLinked(Aggregate.Event):
        ticket_id: str
        linked_by: str
        linked_at: datetime

    class TicketsLinked(Aggregate.Event):
        """Several tickets linked at once (the sweep's chunk): as one TicketLinked for each."""

        ticket_ids: list[str]
        linked_by: str
        linked_at: datetime

    class TicketUnlinked(Aggregate.Event):
        ticket_id: str
        reason: str
        unlinked_by: str
        unlinked_at: datetime

    class PlanActivated(Aggregate.Event):
        plan: str
        severity: str
        steps: list[ActiveStep]
        activated_at: datetime

    class StepFinished(Aggregate.Event):
        plan: str
        step: str
        finished_by: str
        late: bool
        finished_at: datetime

    class StepEscalated(Aggregate.Event):
        plan: str
        step: str
        owner_role: str
        to_role: str
        due_at: datetime
        escalated_at: datetime

    class Restored(Aggregate.Event):
        note: str
        restored_by: str
        restored_at: datetime

    class Verified(Aggregate.Event):
        note: str
        verified_by: str
        verified_at: datetime

    class Resolved(Aggregate.Event):
        resolution_code: str
        summary: str
        advice: str | None
        ticket_ids: list[str]
        resolved_by: str
        resolved_at: datetime

    class ReviewPublished(Aggregate.Event):
        review: dict[str, Any]
        root_cause: str
        improvement_actions: list[ImprovementActionRecord]
        published_by: str
        published_at: datetime

    @event(Declared)
    def __init__(
        self,
        id: UUID,  # noqa: A002
        title: str,
        severity: str,
        scenario: str,
        affected_services: list[str],
        regions: list[str],
        estimated_customers: int,
        declared_by: str,
        rule: str | None,
        detected_at: datetime,
        declared_at: datetime,
    ) -> None:
        self.title, self.severity, self.scenario = title, severity, scenario
        self.affected_services, self.regions = list(affected_services), list(regions)
        self.estimated_customers = estimated_customers
        self.declared_by, self.rule = declared_by, rule
        self.detected_at, self.declared_at = detected_at, declared_at
        self.status = "declared"
        self.acknowledged_at: datetime | None = None
        self.restored_at: datetime | None = None
        self.verified_at: datetime | None = None
        self.resolved_at: datetime | None = None
        self.resolution: dict[str, Any] | None = None
        self.linked: dict[str, datetime] = {}
        self.unlinked: dict[str, datetime] = {}
        self.plan: str | None = None
        self.steps: dict[str, ActiveStep] = {}  # the active plan's steps by key
        self.finished: dict[str, datetime] = {}
        self.escalated: set[str] = set()
        self.review: dict[str, Any] | None = None

    @staticmethod
    def declare(
        incident_id: UUID,
        title: str,
        severity: str,
        scenario: str,
        affected_services: list[str],
        regions: list[str],
        estimated_customers: int,
        by: str,
        at: datetime,
        plans: Plans,
        detected_at: datetime | None = None,
        rule: str | None = None,
    ) -> Incident:
        check_severity(severity)
        if not affected_services:
            raise Invalid("names at least one service", "affected_services")
        if not regions:
            raise Invalid("names at least one region", "regions")
        if estimated_customers < 0:
            raise Invalid("must be 0 or more", "estimated_customers")
        inc = Incident(
            id=incident_id,
            title=title,
            severity=severity,
            scenario=scenario,
            affected_services=sorted(set(affected_services)),
            regions=sorted(set(regions)),
            estimated_customers=estimated_customers,
            declared_by=by,
            rule=rule,
            detected_at=min(detected_at or at, at),
            declared_at=at,
        )
        inc._activate_plan(plans, at)
        return inc

    @property
    def open(self) -> bool:
        return self.resolved_at is None

    def scope(self) -> list[tuple[str, str]]:
        """(region, service type) pairs the incident covers."""
        return [(r, s) for r in self.regions for s in self.affected_services]

    def _check_open(self) -> None:
        if not self.open:
            raise IncidentError(f"incident {self.id} is resolved")

    def _activate_plan(self, plans: Plans, at: datetime) -> None:
        plan, steps = plans.steps(self.scenario, self.severity)
        self._plan_activated(plan=plan, severity=self.severity, steps=activate(steps, at), activated_at=at)

    @event(PlanActivated)
    def _plan_activated(self, plan: str, severity: str, steps: list[ActiveStep], activated_at: datetime) -> None:
        self.plan = plan
        self.steps = {s["key"]: s for s in steps}
        self.finished, self.escalated = {}, set()

    def acknowledge(self, by: str, at: datetime) -> bool:
        self._check_open()
        if self.acknowledged_at is not None:
            return False
        self._acknowledged(acknowledged_by=by, acknowledged_at=at)
        return True

    @event(Acknowledged)
    def _acknowledged(self, acknowledged_by: str, acknowledged_at: datetime) -> None:
        self.acknowledged_at = acknowledged_at
        if self.status == "declared":
            self.status = "acknowledged"

    def change(
        self,
        severity: str | None,
        affected_services: list[str] | None,
        regions: list[str] | None,
        estimated_customers: int | None,
        reason: str,
        by: str,
        at: datetime,
        plans: Plans,
    ) -> bool:
        """A new severity, scope or estimate; a new severity activates that severity's plan."""
        self._check_open()
        new_severity = check_severity(severity) if severity is not None else self.severity
        services = sorted(set(affected_services)) if affected_services is not None else self.affected_services
        regs = sorted(set(regions)) if regions is not None else self.regions
        customers = estimated_customers if estimated_customers is not None else self.estimated_customers
        if not services:
            raise Invalid("names at least one service", "affected_services")
        if not regs:
            raise Invalid("names at least one region", "regions")
        if customers < 0:
            raise Invalid("must be 0 or more", "estimated_customers")
        if (new_severity, services, regs, customers) == (
            self.severity, self.affected_services, self.regions, self.estimated_customers
        ):
            return False
        previous = self.severity
        self._severity_changed(
            severity=new_severity,
            previous_severity=previous,
            affected_services=services,
            regions=regs,
            estimated_customers=customers,
            reason=reason,
            changed_by=by,
            changed_at=at,
        )
        if new_severity != previous:
            self._activate_plan(plans, at)
        return True

    @event(SeverityChanged)
    def _severity_changed(
        self,
        severity: str,
        previous_severity: str,
        affected_services: list[str],
        regions: list[str],
        estimated_customers: int,
        reason: str,
        changed_by: str,
        changed_at: datetime,
    ) -> None:
        self.severity = severity
        self.affected_services, self.regions = affected_services, regions
        self.estimated_customers = estimated_customers

    # --- linked tickets -------------------------------------------------------------------------

    def link(self, ticket: AnyLink, by: str, at: datetime, other: Incident | None = None) -> TicketLink | None:
        """Link a ticket (idempotent); refused if it is linked to another incident that is still open. The ticket's
        link record, now linked here (a new one for a ticket ``NeverLinked``: the caller saves it), or None when
        nothing changed.

        A ticket unlinked as unrelated is never linked again automatically ("auto"); only by hand.
        """
        self._check_open()
        if ticket.ticket_id in self.linked or (by == "auto" and ticket.ticket_id in self.unlinked):
            return None
        if other is not None and other.id != self.id and other.open and ticket.ticket_id in other.linked:
            raise AlreadyLinked(f"ticket {ticket.ticket_id} is linked to open incident {other.id}")
        record = ticket.link(self.id)
        self._ticket_linked(ticket_id=ticket.ticket_id, linked_by=by, linked_at=at)
        return record

    @event(TicketLinked)
    def _ticket_linked(self, ticket_id: str, linked_by: str, linked_at: datetime) -> None:
        self.linked[ticket_id] = linked_at
        self.unlinked.pop(ticket_id, None)

    def link_many(self, tickets: list[AnyLink], by: str, at: datetime) -> list[TicketLink]:
        """Link several tickets in one event (the sweep's chunk), each as ``link`` would (idempotent; one auto-
        unlinked is never linked again automatically). The caller has left out those linked to another open
        incident. The link records of those linked now (new ones for tickets ``NeverLinked``: the caller saves
        them)."""
        self._check_open()
        todo: dict[str, AnyLink] = {}
        for t in tickets:
            if t.ticket_id in self.linked or t.ticket_id in todo or (by == "auto" and t.ticket_id in self.unlinked):
                continue
            todo[t.ticket_id] = t
        if not todo:
            return []
        records = [t.link(self.id) for t in todo.values()]
        self._tickets_linked(ticket_ids=list(todo), linked_by=by, linked_at=at)
        return records

    @event(TicketsLinked)
    def _tickets_linked(self, ticket_ids: list[str], linked_by: str, linked_at: datetime) -> None:
        for t in ticket_ids:
            self.linked[t] = linked_at
            self.unlinked.pop(t, None)

    def unlink(self, ticket: AnyLink, reason: str, by: str, at: datetime) -> bool:
        """The ticket proved unrelated: back to normal dispatch. False if it was not linked."""
        self._check_open()
        if ticket.ticket_id not in self.linked:
            return False
        ticket.clear(self.id)
        self._ticket_unlinked(ticket_id=ticket.ticket_id, reason=reason, unlinked_by=by, unlinked_at=at)
        return True

    @event(TicketUnlinked)
    def _ticket_unlinked(self, ticket_id: str, reason: str, unlinked_by: str, unlinked_at: datetime) -> None:
        self.linked.pop(ticket_id, None)
        self.unlinked[ticket_id] = unlinked_at

    # --- the plan ---------------------------------------------------------------------------------

    def finish_step(self, key: str, by: str, at: datetime) -> bool:
        self._check_open()
        step = self.steps.get(key)
        if step is None:
            raise Invalid(f"the active plan {self.plan} has no step {key}", "step")
        if key in self.finished:
            return False
        assert self.plan is not None
        self._step_finished(plan=self.plan, step=key, finished_by=by, late=at > step["due_at"], finished_at=at)
        return True

    @event(StepFinished)
    def _step_finished(self, plan: str, step: str, finished_by: str, late: bool, finished_at: datetime) -> None:
        self.finished[step] = finished_at

    def overdue(self, now: datetime) -> list[ActiveStep]:
        """Steps past their limit, unfinished and not yet escalated."""
        if not self.open:
            return []
        return [
            s for k, s in self.steps.items()
            if k not in self.finished and k not in self.escalated and s["due_at"] <= now
        ]

    def escalate_overdue(self, now: datetime, to_role: str) -> int:
        """Escalate each overdue step once (the durable timer calls this); how many."""
        assert self.plan is not None or not self.steps
        done = 0
        for s in self.overdue(now):
            assert self.plan is not None
            self._step_escalated(
                plan=self.plan, step=s["key"], owner_role=s["role"], to_role=to_role, due_at=s["due_at"],
                escalated_at=now,
            )
            done += 1
        return done

    @event(StepEscalated)
    def _step_escalated(
        self, plan: str, step: str, owner_role: str, to_role: str, due_at: datetime, escalated_at: datetime
    ) -> None:
        self.escalated.add(step)

    def next_due(self) -> datetime | None:
        times = [s["due_at"] for k, s in self.steps.items() if k not in self.finished and k not in self.escalated]
        return min(times) if times and self.open else None

    # --- restoration --------------------------------------------------------------------------------

    def restore(self, note: str, by: str, at: datetime) -> bool:
        self._check_open()
        if self.restored_at is not None:
            return False
        self._restored(note=note, restored_by=by, restored_at=at)
        return True

    @event(Restored)
    def _restored(self, note: str, restored_by: str, restored_at: datetime) -> None:
        self.restored_at = restored_at
        self.status = "restored"

    def verify(self, note: str, by: str, at: datetime) -> bool:
        self._check_open()
        if self.restored_at is None:
            raise IncidentError(f"incident {self.id}: the service is not restored yet")
        if self.verified_at is not None:
            return False
        self._verified(note=note, verified_by=by, verified_at=at)
        return True

    @event(Verified)
    def _verified(self, note: str, verified_by: str, verified_at: datetime) -> None:
        self.verified_at = verified_at
        self.status = "verified"

    def resolve(self, resolution_code: str, summary: str, advice: str | None, by: str, at: datetime) -> bool:
        """Resolve; every linked ticket is then resolved with this resolution. Twice changes nothing."""
        if not self.open:
            return False
        if self.verified_at is None:
            raise IncidentError(f"incident {self.id}: the restoration is not verified yet")
        self._resolved(
            resolution_code=resolution_code, summary=summary, advice=advice, ticket_ids=sorted(self.linked),
            resolved_by=by, resolved_at=at,
        )
        return True

    @event(Resolved)
    def _resolved(
        self, resolution_code: str, summary: str, advice: str | None, ticket_ids: list[str], resolved_by: str,
        resolved_at: datetime,
    ) -> None:
        self.resolved_at = resolved_at
        self.resolution = {"resolution_code": resolution_code, "summary": summary, "advice": advice}
        self.status = "resolved"

    # --- the review -----------------------------------------------------------------------------------

    def publish_review(
        self,
        draft: dict[str, Any],
        root_cause: str,
        actions: list[ImprovementActionRecord],
        by: str,
        at: datetime,
    ) -> bool:
        if self.open:
            raise IncidentError(f"incident {self.id} is not resolved yet; its review follows the resolution")
        if self.review is not None:
            if self.review["root_cause"] == root_cause and self.review["improvement_actions"] == actions:
                return False
            raise IncidentError(f"the review of incident {self.id} is published already")
        for i, a in enumerate(actions):
            if a["kind"] not in ("corrective", "preventive"):
                raise Invalid("is corrective or preventive", f"improvement_actions[{i}].kind")
        self._review_published(review=draft, root_cause=root_cause, improvement_actions=actions, published_by=by,
                               published_at=at)
        return True

    @event(ReviewPublished)
    def _review_published(
        self, review: dict[str, Any], root_cause: str, improvement_actions: list[ImprovementActionRecord],
        published_by: str, published_at: datetime,
    ) -> None:
        self.review = {
            **review, "root_cause": root_cause, "improvement_actions": improvement_actions,
            "published_by": published_by, "published_at": published_at,
        }


# --- the review, written from the log --------------------------------------------------------------------


def _seconds(a: datetime | None, b: datetime | None) -> float | None:
    return None if a is None or b is None else round((b - a).total_seconds(), 3)


def draft_review(history: Iterable[Aggregate.Event], customers: int | None = None) -> dict[str, Any]:
    """The review's facts from the incident's events, in order: timeline, times, tickets, SLA impact, late steps.

    ``customers`` is the number of distinct customers behind the linked tickets when it is known
    (else each ticket counts as one).
    """
    timeline: list[dict[str, Any]] = []
    linked: dict[str, datetime] = {}
    ever: set[str] = set()
    unlinked: set[str] = set()
    held = 0.0
    steps: dict[tuple[str, str], ActiveStep] = {}
    finished: dict[tuple[str, str], datetime] = {}
    escalated: set[tuple[str, str]] = set()
    head: Incident.Declared | None = None
    acknowledged = restored = resolved = None
    severity = ""
    services: list[str] = []
    regions: list[str] = []
    first_link: datetime | None = None
    for e in history:
        if isinstance(e, Incident.Declared):
            head, severity, services, regions = e, e.severity, list(e.affected_services), list(e.regions)
            who = "automatically by rule " + (e.rule or "") if e.declared_by == "auto" else f"by {e.declared_by}"
            timeline.append({"at": e.detected_at, "what": "first correlated fault ticket"})
            timeline.append({"at": e.declared_at, "what": f"declared severity {e.severity} {who}"})
        elif isinstance(e, Incident.Acknowledged):
            acknowledged = e.acknowledged_at
            timeline.append({"at": e.acknowledged_at, "what": f"acknowledged by {e.acknowledged_by}"})
        elif isinstance(e, Incident.SeverityChanged):
            severity, services, regions = e.severity, list(e.affected_services), list(e.regions)
            timeline.append({"at": e.changed_at, "what": f"severity {e.previous_severity} → {e.severity}: {e.reason}"})
        elif isinstance(e, Incident.PlanActivated):
            for s in e.steps:
                steps[(e.plan, s["key"])] = s
            timeline.append({"at": e.activated_at, "what": f"plan {e.plan} activated ({len(e.steps)} steps)"})
        elif isinstance(e, Incident.StepFinished):
            finished[(e.plan, e.step)] = e.finished_at
            timeline.append({"at": e.finished_at, "what": f"step {e.step} finished{' late' if e.late else ''}"})
        elif isinstance(e, Incident.StepEscalated):
            escalated.add((e.plan, e.step))
            timeline.append({"at": e.escalated_at, "what": f"step {e.step} overdue: escalated to {e.to_role}"})
        elif isinstance(e, Incident.TicketLinked | Incident.TicketsLinked):
            for t in [e.ticket_id] if isinstance(e, Incident.TicketLinked) else e.ticket_ids:
                linked[t] = e.linked_at
                ever.add(t)
                unlinked.discard(t)
            if first_link is None:
                first_link = e.linked_at
                timeline.append({"at": e.linked_at, "what": "first ticket linked"})
        elif isinstance(e, Incident.TicketUnlinked):
            since = linked.pop(e.ticket_id, None)
            if since is not None:
                held += (e.unlinked_at - since).total_seconds()
            unlinked.add(e.ticket_id)
            timeline.append({"at": e.unlinked_at, "what": f"ticket {e.ticket_id} unlinked: {e.reason}"})
        elif isinstance(e, Incident.Restored):
            restored = e.restored_at
            timeline.append({"at": e.restored_at, "what": f"service restored: {e.note}"})
        elif isinstance(e, Incident.Verified):
            timeline.append({"at": e.verified_at, "what": f"restoration verified: {e.note}"})
        elif isinstance(e, Incident.Resolved):
            resolved = e.resolved_at
            held += sum((e.resolved_at - since).total_seconds() for since in linked.values())
            timeline.append(
                {"at": e.resolved_at, "what": f"resolved ({e.resolution_code}); {len(e.ticket_ids)} tickets resolved"}
            )
    if head is None:
        raise ValueError("an incident's history begins with its declaration")
    late = []
    for (plan, key), s in steps.items():
        done = finished.get((plan, key))
        end = done or resolved
        if (plan, key) in escalated or (end is not None and end > s["due_at"]):
            late.append({
                "plan": plan, "step": key, "role": s["role"], "due_at": s["due_at"], "finished_at": done,
                "late_seconds": round(((end or s["due_at"]) - s["due_at"]).total_seconds(), 3),
            })
    affected = len(ever - unlinked)
    timeline.sort(key=lambda t: t["at"])
    return {
        "title": head.title,
        "severity": severity,
        "affected_services": services,
        "regions": regions,
        "detected_at": head.detected_at,
        "declared_at": head.declared_at,
        "acknowledged_at": acknowledged,
        "restored_at": restored,
        "resolved_at": resolved,
        "time_to_detect_seconds": _seconds(head.detected_at, head.declared_at) or 0.0,
        "time_to_acknowledge_seconds": _seconds(head.declared_at, acknowledged),
        "time_to_restore_seconds": _seconds(head.declared_at, restored),
        "tickets_affected": affected,
        "tickets_unlinked": len(unlinked),
        "customers_affected": affected if customers is None else customers,
        "sla_paused_seconds": round(held, 3),
        "late_steps": late,
        "timeline": timeline,
    }
