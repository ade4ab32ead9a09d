"""What feedback keeps of the incidents, to tell the customers of linked tickets how their incident goes (§5.3).

``IncidentBrief`` (one per incident): its title, which status notices were sent (in progress, restored) and whether
it is resolved. ``TicketIncident`` (one per ticket): the incident it is linked to now, per incident the latest
link or unlink applied (its time), so a redelivered or replayed link or unlink changes nothing, and the notices that
wait for the ticket's case (an incident's link can reach feedback before the ticket's submission does: the two come
on different topics). No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from tsop_events.envelope import derived_id

# the steps of an incident notice (texts in notification_templates.json, optional there: a file without them
# falls back to the built-in text); the incident's resolution reaches each customer as the ticket's own
# Resolved (dispatch resolves each held ticket), i.e. the "resolved" step, so it has no notice of its own
INCIDENT_STEPS = ("incident_linked", "incident_in_progress", "incident_restored", "incident_unlinked")


def brief_id(incident_id: str) -> UUID:
    return derived_id("feedback-incident", incident_id)


def ticket_incident_id(ticket_id: str) -> UUID:
    return derived_id("feedback-ticket-incident", ticket_id)


def notice_id(incident_id: str, ticket_id: str, step: str, at: datetime | None = None) -> UUID:
    """One notice per customer per change: the id follows from the incident, the ticket, the step (and the link's
    or unlink's time), so a redelivered or replayed cause queues nothing new."""
    return derived_id("incident-notice", incident_id, ticket_id, step, at.isoformat() if at else "")


class IncidentBrief(Aggregate):
    class Started(Aggregate.Created):
        incident_id: str
        title: str

    class Retitled(Aggregate.Event):
        title: str

    class Told(Aggregate.Event):
        step: str
        at: datetime

    class Ended(Aggregate.Event):
        at: datetime

    @event(Started)
    def __init__(self, id: UUID, incident_id: str, title: str) -> None:  # noqa: A002
        self.incident_id = incident_id
        self.title = title
        self.told: list[str] = []
        self.resolved = False

    def retitle(self, title: str) -> None:
        if title and title != self.title:
            self._retitled(title=title)

    @event(Retitled)
    def _retitled(self, title: str) -> None:
        self.title = title

    def tell(self, step: str, at: datetime) -> bool:
        """A status change to tell every linked ticket's customer: True the first time (while unresolved)."""
        if self.resolved or step in self.told:
            return False
        self._told(step=step, at=at)
        return True

    @event(Told)
    def _told(self, step: str, at: datetime) -> None:
        self.told.append(step)

    def end(self, at: datetime) -> bool:
        if self.resolved:
            return False
        self._ended(at=at)
        return True

    @event(Ended)
    def _ended(self, at: datetime) -> None:
        self.resolved = True


class TicketIncident(Aggregate):
    class Started(Aggregate.Created):
        ticket_id: str

    class Linked(Aggregate.Event):
        incident_id: str
        at: datetime

    class Unlinked(Aggregate.Event):
        incident_id: str
        at: datetime

    class NoticeWaiting(Aggregate.Event):
        """A notice that could not be queued: feedback had not opened the ticket's case yet."""

        incident_id: str
        step: str
        at: datetime
        stamp: datetime | None

    class WaitOver(Aggregate.Event):
        """The waiting notices were queued (the case opened) or dropped (nobody to tell, or the incident ended)."""

        told: int

    @event(Started)
    def __init__(self, id: UUID, ticket_id: str) -> None:  # noqa: A002
        self.ticket_id = ticket_id
        self.incident_id: str | None = None
        self.latest: dict[str, tuple[datetime, str]] = {}  # incident → (time, linked | unlinked) last applied
        self.waiting: list[Waiting] = []  # notices to queue when the case opens, in the order they came

    def _news(self, incident_id: str, at: datetime, kind: str) -> bool:
        last = self.latest.get(incident_id)
        return last is None or at > last[0] or (at == last[0] and kind != last[1] and kind == "unlinked")

    def link(self, incident_id: str, at: datetime) -> bool:
        """Linked to ``incident_id``: True if this is news (tell the customer), False for a replay."""
        if self.incident_id == incident_id or not self._news(incident_id, at, "linked"):
            return False
        self._linked(incident_id=incident_id, at=at)
        return True

    @event(Linked)
    def _linked(self, incident_id: str, at: datetime) -> None:
        self.incident_id = incident_id
        self.latest[incident_id] = (at, "linked")

    def unlink(self, incident_id: str, at: datetime) -> bool:
        """Unlinked from ``incident_id``: True if it was linked to it and this is news."""
        if self.incident_id != incident_id or not self._news(incident_id, at, "unlinked"):
            return False
        self._unlinked(incident_id=incident_id, at=at)
        return True

    @event(Unlinked)
    def _unlinked(self, incident_id: str, at: datetime) -> None:
        self.incident_id = None
        self.latest[incident_id] = (at, "unlinked")

    def wait(self, incident_id: str, step: str, at: datetime, stamp: datetime | None) -> bool:
        """Keep a notice until the ticket's case opens; False if it waits already (a redelivered cause)."""
        if any(w.key() == (incident_id, step, stamp) for w in self.waiting):
            return False
        self._notice_waiting(incident_id=incident_id, step=step, at=at, stamp=stamp)
        return True

    @event(NoticeWaiting)
    def _notice_waiting(self, incident_id: str, step: str, at: datetime, stamp: datetime | None) -> None:
        self.waiting.append(Waiting(incident_id, step, at, stamp))

    def end_wait(self, told: int) -> bool:
        """The notices that waited are queued or dropped (``told`` of them queued); none waiting: nothing recorded."""
        if not self.waiting:
            return False
        self._wait_over(told=told)
        return True

    @event(WaitOver)
    def _wait_over(self, told: int) -> None:
        self.waiting = []


@dataclass(frozen=True)
class Waiting:
    incident_id: str
    step: str
    at: datetime
    stamp: datetime | None  # the link's or unlink's time, part of the notice's id (None for a status notice)

    def key(self) -> tuple[str, str, datetime | None]:
        return self.incident_id, self.step, self.stamp
