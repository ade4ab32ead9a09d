"""Dispatch's reactions to other services' events."""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar
from uuid import UUID

from tsop_dispatch.commands import DispatchApp, decide, get, open_work_order, try_assign, work_order_id
from tsop_dispatch.domain import Resource, Technician, WorkOrder
from tsop_events import schemas as wire
from tsop_events.consumer import EventStoreSink, Incoming, UnitOfWork
from tsop_events.runtime import Service


class OpenWorkOrders(EventStoreSink):
    """On RequestAccepted: open a work order (with its SLA targets) and assign it if anyone has room.

    On RequestCancelled: withdraw the request's open work order; its technician and resources are free.

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
