"""Feedback to the applicant, the 24-hour rating window and closure (§2.3, §2.4). No I/O."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event


class FeedbackError(ValueError):
    pass


class NotYetResolved(FeedbackError):
    pass


class AlreadyClosed(FeedbackError):
    pass


class FeedbackCase(Aggregate):
    """One ticket's feedback loop: notify, collect the rating, close."""

    @event("Opened")
    def __init__(self, id: UUID, ticket_id: str, callback_url: str | None, opened_at: datetime) -> None:  # noqa: A002
        self.ticket_id = ticket_id
        self.callback_url = callback_url
        self.resolution: dict[str, str | None] | None = None
        self.resolved_event_id: str | None = None
        self.rating_due_at: datetime | None = None
        self.notified = False
        self.notification_failed: dict[str, Any] | None = None
        self.score: int | None = None
        self.closed_reason: str | None = None

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

    @event("ResolutionNoted")
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

    @property
    def awaiting_notification(self) -> bool:
        return self.resolution is not None and not self.notified and self.notification_failed is None

    def abandon_notification(self, attempts: int, status_code: int | None, error: str, at: datetime) -> None:
        """The webhook could not be delivered within its bounded attempts (or may not go where it points)."""
        if self.notified or self.notification_failed is not None:
            return
        self._notification_abandoned(
            ticket_id=self.ticket_id, attempts=attempts, status_code=status_code, error=error, abandoned_at=at
        )

    @event("NotificationAbandoned")
    def _notification_abandoned(
        self, ticket_id: str, attempts: int, status_code: int | None, error: str, abandoned_at: datetime
    ) -> None:
        self.notification_failed = {
            "attempts": attempts, "status_code": status_code, "error": error, "at": abandoned_at.isoformat()
        }

    def mark_notified(self, channel: str, attempts: int, status_code: int | None, at: datetime) -> None:
        if self.notified:
            return
        assert self.rating_due_at is not None and self.resolved_event_id is not None
        self._notified(
            ticket_id=self.ticket_id,
            channel=channel,
            attempts=attempts,
            status_code=status_code,
            rating_due_at=self.rating_due_at,
            sent_at=at,
            causation_id=self.resolved_event_id,
        )

    @event("Notified")
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

    def rate(self, score: int, comment: str | None, at: datetime) -> None:
        if self.closed_reason is not None:
            raise AlreadyClosed(f"ticket {self.ticket_id} is closed ({self.closed_reason})")
        if self.rating_due_at is None:
            raise NotYetResolved(f"ticket {self.ticket_id} is not resolved yet")
        if at > self.rating_due_at:
            raise AlreadyClosed(f"the rating window of ticket {self.ticket_id} ended at {self.rating_due_at}")
        if not 1 <= score <= 5:
            raise FeedbackError("score must be between 1 and 5")
        self._rated(ticket_id=self.ticket_id, score=score, comment=comment, rated_at=at)
        self._closed(ticket_id=self.ticket_id, reason="rated", closed_at=at)

    @event("Rated")
    def _rated(self, ticket_id: str, score: int, comment: str | None, rated_at: datetime) -> None:
        self.score = score

    def expire(self, now: datetime) -> bool:
        """Close unrated once the window has passed; True if it did."""
        if self.closed_reason is not None or self.rating_due_at is None or now <= self.rating_due_at:
            return False
        self._closed(ticket_id=self.ticket_id, reason="rating_window_expired", closed_at=now)
        return True

    @event("Closed")
    def _closed(self, ticket_id: str, reason: str, closed_at: datetime) -> None:
        self.closed_reason = reason

# The event classes the @event decorators made, named for the code that maps them (and for mypy).
FeedbackCaseOpened: type[Any] = FeedbackCase.__dict__["Opened"]
FeedbackCaseResolutionNoted: type[Any] = FeedbackCase.__dict__["ResolutionNoted"]
FeedbackCaseNotified: type[Any] = FeedbackCase.__dict__["Notified"]
FeedbackCaseNotificationAbandoned: type[Any] = FeedbackCase.__dict__["NotificationAbandoned"]
FeedbackCaseRated: type[Any] = FeedbackCase.__dict__["Rated"]
FeedbackCaseClosed: type[Any] = FeedbackCase.__dict__["Closed"]
