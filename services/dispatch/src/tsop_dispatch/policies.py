"""Dispatch's reactions to other services' events."""

from __future__ import annotations

from typing import ClassVar

from tsop_dispatch.application import DispatchApp, work_order_id
from tsop_dispatch.domain import WorkOrder
from tsop_events import schemas as wire
from tsop_events.consumer import EventStoreSink, Incoming, UnitOfWork


class OpenWorkOrders(EventStoreSink):
    """On RequestAccepted: open a work order and assign it if anyone has room."""

    name: ClassVar[str] = "dispatch-work-orders"
    event_types: ClassVar[frozenset[str] | None] = frozenset({wire.RequestAccepted.event_type})

    def __init__(self, app: DispatchApp) -> None:
        super().__init__(app)
        self.dispatch = app

    def before_batch(self) -> None:
        self.dispatch.board.refresh()

    def react(self, uow: UnitOfWork, incoming: Incoming) -> None:
        ev = incoming.event
        assert isinstance(ev, wire.RequestAccepted)
        wo_id = work_order_id(ev.ticket_id)
        if uow.get(wo_id) is not None:
            return  # already opened: a redelivery
        wo = WorkOrder(
            id=wo_id,
            ticket_id=ev.ticket_id,
            service_type=ev.service_type,
            region=ev.region,
            priority=ev.priority,
            resolve_by=ev.resolve_by,
            causation_id=incoming.envelope.id,
            opened_at=self.dispatch.clock.now(),
        )
        uow.add(wo)
        self.dispatch.try_assign(wo, uow.get)
