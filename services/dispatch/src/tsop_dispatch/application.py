"""Dispatch commands, the dispatch board, and the mapping to wire events."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any
from uuid import UUID

from tsop_dispatch.domain import (
    OverCapacity,
    Technician,
    TechnicianRegistered,
    TechnicianReleased,
    TechnicianTook,
    TechnicianView,
    WorkOrder,
    WorkOrderAssigned,
    WorkOrderOpened,
    WorkOrderResolved,
    WorkOrderWorkLogged,
    rank_candidates,
)
from tsop_events import schemas as wire
from tsop_events.clock import Clock, SystemClock
from tsop_events.envelope import derived_id, stable_event_id
from tsop_events.relay import Outgoing
from tsop_events.settings import ServiceSettings
from tsop_events.store import EventStoreApp, IntegrityError, LogFollower, retry_on_conflict


def work_order_id(ticket_id: str) -> UUID:
    return derived_id("work-order", ticket_id)


class Board(LogFollower):
    """What dispatch knows of its technicians and waiting work orders.

    Built from the service's own notification log; the aggregates stay the
    authority (a stale view costs a retry, never an over-capacity assignment).
    """

    def __init__(self, app: EventStoreApp) -> None:
        super().__init__(app)
        self.technicians: dict[UUID, TechnicianView] = {}
        self.waiting: dict[UUID, tuple[int, datetime, str, str]] = {}

    def apply(self, e: Any) -> None:
        if isinstance(e, TechnicianRegistered):
            self.technicians[e.originator_id] = TechnicianView(
                e.originator_id, frozenset(e.service_types), frozenset(e.regions), e.capacity
            )
        elif isinstance(e, TechnicianTook):
            self.technicians[e.originator_id].active.add(e.work_order_id)
        elif isinstance(e, TechnicianReleased):
            self.technicians[e.originator_id].active.discard(e.work_order_id)
        elif isinstance(e, WorkOrderOpened):
            self.waiting[e.originator_id] = (e.priority, e.resolve_by or e.opened_at, e.service_type, e.region)
        elif isinstance(e, WorkOrderAssigned):
            self.waiting.pop(e.originator_id, None)

    def note_taken(self, view: TechnicianView, work_order_id: UUID) -> None:
        """Count a job before its event is read back, so the next decision in a batch sees it."""
        with self.lock:
            view.tentative.add(str(work_order_id))

    def refresh(self) -> None:
        with self.lock:
            super().refresh()
            # what was decided is now either in the log (active) or was never saved
            for view in self.technicians.values():
                view.tentative.clear()

    def ranked(self, service_type: str, region: str) -> list[tuple[float, TechnicianView]]:
        with self.lock:
            return rank_candidates(list(self.technicians.values()), service_type, region)


class DispatchApp(EventStoreApp):
    # a technician's history grows with every job: load it from a recent snapshot
    snapshotting_intervals = {Technician: 100}

    def __init__(
        self, settings: ServiceSettings | None = None, env: dict[str, str] | None = None, clock: Clock | None = None
    ) -> None:
        super().__init__(settings, env)
        self.clock = clock or SystemClock()
        self.board = Board(self)

    def register_technician(
        self, technician_id: UUID, name: str, service_types: list[str], regions: list[str], capacity: int
    ) -> Technician:
        tech = Technician(
            id=technician_id,
            name=name,
            service_types=service_types,
            regions=regions,
            capacity=capacity,
            registered_at=self.clock.now(),
        )
        self.save(tech)
        return tech

    def try_assign(self, wo: WorkOrder, technician: Callable[[UUID], Technician]) -> bool:
        """Assign ``wo`` to the best technician that still has room; False if none has."""
        ranked = self.board.ranked(wo.service_type, wo.region)
        candidates = [
            {"technician_id": str(v.id), "score": score, "load": v.load, "capacity": v.capacity}
            for score, v in ranked[:5]
        ]
        for score, view in ranked:
            tech = technician(view.id)
            try:
                reason = (
                    f"least loaded qualified technician for {wo.service_type} in {wo.region} "
                    f"(score {score}, load {len(tech.active)}/{tech.capacity}) among {len(ranked)} candidates"
                )
                wo.assign(tech, reason, candidates, self.clock.now())
                self.board.note_taken(view, wo.id)
                return True
            except OverCapacity:
                continue
        return False

    def drain_queue(self) -> int:
        """Assign waiting work orders, highest priority and earliest deadline first."""
        self.board.refresh()
        assigned = 0
        for wo_id, (_, _, service_type, region) in sorted(self.board.waiting.items(), key=lambda kv: kv[1][:2]):
            if not self.board.ranked(service_type, region):
                continue
            wo: WorkOrder = self.load(wo_id)
            techs: dict[UUID, Technician] = {}

            def load_tech(tid: UUID, techs: dict[UUID, Technician] = techs) -> Technician:
                techs[tid] = techs.get(tid) or self.load(tid)
                return techs[tid]

            if wo.status == "waiting" and self.try_assign(wo, load_tech):
                try:
                    self.save(wo, *techs.values())
                    assigned += 1
                except IntegrityError:
                    pass  # another instance moved first; the next round sees it
                self.board.refresh()
        return assigned

    @retry_on_conflict()
    def log_work(self, wo_id: UUID, technician_id: str, action: str, mode: str, notes: str | None) -> WorkOrder:
        wo: WorkOrder = self.load(wo_id)
        wo.log_work(technician_id, action, mode, notes, self.clock.now())
        self.save(wo)
        return wo

    @retry_on_conflict()
    def resolve(
        self, wo_id: UUID, technician_id: str, resolution_code: str, summary: str, advice: str | None
    ) -> WorkOrder:
        wo: WorkOrder = self.load(wo_id)
        tech: Technician = self.load(UUID(technician_id))
        wo.resolve(tech, resolution_code, summary, advice, self.clock.now())
        self.save(wo, tech)
        return wo


def to_wire(e: Any) -> Outgoing | None:
    if isinstance(e, TechnicianRegistered):
        return Outgoing(
            wire.TechnicianRegistered(
                technician_id=str(e.originator_id),
                service_types=e.service_types,
                regions=e.regions,
                capacity=e.capacity,
                registered_at=e.registered_at,
            )
        )
    if isinstance(e, WorkOrderAssigned):
        return Outgoing(
            wire.Assigned(
                ticket_id=e.ticket_id,
                work_order_id=str(e.originator_id),
                technician_id=e.technician_id,
                reason=e.reason,
                candidates=[wire.AssignmentCandidate.model_validate(c) for c in e.candidates],
                assigned_at=e.assigned_at,
            ),
            causation_id=e.causation_id,
        )
    if isinstance(e, WorkOrderWorkLogged):
        return Outgoing(
            wire.WorkLogged(
                ticket_id=e.ticket_id,
                work_order_id=str(e.originator_id),
                technician_id=e.technician_id,
                action=e.action,
                mode=e.mode,
                notes=e.notes,
                logged_at=e.logged_at,
            ),
            causation_id=stable_event_id(e.originator_id, e.originator_version - 1),
        )
    if isinstance(e, WorkOrderResolved):
        return Outgoing(
            wire.Resolved(
                ticket_id=e.ticket_id,
                work_order_id=str(e.originator_id),
                technician_id=e.technician_id,
                resolution_code=e.resolution_code,
                summary=e.summary,
                advice=e.advice,
                resolved_at=e.resolved_at,
            ),
            causation_id=stable_event_id(e.originator_id, e.originator_version - 1),
        )
    return None
