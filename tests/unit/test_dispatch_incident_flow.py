"""Dispatch's incident holds under the hard orderings (§5.3): a work order resolved while held and then reopened
goes back to normal dispatch; the incidents topic replayed from the start (a broker change) changes nothing; and a
link racing the work order's opening is never lost (in memory, with the injectable clock)."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import uuid4

import pytest
from eventsourcing.persistence import IntegrityError, Tracking

from tests.dispatch_sync import SyncDispatch
from tests.unit.test_dispatch_reopen import FAULT, NOW, Feed, accepted, new_app, reopened
from tsop_dispatch.commands import work_order_id
from tsop_dispatch.domain import WorkOrder
from tsop_dispatch.policies import IncidentHolds, OpenWorkOrders, hold_id, record_id, resolve_chunk
from tsop_events import schemas as wire
from tsop_events.commands import UnitOfWork
from tsop_events.consumer import Incoming
from tsop_events.envelope import Envelope

IncidentEvent = (wire.IncidentTicketLinked | wire.IncidentTicketsLinked | wire.IncidentTicketUnlinked
                 | wire.IncidentResolved)


def incoming(ev: IncidentEvent | wire.RequestAccepted, key: str, n: int) -> Incoming:
    return Incoming("t", 0, n, key, Envelope(f"x{key}{n}", ev.event_type, "test", NOW, key, None, None, b"{}"), ev)


class Incidents:
    """Hands incident events to dispatch's incident-holds sink; ``replay`` consumes them all again from the start
    under a new broker epoch (a new tracking name), as after the embedded broker restarted empty."""

    def __init__(self, holds: IncidentHolds, app: SyncDispatch | None = None) -> None:
        self.holds, self.log, self.epoch = holds, list[IncidentEvent](), 0
        self.app = app  # its timer resolves the work orders a resolved incident holds (views.resolve_held)

    def __call__(self, ev: IncidentEvent) -> None:
        self.log.append(ev)
        n = len(self.log)
        self.holds._process(f"h|{self.epoch}|incidents|0", [incoming(ev, ev.incident_id, n)], n)
        self.settle()

    def settle(self) -> None:
        if self.app is not None:
            self.app.resolve_held()

    def replay(self, in_one_batch: bool = False) -> None:
        self.epoch += 1
        records = [incoming(ev, ev.incident_id, n) for n, ev in enumerate(self.log, 1)]
        for chunk in [records] if in_one_batch else [[r] for r in records]:
            self.holds._process(f"h|{self.epoch}|incidents|0", chunk, chunk[-1].offset)
        self.settle()


def linked(ticket: str, at: datetime = NOW, incident: str = "inc1") -> wire.IncidentTicketLinked:
    return wire.IncidentTicketLinked(incident_id=incident, ticket_id=ticket, linked_by="auto", linked_at=at)


def unlinked(ticket: str, at: datetime, incident: str = "inc1") -> wire.IncidentTicketUnlinked:
    return wire.IncidentTicketUnlinked(incident_id=incident, ticket_id=ticket, reason="unrelated", unlinked_by="m",
                                       unlinked_at=at)


def resolved(at: datetime, incident: str = "inc1") -> wire.IncidentResolved:
    return wire.IncidentResolved(incident_id=incident, resolution_code="restored", summary="fibre spliced",
                                 advice=None, tickets_linked=1, resolved_by="m", resolved_at=at)


def kinds(app: object, wo_id: object) -> list[str]:
    return [type(e).__name__ for e in app.app.repository.event_store.get(wo_id)]  # type: ignore[attr-defined]


def test_a_work_order_resolved_by_its_incident_and_reopened_is_dispatched_again_and_starves_nobody() -> None:
    app, clock = new_app()
    app.register_technician(uuid4(), "A", [FAULT], ["north"], 3)
    feed, inc = Feed(app), Incidents(IncidentHolds(app.app), app)
    feed(accepted("t1"))
    inc(linked("t1"))
    wo_id = work_order_id("t1")
    assert app.load(wo_id).held_by == "inc1"
    inc(resolved(NOW + timedelta(minutes=1)))
    wo = app.load(wo_id)
    assert (wo.status, wo.held_by) == ("resolved", None)
    clock.advance(timedelta(minutes=5))
    feed(reopened("t1", at=clock.now()))
    wo = app.load(wo_id)
    assert wo.held_by is None and wo.status == "assigned" and wo.technician_id is not None
    # its resolve clock runs again and nothing it left behind blocks the next order of its type and region
    assert app.explain_clocks(wo)["resolve"]["state"] == "running"
    feed(accepted("t2"))
    assert app.load(work_order_id("t2")).status == "assigned"


def test_a_reopened_work_order_left_waiting_is_assigned_by_the_next_drain() -> None:
    app, _ = new_app()
    feed, inc = Feed(app), Incidents(IncidentHolds(app.app), app)
    feed(accepted("t1"))  # nobody to send yet
    inc(linked("t1"))
    inc(resolved(NOW))
    feed(reopened("t1", at=NOW + timedelta(minutes=1)))
    assert app.load(work_order_id("t1")).status == "waiting"
    app.register_technician(uuid4(), "A", [FAULT], ["north"], 3)
    app.drain_queue()
    assert app.load(work_order_id("t1")).status == "assigned"


def test_a_replayed_link_does_not_hold_again_an_order_whose_hold_was_lifted() -> None:
    app, _ = new_app()
    app.register_technician(uuid4(), "A", [FAULT], ["north"], 3)
    feed, inc = Feed(app), Incidents(IncidentHolds(app.app), app)
    feed(accepted("t1"))
    feed(accepted("t2"))
    inc(linked("t1"))
    inc(linked("t2"))
    inc(unlinked("t2", NOW + timedelta(minutes=1)))
    inc(resolved(NOW + timedelta(minutes=2)))
    w1, w2 = work_order_id("t1"), work_order_id("t2")
    feed(reopened("t1", at=NOW + timedelta(minutes=3)))
    before1, before2 = kinds(app, w1), kinds(app, w2)
    inc.replay()
    assert kinds(app, w1) == before1  # not resolved again with the old resolution
    assert kinds(app, w2) == before2  # no extra Held/HoldLifted pair (no false SLA pause)
    assert app.load(w1).status == "assigned" and app.load(w2).held_by is None


def test_a_replay_in_one_batch_does_not_resolve_a_reopened_order_again() -> None:
    app, _ = new_app()
    app.register_technician(uuid4(), "A", [FAULT], ["north"], 3)
    feed, inc = Feed(app), Incidents(IncidentHolds(app.app), app)
    feed(accepted("t1"))
    inc(linked("t1"))
    inc(resolved(NOW))
    feed(reopened("t1", at=NOW + timedelta(minutes=1)))
    inc.replay(in_one_batch=True)
    events = app.app.repository.event_store.get(work_order_id("t1"))
    assert sum(isinstance(e, WorkOrder.Resolved) for e in events) == 1
    assert app.load(work_order_id("t1")).status == "assigned"


def test_a_ticket_linked_again_after_an_unlink_is_held_again() -> None:
    app, _ = new_app()
    feed, inc = Feed(app), Incidents(IncidentHolds(app.app), app)
    feed(accepted("t1"))
    inc(linked("t1"))
    inc(unlinked("t1", NOW + timedelta(minutes=1)))
    assert app.load(work_order_id("t1")).held_by is None
    inc(linked("t1", NOW + timedelta(minutes=2)))
    assert app.load(work_order_id("t1")).held_by == "inc1"
    inc.replay()
    assert app.load(work_order_id("t1")).held_by == "inc1"
    assert kinds(app, work_order_id("t1")).count("Held") == 2


def test_a_link_racing_the_opening_conflicts_and_the_retry_applies_the_hold() -> None:
    app, _ = new_app()
    app.register_technician(uuid4(), "A", [FAULT], ["north"], 3)
    opener, holds = OpenWorkOrders(app.app), IncidentHolds(app.app)
    # the two consumers run concurrently: each decides on what it read, then saves
    u1 = UnitOfWork(app.app)
    opener.before_batch()
    opener.react(u1, incoming(accepted("t1"), "t1", 1))
    u2 = UnitOfWork(app.app)
    holds.before_batch()
    holds.react(u2, incoming(linked("t1"), "inc1", 1))
    app.app.save_tracked(u2.aggregates(), Tracking("holds|e|incidents|0", 1))
    with pytest.raises(IntegrityError):  # both wrote the ticket's IncidentHold record: the later save conflicts
        app.app.save_tracked(u1.aggregates(), Tracking("orders|e|tickets|0", 1))
    opener._process("orders|e|tickets|0", [incoming(accepted("t1"), "t1", 1)], 1)  # the consumer's retry
    wo = app.load(work_order_id("t1"))
    assert wo.held_by == "inc1" and wo.technician_id is None
    assert app.load(hold_id("t1")).incident_id is None  # taken over by the work order
    # and the other order: the link read the work order opened first
    u3 = UnitOfWork(app.app)
    opener.react(u3, incoming(accepted("t2"), "t2", 2))
    app.app.save_tracked(u3.aggregates(), Tracking("orders|e|tickets|0", 2))
    holds._process("holds|e|incidents|0", [incoming(linked("t2"), "inc1", 2)], 2)
    assert app.load(work_order_id("t2")).held_by == "inc1"


def test_a_replay_after_an_upgrade_with_no_incident_records_applies_nothing_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Dispatch before IncidentRecord existed applied these events; after the upgrade the records are empty and the
    topic is consumed again from the start: the work orders' own history must refuse what they applied already."""
    app, _ = new_app()
    app.register_technician(uuid4(), "A", [FAULT], ["north"], 3)
    feed, inc = Feed(app), Incidents(IncidentHolds(app.app), app)
    feed(accepted("t1"))
    feed(accepted("t2"))
    inc(linked("t1"))
    inc(linked("t2"))
    inc(unlinked("t2", NOW + timedelta(minutes=1)))
    inc(linked("t2", NOW + timedelta(minutes=2), incident="inc2"))
    inc(resolved(NOW + timedelta(minutes=3)))
    w1, w2 = work_order_id("t1"), work_order_id("t2")
    feed(reopened("t1", at=NOW + timedelta(minutes=4)))
    before1, before2 = kinds(app, w1), kinds(app, w2)
    # as if no record had been kept: every incident's record starts empty under the replay
    monkeypatch.setattr("tsop_dispatch.policies.record_id", lambda incident_id: uuid4())
    inc.replay()
    assert kinds(app, w1) == before1  # neither held again nor resolved again with the old resolution
    assert kinds(app, w2) == before2  # still held by inc2 only, no false pause or release
    assert app.load(w1).status == "assigned" and app.load(w1).held_by is None
    assert app.load(w2).held_by == "inc2"


def test_a_resolution_is_applied_in_chunks_resumes_after_a_crash_and_resolves_each_work_order_once() -> None:
    app, _ = new_app()
    feed, inc = Feed(app), Incidents(IncidentHolds(app.app))  # no timer: the resolution waits for resolve_held
    tickets = [f"t{i}" for i in range(5)]
    for t in tickets:
        feed(accepted(t))
        inc(linked(t))
    inc(linked("early"))  # linked before its work order opened: an early hold
    inc(resolved(NOW + timedelta(minutes=1)))
    assert all(app.load(work_order_id(t)).status == "waiting" for t in tickets)  # nothing resolved in the consumer
    # one chunk of two, then the process dies (the next round starts from what is still held)
    app.app.board.refresh()
    held, _ = app.app.board.held_by("inc1")
    uow = UnitOfWork(app.app)
    assert resolve_chunk(uow, "inc1", held[:2], [], NOW) == 2
    app.app.save(*uow.aggregates())
    assert app.resolve_held(2) == 3  # the rest, two at a time, after the "restart"
    events = [e for t in tickets for e in app.app.repository.event_store.get(work_order_id(t))]
    resolved_events = [e for e in events if isinstance(e, WorkOrder.Resolved)]
    assert len(resolved_events) == 5 and {e.summary for e in resolved_events} == {"fibre spliced"}
    assert {e.resolved_at for e in resolved_events} == {NOW + timedelta(minutes=1)}  # the incident's time
    record = app.app.repository.get(record_id("inc1"))
    assert record.done and record.count == 5
    assert app.app.repository.get(hold_id("early")).resolution is not None  # applied when it opens
    assert app.resolve_held() == 0
    inc.replay()
    assert app.resolve_held() == 0
    feed(accepted("early"))
    assert app.load(work_order_id("early")).status == "resolved"
    assert sum(isinstance(e, WorkOrder.Resolved) for t in tickets
               for e in app.app.repository.event_store.get(work_order_id(t))) == 5


def test_a_chunk_of_linked_tickets_holds_each_work_order_once_across_redelivery_and_replay() -> None:
    """The sweep's TicketsLinked (one event per chunk of tickets): each work order held as if linked alone (its own
    Held, so each ticket's dossier has it), one not opened yet kept as an early hold; the chunk redelivered after a
    crash (the relay published it, died before marking it) and the topic replayed hold nothing twice; a ticket of a
    chunk unlinked (the per-ticket event) goes back to normal dispatch and is not resolved with the incident."""
    app, _ = new_app()
    feed, inc = Feed(app), Incidents(IncidentHolds(app.app), app)
    tickets = [f"t{i}" for i in range(5)]
    for t in tickets:
        feed(accepted(t))

    def chunk(ids: list[str]) -> wire.IncidentTicketsLinked:
        return wire.IncidentTicketsLinked(incident_id="inc1", ticket_ids=ids, linked_by="auto", linked_at=NOW)

    inc(chunk(tickets[:3]))
    inc(chunk(tickets[:3]))  # redelivered at a new offset
    inc(chunk([*tickets[3:], "early"]))
    assert all(app.load(work_order_id(t)).held_by == "inc1" for t in tickets)
    assert app.app.repository.get(hold_id("early")).incident_id == "inc1"
    inc.replay()
    inc.replay(in_one_batch=True)
    assert [kinds(app, work_order_id(t)).count("Held") for t in tickets] == [1] * 5
    inc(unlinked("t1", NOW + timedelta(minutes=1)))
    assert app.load(work_order_id("t1")).held_by is None
    inc(resolved(NOW + timedelta(minutes=2)))
    assert [app.load(work_order_id(t)).status for t in tickets] == [
        "resolved", "waiting", "resolved", "resolved", "resolved"]
    inc.replay()
    assert sum(kinds(app, work_order_id(t)).count("Resolved") for t in tickets) == 4
    feed(accepted("early"))
    assert app.load(work_order_id("early")).status == "resolved"


def test_a_chunk_of_the_held_work_orders_is_the_first_in_id_order() -> None:
    """``held_by`` with a limit picks a chunk (the first work orders in id order, as the whole sorted list would give
    them) without sorting every held one; the early holds likewise."""
    app, _ = new_app()
    inc = Incidents(IncidentHolds(app.app))
    feed = Feed(app)
    tickets = [f"t{i}" for i in range(40)]
    for t in tickets:
        feed(accepted(t))
    for t in [*tickets, *(f"early{i}" for i in range(7))]:
        inc(linked(t))
    app.app.board.refresh()
    held, pending = app.app.board.held_by("inc1")
    assert sorted(held) == held and len(held) == 40 and sorted(pending) == pending and len(pending) == 7
    assert set(held) == {work_order_id(t) for t in tickets}
    assert app.app.board.held_by("inc1", 6) == (held[:6], pending[:6])
    assert app.app.board.held_by("inc1", 100) == (held, pending)
    assert app.app.board.held_by("other", 6) == ([], [])
