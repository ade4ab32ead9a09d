"""Feedback to the applicant, the 24-hour rating window and closure (§2.3, §2.4). No I/O.

The event classes are declared explicitly, typed, under the names the stored
history carries (``tsop_feedback.domain:FeedbackCase.Rated`` and so on).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TypedDict
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from tsop_events.errors import Conflict, Invalid


class FeedbackError(Conflict):
    """The case's state refuses the rating."""

    title = "Not allowed now"


class AlreadyClosed(FeedbackError):
    title = "Ticket closed"


class AlreadyRated(FeedbackError):
    pass


class Resolution(TypedDict):
    resolution_code: str
    summary: str
    advice: str | None


class NotificationFailure(TypedDict):
    attempts: int
    status_code: int | None
    error: str
    at: str


class EarlyRating(TypedDict):
    score: int
    comment: str | None
    received_at: datetime


CLOCK_SKEW = timedelta(seconds=30)
"""How far apart dispatch's and feedback's clocks may be when an early rating is compared with the resolution."""


class FeedbackCase(Aggregate):
    """One ticket's feedback loop: notify, collect the rating, close."""

    class Opened(Aggregate.Created):
        ticket_id: str
        callback_url: str | None
        opened_at: datetime

    class ResolutionNoted(Aggregate.Event):
        resolution_code: str
        summary: str
        advice: str | None
        resolved_at: datetime
        rating_due_at: datetime
        resolved_event_id: str

    class NotificationAbandoned(Aggregate.Event):
        ticket_id: str
        attempts: int
        status_code: int | None
        error: str
        abandoned_at: datetime

    class Notified(Aggregate.Event):
        ticket_id: str
        channel: str
        attempts: int
        status_code: int | None
        rating_due_at: datetime
        sent_at: datetime
        causation_id: str

    class NotifiedAfterClosure(Aggregate.Event):
        channel: str
        attempts: int
        status_code: int | None
        sent_at: datetime

    class RatingKept(Aggregate.Event):
        ticket_id: str
        score: int
        comment: str | None
        received_at: datetime

    class Rated(Aggregate.Event):
        ticket_id: str
        score: int
        comment: str | None
        rated_at: datetime

    class Closed(Aggregate.Event):
        ticket_id: str
        reason: str
        closed_at: datetime

    @event(Opened)
    def __init__(self, id: UUID, ticket_id: str, callback_url: str | None, opened_at: datetime) -> None:  # noqa: A002
        self.ticket_id = ticket_id
        self.callback_url = callback_url
        self.resolution: Resolution | None = None
        self.resolved_event_id: str | None = None
        self.rating_due_at: datetime | None = None
        self.notified = False
        self.notification_failed: NotificationFailure | None = None
        self.score: int | None = None
        self.closed_reason: str | None = None
        self.early_rating: EarlyRating | None = None  # rated before this service heard of the resolution
        self.notified_after_closure = False

    def note_resolution(
        self,
        resolution_code: str,
        summary: str,
        advice: str | None,
        resolved_at: datetime,
        window: timedelta,
        resolved_event_id: str,
    ) -> None:
        if self.resolution is not None:
            return  # a redelivered Resolved
        self._resolution_noted(
            resolution_code=resolution_code,
            summary=summary,
            advice=advice,
            resolved_at=resolved_at,
            rating_due_at=resolved_at + window,
            resolved_event_id=resolved_event_id,
        )
        early = self.early_rating
        if early is not None and self.closed_reason is None and early["received_at"] >= resolved_at - CLOCK_SKEW:
            # the customer rated the resolution before it reached us: it counts now, when it was given
            # (a rating given before the technician resolved rates nothing yet: it stays kept, unrecorded,
            # and the customer rates the resolution in its window like anyone else)
            at = max(early["received_at"], resolved_at)
            self._settle_notification(at)
            self._rated(ticket_id=self.ticket_id, score=early["score"], comment=early["comment"], rated_at=at)
            self._closed(ticket_id=self.ticket_id, reason="rated", closed_at=at)

    @event(ResolutionNoted)
    def _resolution_noted(
        self,
        resolution_code: str,
        summary: str,
        advice: str | None,
        resolved_at: datetime,
        rating_due_at: datetime,
        resolved_event_id: str,
    ) -> None:
        self.resolution = {"resolution_code": resolution_code, "summary": summary, "advice": advice}
        self.rating_due_at = rating_due_at
        self.resolved_event_id = resolved_event_id

    def abandon_notification(self, attempts: int, status_code: int | None, error: str, at: datetime) -> None:
        """The webhook could not be delivered within its bounded attempts (or may not go where it points)."""
        if self.notified or self.notification_failed is not None:
            return
        self._notification_abandoned(
            ticket_id=self.ticket_id, attempts=attempts, status_code=status_code, error=error, abandoned_at=at
        )

    @event(NotificationAbandoned)
    def _notification_abandoned(
        self, ticket_id: str, attempts: int, status_code: int | None, error: str, abandoned_at: datetime
    ) -> None:
        self.notification_failed = {
            "attempts": attempts, "status_code": status_code, "error": error, "at": abandoned_at.isoformat()
        }

    def mark_notified(self, channel: str, attempts: int, status_code: int | None, at: datetime) -> None:
        """Record the delivery of the result.

        Once the ticket is closed its history on the bus is over: a delivery that
        ends after the rating is kept here (the webhook stops being retried) but
        never becomes a FeedbackSent after Closed.
        """
        if self.notified:
            return
        assert self.rating_due_at is not None and self.resolved_event_id is not None
        if self.closed_reason is not None:
            self._notified_after_closure(channel=channel, attempts=attempts, status_code=status_code, sent_at=at)
            return
        self._notified(
            ticket_id=self.ticket_id,
            channel=channel,
            attempts=attempts,
            status_code=status_code,
            rating_due_at=self.rating_due_at,
            sent_at=at,
            causation_id=self.resolved_event_id,
        )

    @event(Notified)
    def _notified(
        self,
        ticket_id: str,
        channel: str,
        attempts: int,
        status_code: int | None,
        rating_due_at: datetime,
        sent_at: datetime,
        causation_id: str,
    ) -> None:
        self.notified = True

    @event(NotifiedAfterClosure)
    def _notified_after_closure(self, channel: str, attempts: int, status_code: int | None, sent_at: datetime) -> None:
        self.notified = True
        self.notified_after_closure = True

    def _settle_notification(self, at: datetime) -> None:
        """Before the ticket closes: with no callback there is nowhere to deliver, so the
        notification is settled now, in the ticket's history before Rated and Closed."""
        if not self.notified and not self.callback_url:
            self.mark_notified("none", 0, None, at)

    def rate(self, score: int, comment: str | None, at: datetime) -> bool:
        """Rate; True when recorded, False when kept until the resolution arrives.

        A client that resolves and then rates must not be refused because the Resolved event has not
        reached feedback yet: the rating is kept (RatingKept) and recorded when the resolution is noted.
        """
        if self.closed_reason is not None:
            raise AlreadyClosed(f"ticket {self.ticket_id} is closed ({self.closed_reason})")
        if not 1 <= score <= 5:
            raise Invalid("must be between 1 and 5", "score")
        if self.rating_due_at is None:
            if self.early_rating is not None:
                if (self.early_rating["score"], self.early_rating["comment"]) == (score, comment):
                    return False  # the same rating again: a retry
                raise AlreadyRated(f"ticket {self.ticket_id} was already rated; the rating is kept until it "
                                   "is resolved")
            self._rating_kept(ticket_id=self.ticket_id, score=score, comment=comment, received_at=at)
            return False
        if at > self.rating_due_at:
            raise AlreadyClosed(f"the rating window of ticket {self.ticket_id} ended at {self.rating_due_at}")
        self._settle_notification(at)
        self._rated(ticket_id=self.ticket_id, score=score, comment=comment, rated_at=at)
        self._closed(ticket_id=self.ticket_id, reason="rated", closed_at=at)
        return True

    @event(RatingKept)
    def _rating_kept(self, ticket_id: str, score: int, comment: str | None, received_at: datetime) -> None:
        self.early_rating = {"score": score, "comment": comment, "received_at": received_at}

    @event(Rated)
    def _rated(self, ticket_id: str, score: int, comment: str | None, rated_at: datetime) -> None:
        self.score = score

    def expire(self, now: datetime) -> bool:
        """Close unrated once the window has passed; True if it did."""
        if self.closed_reason is not None or self.rating_due_at is None or now <= self.rating_due_at:
            return False
        self._settle_notification(now)
        self._closed(ticket_id=self.ticket_id, reason="rating_window_expired", closed_at=now)
        return True

    @event(Closed)
    def _closed(self, ticket_id: str, reason: str, closed_at: datetime) -> None:
        self.closed_reason = reason
