"""Feedback to the applicant, the 24-hour rating window, reopening and closure (§2.3, §2.4). No I/O.

The event classes are declared explicitly, typed, under the names the stored
history carries (``tsop_feedback.domain:FeedbackCase.Rated`` and so on).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from typing import Literal, TypedDict, TypeVar
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from tsop_events.errors import Conflict, Forbidden, Invalid


class FeedbackError(Conflict):
    """The case's state refuses the rating."""

    title = "Not allowed now"


class AlreadyClosed(FeedbackError):
    title = "Ticket closed"


class AlreadyRated(FeedbackError):
    pass


class NotYourTicket(Forbidden):
    """A channel system rates or reads only the tickets it submitted."""


class ReopenRefused(FeedbackError):
    title = "Cannot reopen"


Tag = Literal["on_time", "solved", "attitude", "communication"]
TAGS: tuple[Tag, ...] = ("on_time", "solved", "attitude", "communication")


class Resolution(TypedDict):
    resolution_code: str
    summary: str
    advice: str | None


class NotificationFailure(TypedDict):
    attempts: int
    status_code: int | None
    error: str
    at: str


class EarlyRating(TypedDict, total=False):
    """The customer's answer given before feedback heard of the resolution: a rating or a confirmation (§2.4)."""

    kind: Literal["rating", "confirmation"]
    score: int
    comment: str | None
    received_at: datetime
    tags: list[str]
    solved: bool | None
    by: str


class RatingRules(TypedDict):
    """What the operator decided about ratings (``policy.FeedbackPolicy``), as the case needs it."""

    low_score: int  # a score at or below this asks "is the problem solved?"
    reopen_period: timedelta  # how long after closure the ticket may still be reopened


T = TypeVar("T")

CLOCK_SKEW = timedelta(seconds=30)
"""How far apart dispatch's and feedback's clocks may be when an early rating is compared with the resolution."""


class FeedbackCase(Aggregate):
    """One ticket's feedback loop: notify, collect the rating, close."""

    class Opened(Aggregate.Created):
        ticket_id: str
        callback_url: str | None
        opened_at: datetime
        channel_id: str | None = None
        service_type: str | None = None
        customer_id: str | None = None

    class ExpectedBy(Aggregate.Event):
        expected_by: datetime | None

    class ResolutionNoted(Aggregate.Event):
        """The resolution noted, the rating window open. ``notified``: the case has no callback (nobody to tell), so
        its notification is settled in this very event, at the resolution's time (on the wire: FeedbackSent,
        channel "none"). Stored before session 9, a case's settlement was a ``Notified`` event of its own right
        after this one; such events carry neither field (``notified`` False, ``ticket_id`` None)."""

        resolution_code: str
        summary: str
        advice: str | None
        resolved_at: datetime
        rating_due_at: datetime
        resolved_event_id: str
        technician_id: str | None = None
        text: str | None = None
        surveyed: bool = True
        ticket_id: str | None = None
        notified: bool = False

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
        tags: list[str] | None = None
        solved: bool | None = None
        by: str | None = None

    class ConfirmationKept(Aggregate.Event):
        ticket_id: str
        received_at: datetime
        by: str
        note: str | None = None

    class Confirmed(Aggregate.Event):
        ticket_id: str
        confirmed_by: str
        confirmed_at: datetime
        note: str | None = None

    class Rated(Aggregate.Event):
        ticket_id: str
        score: int
        comment: str | None
        rated_at: datetime
        tags: list[str] | None = None
        solved: bool | None = None

    class RatingReminded(Aggregate.Event):
        ticket_id: str
        rating_due_at: datetime
        reminded_at: datetime

    class RatingExpired(Aggregate.Event):
        ticket_id: str
        rating_due_at: datetime
        expired_at: datetime

    class Reopened(Aggregate.Event):
        ticket_id: str
        reason_code: str
        reason: str
        requested_by: str
        reopen_count: int
        technician_id: str | None
        reopened_at: datetime

    class Closed(Aggregate.Event):
        ticket_id: str
        reason: str
        closed_at: datetime
        basis: str | None = None
        reopenable_until: datetime | None = None

    @event(Opened)
    def __init__(
        self,
        id: UUID,  # noqa: A002
        ticket_id: str,
        callback_url: str | None,
        opened_at: datetime,
        channel_id: str | None = None,
        service_type: str | None = None,
        customer_id: str | None = None,
    ) -> None:
        self.ticket_id = ticket_id
        self.callback_url = callback_url
        self.channel_id = channel_id
        self.service_type = service_type
        self.customer_id = customer_id
        self.technician_id: str | None = None  # who resolved it (last)
        self.resolutions_seen: list[str] = []  # Resolved events noted (a reopened ticket is resolved again)
        self.reminded = False
        self.rating_expired = False
        self.resolved_at: datetime | None = None
        self.closed_at: datetime | None = None
        self.reopenable_until_at: datetime | None = None  # what the closure announced (None: final)
        self.reopen_count = 0
        self.tags: list[str] = []
        self.solved: bool | None = None
        self.expected_by: datetime | None = None  # when review expects the work done (told to the applicant)
        self.resolution_text: str | None = None  # the result rendered from the channel's template
        self.surveyed = True  # asked to rate (sampling and fatigue caps may say not)

        self.resolution: Resolution | None = None
        self.resolved_event_id: str | None = None
        self.rating_due_at: datetime | None = None
        self.notified = False
        self.notification_failed: NotificationFailure | None = None
        self.score: int | None = None
        self.closed_reason: str | None = None
        self.closed_basis: str | None = None
        self.early_rating: EarlyRating | None = None  # rated or confirmed before feedback heard of the resolution
        self.confirmed_by: str | None = None  # who recorded the customer's confirmation (§2.4), if that closed it
        self.notified_after_closure = False

    def expect(self, expected_by: datetime | None) -> None:
        """Review accepted the request with this deadline (what the applicant is told to expect)."""
        if expected_by != self.expected_by:
            self._expected_by(expected_by=expected_by)

    @event(ExpectedBy)
    def _expected_by(self, expected_by: datetime | None) -> None:
        self.expected_by = expected_by

    def note_resolution(
        self,
        resolution_code: str,
        summary: str,
        advice: str | None,
        resolved_at: datetime,
        window: timedelta,
        resolved_event_id: str,
        technician_id: str | None = None,
        rules: RatingRules | None = None,
        text: str | None = None,
        surveyed: bool = True,
    ) -> None:
        """Note the resolution and open the rating window. ``surveyed`` False (sampling, or the customer's fatigue
        cap): the customer is not asked (no reminder; the webhook says ``rating_requested: false``), though a
        rating they give in the window still counts.

        A case with no callback has nowhere to deliver the result: its notification is settled in the very event
        that notes the resolution, at the resolution's time (``ResolutionNoted`` with ``notified``: FeedbackSent
        channel "none" on the wire), instead of by the webhook deliverer reading the case again and saving it once
        more, and instead of a ``Notified`` event of its own (a bulk resolution: one event per ticket, no work in
        the deliverer)."""
        if self.resolution is not None or resolved_event_id in self.resolutions_seen:
            return  # a redelivered Resolved
        self._resolution_noted(
            resolution_code=resolution_code,
            summary=summary,
            advice=advice,
            resolved_at=resolved_at,
            rating_due_at=resolved_at + window,
            resolved_event_id=resolved_event_id,
            technician_id=technician_id,
            text=text,
            surveyed=surveyed,
            ticket_id=self.ticket_id,
            # before any kept answer is applied: FeedbackSent never after Closed
            notified=not self.callback_url and self.closed_reason is None,
        )
        if not self.callback_url:
            # settled above; only a case closed before its resolution (a complaint's ticket) records the delivery
            # inside, as ``mark_notified`` always did (never a FeedbackSent after Closed)
            self.mark_notified("none", 1, None, resolved_at)
        self._apply_kept(resolved_at, rules or DEFAULT_RULES)

    def _apply_kept(self, resolved_at: datetime, rules: RatingRules) -> None:
        """The customer answered (rated or confirmed) the resolution before it reached us: it counts now, when it
        was given. An answer given before the technician resolved answers nothing yet: it stays kept, unrecorded,
        and the customer answers the resolution in its window like anyone else."""
        early = self.early_rating
        if early is None or self.closed_reason is not None or early["received_at"] < resolved_at - CLOCK_SKEW:
            return
        at, by = max(early["received_at"], resolved_at), early.get("by") or "customer"
        if early.get("kind") == "confirmation":
            self._record_confirmation(by, early.get("comment"), at, rules)
        else:
            self._record_rating(early["score"], early["comment"], early.get("tags") or [], early.get("solved"),
                                by, at, rules)

    def _keep(self, answer: EarlyRating) -> bool:
        """Before the resolution reached us: whether ``answer`` must be kept (False: the same one is kept already,
        a harmless retry). One answer is kept per resolution: a different one is refused (409)."""
        kept = self.early_rating
        if kept is None:
            return True

        def same(a: EarlyRating) -> tuple[object, ...]:
            return a.get("kind") or "rating", a.get("score"), a.get("comment"), a.get("tags") or [], a.get("solved")

        if same(kept) == same(answer):
            return False
        what = "confirmed" if kept.get("kind") == "confirmation" else "rated"
        raise AlreadyRated(f"ticket {self.ticket_id} was already {what}; that answer is kept until it is resolved")

    @event(ResolutionNoted)
    def _resolution_noted(
        self,
        resolution_code: str,
        summary: str,
        advice: str | None,
        resolved_at: datetime,
        rating_due_at: datetime,
        resolved_event_id: str,
        technician_id: str | None = None,
        text: str | None = None,
        surveyed: bool = True,
        ticket_id: str | None = None,
        notified: bool = False,
    ) -> None:
        self.resolution = {"resolution_code": resolution_code, "summary": summary, "advice": advice}
        if notified:
            self.notified = True  # settled in this event (no callback)
        self.resolution_text = text
        self.surveyed = surveyed
        self.rating_due_at = rating_due_at
        self.resolved_event_id = resolved_event_id
        self.resolved_at = resolved_at
        self.resolutions_seen.append(resolved_event_id)
        self.technician_id = technician_id
        self.reminded = False

    def abandon_notification(
        self, attempts: int, status_code: int | None, error: str, at: datetime, resolved_event_id: str | None = None
    ) -> None:
        """The webhook could not be delivered within its bounded attempts (or may not go where it points).
        ``resolved_event_id``: the resolution it carried; ignored if that is no longer the current one."""
        if self.notified or self.notification_failed is not None or not self._current(resolved_event_id):
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

    def _current(self, resolved_event_id: str | None) -> bool:
        """Whether a delivery made for ``resolved_event_id`` (None: whatever is current) is of the current one."""
        if self.rating_due_at is None or self.resolved_event_id is None:
            return False  # reopened meanwhile: no resolution to deliver now
        return resolved_event_id is None or resolved_event_id == self.resolved_event_id

    def mark_notified(
        self, channel: str, attempts: int, status_code: int | None, at: datetime, resolved_event_id: str | None = None
    ) -> None:
        """Record the delivery of the result (of the resolution ``resolved_event_id``; None: the current one).

        A delivery of a resolution that is no longer current (the customer said "not solved" while the webhook was
        in flight) is ignored: the next resolution gets its own delivery.
        Once the ticket is closed its history on the bus is over: a delivery that
        ends after the rating is kept here (the webhook stops being retried) but
        never becomes a FeedbackSent after Closed.
        """
        if self.notified or not self._current(resolved_event_id):
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

    def check_channel(self, channel_id: str | None) -> None:
        """A channel system acts on its own tickets only (staff, with no channel, on any)."""
        if channel_id is not None and channel_id != self.channel_id:
            raise NotYourTicket(f"ticket {self.ticket_id} was not submitted by this channel", "ticket_id")

    def rate(
        self,
        score: int,
        comment: str | None,
        at: datetime,
        tags: list[str] | None = None,
        solved: bool | None = None,
        by: str = "customer",
        rules: RatingRules | None = None,
    ) -> bool:
        """Rate; True when recorded, False when kept until the resolution arrives.

        A client that resolves and then rates must not be refused because the Resolved event has not
        reached feedback yet: the rating is kept (RatingKept) and recorded when the resolution is noted.
        A low score answered "not solved" reopens the ticket instead of closing it.
        """
        tags = list(dict.fromkeys(tags or []))
        if self.closed_reason is not None:
            raise AlreadyClosed(f"ticket {self.ticket_id} is closed ({self.closed_reason})")
        if not 1 <= score <= 5:
            raise Invalid("must be between 1 and 5", "score")
        bad = [t for t in tags if t not in TAGS]
        if bad:
            raise Invalid(f"unknown tag(s) {bad}; the tags are {list(TAGS)}", "tags")
        if self.rating_due_at is None:
            if not self._keep({"kind": "rating", "score": score, "comment": comment, "tags": tags, "solved": solved}):
                return False  # the same rating again: a retry
            self._rating_kept(ticket_id=self.ticket_id, score=score, comment=comment, received_at=at,
                              tags=tags, solved=solved, by=by)
            return False
        if at > self.rating_due_at:
            raise AlreadyClosed(f"the rating window of ticket {self.ticket_id} ended at {self.rating_due_at}")
        self._record_rating(score, comment, tags, solved, by, at, rules or DEFAULT_RULES)
        return True

    def _record_rating(
        self, score: int, comment: str | None, tags: list[str], solved: bool | None, by: str, at: datetime,
        rules: RatingRules,
    ) -> None:
        self._settle_notification(at)
        self._rated(ticket_id=self.ticket_id, score=score, comment=comment, rated_at=at, tags=tags, solved=solved)
        if score <= rules["low_score"] and solved is False:
            self._reopen("not_solved", comment or f"rated {score}: the customer says the problem is not solved",
                         by, at)
            return
        self._closed(ticket_id=self.ticket_id, reason="rated", closed_at=at, basis="rated",
                     reopenable_until=reopen_deadline(at, rules))

    @event(RatingKept)
    def _rating_kept(
        self, ticket_id: str, score: int, comment: str | None, received_at: datetime,
        tags: list[str] | None = None, solved: bool | None = None, by: str | None = None,
    ) -> None:
        self.early_rating = {"kind": "rating", "score": score, "comment": comment, "received_at": received_at,
                             "tags": list(tags or []), "solved": solved, "by": by or "customer"}

    @event(Rated)
    def _rated(
        self, ticket_id: str, score: int, comment: str | None, rated_at: datetime,
        tags: list[str] | None = None, solved: bool | None = None,
    ) -> None:
        self.score = score
        self.tags = list(tags or [])
        self.solved = solved

    # --- closure on the customer's confirmation (§2.4) -----------------------------------------------

    def confirm(self, by: str, at: datetime, note: str | None = None, rules: RatingRules | None = None) -> bool:
        """The customer confirmed the resolution (through their channel, or to an agent): the ticket closes, basis
        ``confirmed``, and the rating window ends with it (a rating after it is refused like after any closure:
        nothing follows Closed on the bus). True when closed (now, or by this confirmation before: a retry), False
        when kept until the resolution reaches feedback (the same mechanism as an early rating)."""
        if self.closed_reason is not None:
            if self.closed_basis == "confirmed":
                return True  # confirmed already: a retry
            raise AlreadyClosed(f"ticket {self.ticket_id} is closed ({self.closed_reason})")
        if self.rating_due_at is None:
            if self._keep({"kind": "confirmation", "comment": note}):
                self._confirmation_kept(ticket_id=self.ticket_id, received_at=at, by=by, note=note)
            return False
        if at > self.rating_due_at:
            raise AlreadyClosed(f"the window of ticket {self.ticket_id} ended at {self.rating_due_at}; it closes "
                                "as lapsed")
        self._record_confirmation(by, note, at, rules or DEFAULT_RULES)
        return True

    def _record_confirmation(self, by: str, note: str | None, at: datetime, rules: RatingRules) -> None:
        self._settle_notification(at)
        self._confirmed(ticket_id=self.ticket_id, confirmed_by=by, confirmed_at=at, note=note)
        self._closed(ticket_id=self.ticket_id, reason="confirmed", closed_at=at, basis="confirmed",
                     reopenable_until=reopen_deadline(at, rules))

    @event(ConfirmationKept)
    def _confirmation_kept(self, ticket_id: str, received_at: datetime, by: str, note: str | None = None) -> None:
        self.early_rating = {"kind": "confirmation", "comment": note, "received_at": received_at, "by": by}

    @event(Confirmed)
    def _confirmed(self, ticket_id: str, confirmed_by: str, confirmed_at: datetime, note: str | None = None) -> None:
        self.confirmed_by = confirmed_by

    # --- reopening (§2.3 "not solved", §2.4 within the reopen period) ---------------------------------

    def reopen(self, reason: str, by: str, at: datetime) -> None:
        """A closed ticket reopened on request, within the period its closure announced (§2.4)."""
        if self.closed_reason is None:
            raise ReopenRefused(f"ticket {self.ticket_id} is not closed", "ticket_id")
        until = self.reopenable_until_at
        if until is None or at > until:
            when = "its closure was final" if until is None else f"it could be reopened until {until.isoformat()}"
            raise ReopenRefused(f"ticket {self.ticket_id} can no longer be reopened: {when}", "ticket_id")
        self._reopen("reopen_requested", reason, by, at)

    def _reopen(self, reason_code: str, reason: str, by: str, at: datetime) -> None:
        self._reopened(
            ticket_id=self.ticket_id, reason_code=reason_code, reason=reason[:4000], requested_by=by,
            reopen_count=self.reopen_count + 1, technician_id=self.technician_id, reopened_at=at,
        )

    @event(Reopened)
    def _reopened(
        self, ticket_id: str, reason_code: str, reason: str, requested_by: str, reopen_count: int,
        technician_id: str | None, reopened_at: datetime,
    ) -> None:
        self.reopen_count = reopen_count
        # back to waiting for the work to be resolved again: a new resolution opens a new window
        self.resolution = None
        self.rating_due_at = None
        self.resolved_event_id = None
        self.closed_reason = None
        self.closed_basis = None
        self.closed_at = None
        self.reopenable_until_at = None
        self.notified = False
        self.notification_failed = None
        self.notified_after_closure = False
        self.early_rating = None
        self.confirmed_by = None
        self.reminded = False
        self.rating_expired = False

    # --- the window ---------------------------------------------------------------------------------

    def remind_at(self, share: float) -> datetime | None:
        """When the reminder is due: once ``share`` of the window has passed (None: no open window)."""
        if self.rating_due_at is None or self.resolved_at is None:
            return None
        return self.resolved_at + (self.rating_due_at - self.resolved_at) * share

    def remind(self, now: datetime, share: float) -> bool:
        """Remind the customer once, after ``share`` of the window and before it ends; True if it did."""
        at = self.remind_at(share)
        if (self.closed_reason is not None or at is None or self.rating_due_at is None or self.reminded
                or not self.surveyed or now < at or now > self.rating_due_at):
            return False
        self._settle_notification(now)
        self._rating_reminded(ticket_id=self.ticket_id, rating_due_at=self.rating_due_at, reminded_at=now)
        return True

    @event(RatingReminded)
    def _rating_reminded(self, ticket_id: str, rating_due_at: datetime, reminded_at: datetime) -> None:
        self.reminded = True

    def expire(self, now: datetime, rules: RatingRules | None = None) -> bool:
        """Close unrated once the window has passed (RatingExpired: no answer, never a score); True if it did."""
        if self.closed_reason is not None or self.rating_due_at is None or now <= self.rating_due_at:
            return False
        self._settle_notification(now)
        self._rating_expired_(ticket_id=self.ticket_id, rating_due_at=self.rating_due_at, expired_at=now)
        self._closed(ticket_id=self.ticket_id, reason="rating_window_expired", closed_at=now, basis="window_lapsed",
                     reopenable_until=reopen_deadline(now, rules or DEFAULT_RULES))
        return True

    @event(RatingExpired)
    def _rating_expired_(self, ticket_id: str, rating_due_at: datetime, expired_at: datetime) -> None:
        self.rating_expired = True

    def close_with_complaint(self, at: datetime) -> bool:
        """A ticket the complaint desk worked (its type is ``handled_by: complaints``) closes when its complaint
        closes, basis ``complaint_closed``, for good (the complaint's own steps told the customer); True when it
        closed now, False when it was closed already."""
        if self.closed_reason is not None:
            return False
        self._closed(ticket_id=self.ticket_id, reason="complaint_closed", closed_at=at, basis="complaint_closed")
        return True

    @event(Closed)
    def _closed(
        self, ticket_id: str, reason: str, closed_at: datetime, basis: str | None = None,
        reopenable_until: datetime | None = None,
    ) -> None:
        self.closed_reason = reason
        self.closed_at = closed_at
        self.reopenable_until_at = reopenable_until
        self.closed_basis = basis or ("window_lapsed" if reason == "rating_window_expired" else "rated")


DEFAULT_RULES: RatingRules = {"low_score": 2, "reopen_period": timedelta(0)}


def reopen_deadline(closed_at: datetime, rules: RatingRules) -> datetime | None:
    """Until when a closure may be undone; None when the policy allows no reopening (the closure is final)."""
    period = rules["reopen_period"]
    return closed_at + period if period > timedelta(0) else None


class ChannelAccess(Aggregate):
    """Feedback's copy of a channel system's live credentials, from intake's events on the ``channels`` topic.

    Only SHA-256 hashes of tokens: feedback never sees a token, and resolves a channel caller by its hash.
    """

    class Known(Aggregate.Created):
        channel_id: str
        name: str
        kind: str

    class CredentialKnown(Aggregate.Event):
        credential_id: str
        token_hash: str

    class CredentialWithdrawn(Aggregate.Event):
        credential_id: str
        token_hash: str

    class Subscribed(Aggregate.Event):
        steps: list[str]
        template: str
        language: str
        by: str
        at: datetime

    @event(Known)
    def __init__(self, id: UUID, channel_id: str, name: str, kind: str) -> None:  # noqa: A002
        self.channel_id = channel_id
        self.name = name
        self.kind = kind
        self.credentials: dict[str, str] = {}  # credential id → token hash (live ones)
        self.withdrawn: set[str] = set()
        self.steps: list[str] = list(DEFAULT_STEPS)
        self.template = default_template(kind)
        self.language = "zh"

    def subscribe(self, steps: list[str], template: str, language: str, by: str, at: datetime,
                  languages: frozenset[str] = frozenset({"zh", "en"})) -> None:
        """Which steps the channel's applicants are told of, in which template kind and language."""
        bad = [s for s in steps if s not in STEPS]
        if bad:
            raise Invalid(f"unknown step(s) {bad}; the steps are {list(STEPS)}", "steps")
        if template not in TEMPLATE_KINDS:
            raise Invalid(f"unknown template {template!r}; the kinds are {list(TEMPLATE_KINDS)}", "template")
        if language not in languages:
            raise Invalid(f"no templates in {language!r}; there are {sorted(languages)}", "language")
        wanted = [s for s in STEPS if s in steps or s == "resolved"]  # the result is always sent
        if (wanted, template, language) != (self.steps, self.template, self.language):
            self._subscribed(steps=wanted, template=template, language=language, by=by, at=at)

    @event(Subscribed)
    def _subscribed(self, steps: list[str], template: str, language: str, by: str, at: datetime) -> None:
        self.steps, self.template, self.language = list(steps), template, language

    def know(self, credential_id: str, token_hash: str) -> None:
        if credential_id in self.credentials or credential_id in self.withdrawn:
            return  # a redelivery, or one revoked already
        self._credential_known(credential_id=credential_id, token_hash=token_hash)

    @event(CredentialKnown)
    def _credential_known(self, credential_id: str, token_hash: str) -> None:
        self.credentials[credential_id] = token_hash

    def withdraw(self, credential_id: str, token_hash: str) -> None:
        if credential_id in self.withdrawn:
            return
        self._credential_withdrawn(credential_id=credential_id, token_hash=token_hash)

    @event(CredentialWithdrawn)
    def _credential_withdrawn(self, credential_id: str, token_hash: str) -> None:
        self.credentials.pop(credential_id, None)
        self.withdrawn.add(credential_id)


# ---------------------------------------------------------------- the operator's feedback policy


@dataclass(frozen=True)
class FeedbackPolicy:
    """Operator data (``feedback_policy.json``, or ``TSOP_FEEDBACK_POLICY_FILE``): windows, reminders, reopening,
    sampling and fatigue caps. Service-type keys are patterns (``broadband.*``); the most specific match wins."""

    default_window: timedelta = timedelta(hours=24)
    windows: tuple[tuple[str, timedelta], ...] = ()
    remind_at: float = 0.75  # the share of the window after which the customer is reminded once
    low_score: int = 2
    reopen_period: timedelta = timedelta(0)
    sampling: tuple[tuple[str, float], ...] = ()  # share of tickets surveyed, per type pattern
    max_surveys: int = 0  # never ask one customer more than this many times ...
    fatigue_period: timedelta = timedelta(days=30)  # ... in this period (0: no cap)

    @classmethod
    def from_dict(cls, data: object, default_window: timedelta, source: str = "feedback policy") -> FeedbackPolicy:
        """Parse and check; a ValueError names the file, the key and what is wrong."""

        def fail(key: str, why: str) -> ValueError:
            return ValueError(f"{source}: {key}: {why}")

        if not isinstance(data, dict):
            raise fail("(top)", "must be a JSON object")

        def number(key: str, value: object, low: float, high: float | None = None) -> float:
            if isinstance(value, bool) or not isinstance(value, int | float) or value < low or (
                    high is not None and value > high):
                raise fail(key, f"must be a number ≥ {low:g}" + (f" and ≤ {high:g}" if high is not None else ""))
            return float(value)

        def table(key: str, low: float, high: float | None) -> dict[str, float]:
            raw = data.get(key, {})
            if not isinstance(raw, dict):
                raise fail(key, "must be an object of service-type pattern → number")
            return {str(k): number(f"{key}.{k}", v, low, high) for k, v in raw.items()}

        known = {"rating_window_hours", "remind_at_share", "low_score", "reopen_period_days", "sampling", "fatigue",
                 "$comment"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise fail(unknown[0], f"unknown key; the keys are {sorted(known - {'$comment'})}")
        fatigue = data.get("fatigue", {})
        if not isinstance(fatigue, dict) or set(fatigue) - {"max_surveys", "days"}:
            raise fail("fatigue", "must be an object with max_surveys and days")
        low = data.get("low_score", 2)
        if isinstance(low, bool) or not isinstance(low, int) or not 1 <= low <= 4:
            raise fail("low_score", "must be an integer from 1 to 4")
        max_surveys = fatigue.get("max_surveys", 0)
        if isinstance(max_surveys, bool) or not isinstance(max_surveys, int) or max_surveys < 0:
            raise fail("fatigue.max_surveys", "must be an integer ≥ 0 (0: no cap)")
        return cls(
            default_window=default_window,
            windows=tuple((k, timedelta(hours=v)) for k, v in table("rating_window_hours", 0.0001, 24 * 366).items()),
            remind_at=number("remind_at_share", data.get("remind_at_share", 0.75), 0.0, 1.0),
            low_score=low,
            reopen_period=timedelta(days=number("reopen_period_days", data.get("reopen_period_days", 0), 0, 366)),
            sampling=tuple(table("sampling", 0.0, 1.0).items()),
            max_surveys=max_surveys,
            fatigue_period=timedelta(days=number("fatigue.days", fatigue.get("days", 30), 0, 3660)),
        )

    @staticmethod
    def _match(patterns: tuple[tuple[str, T], ...], service_type: str | None) -> T | None:
        best: tuple[int, T] | None = None
        for pattern, value in patterns:
            if pattern == "*" or (service_type is not None and fnmatchcase(service_type, pattern)):
                rank = len(pattern.replace("*", ""))
                if best is None or rank > best[0]:
                    best = (rank, value)
        return None if best is None else best[1]

    def window_for(self, service_type: str | None) -> timedelta:
        return self._match(self.windows, service_type) or self.default_window

    def share_for(self, service_type: str | None) -> float:
        found = self._match(self.sampling, service_type)
        return 1.0 if found is None else found

    @property
    def rules(self) -> RatingRules:
        return {"low_score": self.low_score, "reopen_period": self.reopen_period}

    def sampled(self, ticket_id: str, service_type: str | None) -> bool:
        """Whether this ticket is surveyed: a stable draw from its id, so every instance and replay agrees."""
        share = self.share_for(service_type)
        if share >= 1.0:
            return True
        draw = int.from_bytes(hashlib.sha256(ticket_id.encode()).digest()[:8], "big") / 2**64
        return draw < share

    def fatigued(self, asked_at: list[datetime], now: datetime) -> bool:
        """Whether the customer was asked ``max_surveys`` times in the last period already."""
        if self.max_surveys <= 0:
            return False
        since = now - self.fatigue_period
        return sum(1 for t in asked_at if t > since) >= self.max_surveys


# ---------------------------------------------------------------- notifications at each step (§2.3)

STEPS = ("accepted", "assigned", "pending_information", "resolved", "closed")
# the customer is told of their complaint's steps (§4.3) whatever steps of the ticket their channel subscribed to
COMPLAINT_STEPS = ("complaint_acknowledged", "complaint_answered", "complaint_escalated", "complaint_closed")
TEMPLATE_KINDS = ("sms", "email", "app")
DEFAULT_STEPS = ("resolved",)  # what a channel gets until it subscribes to more (today's one webhook)


class NotificationState(TypedDict):
    state: Literal["pending", "delivered", "dead"]
    attempts: int


class Notification(Aggregate):
    """One message to the applicant about one step of their ticket, posted to the request's callback.

    Every attempt is an event (its outcome with it); after the last one the notification is dead-lettered and
    an agent sees it. The id derives from the event that caused it, so a redelivered cause queues nothing new.
    """

    class Queued(Aggregate.Created):
        ticket_id: str
        step: str
        url: str
        template: str
        language: str
        text: str
        payload: dict[str, str | None]
        queued_at: datetime

    class Attempted(Aggregate.Event):
        attempt: int
        ok: bool
        status_code: int | None
        error: str | None
        at: datetime

    class GivenUp(Aggregate.Event):
        attempts: int
        error: str
        at: datetime

    @event(Queued)
    def __init__(
        self, id: UUID, ticket_id: str, step: str, url: str, template: str, language: str,  # noqa: A002
        text: str, payload: dict[str, str | None], queued_at: datetime,
    ) -> None:
        self.ticket_id, self.step, self.url = ticket_id, step, url
        self.template, self.language, self.text, self.payload = template, language, text, payload
        self.queued_at = queued_at
        self.attempts = 0
        self.last_attempt_at: datetime | None = None
        self.delivered = False
        self.dead = False
        self.last_error: str | None = None

    def record_attempt(self, ok: bool, status_code: int | None, error: str | None, at: datetime,
                       max_attempts: int, final: bool = False) -> None:
        """An attempt and its outcome; the last one allowed (or a destination that may never be called) gives up."""
        if self.delivered or self.dead:
            return
        self._attempted(attempt=self.attempts + 1, ok=ok, status_code=status_code,
                        error=None if ok else (error or "failed")[:1000], at=at)
        if not ok and (final or self.attempts >= max_attempts):
            self._given_up(attempts=self.attempts, error=self.last_error or "failed", at=at)

    @event(Attempted)
    def _attempted(self, attempt: int, ok: bool, status_code: int | None, error: str | None, at: datetime) -> None:
        self.attempts = attempt
        self.last_attempt_at = at
        self.delivered = ok
        self.last_error = error

    @event(GivenUp)
    def _given_up(self, attempts: int, error: str, at: datetime) -> None:
        self.dead = True


class EarlySteps(Aggregate):
    """A ticket's steps that reached feedback before its submission, kept until the case opens.

    Within one broker epoch a ticket's steps come after its submission (one partition; each was published by a
    service that had read the earlier ones). After a broker change each service's relay publishes its outbox again
    from the start, on its own, so another service's step (dispatch's Assigned or Resolved) can come before intake's
    RequestSubmitted of a ticket whose case feedback had not opened yet. Each step is kept as the wire carried it
    (its personal fields stay sealed as they came) with its event id, time and type, once per event id."""

    class Started(Aggregate.Created):
        ticket_id: str

    class Kept(Aggregate.Event):
        event_id: str
        event_type: str
        time: datetime
        data: str

    class Taken(Aggregate.Event):
        """The case opened: the kept steps were applied."""

    @event(Started)
    def __init__(self, id: UUID, ticket_id: str) -> None:  # noqa: A002
        self.ticket_id = ticket_id
        self.steps: list[tuple[str, str, datetime, str]] = []  # (event id, type, time, wire JSON), in order

    def keep(self, event_id: str, event_type: str, time: datetime, data: str) -> bool:
        """False if this event waits already (a redelivery)."""
        if any(s[0] == event_id for s in self.steps):
            return False
        self._kept(event_id=event_id, event_type=event_type, time=time, data=data)
        return True

    @event(Kept)
    def _kept(self, event_id: str, event_type: str, time: datetime, data: str) -> None:
        self.steps.append((event_id, event_type, time, data))

    def take(self) -> list[tuple[str, str, datetime, str]]:
        """The kept steps, in the order they came; none kept afterwards."""
        steps = list(self.steps)
        if steps:
            self._taken()
        return steps

    @event(Taken)
    def _taken(self) -> None:
        self.steps = []


@dataclass(frozen=True)
class Templates:
    """Per-channel message templates (operator data): kind (sms, email, app) → language → step → text.

    Texts use ``{ticket_id}``, ``{expected_by}``, ``{missing}``, ``{complete_by}``, ``{result}``, ``{advice}``,
    ``{rating_due_at}``, ``{closed_basis}`` (the complaint steps also ``{complaint_id}``, ``{complaint_type}``,
    ``{answer}``, ``{answer_by}``, ``{level}``); an unknown placeholder stays as written. The complaint steps
    are optional in a file (a plain text naming the complaint and the step stands in for a missing one)."""

    table: dict[str, dict[str, dict[str, str]]]

    @classmethod
    def built_in(cls) -> Templates:
        """Plain texts for tests and a bare app; services load ``notification_templates.json`` (main.py)."""
        en = {s: f"{{ticket_id}}: {s.replace('_', ' ')}" for s in STEPS} | _plain_complaint_texts()
        return cls({kind: {"zh": dict(en), "en": dict(en)} for kind in TEMPLATE_KINDS})

    @classmethod
    def from_dict(cls, data: object, source: str = "templates") -> Templates:
        if not isinstance(data, dict):
            raise ValueError(f"{source}: must be a JSON object of kind → language → step → text")
        unknown = sorted(set(data) - {*TEMPLATE_KINDS, "$comment"})
        if unknown:
            raise ValueError(f"{source}: {unknown[0]}: not a template kind; the kinds are {list(TEMPLATE_KINDS)}")
        table: dict[str, dict[str, dict[str, str]]] = {}
        for kind in TEMPLATE_KINDS:
            langs = data.get(kind)
            if not isinstance(langs, dict) or not {"zh", "en"} <= set(langs):
                raise ValueError(f"{source}: {kind}: needs texts in zh and en at least")
            table[kind] = {}
            for lang, steps in langs.items():
                missing = [s for s in STEPS if not isinstance(steps, dict) or not isinstance(steps.get(s), str)]
                if missing:
                    raise ValueError(f"{source}: {kind}.{lang}: no text for {missing}")
                bad = [s for s in COMPLAINT_STEPS if s in steps and not isinstance(steps[s], str)]
                if bad:
                    raise ValueError(f"{source}: {kind}.{lang}.{bad[0]}: must be a text")
                # the required steps, the complaint steps (a plain text where a file has none), and any other
                # step's text (the incident notices': tsop_feedback.incidents)
                table[kind][str(lang)] = {str(s): t for s, t in steps.items() if isinstance(t, str)} | {
                    s: steps.get(s, plain) for s, plain in _plain_complaint_texts().items()}
        return cls(table)

    def render(self, kind: str, language: str, step: str, values: dict[str, str | None]) -> str:
        texts = self.table.get(kind) or self.table["app"]
        text = (texts.get(language) or texts["en"]).get(step) or texts["en"].get(step) or f"{{ticket_id}}: {step}"
        return text.format_map(_Blank({k: v or "" for k, v in values.items()}))


def _plain_complaint_texts() -> dict[str, str]:
    return {s: f"{{complaint_id}}: {s.replace('_', ' ')}" for s in COMPLAINT_STEPS}


class _Blank(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def default_template(kind: str) -> str:
    """The template kind for a channel that chose none: app for apps, e-mail for the web, SMS otherwise."""
    return {"app": "app", "web": "email"}.get(kind, "sms")
