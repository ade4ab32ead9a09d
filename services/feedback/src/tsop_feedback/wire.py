"""Feedback's domain events on the wire: one row per event that leaves the service.

A wire field takes the domain event's attribute of the same name; only the real
differences are written out. FeedbackSent's cause is the ticket's Resolved event
(the Notified event carries its id); Rated, RatingReminded, RatingExpired,
Reopened and Closed follow from the case's event before them (a Closed on the
customer's confirmation follows the case's Confirmed). Opened, ResolutionNoted,
RatingKept, ConfirmationKept, Confirmed, NotificationAbandoned, NotifiedAfterClosure
and the channel registry's copies (ChannelAccess.*) stay inside (a delivery that ended
after the closure is kept in feedback's store, never published after Closed).
"""

from __future__ import annotations

from tsop_events import schemas as wire
from tsop_events.wiremap import WireMap, previous_event
from tsop_feedback.domain import FeedbackCase


def _tags(e: FeedbackCase.Rated) -> list[str]:
    return list(e.tags or [])  # ratings stored before tags existed carry none


WIRE = (
    WireMap()
    .add(FeedbackCase.Notified, wire.FeedbackSent)
    .add(FeedbackCase.Rated, wire.Rated, causation=previous_event, fields={"tags": _tags})
    .add(FeedbackCase.RatingReminded, wire.RatingReminded, causation=previous_event)
    .add(FeedbackCase.RatingExpired, wire.RatingExpired, causation=previous_event)
    .add(FeedbackCase.Reopened, wire.Reopened, causation=previous_event)
    .add(FeedbackCase.Closed, wire.Closed, causation=previous_event)
)
