"""A ticket's steps that reach feedback before its submission (in-memory store).

Within one broker epoch the ticket's events come in the order they were caused (one topic, keyed by the ticket:
one partition; each later step was published by a service that had read the earlier ones there). After a broker
change every service's relay publishes its outbox again from the start, each on its own, so dispatch's Assigned
and Resolved of a ticket can land before intake's RequestSubmitted of it: for a ticket whose submission feedback had
not applied before the change, they came before its case. They are kept and applied, in order, when the case
opens; before, the steps were dropped ("nobody to tell") and the resolution was refused as for an unknown ticket
(dead-lettered: no result webhook, no rating window)."""

from __future__ import annotations

import asyncio

from tests.feedback_sync import service
from tests.unit.test_feedback_notifications import NOW, Bus, accepted, assigned, make_app, resolved, submitted
from tsop_events import schemas as wire
from tsop_feedback import commands
from tsop_feedback.commands import case_id, notification_id
from tsop_feedback.domain import FeedbackCase


def test_steps_that_come_before_the_submission_are_applied_in_order_when_it_comes() -> None:
    app, _ = make_app()
    bus = Bus(app)
    bus(wire.ChannelRegistered(channel_id="ch-1", name="portal", kind="app", registered_at=NOW))
    asyncio.run(commands.subscribe(service(app), "ch-1", ["accepted", "assigned"], "sms", "zh", "channel:portal"))
    # dispatch's relay republished its outbox faster than intake's: its steps of t1 come first
    told = bus(assigned("t1"))
    bus(resolved("t1"))
    bus(resolved("t1"))  # (a redelivery: kept once)
    bus(submitted("t1", "https://ok.example/t1"))
    bus(accepted("t1"))  # intake's, after its submission as ever: applied at once
    case: FeedbackCase = app.repository.get(case_id("t1"))
    assert case.resolution is not None and case.resolution["summary"] == "ONT replaced"
    assert app.repository.get(notification_id(told)).step == "assigned"
    app.follow_ups.refresh()
    assert case.id in app.follow_ups.to_notify  # the result webhook will go
    version = case.version
    bus(submitted("t1", "https://ok.example/t1"))  # the submission again (a republish): nothing again
    bus(resolved("t1"))
    assert app.repository.get(case_id("t1")).version == version

