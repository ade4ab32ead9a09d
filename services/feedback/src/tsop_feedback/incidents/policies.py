"""``IncidentNotices``: feedback as a consumer of the incidents topic (§5.3).

The customer of each linked ticket is told, through the ticket's channel (its callback, template kind and
language, like every step notification): that the ticket is linked to the incident, that restoration is under
way (the incident was acknowledged), that the service is restored, and that the ticket was unlinked (it is
handled on its own again). The resolution itself reaches them as the ticket's own ``Resolved`` (dispatch resolves
each held ticket), i.e. the "resolved" step: one notice per customer per change. Incident notices go whatever
steps the channel subscribed to (like the result: a held ticket has no other steps to show).

Idempotent: each notice's id follows from (incident, ticket, step[, the link's time]); a replayed link or unlink
is refused by the ticket's ``TicketIncident``, a replayed status by the incident's ``IncidentBrief``, and nothing
of an incident applies once it is resolved. A ticket known to have no callback (``LinkedTickets.unreachable``: a
case's callback is set when it opens, never after) is never told anything, so its links and unlinks record nothing
(no ``TicketIncident``: a bulk link of 100,000 such tickets writes no event per ticket, reads no record). A status
notice fans out, in the same transaction as its tracking row, to the tickets linked at that point of the incident's
stream (``LinkedTickets`` plus this batch).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import ClassVar

from tsop_events import schemas as wire
from tsop_events.consumer import EventStoreSink, Incoming, UnitOfWork
from tsop_events.runtime import Service
from tsop_events.topics import Topic
from tsop_feedback.commands import FeedbackApp, access_id, case_id
from tsop_feedback.domain import ChannelAccess, FeedbackCase, Notification, default_template
from tsop_feedback.incidents.domain import IncidentBrief, TicketIncident, brief_id, notice_id, ticket_incident_id
from tsop_feedback.incidents.views import LinkedTickets


def when(at: datetime) -> str:
    return at.isoformat(timespec="minutes")


class IncidentNotices(EventStoreSink):
    name: ClassVar[str] = "feedback-incident-notices"
    topics: ClassVar[tuple[Topic, ...]] = (Topic.incidents,)
    event_types: ClassVar[frozenset[str] | None] = frozenset({
        wire.IncidentDeclared.event_type, wire.IncidentAcknowledged.event_type,
        wire.IncidentTicketLinked.event_type, wire.IncidentTicketsLinked.event_type,
        wire.IncidentTicketUnlinked.event_type,
        wire.ServiceRestored.event_type, wire.IncidentResolved.event_type,
    })

    def __init__(self, app: FeedbackApp) -> None:
        super().__init__(app)
        self.feedback = app
        self.linked = LinkedTickets.of(app)
        self.silent: set[str] = set()  # tickets of this batch known to have no callback: nobody to tell

    @classmethod
    def of(cls, svc: Service[FeedbackApp]) -> IncidentNotices:
        return cls(svc.app)

    def before_batch(self) -> None:
        self.linked.refresh()

    def prefetch(self, uow: UnitOfWork, records: Sequence[Incoming]) -> None:
        """A batch of links: the tickets' records and cases in one query (most records do not exist yet)."""
        tickets = [t for r in records for t in (
            r.event.ticket_ids if isinstance(r.event, wire.IncidentTicketsLinked)
            else [r.event.ticket_id] if isinstance(r.event, wire.IncidentTicketLinked | wire.IncidentTicketUnlinked)
            else [])]
        self.silent = self.linked.unreachable(tickets)  # their cases and records are not read
        told = [t for t in tickets if t not in self.silent]
        uow.preload([*(ticket_incident_id(t) for t in told), *(case_id(t) for t in told),
                     *{brief_id(r.event.incident_id) for r in records if isinstance(r.event, wire.IncidentEvent)}])
        self.preload_channels(uow, told)
        notices = []  # the notices a link or unlink would queue: nearly always absent, learnt in one query
        for r in records:
            ev = r.event
            if isinstance(ev, wire.IncidentTicketsLinked):
                notices += [notice_id(ev.incident_id, t, "incident_linked", ev.linked_at) for t in ev.ticket_ids
                            if t not in self.silent]
            elif isinstance(ev, wire.IncidentTicketLinked):
                notices.append(notice_id(ev.incident_id, ev.ticket_id, "incident_linked", ev.linked_at))
            elif isinstance(ev, wire.IncidentTicketUnlinked):
                notices.append(notice_id(ev.incident_id, ev.ticket_id, "incident_unlinked", ev.unlinked_at))
        uow.prefetch(notices)

    @staticmethod
    def preload_channels(uow: UnitOfWork, tickets: Iterable[str]) -> None:
        """The channels of the tickets' (loaded) cases, in one query: each notice reads its channel's template."""
        channels = {c.channel_id for c in (uow.find(FeedbackCase, case_id(t)) for t in tickets) if c and c.channel_id}
        uow.preload(access_id(c) for c in channels)

    def react(self, uow: UnitOfWork, incoming: Incoming) -> None:
        ev = incoming.event
        assert isinstance(ev, wire.IncidentEvent)
        brief = uow.find(IncidentBrief, brief_id(ev.incident_id))
        if brief is None:
            title = ev.title if isinstance(ev, wire.IncidentDeclared) else ""
            brief = IncidentBrief(id=brief_id(ev.incident_id), incident_id=ev.incident_id, title=title)
            uow.add(brief)
        if brief.resolved:
            return  # a replay of a resolved incident: its customers were told, and its tickets are resolved
        if isinstance(ev, wire.IncidentDeclared):
            brief.retitle(ev.title)
        elif isinstance(ev, wire.IncidentTicketLinked | wire.IncidentTicketsLinked):
            # a chunk's tickets each told as if linked alone
            for ticket_id in [ev.ticket_id] if isinstance(ev, wire.IncidentTicketLinked) else ev.ticket_ids:
                if ticket_id in self.silent:
                    continue  # no callback (never set after the case opens): nobody to tell, nothing to record
                if self.ticket(uow, ticket_id).link(ev.incident_id, ev.linked_at):
                    self.notify(uow, brief, ticket_id, "incident_linked", ev.linked_at, ev.linked_at)
        elif isinstance(ev, wire.IncidentTicketUnlinked):
            silent = ev.ticket_id in self.silent  # nothing recorded, nobody to tell (as when linked)
            if not silent and self.ticket(uow, ev.ticket_id).unlink(ev.incident_id, ev.unlinked_at):
                self.notify(uow, brief, ev.ticket_id, "incident_unlinked", ev.unlinked_at, ev.unlinked_at)
        elif isinstance(ev, wire.IncidentAcknowledged):
            self.tell_all(uow, brief, "incident_in_progress", ev.acknowledged_at)
        elif isinstance(ev, wire.ServiceRestored):
            self.tell_all(uow, brief, "incident_restored", ev.restored_at)
        elif isinstance(ev, wire.IncidentResolved):
            brief.end(ev.resolved_at)

    def ticket(self, uow: UnitOfWork, ticket_id: str) -> TicketIncident:
        tid = ticket_incident_id(ticket_id)
        return uow.find_or_add(TicketIncident, tid, lambda: TicketIncident(id=tid, ticket_id=ticket_id))

    def tell_all(self, uow: UnitOfWork, brief: IncidentBrief, step: str, at: datetime) -> None:
        if not brief.tell(step, at):
            return
        in_batch = {a.ticket_id: a.incident_id for a in uow.aggregates() if isinstance(a, TicketIncident)}
        tickets = {t for t in self.linked.tickets_of(brief.incident_id) if t not in in_batch}
        tickets |= {t for t, i in in_batch.items() if i == brief.incident_id}
        silent = self.linked.unreachable(tickets)
        self.silent |= silent
        tickets -= silent  # no callback: nobody to tell, no case to read
        uow.preload([*(case_id(t) for t in tickets),
                     *(ticket_incident_id(t) for t in tickets if self.linked.is_waiting(t))])
        self.preload_channels(uow, tickets)
        uow.prefetch(notice_id(brief.incident_id, t, step) for t in tickets)
        for t in sorted(tickets):
            self.notify(uow, brief, t, step, at)

    def notify(self, uow: UnitOfWork, brief: IncidentBrief, ticket_id: str, step: str, at: datetime,
               stamp: datetime | None = None) -> None:
        if ticket_id in self.silent:
            return  # its case has no callback: nobody to tell
        case = uow.find(FeedbackCase, case_id(ticket_id))
        if case is None or self.waits(uow, ticket_id):
            # not opened yet as far as this batch knows: the ticket's submission comes on another topic and may
            # not have been applied (or was committed after this batch read the cases); the notice waits for it.
            # Or opened, with notices still waiting (the timer has not queued them yet): this one waits behind
            # them, so the customer is told in the order the incident went
            self.ticket(uow, ticket_id).wait(brief.incident_id, step, at, stamp)
            return
        queue_notice(uow, self.feedback, brief, case, step, at, stamp)

    def waits(self, uow: UnitOfWork, ticket_id: str) -> bool:
        """Whether notices of the ticket wait for the timer: its record in this batch, or (not read yet) the board
        says so; the others' records are not read."""
        tid = ticket_incident_id(ticket_id)
        if not uow.holds(tid) and not self.linked.is_waiting(ticket_id):
            return False
        record = uow.find(TicketIncident, tid)
        return record is not None and bool(record.waiting)


def queue_notice(uow: UnitOfWork, app: FeedbackApp, brief: IncidentBrief, case: FeedbackCase, step: str,
                 at: datetime, stamp: datetime | None) -> bool:
    """Queue one notice to the customer of ``case`` through its channel's template; False if it has nowhere to post
    (no callback) or was queued already (its id follows from the cause)."""
    if not case.callback_url:
        return False
    ticket_id = case.ticket_id
    nid = notice_id(brief.incident_id, ticket_id, step, stamp)
    if uow.find(Notification, nid) is not None:
        return False
    access = uow.find(ChannelAccess, access_id(case.channel_id)) if case.channel_id else None
    kind, language = (access.template, access.language) if access else (default_template(""), "zh")
    payload: dict[str, str | None] = {
        "ticket_id": ticket_id, "incident_id": brief.incident_id, "incident_title": brief.title, "at": when(at)}
    uow.add(Notification(
        id=nid, ticket_id=ticket_id, step=step, url=case.callback_url, template=kind, language=language,
        text=app.templates.render(kind, language, step, payload), payload=payload, queued_at=at,
    ))
    return True


def tell_waiting(uow: UnitOfWork, app: FeedbackApp, tickets: Sequence[str]) -> int:
    """The notices of ``tickets`` that waited for their cases: queued, in the order they came, once the case is
    open; dropped when it opened with no callback or their incident is resolved (its tickets' own resolutions tell
    the customers); kept while the case is still not open. How many tickets' waits ended."""
    uow.preload([*(ticket_incident_id(t) for t in tickets), *(case_id(t) for t in tickets)])
    records = [r for t in tickets if (r := uow.find(TicketIncident, ticket_incident_id(t))) is not None and r.waiting]
    uow.preload({brief_id(w.incident_id) for r in records for w in r.waiting})
    IncidentNotices.preload_channels(uow, (r.ticket_id for r in records))
    # the notices to queue, nearly always never queued: learnt in one query, not a read each
    uow.prefetch(notice_id(w.incident_id, r.ticket_id, w.step, w.stamp) for r in records for w in r.waiting)
    ended = 0
    for record in records:
        case = uow.find(FeedbackCase, case_id(record.ticket_id))
        briefs = [(w, uow.find(IncidentBrief, brief_id(w.incident_id))) for w in record.waiting]
        live = [(w, b) for w, b in briefs if b is not None and not b.resolved]
        if case is None and live:
            continue  # still not open: the notices keep waiting
        told = sum(queue_notice(uow, app, b, case, w.step, w.at, w.stamp) for w, b in live) if case else 0
        ended += record.end_wait(told)
    return ended
