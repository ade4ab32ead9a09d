"""An event-store sink applies a heavy batch in slices, each saved with its own position: a fetch of many chunk
events (an incident's ``tickets-linked``, up to 2,000 tickets each) is never one huge transaction, and a crash or a
conflict between slices applies nothing twice (in-memory store)."""

from __future__ import annotations

from datetime import datetime
from uuid import NAMESPACE_URL, UUID, uuid5

import pytest
from eventsourcing.domain import Aggregate, event

from tsop_events import schemas as wire
from tsop_events.consumer import EventStoreSink, Incoming, UnitOfWork
from tsop_events.envelope import Envelope
from tsop_events.store import EventStoreApp

NOW = datetime.fromisoformat("2026-12-02T10:00:00+00:00")


class Seen(Aggregate):
    class Started(Aggregate.Created):
        ticket: str

    @event(Started)
    def __init__(self, ticket: str) -> None:
        self.ticket = ticket

    @staticmethod
    def create_id(ticket: str) -> UUID:
        return seen_id(ticket)


def seen_id(ticket: str) -> UUID:
    return uuid5(NAMESPACE_URL, ticket)


class Recorder(EventStoreSink):
    name = "slices"
    slice_weight = 5

    def __init__(self, app: EventStoreApp, fail_at: int | None = None) -> None:
        super().__init__(app)
        self.saves: list[int] = []  # tickets applied per transaction
        self.fail_at = fail_at

    def react(self, uow: UnitOfWork, incoming: Incoming) -> None:
        ev = incoming.event
        assert isinstance(ev, wire.IncidentTicketsLinked)
        if self.fail_at is not None and incoming.offset == self.fail_at:
            raise RuntimeError("crash")
        for t in ev.ticket_ids:
            if uow.find(Seen, seen_id(t)) is None:
                uow.add(Seen(t))
        self.saves.append(len(ev.ticket_ids))


def chunk(offset: int, tickets: list[str]) -> Incoming:
    ev = wire.IncidentTicketsLinked(incident_id="inc", ticket_ids=tickets, linked_by="auto", linked_at=NOW)
    return Incoming("incidents", 0, offset, "inc", Envelope(f"e{offset}", ev.event_type, "t", NOW, "inc", None, None,
                                                            b"{}"), ev)


def store() -> EventStoreApp:
    return EventStoreApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})


def batch() -> list[Incoming]:
    return [chunk(n, [f"t{n}-{i}" for i in range(3)]) for n in range(1, 7)]  # six chunks of three tickets


def test_a_heavy_batch_is_applied_in_slices_each_at_its_own_position() -> None:
    app = store()
    sink = Recorder(app)
    parts = sink._slices(batch(), 9)
    assert [([r.offset for r in part], upto) for part, upto in parts] == [
        ([1], 1), ([2], 2), ([3], 3), ([4], 4), ([5], 5), ([6], 9)]  # 3 + 3 > 5: one chunk per transaction
    sink._process("slices|e|incidents|0", batch(), 9)
    assert app.tracked_position("slices|e|incidents|0") == 9
    assert all(app.repository.get(seen_id(f"t{n}-{i}")) for n in range(1, 7) for i in range(3))


def test_light_records_share_a_slice_and_one_heavier_than_the_limit_goes_alone() -> None:
    sink = Recorder(store())
    records = [chunk(1, ["a"]), chunk(2, ["b"]), chunk(3, [f"c{i}" for i in range(9)]), chunk(4, ["d"])]
    parts = sink._slices(records, 4)
    assert [[r.offset for r in part] for part, _ in parts] == [[1, 2], [3], [4]]


def test_a_crash_between_slices_keeps_the_applied_ones_and_the_redelivery_applies_only_the_rest() -> None:
    app = store()
    crashing = Recorder(app, fail_at=4)
    with pytest.raises(RuntimeError):
        crashing._process("slices|e|incidents|0", batch(), 6)
    assert app.tracked_position("slices|e|incidents|0") == 3  # the first three slices are saved
    again = Recorder(app)
    again._process("slices|e|incidents|0", batch(), 6)  # the whole batch redelivered
    assert again.saves == [3, 3, 3]  # only chunks 4..6 applied again
    assert app.tracked_position("slices|e|incidents|0") == 6
    again._process("slices|e|incidents|0", batch(), 6)
    assert again.saves == [3, 3, 3]  # and nothing once all applied
