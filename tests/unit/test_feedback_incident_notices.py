"""Incident notices (§5.3): the customers of linked tickets are told through their channel's template and language
when their ticket is linked, when restoration is under way, when the service is restored and when their ticket is
unlinked; exactly one notice per customer per change, nothing again on redelivery or on a replay of the incidents
topic from the start (in-memory store)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any
from uuid import UUID

from tests.feedback_sync import service
from tests.unit.test_feedback_notifications import NOW, Bus, make_app, submitted
from tsop_events import schemas as wire
from tsop_events.consumer import Incoming, UnitOfWork
from tsop_events.envelope import Envelope
from tsop_feedback import commands
from tsop_feedback.commands import FeedbackApp
from tsop_feedback.domain import FeedbackCase, Notification
from tsop_feedback.incidents.domain import TicketIncident, notice_id, ticket_incident_id
from tsop_feedback.incidents.main import ready_tickets, waiting_notices
from tsop_feedback.incidents.policies import IncidentNotices, tell_waiting
from tsop_feedback.incidents.views import LinkedTickets

INC = "inc-1"


class Incidents:
    """Hands incident events to the incident-notices sink, each batch at the next offsets of the topic; ``redeliver``
    hands the same batch again at NEW offsets, with the same event ids, as when the relay republishes what it had
    published but not yet marked (a crash in between): only the sink's own idempotence stops a second notice.
    ``replay`` consumes the whole topic (republished records too) again under a new epoch."""

    def __init__(self, app: FeedbackApp) -> None:
        self.sink, self.log, self.epoch = IncidentNotices(app), list[tuple[str, wire.IncidentEvent]](), 0

    def incoming(self, eid: str, ev: wire.IncidentEvent, n: int) -> Incoming:
        env = Envelope(eid, ev.event_type, "test", NOW, ev.key(), None, None, b"{}")
        return Incoming("incidents", 0, n, ev.key(), env, ev)

    def publish(self, published: list[tuple[str, wire.IncidentEvent]]) -> None:
        start = len(self.log)
        self.log.extend(published)
        records = [self.incoming(eid, ev, start + i + 1) for i, (eid, ev) in enumerate(published)]
        self.sink._process(f"n|{self.epoch}|incidents|0", records, records[-1].offset)

    def __call__(self, *events: wire.IncidentEvent, redeliver: bool = False) -> None:
        published = [(f"e{len(self.log) + i + 1}", ev) for i, ev in enumerate(events)]
        self.publish(published)
        if redeliver:
            self.publish(published)

    def replay(self) -> None:
        self.epoch += 1
        records = [self.incoming(eid, ev, n) for n, (eid, ev) in enumerate(self.log, 1)]
        for r in records:
            self.sink._process(f"n|{self.epoch}|incidents|0", [r], r.offset)


def at(minutes: int) -> datetime:
    return NOW + timedelta(minutes=minutes)


def declared() -> wire.IncidentDeclared:
    return wire.IncidentDeclared(
        incident_id=INC, title="broadband outage in north", severity="II", scenario="outage",
        affected_services=["broadband.fault_repair"], regions=["north"], estimated_customers=30, declared_by="auto",
        detected_at=NOW, declared_at=NOW)


def linked(ticket: str, minute: int) -> wire.IncidentTicketLinked:
    return wire.IncidentTicketLinked(incident_id=INC, ticket_id=ticket, linked_by="auto", linked_at=at(minute))




def queued(app: FeedbackApp) -> list[Notification]:
    app.follow_ups.refresh()
    return [app.repository.get(nid) for nid in app.follow_ups.notifications]


def test_each_customer_is_told_once_per_change_in_their_channels_template_and_language() -> None:
    app, _ = make_app()
    bus = Bus(app)
    bus(wire.ChannelRegistered(channel_id="ch-en", name="portal", kind="web", registered_at=NOW))
    asyncio.run(commands.subscribe(service(app), "ch-en", ["accepted"], "email", "en", "channel:portal"))
    bus(submitted("t1", "https://ok.example/t1"))  # ch-1: unknown channel → SMS in Chinese
    bus(submitted("t2", "https://ok.example/t2", channel="ch-en"))
    bus(submitted("t3", "https://ok.example/t3"))
    inc = Incidents(app)
    inc(declared(), linked("t1", 1), linked("t2", 1), linked("t3", 1), linked("t-unknown", 1), redeliver=True)
    inc(wire.IncidentAcknowledged(incident_id=INC, acknowledged_by="m", acknowledged_at=at(2)), redeliver=True)
    inc(wire.IncidentTicketUnlinked(incident_id=INC, ticket_id="t3", reason="unrelated", unlinked_by="m",
                                    unlinked_at=at(3)))
    # t4 is linked in the same batch as the restoration: it is told too
    bus(submitted("t4", "https://ok.example/t4"))
    inc(linked("t4", 4), wire.ServiceRestored(incident_id=INC, note="spliced", restored_by="m", restored_at=at(5)),
        redeliver=True)
    inc(wire.IncidentResolved(incident_id=INC, resolution_code="restored", summary="fibre spliced", advice=None,
                              tickets_linked=3, resolved_by="m", resolved_at=at(6)))
    got = sorted((n.ticket_id, n.step) for n in queued(app))
    assert got == [
        ("t1", "incident_in_progress"), ("t1", "incident_linked"), ("t1", "incident_restored"),
        ("t2", "incident_in_progress"), ("t2", "incident_linked"), ("t2", "incident_restored"),
        ("t3", "incident_in_progress"), ("t3", "incident_linked"), ("t3", "incident_unlinked"),
        ("t4", "incident_linked"), ("t4", "incident_restored"),
    ]
    texts = {(n.ticket_id, n.step): n for n in queued(app)}
    t1, t2 = texts[("t1", "incident_linked")], texts[("t2", "incident_restored")]
    assert (t1.template, t1.language) == ("sms", "zh") and "broadband outage in north" in t1.text and "t1" in t1.text
    assert (t2.template, t2.language) == ("email", "en") and "restored at 2026-06-01T09:05+00:00" in t2.text
    assert t2.url == "https://ok.example/t2" and t2.payload["incident_id"] == INC
    # the redelivered batches were consumed (their new offsets tracked), not skipped as already seen
    assert app.tracked_position("n|0|incidents|0") == len(inc.log) == 18
    before = len(queued(app))
    inc.replay()  # the incidents topic consumed again from the start (a broker change)
    assert len(queued(app)) == before


def test_a_ticket_unlinked_and_linked_again_is_told_again_and_a_replay_tells_nothing() -> None:
    app, _ = make_app()
    bus = Bus(app)
    bus(submitted("t1", "https://ok.example/t1"))
    inc = Incidents(app)
    inc(declared(), linked("t1", 1))
    inc(wire.IncidentTicketUnlinked(incident_id=INC, ticket_id="t1", reason="unrelated", unlinked_by="m",
                                    unlinked_at=at(2)))
    inc(linked("t1", 3), redeliver=True)
    assert sorted(n.step for n in queued(app)) == ["incident_linked", "incident_linked", "incident_unlinked"]
    inc.replay()
    assert len(queued(app)) == 3
    inc(wire.ServiceRestored(incident_id=INC, note="ok", restored_by="m", restored_at=at(4)))
    assert sorted(n.step for n in queued(app)).count("incident_restored") == 1


def test_a_chunk_of_linked_tickets_tells_each_customer_once_as_if_linked_alone() -> None:
    """The sweep's TicketsLinked (one event per chunk): each ticket's customer told once; the chunk redelivered or
    replayed, or a ticket of it linked again alone (the old event), tells nobody again; a status fans out to all."""
    app, _ = make_app()
    bus = Bus(app)
    for t in ("t1", "t2", "t3"):
        bus(submitted(t, f"https://ok.example/{t}"))
    bus(submitted("t-silent", "https://ok.example/x").model_copy(update={"callback_url": None}))
    inc = Incidents(app)
    chunk = wire.IncidentTicketsLinked(incident_id=INC, ticket_ids=["t1", "t2", "t3", "t-unknown", "t-silent"],
                                       linked_by="auto", linked_at=at(1))
    inc(declared(), chunk, redeliver=True)
    inc(linked("t2", 1))  # the same link, as the event of one ticket
    assert sorted((n.ticket_id, n.step) for n in queued(app)) == [
        ("t1", "incident_linked"), ("t2", "incident_linked"), ("t3", "incident_linked")]
    inc.replay()
    assert len(queued(app)) == 3
    inc(wire.ServiceRestored(incident_id=INC, note="ok", restored_by="m", restored_at=at(2)))
    assert sorted(n.ticket_id for n in queued(app) if n.step == "incident_restored") == ["t1", "t2", "t3"]
    # a case with no callback is known from the log: a notice's fan-out does not read it; the others are read
    everyone = ["t1", "t2", "t3", "t-unknown", "t-silent"]
    assert inc.sink.linked.unreachable(everyone) == {"t-silent"}
    # ... while its case is open: a closed case is forgotten (the set holds open cases only) and read again if asked
    inc.sink.linked.apply(FeedbackCase.Closed(  # type: ignore[call-arg]
        originator_id=commands.case_id("t-silent"), originator_version=9, timestamp=NOW, ticket_id="t-silent",
        reason="rating_expired", closed_at=NOW))
    assert inc.sink.linked.unreachable(everyone) == set()
    # a ticket linked later, whose case has a callback, is told
    bus(submitted("t5", "https://ok.example/t5"))
    inc(wire.IncidentTicketLinked(incident_id=INC, ticket_id="t5", linked_by="auto", linked_at=at(3)))
    assert [n.step for n in queued(app) if n.ticket_id == "t5"] == ["incident_linked"]


def test_a_chunk_records_nothing_for_tickets_known_to_have_no_callback() -> None:
    """A ticket whose case has no callback is never told anything, so a link (and an unlink) of it records nothing
    in feedback: no TicketIncident, no event per ticket of a bulk link; the others are recorded and told as before,
    and the silent one unlinked and linked again changes nothing either."""
    app, _ = make_app()
    bus = Bus(app)
    bus(submitted("t1", "https://ok.example/t1"))
    for t in ("s1", "s2"):
        bus(submitted(t, "https://ok.example/x").model_copy(update={"callback_url": None}))
    inc = Incidents(app)
    inc(declared())
    before = app.recorder.max_notification_id()
    inc(wire.IncidentTicketsLinked(incident_id=INC, ticket_ids=["t1", "s1", "s2"], linked_by="auto",
                                   linked_at=at(1)), redeliver=True)
    inc(wire.IncidentTicketUnlinked(incident_id=INC, ticket_id="s1", reason="unrelated", unlinked_by="m",
                                    unlinked_at=at(2)))
    inc(linked("s1", 3))
    new = list(app.recorder.select_notifications((before or 0) + 1, 1000))
    records = {n.originator_id for n in new if n.topic.endswith("TicketIncident.Started")}
    assert records == {ticket_incident_id("t1")}
    assert list(app.repository.event_store.get(ticket_incident_id("s1"))) == []
    assert [(n.ticket_id, n.step) for n in queued(app)] == [("t1", "incident_linked")]


def waiting(app: FeedbackApp) -> list[str]:
    board = LinkedTickets.of(app)
    board.refresh()
    return board.waiting_tickets()


def tell_waiting_now(app: FeedbackApp) -> int:
    """One round of the waiting notices' timer (``incidents.main.waiting_notices``): the tickets it picks, told."""
    return asyncio.run(service(app).commands.run(partial(tell_waiting, app=app, tickets=ready_tickets(app))))


def test_a_link_that_comes_before_the_tickets_submission_is_told_once_the_case_opens() -> None:
    """The incidents topic and the tickets topic are not ordered with each other: a ticket's link (and a status
    fanned out to it) can reach feedback before its submission. The notices wait on the ticket's record and are
    queued, in order and once, when the case opens; before that, a round of the timer keeps them waiting."""
    app, _ = make_app()
    bus = Bus(app)
    inc = Incidents(app)
    inc(declared(), linked("t1", 1), redeliver=True)
    inc(wire.IncidentAcknowledged(incident_id=INC, acknowledged_by="m", acknowledged_at=at(2)))
    assert queued(app) == []
    record: TicketIncident = app.repository.get(ticket_incident_id("t1"))
    assert [(w.step, w.stamp) for w in record.waiting] == [("incident_linked", at(1)), ("incident_in_progress", None)]
    assert tell_waiting_now(app) == 0  # the case is not open yet: they keep waiting
    assert waiting(app) == ["t1"]
    bus(submitted("t1", "https://ok.example/t1"))
    assert tell_waiting_now(app) == 1
    got = queued(app)
    assert [(n.ticket_id, n.step) for n in got] == [("t1", "incident_linked"), ("t1", "incident_in_progress")]
    assert {n.id for n in got} == {notice_id(INC, "t1", "incident_linked", at(1)),
                                   notice_id(INC, "t1", "incident_in_progress")}
    assert "broadband outage in north" in got[0].text and got[0].url == "https://ok.example/t1"
    assert waiting(app) == []
    assert tell_waiting_now(app) == 0
    inc(linked("t1", 1))  # redelivered after all that: nothing again
    inc.replay()
    assert len(queued(app)) == 2
    # later notices go at once, as for any ticket
    inc(wire.ServiceRestored(incident_id=INC, note="ok", restored_by="m", restored_at=at(3)))
    assert [n.step for n in queued(app)][-1] == "incident_restored"


def test_a_case_opened_while_the_links_batch_was_being_decided_is_told() -> None:
    """The race seen in the e2e run: the link batch read the cases (the case absent), then the submission's batch
    committed the case, then the link batch saved. The notice waits and is queued by the next round."""
    app, _ = make_app()
    bus = Bus(app)
    inc = Incidents(app)
    inc(declared())

    class Racing(IncidentNotices):
        def prefetch(self, uow: UnitOfWork, records: Sequence[Incoming]) -> None:
            super().prefetch(uow, records)
            bus(submitted("t1", "https://ok.example/t1"))  # committed after this batch read the cases

    inc.sink = Racing(app)
    inc(linked("t1", 1))
    assert queued(app) == []
    assert tell_waiting_now(app) == 1
    assert [(n.ticket_id, n.step) for n in queued(app)] == [("t1", "incident_linked")]


def test_waiting_notices_are_dropped_when_nobody_can_be_told() -> None:
    """A case that opens with no callback, or an incident resolved before the case opens (the ticket's own
    resolution tells its customer): the wait ends with nothing queued."""
    app, _ = make_app()
    bus = Bus(app)
    inc = Incidents(app)
    inc(declared(), linked("t-silent", 1), linked("t-late", 1))
    bus(submitted("t-silent", "https://ok.example/x").model_copy(update={"callback_url": None}))
    assert tell_waiting_now(app) == 1
    assert waiting(app) == ["t-late"]
    inc(wire.IncidentResolved(incident_id=INC, resolution_code="restored", summary="ok", advice=None,
                              tickets_linked=2, resolved_by="m", resolved_at=at(2)))
    assert tell_waiting_now(app) == 1
    bus(submitted("t-late", "https://ok.example/t-late"))
    assert tell_waiting_now(app) == 0
    assert queued(app) == []
    assert waiting(app) == []


class RoundOver(Exception):
    pass


class OneRound:
    """The timer's waiter: the timer stops where it would wait for the next round."""

    async def wait(self, timeout: float = 1.0) -> bool:
        raise RoundOver


def timer_round(app: FeedbackApp) -> None:
    """The waiting notices' timer itself (``incidents.main.waiting_notices``), stopped after its first round."""
    svc = service(app)
    svc.waiter = lambda *a, **k: OneRound()  # type: ignore[method-assign,assignment,return-value]

    async def one_round() -> None:
        with contextlib.suppress(RoundOver):
            await waiting_notices(svc)
            # (before the waiter: a round, then a sleep of a second, never over)

    asyncio.run(asyncio.wait_for(one_round(), 5))


def test_a_notice_after_the_case_opened_does_not_overtake_the_ones_still_waiting() -> None:
    """The case opened, the timer has not run yet, and the next notice comes: it waits behind the ones already
    waiting, so the customer is told in the order the incident went (linked, then restored), not the reverse."""
    app, _ = make_app()
    bus = Bus(app)
    inc = Incidents(app)
    inc(declared(), linked("t1", 1))
    bus(submitted("t1", "https://ok.example/t1"))
    inc(wire.ServiceRestored(incident_id=INC, note="ok", restored_by="m", restored_at=at(3)))
    timer_round(app)
    assert [n.step for n in queued(app)] == ["incident_linked", "incident_restored"]
    assert waiting(app) == []


def test_a_round_of_the_timer_reads_no_record_while_the_cases_have_not_opened() -> None:
    """A bulk link whose tickets' cases lag (or never open: tickets submitted before feedback followed them): each
    round of the timer reads the records and cases only of the tickets whose case opened (or whose incidents are all
    resolved), not of every waiting ticket again and again, each second."""
    app, _ = make_app()
    bus = Bus(app)
    inc = Incidents(app)
    tickets = [f"t{i}" for i in range(200)]
    inc(declared(), wire.IncidentTicketsLinked(incident_id=INC, ticket_ids=tickets, linked_by="auto",
                                               linked_at=at(1)))
    assert len(waiting(app)) == 200
    asked: list[UUID] = []
    find_many = app.find_many

    def counting(aggregate_ids: Iterable[UUID]) -> dict[UUID, Any]:
        ids = list(aggregate_ids)
        asked.extend(ids)
        return find_many(ids)

    app.find_many = counting  # type: ignore[method-assign]
    timer_round(app)
    assert asked == []  # no case opened: nothing to read
    bus(submitted("t7", "https://ok.example/t7"))
    asked.clear()
    timer_round(app)
    assert len(set(asked)) <= 4  # t7's record and case (and its brief, its channel)
    assert [(n.ticket_id, n.step) for n in queued(app)] == [("t7", "incident_linked")]
    assert len(waiting(app)) == 199
    inc(wire.IncidentResolved(incident_id=INC, resolution_code="restored", summary="ok", advice=None,
                              tickets_linked=200, resolved_by="m", resolved_at=at(2)))
    timer_round(app)
    assert waiting(app) == []  # the incident resolved: the waits end (nobody is told of it now)


def test_a_round_of_the_timer_learns_in_one_query_that_the_notices_it_queues_are_new() -> None:
    """The tickets of a bulk link whose cases opened since: the round reads their records, cases, briefs and
    channels in one query each, and learns the notices it queues were never queued in one more, not one read per
    notice (as the consumer's ``prefetch`` does for a link)."""
    app, _ = make_app()
    bus = Bus(app)
    inc = Incidents(app)
    tickets = [f"t{i}" for i in range(30)]
    inc(declared(), wire.IncidentTicketsLinked(incident_id=INC, ticket_ids=tickets, linked_by="auto",
                                               linked_at=at(1)))
    for t in tickets:
        bus(submitted(t, f"https://ok.example/{t}"))
    one_by_one: list[UUID] = []
    find, find_many, existing = app.find, app.find_many, app.existing
    batched = False  # (the in-memory store's find_many and existing find one by one: those are one query each)

    def counting(aggregate_id: UUID) -> Any:
        if not batched:
            one_by_one.append(aggregate_id)
        return find(aggregate_id)

    def in_one(of: Any) -> Any:
        def query(ids: Iterable[UUID]) -> Any:
            nonlocal batched
            batched = True
            try:
                return of(ids)
            finally:
                batched = False
        return query

    app.find, app.find_many, app.existing = counting, in_one(find_many), in_one(existing)  # type: ignore[method-assign]
    timer_round(app)
    app.find, app.find_many, app.existing = find, find_many, existing  # type: ignore[method-assign]
    assert len(queued(app)) == 30 and waiting(app) == []
    assert Counter(type(find(i)).__name__ for i in one_by_one) == {}  # (before: a Notification read each)
