"""The relay skips stored events its mapper never publishes without decoding them (decided from the stored topic)."""

from __future__ import annotations

from typing import Any

import pytest
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import Notification as StoredNotification

from tsop_events import schemas as wire
from tsop_events.relay import Relay, _Ready, _Refused
from tsop_events.settings import ServiceSettings
from tsop_events.store import EventStoreApp
from tsop_events.wiremap import WireMap
from tsop_feedback.complaints.domain import Complaint
from tsop_feedback.complaints.main import mapper as complaints_mapper
from tsop_feedback.domain import FeedbackCase, Notification
from tsop_feedback.wire import WIRE as FEEDBACK_WIRE


class Thing(Aggregate):
    @event("Made")
    def __init__(self, ticket_id: str) -> None:
        self.ticket_id = ticket_id

    @event("Noted")
    def note(self, text: str) -> None:
        self.text = text


MADE: Any = Thing.Made  # type: ignore[attr-defined]
THINGS = WireMap().add(MADE, wire.Closed, fields={"closed_at": lambda e: e.timestamp, "reason": lambda e: "rated"})


class Counting(EventStoreApp):
    decoded = 0

    def sealed_event(self, stored: Any) -> Any:
        type(self).decoded += 1
        return super().sealed_event(stored)


def relay_of(app: EventStoreApp, mapper: Any) -> Relay:
    settings = ServiceSettings(service_name="feedback", topic_prefix="p.")
    return Relay("feedback", app, mapper, producer=None, pool=None, settings=settings, epoch=None)  # type: ignore[arg-type]


@pytest.fixture
def app() -> Counting:
    Counting.decoded = 0
    return Counting(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})


def test_an_event_of_a_class_never_published_is_skipped_without_decoding(app: Counting) -> None:
    thing = Thing("T-1")
    thing.note("internal")
    app.save(thing)
    made, noted = app.recorder.select_notifications(1, 10)
    relay = relay_of(app, THINGS)
    assert relay._prepare(noted) is None
    assert Counting.decoded == 0  # decided from the topic alone
    ready = relay._prepare(made)
    assert isinstance(ready, _Ready) and ready.topic == "p.tickets" and ready.key == b"T-1"
    assert Counting.decoded == 1


def test_a_plain_mapper_still_decodes_every_event(app: Counting) -> None:
    thing = Thing("T-1")
    thing.note("internal")
    app.save(thing)
    relay = relay_of(app, lambda e: THINGS(e))
    assert [relay._prepare(n) is None for n in app.recorder.select_notifications(1, 10)] == [False, True]
    assert Counting.decoded == 2


def test_a_topic_that_does_not_resolve_is_decoded_and_set_aside_as_before(app: Counting) -> None:
    app.save(Thing("T-1"))
    (made,) = app.recorder.select_notifications(1, 10)
    odd = StoredNotification(id=made.id, originator_id=made.originator_id, originator_version=1,
                             topic="nowhere.module:Gone", state=made.state)
    assert THINGS.publishes("nowhere.module:Gone")
    refused = relay_of(app, THINGS)._prepare(odd)
    assert isinstance(refused, _Refused) and Counting.decoded == 1


def test_feedbacks_mapper_publishes_its_cases_and_complaints_and_never_its_notifications() -> None:
    from eventsourcing.utils import get_topic

    both = complaints_mapper(FEEDBACK_WIRE)
    assert not both.publishes(get_topic(Notification.Queued))
    assert not both.publishes(get_topic(FeedbackCase.Opened))
    assert both.publishes(get_topic(FeedbackCase.Closed))
    assert both.publishes(get_topic(Complaint.Received))
    # every class either map has a row for, and nothing else, is published by the two together
    assert set(both.mapped()) == set(FEEDBACK_WIRE.mapped()) | set(complaints_mapper(WireMap()).mapped())
    with pytest.raises(ValueError, match="mapped twice"):
        FEEDBACK_WIRE.including(FEEDBACK_WIRE)
