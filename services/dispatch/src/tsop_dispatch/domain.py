"""Technicians, work orders and the assignment decision (§2.2, §2.3, §3.3). No I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event


class DispatchError(ValueError):
    pass


class OverCapacity(DispatchError):
    pass


class Technician(Aggregate):
    @event("Registered")
    def __init__(
        self,
        id: UUID,  # noqa: A002
        name: str,
        service_types: list[str],
        regions: list[str],
        capacity: int,
        registered_at: datetime,
    ) -> None:
        self.name = name
        self.service_types = service_types
        self.regions = regions
        self.capacity = capacity
        self.active: list[str] = []

    def take(self, work_order_id: UUID) -> None:
        if str(work_order_id) in self.active:
            return
        if len(self.active) >= self.capacity:
            raise OverCapacity(f"technician {self.id} is at capacity {self.capacity}")
        self._took(work_order_id=str(work_order_id))

    @event("Took")
    def _took(self, work_order_id: str) -> None:
        self.active.append(work_order_id)

    def release(self, work_order_id: UUID) -> None:
        if str(work_order_id) in self.active:
            self._released(work_order_id=str(work_order_id))

    @event("Released")
    def _released(self, work_order_id: str) -> None:
        self.active.remove(work_order_id)


class WorkOrder(Aggregate):
    @event("Opened")
    def __init__(
        self,
        id: UUID,  # noqa: A002
        ticket_id: str,
        service_type: str,
        region: str,
        priority: int,
        resolve_by: datetime | None,
        causation_id: str,
        opened_at: datetime,
    ) -> None:
        self.ticket_id = ticket_id
        self.service_type = service_type
        self.region = region
        self.priority = priority
        self.resolve_by = resolve_by
        self.opened_at = opened_at
        self.causation_id = causation_id
        self.status = "waiting"
        self.technician_id: str | None = None
        self.log: list[dict[str, Any]] = []

    def assign(self, technician: Technician, reason: str, candidates: list[dict[str, Any]], at: datetime) -> None:
        if self.status != "waiting":
            raise DispatchError(f"work order {self.id} is {self.status}, not waiting")
        technician.take(self.id)
        self._assigned(
            ticket_id=self.ticket_id,
            technician_id=str(technician.id),
            reason=reason,
            candidates=candidates,
            assigned_at=at,
            causation_id=self.causation_id,
        )

    @event("Assigned")
    def _assigned(
        self,
        ticket_id: str,
        technician_id: str,
        reason: str,
        candidates: list[dict[str, Any]],
        assigned_at: datetime,
        causation_id: str,
    ) -> None:
        self.status = "assigned"
        self.technician_id = technician_id

    def _check_worker(self, technician_id: str) -> None:
        if self.status not in ("assigned", "in_progress"):
            raise DispatchError(f"work order {self.id} is {self.status}")
        if technician_id != self.technician_id:
            raise DispatchError(f"technician {technician_id} is not assigned to work order {self.id}")

    def log_work(self, technician_id: str, action: str, mode: str, notes: str | None, at: datetime) -> None:
        self._check_worker(technician_id)
        self._logged(
            ticket_id=self.ticket_id, technician_id=technician_id, action=action, mode=mode, notes=notes, logged_at=at
        )

    @event("WorkLogged")
    def _logged(
        self, ticket_id: str, technician_id: str, action: str, mode: str, notes: str | None, logged_at: datetime
    ) -> None:
        self.status = "in_progress"
        self.log.append({"action": action, "mode": mode, "notes": notes, "at": logged_at.isoformat()})

    def resolve(
        self, technician: Technician, resolution_code: str, summary: str, advice: str | None, at: datetime
    ) -> None:
        self._check_worker(str(technician.id))
        technician.release(self.id)
        self._resolved(
            ticket_id=self.ticket_id,
            technician_id=str(technician.id),
            resolution_code=resolution_code,
            summary=summary,
            advice=advice,
            resolved_at=at,
        )

    @event("Resolved")
    def _resolved(
        self,
        ticket_id: str,
        technician_id: str,
        resolution_code: str,
        summary: str,
        advice: str | None,
        resolved_at: datetime,
    ) -> None:
        self.status = "resolved"


@dataclass
class TechnicianView:
    id: UUID
    service_types: frozenset[str]
    regions: frozenset[str]
    capacity: int
    active: set[str] = field(default_factory=set)
    tentative: set[str] = field(default_factory=set)  # decided, not yet read back from the log

    @property
    def load(self) -> int:
        return len(self.active | self.tentative)

    def fits(self, service_type: str, region: str) -> bool:
        return (
            service_type in self.service_types
            and (region in self.regions or "*" in self.regions)
            and self.load < self.capacity
        )


def rank_candidates(techs: list[TechnicianView], service_type: str, region: str) -> list[tuple[float, TechnicianView]]:
    """Hard filters, then a score: the least loaded qualified technician first."""
    scored = [
        (round(100.0 * (t.capacity - t.load) / t.capacity, 2), t)
        for t in techs
        if t.fits(service_type, region)
    ]
    scored.sort(key=lambda st: (-st[0], st[1].load, str(st[1].id)))
    return scored

# The event classes the @event decorators made, named for the code that maps them (and for mypy).
TechnicianRegistered: type[Any] = Technician.__dict__["Registered"]
TechnicianTook: type[Any] = Technician.__dict__["Took"]
TechnicianReleased: type[Any] = Technician.__dict__["Released"]
WorkOrderOpened: type[Any] = WorkOrder.__dict__["Opened"]
WorkOrderAssigned: type[Any] = WorkOrder.__dict__["Assigned"]
WorkOrderWorkLogged: type[Any] = WorkOrder.__dict__["WorkLogged"]
WorkOrderResolved: type[Any] = WorkOrder.__dict__["Resolved"]
