"""Feedback commands, the follow-up board, webhook delivery and the wire mapping."""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import orjson

from tsop_events import schemas as wire
from tsop_events.clock import Clock, SystemClock
from tsop_events.envelope import derived_id, stable_event_id
from tsop_events.relay import Outgoing
from tsop_events.settings import ServiceSettings
from tsop_events.store import EventStoreApp, IntegrityError, LogFollower, retry_on_conflict
from tsop_feedback.domain import (
    FeedbackCase,
    FeedbackCaseClosed,
    FeedbackCaseNotificationAbandoned,
    FeedbackCaseNotified,
    FeedbackCaseNotifiedAfterClosure,
    FeedbackCaseRated,
    FeedbackCaseResolutionNoted,
)


def case_id(ticket_id: str) -> UUID:
    return derived_id("feedback-case", ticket_id)


class FollowUps(LogFollower):
    """Cases waiting for a notification, and open rating windows (the durable timers)."""

    def __init__(self, app: EventStoreApp) -> None:
        super().__init__(app)
        self.to_notify: set[UUID] = set()
        self.windows: dict[UUID, datetime] = {}

    def apply(self, e: Any) -> None:
        if isinstance(e, FeedbackCaseResolutionNoted):
            self.to_notify.add(e.originator_id)
            self.windows[e.originator_id] = e.rating_due_at
        elif isinstance(
            e, FeedbackCaseNotified | FeedbackCaseNotificationAbandoned | FeedbackCaseNotifiedAfterClosure
        ):
            self.to_notify.discard(e.originator_id)
        elif isinstance(e, FeedbackCaseClosed):
            self.windows.pop(e.originator_id, None)

    def due(self, now: datetime) -> list[UUID]:
        with self.lock:
            return [cid for cid, due in self.windows.items() if due < now]


class FeedbackApp(EventStoreApp):
    def __init__(
        self,
        settings: ServiceSettings | None = None,
        env: dict[str, str] | None = None,
        clock: Clock | None = None,
        rating_window: timedelta = timedelta(hours=24),
    ) -> None:
        super().__init__(settings, env)
        self.clock = clock or SystemClock()
        self.rating_window = rating_window
        self.follow_ups = FollowUps(self)

    @retry_on_conflict()
    def rate(self, ticket_id: str, score: int, comment: str | None) -> tuple[FeedbackCase, bool]:
        """Rate a ticket: (the case, True when recorded; False when kept until its resolution arrives)."""
        case: FeedbackCase = self.load(case_id(ticket_id))
        recorded = case.rate(score, comment, self.clock.now())
        if case.pending_events:
            self.save(case)
        return case, recorded

    def mark_notified(self, deliveries: list[tuple[UUID, str, int, int | None]]) -> None:
        """Record delivered notifications (case, channel, attempts, status), together when possible."""
        try:
            self._mark(deliveries)
        except IntegrityError:  # a rating raced one of them: record each on its own, on fresh state
            for delivery in deliveries:
                retry_on_conflict()(self._mark)([delivery])

    def _mark(self, deliveries: list[tuple[UUID, str, int, int | None]]) -> None:
        cases = []
        for cid, channel, attempts, status_code in deliveries:
            case: FeedbackCase = self.load(cid)
            case.mark_notified(channel, attempts, status_code, self.clock.now())
            cases.append(case)
        self.save(*cases)

    @retry_on_conflict()
    def abandon_notification(self, cid: UUID, attempts: int, status_code: int | None, error: str) -> None:
        """Record that the webhook was given up (the case leaves the board; an agent sees why)."""
        case: FeedbackCase = self.load(cid)
        case.abandon_notification(attempts, status_code, error, self.clock.now())
        self.save(case)

    def expire_windows(self) -> int:
        """Close every case whose rating window has passed."""
        self.follow_ups.refresh()
        closed = 0
        for cid in self.follow_ups.due(self.clock.now()):
            case: FeedbackCase = self.load(cid)
            if case.expire(self.clock.now()):
                self.save(case)
                closed += 1
        self.follow_ups.refresh()
        return closed


def webhook_body(case: FeedbackCase) -> bytes:
    assert case.resolution is not None and case.rating_due_at is not None
    return orjson.dumps(
        {
            "ticket_id": case.ticket_id,
            "status": "resolved",
            "result": case.resolution["summary"],
            "resolution_code": case.resolution["resolution_code"],
            "advice": case.resolution["advice"],
            "rating_due_at": case.rating_due_at.isoformat(),
        }
    )


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def to_wire(e: Any) -> Outgoing | None:
    """Feedback's events on the bus; a delivery that ended after the closure stays in feedback's store."""
    previous = stable_event_id(e.originator_id, e.originator_version - 1)
    if isinstance(e, FeedbackCaseNotified):
        return Outgoing(
            wire.FeedbackSent(
                ticket_id=e.ticket_id,
                channel=e.channel,
                attempts=e.attempts,
                status_code=e.status_code,
                rating_due_at=e.rating_due_at,
                sent_at=e.sent_at,
            ),
            causation_id=e.causation_id,
        )
    if isinstance(e, FeedbackCaseRated):
        return Outgoing(
            wire.Rated(ticket_id=e.ticket_id, score=e.score, comment=e.comment, rated_at=e.rated_at),
            causation_id=previous,
        )
    if isinstance(e, FeedbackCaseClosed):
        return Outgoing(
            wire.Closed(ticket_id=e.ticket_id, reason=e.reason, closed_at=e.closed_at), causation_id=previous
        )
    return None
