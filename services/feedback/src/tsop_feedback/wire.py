"""Feedback's domain events on the wire: one row per event that leaves the service.

A wire field takes the domain event's attribute of the same name; only the real
differences are written out.

FeedbackSent comes from ``Notified`` (a webhook delivered; in stores written before
session 9, also a case with no callback) or from ``ResolutionNoted`` with ``notified``
(a case with no callback: nobody to tell, so the notification is settled in the event
that notes the resolution: channel "none", one attempt, at the resolution's time).
Either way its cause is the ticket's Resolved event (``Notified.causation_id``,
``ResolutionNoted.resolved_event_id``), and its ``ce_id``, as every event's, follows
from the case and the version of the stored event it comes from: the same each time
that event is published again.

Rated, RatingReminded, RatingExpired, Reopened and Closed follow from the case's
event before them (a Closed on the customer's confirmation follows the case's
Confirmed; after a ResolutionNoted with ``notified``, that FeedbackSent, as after a
Notified). Opened, ResolutionNoted without ``notified``, RatingKept, ConfirmationKept,
Confirmed, NotificationAbandoned, NotifiedAfterClosure and the channel registry's
copies (ChannelAccess.*) stay inside (a delivery that ended after the closure is kept
in feedback's store, never published after Closed).
"""

from __future__ import annotations

from tsop_events import schemas as wire
from tsop_events.wiremap import WireMap, previous_event
from tsop_feedback.domain import FeedbackCase


def _tags(e: FeedbackCase.Rated) -> list[str]:
    return list(e.tags or [])  # ratings stored before tags existed carry none


def _settled(e: FeedbackCase.ResolutionNoted) -> bool:
    return e.notified  # False for every ResolutionNoted stored before session 9 (and for cases with a callback)


def _no_channel(e: FeedbackCase.ResolutionNoted) -> str:
    return "none"


def _one_attempt(e: FeedbackCase.ResolutionNoted) -> int:
    return 1  # as the Notified event it replaces recorded


def _resolved_event(e: FeedbackCase.ResolutionNoted) -> str:
    return e.resolved_event_id


WIRE = (
    WireMap()
    .add(FeedbackCase.Notified, wire.FeedbackSent)
    .add(FeedbackCase.ResolutionNoted, wire.FeedbackSent, when=_settled, causation=_resolved_event,
         fields={"channel": _no_channel, "attempts": _one_attempt, "sent_at": "resolved_at"})
    .add(FeedbackCase.Rated, wire.Rated, causation=previous_event, fields={"tags": _tags})
    .add(FeedbackCase.RatingReminded, wire.RatingReminded, causation=previous_event)
    .add(FeedbackCase.RatingExpired, wire.RatingExpired, causation=previous_event)
    .add(FeedbackCase.Reopened, wire.Reopened, causation=previous_event)
    .add(FeedbackCase.Closed, wire.Closed, causation=previous_event)
)
