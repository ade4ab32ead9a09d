"""Incident's reactions to the ticket stream: correlation and the linking of incoming tickets (§5.1, §5.3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from tsop_events import schemas as wire
from tsop_events.consumer import EventStoreSink, Incoming, UnitOfWork
from tsop_events.envelope import derived_id
from tsop_events.runtime import Service
from tsop_incident.commands import IncidentApp, correlate, link_id


class Correlate(EventStoreSink):
    """On RequestAccepted: link the ticket to the open incident covering its region and service type; else
    count it as a fault of its scope, and declare an incident when a rule's threshold is crossed in its window.

    The window is measured on the tickets' acceptance times (the events' own times), so a consumer that
    catches up after a restart counts the same burst the same way.
    """

    name: ClassVar[str] = "incident-correlation"
    event_types: ClassVar[frozenset[str] | None] = frozenset({wire.RequestAccepted.event_type})

    def __init__(self, app: IncidentApp) -> None:
        super().__init__(app)
        self.incidents = app

    @classmethod
    def of(cls, svc: Service[IncidentApp]) -> Correlate:
        return cls(svc.app)

    def prefetch(self, uow: UnitOfWork, records: Sequence[Incoming]) -> None:
        """Most tickets were never linked nor crossed a threshold: learn which in one query for the batch."""
        ids = []
        for rec in records:
            ev = rec.event
            if isinstance(ev, wire.RequestAccepted):
                ids += [link_id(ev.ticket_id), derived_id("incident", ev.region, ev.service_type, ev.ticket_id)]
        uow.prefetch(ids)

    def react(self, uow: UnitOfWork, incoming: Incoming) -> None:
        ev = incoming.event
        assert isinstance(ev, wire.RequestAccepted)
        correlate(uow, self.incidents, ev.ticket_id, ev.region, ev.service_type, ev.accepted_at)
