"""Incident's use cases: each loads, decides and saves through ``svc.commands.run`` (tsop_events.commands).

Also the write model's handle, ``IncidentApp``: the event store with incident's clock, its correlation rules,
its emergency plans and its board (``views.Board``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

from eventsourcing.persistence import JSONTranscoder, Transcoding

from tsop_events.clock import Clock, SystemClock
from tsop_events.commands import Idempotency, UnitOfWork
from tsop_events.envelope import derived_id
from tsop_events.errors import Invalid, NotFound
from tsop_events.runtime import Service
from tsop_events.settings import ServiceSettings
from tsop_events.store import EventStoreApp, IntegrityError
from tsop_incident import views
from tsop_incident.domain import (
    AnyLink,
    ImprovementActionRecord,
    Incident,
    NeverLinked,
    Plans,
    Rule,
    Rules,
    TicketLink,
    Watch,
    draft_review,
)
from tsop_incident.projection import customers_of, open_tickets_in

LINK_BATCH = 2000  # tickets linked in one save (one transaction) by the sweep


def watch_id(region: str, service_type: str) -> UUID:
    return derived_id("incident-watch", region, service_type)


def link_id(ticket_id: str) -> UUID:
    return derived_id("incident-link", ticket_id)


class SetAsList(Transcoding):
    """A set in an aggregate's state (an incident's escalated steps), for its snapshots."""

    type = set
    name = "set"

    def encode(self, obj: set[Any]) -> list[Any]:
        return sorted(obj)

    def decode(self, data: list[Any]) -> set[Any]:
        return set(data)


class IncidentApp(EventStoreApp):
    """Incident's event store, its clock, correlation rules, emergency plans and board.

    An incident with many tickets is snapshotted every 10,000 events: each snapshot encodes every linked ticket,
    so a short interval would cost O(n²) while linking 100,000 tickets; loads between snapshots come from the
    aggregate cache (brought up to date from the store) or replay at most that many events."""

    snapshotting_intervals = {Incident: 10_000, Watch: 200}

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(SetAsList())

    def __init__(
        self,
        settings: ServiceSettings | None = None,
        env: dict[str, str] | None = None,
        clock: Clock | None = None,
        rules: Rules | None = None,
        plans: Plans | None = None,
    ) -> None:
        super().__init__(settings, env)
        self.clock = clock or SystemClock()
        self.rules = rules or Rules(())
        self.plans = plans or Plans({})
        self.board = views.Board(self)
        # one sweep at a time per incident in this process: the declaration's and the timer's would otherwise both
        # link the same open tickets (the second reading every link the first had just made, or conflicting on it);
        # another incident's sweep (minutes for 100,000 tickets) does not hold up a declaration or the timer
        self.sweeping: dict[UUID, asyncio.Lock] = {}


IncidentSvc = Service[IncidentApp]


def get_incident(uow: UnitOfWork, incident_id: UUID) -> Incident:
    found = uow.get(incident_id)
    if not isinstance(found, Incident):
        raise NotFound(f"no incident {incident_id}", "incident_id")
    return found


def watch_of(uow: UnitOfWork, region: str, service_type: str) -> Watch:
    wid = watch_id(region, service_type)
    return uow.find_or_add(Watch, wid, lambda: Watch(id=wid, region=region, service_type=service_type))


def ticket_link(uow: UnitOfWork, ticket_id: str) -> AnyLink:
    """The ticket's link record, or ``NeverLinked`` (its first link creates the record, in one event)."""
    tid = link_id(ticket_id)
    found = uow.find(TicketLink, tid)
    return found if found is not None else NeverLinked(tid, ticket_id)


def link_in(uow: UnitOfWork, inc: Incident, ticket_id: str, by: str, app: IncidentApp) -> bool:
    """Link one ticket within a unit of work (the rule of one open incident per ticket applies)."""
    tl = ticket_link(uow, ticket_id)
    other = None
    if tl.incident_id is not None and tl.incident_id != str(inc.id):
        other = uow.find(Incident, UUID(tl.incident_id))
    record = inc.link(tl, by, app.clock.now(), other)
    if record is None:
        return False
    uow.add(record)  # a new record (a first link) is saved with the rest; a loaded one is held already
    return True


# --- declaration ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Declaration:
    title: str
    severity: str
    scenario: str
    affected_services: list[str]
    regions: list[str]
    estimated_customers: int
    ticket_ids: list[str]


def declare_in(
    uow: UnitOfWork,
    app: IncidentApp,
    incident_id: UUID,
    d: Declaration,
    by: str,
    detected_at: Any = None,
    rule: Rule | None = None,
) -> Incident:
    """Declare within a unit of work: the incident, its plan, its scope covered, the given tickets linked."""
    now = app.clock.now()
    inc = Incident.declare(
        incident_id, d.title, d.severity, d.scenario, d.affected_services, d.regions, d.estimated_customers, by, now,
        app.plans, detected_at, rule.name if rule else None,
    )
    uow.add(inc)
    for region, service_type in inc.scope():
        watch_of(uow, region, service_type).cover(inc.id)
    uow.prefetch(link_id(t) for t in d.ticket_ids)  # most were never linked: one query, not one each
    for t in d.ticket_ids:
        link_in(uow, inc, t, by, app)
    return inc


async def declare(svc: IncidentSvc, d: Declaration, by: str, idempotency_key: str | None) -> tuple[Incident, bool]:
    """Declare by hand: (incident, replayed). Tickets open in scope are linked by the sweep right after."""
    body = {k: v for k, v in d.__dict__.items()}
    key = Idempotency.of(f"incident-declare:{by}", idempotency_key, body) if idempotency_key else None
    app = svc.app

    def decide(uow: UnitOfWork) -> Incident:
        if d.scenario not in app.plans.plans:
            raise Invalid(f"is not one of the plan scenarios ({', '.join(app.plans.scenarios())})", "scenario")
        return declare_in(uow, app, uuid4(), d, by)

    def replay(uow: UnitOfWork, kept: str) -> Incident:
        return get_incident(uow, UUID(kept))

    result = await svc.commands.run_once(key, decide, lambda i: str(i.id), replay)
    await link_open_tickets(svc, result[0].id)
    return result


def correlate(uow: UnitOfWork, app: IncidentApp, ticket_id: str, region: str, service_type: str, at: Any) -> None:
    """A ticket was accepted: link it to the open incident covering its scope, or count it towards one.

    Idempotent per ticket: the tickets topic is consumed again from the start after a broker change, and a ticket
    correlated before (it has a link record, even one since cleared, or it crossed a threshold and declared an
    incident) changes nothing; the watch also ignores faults older than its window behind the latest it saw."""
    if uow.find(TicketLink, link_id(ticket_id)) is not None:
        return  # linked before (by a burst, the sweep or a manager): never counted or linked again
    if uow.find(Incident, derived_id("incident", region, service_type, ticket_id)) is not None:
        return  # this ticket crossed a threshold before: its incident was declared
    w = watch_of(uow, region, service_type)
    if w.incident_id is not None:
        inc = uow.find(Incident, UUID(w.incident_id))
        if inc is not None and inc.open:
            link_in(uow, inc, ticket_id, "auto", app)
            return
    rule = app.rules.for_type(service_type, region)
    if rule is None:
        return
    burst = w.see(ticket_id, at, rule)
    if burst is None:
        return
    tickets = [t for t, _ in burst]
    d = Declaration(
        title=f"{service_type} outage in {region}",
        severity=rule.severity,
        scenario=rule.scenario,
        affected_services=[service_type],
        regions=[region],
        estimated_customers=len(tickets) * rule.customers_per_ticket,
        ticket_ids=tickets,
    )
    # one incident per burst: its id follows from the scope and the ticket that crossed the threshold
    declare_in(uow, app, derived_id("incident", region, service_type, ticket_id), d, "auto", min(a for _, a in burst),
               rule)


# --- changes ---------------------------------------------------------------------------------------------


async def _change(svc: IncidentSvc, incident_id: UUID, act: Any) -> Incident:
    def decide(uow: UnitOfWork) -> Incident:
        inc = get_incident(uow, incident_id)
        act(uow, inc, svc.app.clock.now())
        return inc

    return await svc.commands.run(decide)


async def acknowledge(svc: IncidentSvc, incident_id: UUID, by: str) -> Incident:
    return await _change(svc, incident_id, lambda uow, inc, now: inc.acknowledge(by, now))


async def change(
    svc: IncidentSvc,
    incident_id: UUID,
    severity: str | None,
    services: list[str] | None,
    regions: list[str] | None,
    customers: int | None,
    reason: str,
    by: str,
) -> Incident:
    def act(uow: UnitOfWork, inc: Incident, now: Any) -> None:
        before = set(inc.scope())
        if inc.change(severity, services, regions, customers, reason, by, now, svc.app.plans):
            after = set(inc.scope())
            for region, st in after - before:
                watch_of(uow, region, st).cover(inc.id)
            for region, st in before - after:
                watch_of(uow, region, st).uncover(inc.id)

    inc = await _change(svc, incident_id, act)
    await link_open_tickets(svc, incident_id)
    return inc


async def link(svc: IncidentSvc, incident_id: UUID, ticket_ids: list[str], by: str) -> tuple[Incident, int]:
    """Link tickets by hand (idempotent): (incident, how many were newly linked)."""

    def decide(uow: UnitOfWork) -> tuple[Incident, int]:
        inc = get_incident(uow, incident_id)
        uow.prefetch(link_id(t) for t in ticket_ids)
        return inc, sum(link_in(uow, inc, t, by, svc.app) for t in ticket_ids)

    return await svc.commands.run(decide)


async def unlink(svc: IncidentSvc, incident_id: UUID, ticket_id: str, reason: str, by: str) -> Incident:
    def act(uow: UnitOfWork, inc: Incident, now: Any) -> None:
        if ticket_id not in inc.linked:
            raise NotFound(f"ticket {ticket_id} is not linked to incident {incident_id}", "ticket_id")
        inc.unlink(ticket_link(uow, ticket_id), reason, by, now)

    return await _change(svc, incident_id, act)


async def finish_step(svc: IncidentSvc, incident_id: UUID, step: str, by: str) -> Incident:
    return await _change(svc, incident_id, lambda uow, inc, now: inc.finish_step(step, by, now))


async def restore(svc: IncidentSvc, incident_id: UUID, note: str, by: str) -> Incident:
    return await _change(svc, incident_id, lambda uow, inc, now: inc.restore(note, by, now))


async def verify(svc: IncidentSvc, incident_id: UUID, note: str, by: str) -> Incident:
    return await _change(svc, incident_id, lambda uow, inc, now: inc.verify(note, by, now))


async def resolve(
    svc: IncidentSvc, incident_id: UUID, code: str, summary: str, advice: str | None, by: str
) -> Incident:
    """Resolve (twice changes nothing); the scope is uncovered, dispatch resolves each linked ticket."""

    def act(uow: UnitOfWork, inc: Incident, now: Any) -> None:
        if inc.resolve(code, summary, advice, by, now):
            for region, st in inc.scope():
                watch_of(uow, region, st).uncover(inc.id)

    return await _change(svc, incident_id, act)


async def get(svc: IncidentSvc, incident_id: UUID) -> Incident:
    return await svc.commands.run(lambda uow: get_incident(uow, incident_id))


async def incident_of_ticket(svc: IncidentSvc, ticket_id: str) -> Incident:
    """The incident the ticket is (or was last) linked to; 404 if none."""

    def read(uow: UnitOfWork) -> Incident:
        tl = uow.find(TicketLink, link_id(ticket_id))
        if tl is None or tl.incident_id is None:
            raise NotFound(f"ticket {ticket_id} is linked to no incident", "ticket_id")
        return get_incident(uow, UUID(tl.incident_id))

    return await svc.commands.run(read)


async def open_incidents(svc: IncidentSvc) -> list[tuple[UUID, list[str], list[str]]]:
    """The open incidents (id, regions, services), from the board."""
    board = svc.app.board
    return await board.read(
        lambda: sorted((iid, regions, services) for iid, (regions, services) in board.open.items())
    )


# --- the review ------------------------------------------------------------------------------------------


async def review_draft(svc: IncidentSvc, incident_id: UUID) -> tuple[Incident, dict[str, Any]]:
    """The review's facts, written from the incident's stored events (and the customers behind its tickets)."""
    inc = await get(svc, incident_id)
    if inc.review is not None:
        return inc, inc.review
    stored = await asyncio.to_thread(lambda: list(svc.app.repository.event_store.get(incident_id)))
    history = [e for e in stored if isinstance(e, Incident.Event)]
    ever = [t for e in history if isinstance(e, Incident.TicketLinked | Incident.TicketsLinked)
            for t in ([e.ticket_id] if isinstance(e, Incident.TicketLinked) else e.ticket_ids)
            if t not in inc.unlinked]
    customers = await customers_of(svc.pool, ever)
    return inc, draft_review(history, customers)


async def publish_review(
    svc: IncidentSvc, incident_id: UUID, root_cause: str, actions: list[ImprovementActionRecord], by: str
) -> Incident:
    inc, draft = await review_draft(svc, incident_id)
    if inc.review is not None:
        draft = {k: v for k, v in inc.review.items()
                 if k not in ("root_cause", "improvement_actions", "published_by", "published_at")}
    return await _change(
        svc, incident_id, lambda uow, i, now: i.publish_review(draft, root_cause, actions, by, now)
    )


# --- the timers' work ------------------------------------------------------------------------------------


async def escalate_overdue(svc: IncidentSvc) -> int:
    """Escalate every plan step past its limit (the board says which incidents have one); how many."""
    app = svc.app
    now = app.clock.now()
    due = await asyncio.to_thread(app.board.due, now)
    done = 0
    for iid in due:
        def decide(uow: UnitOfWork, i: UUID = iid) -> int:
            return get_incident(uow, i).escalate_overdue(now, app.plans.escalate_to)

        try:
            done += await svc.commands.run(decide)
        except IntegrityError:
            pass  # changed meanwhile: the next tick decides again
    if due:
        await asyncio.to_thread(app.board.refresh)
    return done


async def link_open_tickets(svc: IncidentSvc, incident_id: UUID) -> int:
    """Link the tickets open in the incident's scope (the read model of the ticket stream says which).

    One sweep at a time per incident and process (``IncidentApp.sweeping``): a sweep that waited for another of the
    same incident sees its links on the board and has nothing left to do; other incidents' sweeps go on meanwhile.
    Another instance's concurrent sweep is safe as before (a chunk saved by both conflicts and is decided again on
    fresh state)."""
    async with svc.app.sweeping.setdefault(incident_id, asyncio.Lock()):
        return await _link_open_tickets(svc, incident_id)


async def _link_open_tickets(svc: IncidentSvc, incident_id: UUID) -> int:
    app = svc.app
    board = app.board
    scope, linked = await board.read(lambda: (
        board.open.get(incident_id),
        board.linked.get(incident_id, set()) | board.unlinked.get(incident_id, set()),
    ))
    if scope is None:
        return 0
    candidates = [t for t in await open_tickets_in(svc.pool, scope) if t not in linked]
    todo = await board.read(
        lambda: [t for t in candidates if not board.held_elsewhere(incident_id, t)], refresh=False
    )
    count = 0
    for i in range(0, len(todo), LINK_BATCH):
        chunk = todo[i: i + LINK_BATCH]

        def decide(uow: UnitOfWork, chunk: list[str] = chunk) -> int:
            inc = get_incident(uow, incident_id)
            if not inc.open:
                return 0
            # the chunk's links in one query (most were never linked; the others are loaded by it too, not one each)
            uow.preload(link_id(t) for t in chunk)
            links: list[AnyLink] = []
            for t in chunk:
                tl = ticket_link(uow, t)
                if tl.incident_id is not None and tl.incident_id != str(inc.id):
                    other = uow.find(Incident, UUID(tl.incident_id))
                    if other is not None and other.open and t in other.linked:
                        continue  # the other open incident keeps it
                links.append(tl)
            # one TicketsLinked for the chunk (one event on the incidents topic, not one per ticket); a ticket's
            # first link is one event of its new record
            records = inc.link_many(links, "auto", app.clock.now())
            for record in records:
                uow.add(record)
            return len(records)

        count += await svc.commands.run(decide)
    if count:
        await asyncio.to_thread(app.board.refresh)
    return count


async def sweep(svc: IncidentSvc) -> int:
    """Link open tickets in scope to every open incident (a declaration's sweep, again after a crash)."""
    await asyncio.to_thread(svc.app.board.refresh)
    total = 0
    for iid in list(svc.app.board.open):
        total += await link_open_tickets(svc, iid)
    return total
