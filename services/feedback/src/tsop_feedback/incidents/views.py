"""``LinkedTickets``: the tickets linked now to each incident, following feedback's own log (the fan-out of a status
notice reads it; the batch being decided adds what it changed itself)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any
from uuid import UUID

from tsop_events.store import EventStoreApp, LogFollower
from tsop_feedback.domain import FeedbackCase
from tsop_feedback.incidents.domain import IncidentBrief, TicketIncident, brief_id


class LinkedTickets(LogFollower):
    def __init__(self, app: EventStoreApp) -> None:
        super().__init__(app)
        self.of_incident: dict[str, set[str]] = {}
        self.current: dict[str, str] = {}  # ticket → the incident it is linked to now
        self.tickets: dict[UUID, str] = {}  # TicketIncident id → its ticket
        # open cases' tickets with no callback (a case's callback is set when it opens, never after): nobody to tell,
        # so a notice skips reading their cases (an incident's fan-out over all its tickets). Forgotten when the case
        # closes, so it holds open cases only; a ticket not in it has its case read, as before.
        self.no_callback: set[str] = set()
        # tickets with notices waiting for their case (``TicketIncident.waiting``) → the incidents of those notices;
        # of them, the ones a round of the timer must look at: their case opened, or all their incidents ended (the
        # others are not read again and again while their cases lag); and the ones not checked yet against the
        # cases the log holds (a case can be opened before a notice of its ticket waits: a stale read)
        self.waiting: dict[str, set[str]] = {}
        self.ready: set[str] = set()
        self.unchecked: set[str] = set()
        self.ended: set[UUID] = set()  # the ``IncidentBrief`` of each resolved incident

    @staticmethod
    def of(app: EventStoreApp) -> LinkedTickets:
        """The app's one board (the incident notices' consumer and the waiting notices' timer share it)."""
        board: LinkedTickets | None = getattr(app, "_tsop_linked_tickets", None)
        if board is None:
            board = LinkedTickets(app)
            app._tsop_linked_tickets = board  # type: ignore[attr-defined]
        return board

    def apply(self, event: Any) -> None:
        if isinstance(event, FeedbackCase.Opened):
            if not event.callback_url:
                self.no_callback.add(event.ticket_id)
            if event.ticket_id in self.waiting:
                self.ready.add(event.ticket_id)
        elif isinstance(event, IncidentBrief.Ended):
            self.ended.add(event.originator_id)
            self.ready |= {t for t, incidents in self.waiting.items() if self._all_ended(incidents)}
        elif isinstance(event, FeedbackCase.Closed):
            self.no_callback.discard(event.ticket_id)
        elif isinstance(event, TicketIncident.Started):
            self.tickets[event.originator_id] = event.ticket_id
        elif isinstance(event, TicketIncident.NoticeWaiting | TicketIncident.WaitOver):
            ticket = self.tickets.get(event.originator_id)
            if ticket is not None and isinstance(event, TicketIncident.NoticeWaiting):
                self.waiting.setdefault(ticket, set()).add(event.incident_id)
                self.unchecked.add(ticket)
                if self._all_ended(self.waiting[ticket]):
                    self.ready.add(ticket)
            elif ticket is not None:
                self.waiting.pop(ticket, None)
                self.ready.discard(ticket)
                self.unchecked.discard(ticket)
        elif isinstance(event, TicketIncident.Linked | TicketIncident.Unlinked):
            ticket = self.tickets.get(event.originator_id)
            if ticket is None:
                return
            before = self.current.pop(ticket, None)
            if before is not None:
                self.of_incident.get(before, set()).discard(ticket)
            if isinstance(event, TicketIncident.Linked):
                self.current[ticket] = event.incident_id
                self.of_incident.setdefault(event.incident_id, set()).add(ticket)

    def unreachable(self, tickets: Iterable[str]) -> set[str]:
        """Those of ``tickets`` known to have no callback (a ticket whose case the log has not shown yet, or whose
        case closed, is not among them: its case is read)."""
        with self.lock:
            return {t for t in tickets if t in self.no_callback}

    def _all_ended(self, incidents: set[str]) -> bool:
        return all(brief_id(i) in self.ended for i in incidents)

    def waiting_tickets(self) -> list[str]:
        """The tickets with incident notices waiting for their cases to open."""
        with self.lock:
            return sorted(self.waiting)

    def is_waiting(self, ticket_id: str) -> bool:
        with self.lock:
            return ticket_id in self.waiting

    def ready_tickets(self, opened: Callable[[str], bool]) -> list[str]:
        """The waiting tickets whose wait can end now: their case opened (``opened``, asked once of each ticket that
        began to wait; a case opened later is seen in the log), or all their incidents ended."""
        with self.lock:
            self.ready |= {t for t in self.unchecked if opened(t)}
            self.unchecked.clear()
            return sorted(self.ready)

    def tickets_of(self, incident_id: str) -> set[str]:
        with self.lock:
            return set(self.of_incident.get(incident_id, ()))
