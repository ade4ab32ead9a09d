"""Dispatch's reactions to other services' events."""

from __future__ import annotations

from typing import ClassVar

from tsop_dispatch.application import DispatchApp, work_order_id
from tsop_events import schemas as wire
from tsop_events.consumer import EventStoreSink, Incoming, UnitOfWork


class OpenWorkOrders(EventStoreSink):
    """On RequestAccepted: open a work order (with its SLA targets) and assign it if anyone has room."""

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
        wo = self.dispatch.open_work_order(
            wo_id, ev.ticket_id, ev.service_type, ev.region, ev.priority, ev.resolve_by, incoming.envelope.id
        )
        uow.add(wo)
        if not self.dispatch.board.waiting_ahead(wo):
            self.dispatch.try_assign(wo, uow.get)
