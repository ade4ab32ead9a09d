"""Incident's in-memory view (the board, following its own log) and the durable timers that read it.

The board knows the open incidents (their scope and linked tickets) and when each one's next plan step
falls due. The timers are durable because their state is the event store: a step's due time is in its
``PlanActivated`` event, its finish or escalation in later events, so a restarted process (after a
SIGKILL, say) rebuilds the board from the log and escalates every step that fell due meanwhile, once.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from tsop_events.runtime import Service
from tsop_events.store import LogFollower
from tsop_incident import commands
from tsop_incident.domain import Incident

if TYPE_CHECKING:
    from tsop_incident.commands import IncidentApp

log = logging.getLogger(__name__)


class Board(LogFollower):
    """Open incidents, their scope and linked tickets; unfinished plan steps and their due times."""

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self.open: dict[UUID, tuple[list[str], list[str]]] = {}  # incident → (regions, services)
        self.linked: dict[UUID, set[str]] = {}
        self.unlinked: dict[UUID, set[str]] = {}  # unrelated: never linked again automatically
        self.ticket_incident: dict[str, UUID] = {}
        self.steps: dict[UUID, dict[str, datetime]] = {}  # incident → step → due (unfinished, not escalated)

    def apply(self, e: object) -> None:
        if not isinstance(e, Incident.Event):
            return
        oid = e.originator_id
        if isinstance(e, Incident.Declared):
            self.open[oid] = (list(e.regions), list(e.affected_services))
            self.linked[oid] = set()
        elif isinstance(e, Incident.SeverityChanged):
            if oid in self.open:
                self.open[oid] = (list(e.regions), list(e.affected_services))
        elif isinstance(e, Incident.PlanActivated):
            self.steps[oid] = {s["key"]: s["due_at"] for s in e.steps}
        elif isinstance(e, Incident.StepFinished | Incident.StepEscalated):
            self.steps.get(oid, {}).pop(e.step, None)
        elif isinstance(e, Incident.TicketLinked | Incident.TicketsLinked):
            for t in [e.ticket_id] if isinstance(e, Incident.TicketLinked) else e.ticket_ids:
                self.linked.setdefault(oid, set()).add(t)
                self.ticket_incident[t] = oid
        elif isinstance(e, Incident.TicketUnlinked):
            self.linked.get(oid, set()).discard(e.ticket_id)
            self.unlinked.setdefault(oid, set()).add(e.ticket_id)
            if self.ticket_incident.get(e.ticket_id) == oid:
                del self.ticket_incident[e.ticket_id]
        elif isinstance(e, Incident.Resolved):
            self.open.pop(oid, None)
            self.steps.pop(oid, None)
            self.unlinked.pop(oid, None)
            for t in self.linked.pop(oid, set()):
                if self.ticket_incident.get(t) == oid:
                    del self.ticket_incident[t]

    def due(self, now: datetime) -> list[UUID]:
        """Refreshed: the open incidents with a plan step past its limit, not yet escalated."""
        with self.lock:
            self.refresh()
            return [iid for iid, steps in self.steps.items() if any(d <= now for d in steps.values())]

    def held_elsewhere(self, incident_id: UUID, ticket_id: str) -> bool:
        with self.lock:
            other = self.ticket_incident.get(ticket_id)
            return other is not None and other != incident_id and other in self.open


async def incident_timers(svc: Service[IncidentApp], every: float = 1.0) -> None:
    """The durable timers, one round every ``every`` seconds: overdue plan steps escalate; open tickets in an
    incident's scope are linked (the sweep that follows a declaration, repeated so a crash loses none)."""
    while True:
        # each step isolated: a failing one is logged once while it lasts and shown in /readyz (tsop_events.faults)
        await svc.faults.step("escalate_overdue", lambda: commands.escalate_overdue(svc))
        await svc.faults.step("sweep", lambda: commands.sweep(svc))
        await asyncio.sleep(every)
