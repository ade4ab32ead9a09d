"""Dispatch's reactions to other services' events."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import ClassVar
from uuid import UUID

from tsop_dispatch.commands import DispatchApp, decide, get, open_work_order, try_assign, work_order_id
from tsop_dispatch.domain import IncidentHold, IncidentRecord, Resource, Technician, WorkOrder
from tsop_events import schemas as wire
from tsop_events.consumer import EventStoreSink, Incoming, UnitOfWork
from tsop_events.envelope import derived_id
from tsop_events.runtime import Service
from tsop_events.topics import Topic


class OpenWorkOrders(EventStoreSink):
    """On RequestAccepted: open a work order (with its SLA targets) and assign it if anyone has room.

    On RequestCancelled: withdraw the request's open work order; its technician and resources are free.

    A request of a type the complaint desk works (the catalogue's ``"handled_by": "complaints"``) gets no work
    order: feedback handles it as a complaint and closes the ticket with it.

    On Reopened (the customer says it is not solved, or a closed ticket was reopened): the resolved work
    order waits again and goes to the technician who resolved it if they have room, else to the best
    other; its resolve clock runs on from where it stopped.
    """

    name: ClassVar[str] = "dispatch-work-orders"
    event_types: ClassVar[frozenset[str] | None] = frozenset(
        {wire.RequestAccepted.event_type, wire.RequestCancelled.event_type, wire.Reopened.event_type}
    )

    def __init__(self, app: DispatchApp) -> None:
        super().__init__(app)
        self.dispatch = app

    @classmethod
    def of(cls, svc: Service[DispatchApp]) -> OpenWorkOrders:
        return cls(svc.app)

    def before_batch(self) -> None:
        self.dispatch.board.refresh()

    def react(self, uow: UnitOfWork, incoming: Incoming) -> None:
        ev = incoming.event
        if isinstance(ev, wire.RequestCancelled):
            self.withdraw(uow, ev)
            return
        if isinstance(ev, wire.Reopened):
            self.reopen(uow, ev, incoming.envelope.id)
            return
        assert isinstance(ev, wire.RequestAccepted)
        if ev.service_type in self.dispatch.complaint_types:
            return  # the complaint desk works it (feedback): nobody is sent, no SLA clock of dispatch runs
        wo_id = work_order_id(ev.ticket_id)
        if uow.get(wo_id) is not None:
            return  # already opened: a redelivery
        wo = open_work_order(
            self.dispatch,
            wo_id,
            ev.ticket_id,
            ev.service_type,
            ev.region,
            ev.priority,
            ev.resolve_by,
            incoming.envelope.id,
        )
        uow.add(wo)
        if apply_early_hold(uow, wo, self.dispatch.clock.now()):
            return  # an incident holds it: nobody is sent to it on its own
        if not self.dispatch.board.waiting_ahead(wo):
            try_assign(self.dispatch, wo, uow)

    def withdraw(self, uow: UnitOfWork, ev: wire.RequestCancelled) -> None:
        wo = uow.find(WorkOrder, work_order_id(ev.ticket_id))
        if wo is None:
            return  # cancelled before it was accepted: dispatch never had it
        holder = get(uow, Technician, UUID(wo.technician_id), "technician") if wo.technician_id else None
        resources = [get(uow, Resource, UUID(r), "resource") for r in wo.resources]
        wo.withdraw(f"request cancelled ({ev.reason_code}): {ev.reason}", ev.cancelled_at, holder, resources)

    def reopen(self, uow: UnitOfWork, ev: wire.Reopened, event_id: str) -> None:
        wo = uow.find(WorkOrder, work_order_id(ev.ticket_id))
        if wo is None or not wo.reopen(ev.reason, ev.reopen_count, ev.reopened_at, event_id):
            return  # never dispatched, withdrawn, or this reopening applied already
        decision = decide(self.dispatch, wo)
        same = wo.resolved_by
        # the same technician first (stable sort: the rest keep their ranking)
        first = replace(decision, ranked=sorted(decision.ranked, key=lambda r: str(r[2].id) != same))
        try_assign(self.dispatch, wo, uow, decision=first)


def hold_id(ticket_id: str) -> UUID:
    return derived_id("incident-hold", ticket_id)


def record_id(incident_id: str) -> UUID:
    return derived_id("incident-record", incident_id)


def apply_early_hold(uow: UnitOfWork, wo: WorkOrder, now: datetime) -> bool:
    """A work order just opened: held now if an incident linked its ticket first (resolved too, if the incident was
    resolved meanwhile). True if it is held or resolved.

    The ticket's IncidentHold record is written on every opening (created if absent), so a link handled at the same
    moment by the incident-holds consumer (which writes that same record when it finds no work order) conflicts
    with it: one of the two retries on fresh state and the hold is never lost."""
    early = uow.find(IncidentHold, hold_id(wo.ticket_id))
    if early is None:
        early = IncidentHold(id=hold_id(wo.ticket_id), ticket_id=wo.ticket_id)
        uow.add(early)
    incident_id, r = early.take()
    if incident_id is None:
        return False
    wo.hold(incident_id, now)
    if r is not None:
        wo.resolve_with_incident(incident_id, r["resolution_code"] or "", r["summary"] or "", r["advice"], now)
    return True


def linked_tickets(ev: object) -> list[str]:
    """The tickets an incident event links or unlinks (a chunk's, or one); none for the others."""
    if isinstance(ev, wire.IncidentTicketsLinked):
        return ev.ticket_ids
    if isinstance(ev, wire.IncidentTicketLinked | wire.IncidentTicketUnlinked):
        return [ev.ticket_id]
    return []


class IncidentHolds(EventStoreSink):
    """Dispatch as a consumer of the incidents topic (§5.3).

    TicketLinked holds the ticket's work order (SLA clocks paused, taken out of the queue); TicketUnlinked
    lifts the hold (back in the queue, clocks running); IncidentResolved closes the incident's record with its
    resolution, and ``views.resolve_held`` resolves every work order the incident holds with it, in chunks, each
    with its own Resolved event (the rating loop runs per customer). A link that arrives before the ticket's work
    order is kept (IncidentHold) and applied when the work order opens. A batch loads its work orders and early
    holds in one query.
    """

    name: ClassVar[str] = "dispatch-incident-holds"
    topics: ClassVar[tuple[Topic, ...]] = (Topic.incidents,)
    event_types: ClassVar[frozenset[str] | None] = frozenset(
        {
            wire.IncidentTicketLinked.event_type,
            wire.IncidentTicketsLinked.event_type,
            wire.IncidentTicketUnlinked.event_type,
            wire.IncidentResolved.event_type,
        }
    )

    def __init__(self, app: DispatchApp) -> None:
        super().__init__(app)
        self.dispatch = app

    @classmethod
    def of(cls, svc: Service[DispatchApp]) -> IncidentHolds:
        return cls(svc.app)

    def prefetch(self, uow: UnitOfWork, records: Sequence[Incoming]) -> None:
        tickets = [t for r in records for t in linked_tickets(r.event)]
        uow.preload([*(work_order_id(t) for t in tickets), *(hold_id(t) for t in tickets),
                     *{record_id(r.event.incident_id) for r in records if isinstance(r.event, wire.IncidentEvent)}])

    def react(self, uow: UnitOfWork, incoming: Incoming) -> None:
        ev = incoming.event
        assert isinstance(ev, wire.IncidentTicketLinked | wire.IncidentTicketsLinked | wire.IncidentTicketUnlinked
                          | wire.IncidentResolved)
        record = uow.find(IncidentRecord, record_id(ev.incident_id))
        if record is None:
            record = IncidentRecord(id=record_id(ev.incident_id), incident_id=ev.incident_id)
            uow.add(record)
        if isinstance(ev, wire.IncidentTicketLinked | wire.IncidentTicketsLinked):
            for ticket_id in linked_tickets(ev):  # a chunk's tickets each held as if linked alone
                self._hold(uow, record, ev.incident_id, ticket_id, ev.linked_at)
        elif isinstance(ev, wire.IncidentTicketUnlinked):
            if not record.note(ev.ticket_id, "unlinked", ev.unlinked_at):
                return
            wo = uow.find(WorkOrder, work_order_id(ev.ticket_id))
            if wo is not None:
                wo.lift_hold(ev.incident_id, ev.reason, ev.unlinked_at)
            early = uow.find(IncidentHold, hold_id(ev.ticket_id))
            if early is not None and early.incident_id == ev.incident_id:
                early.change(None)
        else:  # a replayed resolution changes nothing (a reopened ticket stays open)
            record.close(ev.resolved_at, {"resolution_code": ev.resolution_code, "summary": ev.summary,
                                          "advice": ev.advice})

    def _hold(self, uow: UnitOfWork, record: IncidentRecord, incident_id: str, ticket_id: str, at: datetime) -> None:
        if not record.note(ticket_id, "linked", at):
            return  # replayed, superseded by a later unlink, or the incident is resolved already
        wo = uow.find(WorkOrder, work_order_id(ticket_id))
        if wo is not None:
            wo.hold(incident_id, at)
        else:
            self._early(uow, ticket_id).change(incident_id)

    def _early(self, uow: UnitOfWork, ticket_id: str) -> IncidentHold:
        early = uow.find(IncidentHold, hold_id(ticket_id))
        if early is None:
            early = IncidentHold(id=hold_id(ticket_id), ticket_id=ticket_id)
            uow.add(early)
        return early


def resolve_chunk(uow: UnitOfWork, incident_id: str, work_orders: list[UUID], early_holds: list[UUID],
                  now: datetime) -> int | None:
    """One chunk of an incident's resolution (§5.4), in one transaction: each of ``work_orders`` still held by the
    incident resolved with its resolution, each of ``early_holds`` given it; the record advanced (or finished,
    when nothing is left). How many were resolved; None when there is nothing to do (finished, or not closed)."""
    record = uow.find(IncidentRecord, record_id(incident_id))
    if record is None or not record.resolved or record.done or record.resolution is None:
        return None
    if not work_orders and not early_holds:
        record.finish(now)
        return 0
    r, at = record.resolution, record.resolved_at or now  # each resolved at the incident's resolution time
    uow.preload([*work_orders, *early_holds])
    n = 0
    for wo_id in work_orders:
        wo = uow.find(WorkOrder, wo_id)
        if wo is None:
            continue
        holder = get(uow, Technician, UUID(wo.technician_id), "technician") if wo.technician_id else None
        resources = [get(uow, Resource, UUID(x), "resource") for x in wo.resources] if holder else []
        n += wo.resolve_with_incident(incident_id, r["resolution_code"] or "", r["summary"] or "", r["advice"],
                                      at, holder, resources)
    for hid in early_holds:
        early = uow.find(IncidentHold, hid)
        if early is not None and early.incident_id == incident_id and early.resolution is None:
            early.change(incident_id, r)
    record.advance(n, now)
    return n
