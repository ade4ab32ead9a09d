"""Saving collects the new events as eventsourcing does, without its runtime-protocol checks for its own classes."""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest
from eventsourcing.application import ProcessingEvent
from eventsourcing.domain import Aggregate, event

from tsop_events.store import EventStoreApp, Tracking, _collect


class Parcel(Aggregate):
    @event("Sent")
    def __init__(self, label: str) -> None:
        self.label = label

    @event("Noted")
    def note(self, text: str) -> None:
        self.text = text


class Foreign:
    """Not an eventsourcing aggregate, but collects events as one (the library's protocol)."""

    def __init__(self, events: list[Any]) -> None:
        self.id = uuid4()
        self.events = events

    def collect_events(self) -> list[Any]:
        out, self.events = self.events, []
        return out


def parcels() -> tuple[Parcel, Parcel, Any]:
    a, b = Parcel("a"), Parcel("b")
    a.note("1")
    b.note("2")
    loose = Parcel("c")
    (made,) = loose.collect_events()
    return a, b, made


def test_the_same_events_and_aggregates_as_the_librarys_collect() -> None:
    a, b, made = parcels()
    extra = Parcel("d")
    foreign = Foreign(list(extra.collect_events()))
    objs: list[Any] = [b, None, made, a, foreign, b]
    theirs = ProcessingEvent[Any]()
    ours = ProcessingEvent[Any]()
    pending = {id(o): list(o.pending_events) for o in (a, b)}
    theirs.collect_events(*objs)
    for o in (a, b):  # put the pending events back for the second collect
        o._pending_events = pending[id(o)]  # type: ignore[attr-defined]
    foreign.events = list(theirs.events[-1:])
    _collect(ours, objs)
    assert [(e.originator_id, e.originator_version) for e in ours.events] == [
        (e.originator_id, e.originator_version) for e in theirs.events]
    assert list(ours.aggregates.items()) == list(theirs.aggregates.items())


def test_aggregates_are_saved_without_the_librarys_protocol_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    app = EventStoreApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    a, b, made = parcels()

    def refused(self: Any, *objs: Any, **kwargs: Any) -> None:
        raise AssertionError("the library's collect was used")

    monkeypatch.setattr(ProcessingEvent, "collect_events", refused)
    app.save_tracked([a, b], Tracking("s", 1))
    app.save_collected([made])
    assert [(n.originator_id, n.originator_version) for n in app.recorder.select_notifications(1, 10)] == [
        (a.id, 1), (a.id, 2), (b.id, 1), (b.id, 2), (made.originator_id, 1)]
    assert app.process_recorder.max_tracking_id("s") == 1
