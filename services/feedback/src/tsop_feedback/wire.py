"""Feedback's domain events on the wire: one row per event that leaves the service.

A wire field takes the domain event's attribute of the same name; no field is
renamed. FeedbackSent's cause is the ticket's Resolved event (the Notified event
carries its id); Rated and Closed follow from the case's event before them.
Opened, ResolutionNoted, RatingKept, NotificationAbandoned and
NotifiedAfterClosure stay inside (a delivery that ended after the closure is
kept in feedback's store, never published after Closed).
"""

from __future__ import annotations

from tsop_events import schemas as wire
from tsop_events.wiremap import WireMap, previous_event
from tsop_feedback.domain import FeedbackCase

WIRE = (
    WireMap()
    .add(FeedbackCase.Notified, wire.FeedbackSent)
    .add(FeedbackCase.Rated, wire.Rated, causation=previous_event)
    .add(FeedbackCase.Closed, wire.Closed, causation=previous_event)
)
