"""Feedback's HTTP routes: the customer's rating, reopening, the case view and the reopen counts."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, Field, Strict

from tsop_events.auth import Principal, Role, requires
from tsop_events.errors import Forbidden, Invalid
from tsop_events.http import service_dependency
from tsop_events.inbound import Bool, Inbound, Int, TextCheck
from tsop_events.runtime import Service
from tsop_feedback import commands
from tsop_feedback.commands import FeedbackApp
from tsop_feedback.domain import ChannelAccess, FeedbackCase, Notification

router = APIRouter(prefix="/v1/tickets", tags=["feedback"])
stats_router = APIRouter(prefix="/v1", tags=["feedback"])
channels_router = APIRouter(prefix="/v1/channels", tags=["feedback"])
Svc = Annotated[Service[FeedbackApp], Depends(service_dependency(FeedbackApp))]
# the customer rates through their channel system, with its own credential (for its own tickets only); service-desk
# staff record a rating taken by phone
Rater = Annotated[Principal, Depends(requires(Role.agent, Role.channel))]
Reopener = Annotated[Principal, Depends(requires(Role.agent, Role.supervisor, Role.channel))]
Reader = Annotated[Principal, Depends(requires(Role.agent, Role.supervisor, Role.auditor, Role.channel))]
StatsReader = Annotated[Principal, Depends(requires(Role.agent, Role.supervisor, Role.auditor))]
Subscriber = Annotated[Principal, Depends(requires(Role.channel, Role.supervisor))]


def own_channel(caller: Principal) -> str | None:
    """The channel a caller acts for (it then sees only its own tickets); None for staff (admin included)."""
    return caller.channel_id if caller.channel_id is not None and not caller.has(Role.agent) else None


class Rating(Inbound):
    score: Annotated[Int, Field(ge=1, le=5)]
    comment: Annotated[str, Strict(), Field(max_length=2000), TextCheck] | None = None
    tags: Annotated[list[Literal["on_time", "solved", "attitude", "communication"]],
                    Field(max_length=4, description="What the rating is about")] = []
    solved: Bool | None = Field(
        default=None, description="Is the problem solved? Required with a low score (the policy's low_score or "
                                  "less): false reopens the ticket, true closes it")


class Confirmation(Inbound):
    note: Annotated[str, Strict(), Field(max_length=2000), TextCheck] | None = Field(
        default=None, description="What the customer said, as the channel or agent took it")


class Reopen(Inbound):
    reason: Annotated[str, Strict(), Field(min_length=1, max_length=2000), TextCheck]


class ResolutionView(BaseModel):
    resolution_code: str
    summary: str
    advice: str | None


class NotificationFailedView(BaseModel):
    attempts: int
    status_code: int | None
    error: str
    at: str = Field(description="When it was given up (ISO 8601)")


class RatingKeptView(BaseModel):
    score: int
    note: str


class CaseView(BaseModel):
    """A ticket's feedback case."""

    ticket_id: str
    resolution: ResolutionView | None = Field(description="The result sent to the applicant; null until resolved")
    notified: bool
    notification_failed: NotificationFailedView | None = Field(
        description="Why the webhook was given up, if it was")
    rating_due_at: str | None = Field(description="End of the rating window (ISO 8601); null until resolved")
    score: int | None
    tags: list[str] = Field(default_factory=list, description="The reason tags of the last rating")
    solved: bool | None = Field(default=None, description="The answer to 'is the problem solved?', if asked")
    reminded: bool = Field(default=False, description="Whether the customer was reminded in the current window")
    rating_expired: bool = Field(default=False, description="The window ended without a rating (no answer)")
    closed: bool
    closed_reason: str | None = Field(description="rated or rating_window_expired; null while open")
    closed_basis: str | None = Field(
        default=None, description="confirmed, rated, window_lapsed or complaint_closed; null while open")
    reopen_count: int = Field(default=0, description="How many times the ticket was reopened")
    reopenable_until: str | None = Field(
        default=None, description="Until when a closed ticket may be reopened (ISO 8601); null while open")
    rating_kept: RatingKeptView | None = Field(
        default=None, description="Only in a 202: the rating kept until the ticket's resolution arrives")
    confirmed_by: str | None = Field(
        default=None, description="Who recorded the customer's confirmation, when the ticket closed on it")
    confirmation_kept: str | None = Field(
        default=None, description="Only in a 202: the confirmation is kept until the ticket's resolution arrives")


def case_view(c: FeedbackCase) -> CaseView:
    until = c.reopenable_until_at
    view = CaseView(
        ticket_id=c.ticket_id,
        resolution=None if c.resolution is None else ResolutionView(**c.resolution),
        notified=c.notified,
        notification_failed=None if c.notification_failed is None else NotificationFailedView(
            **c.notification_failed),
        rating_due_at=c.rating_due_at.isoformat() if c.rating_due_at else None,
        score=c.score,
        tags=c.tags,
        solved=c.solved,
        reminded=c.reminded,
        rating_expired=c.rating_expired,
        closed=c.closed_reason is not None,
        closed_reason=c.closed_reason,
        closed_basis=c.closed_basis,
        reopen_count=c.reopen_count,
        reopenable_until=until.isoformat() if until else None,
    )
    if c.confirmed_by:
        view.confirmed_by = c.confirmed_by  # set only when it closed on a confirmation (unset fields are left out)
    return view


@router.post(
    "/{ticket_id}/rating",
    status_code=201,
    response_model=CaseView,
    response_model_exclude_unset=True,
    responses={202: {"model": CaseView,
                     "description": "Kept: the ticket's resolution has not reached feedback yet; the rating is "
                                    "recorded when it does (GET …/feedback shows it)"}},
)
async def rate(ticket_id: UUID, body: Rating, response: Response, svc: Svc, caller: Rater) -> CaseView:
    """Record the customer's rating (201): by the ticket's own channel system, or by an agent taking it by
    phone. A low score needs `solved`: false reopens the ticket (dispatch sends the technician back), true
    closes it. One given right after the resolution, before feedback has heard of it, is kept and recorded
    when the resolution arrives (202): a client is never refused for the order of events it caused itself.
    A second rating, one after the window, or one for another channel's ticket is refused and changes nothing."""
    low = svc.app.policy.low_score
    if body.score <= low and body.solved is None:
        raise Invalid(f"a score of {low} or less needs the answer to 'is the problem solved?' (true or false)",
                      "solved")
    case, recorded = await commands.rate(
        svc, str(ticket_id), body.score, body.comment, tags=list(body.tags), solved=body.solved,
        channel_id=own_channel(caller), by=caller.subject,
    )
    view = case_view(case)
    if not recorded:
        response.status_code = 202
        view.rating_kept = RatingKeptView(score=body.score, note="recorded when the ticket's resolution arrives")
    return view


@router.post(
    "/{ticket_id}/confirmation",
    response_model=CaseView,
    response_model_exclude_unset=True,
    responses={202: {"model": CaseView,
                     "description": "Kept: the ticket's resolution has not reached feedback yet; the ticket closes "
                                    "on the confirmation when it does"}},
)
async def confirm(ticket_id: UUID, svc: Svc, caller: Rater, response: Response,
                  body: Confirmation | None = None) -> CaseView:
    """The customer confirmed that the problem is solved (§2.4), through the ticket's own channel system (its
    credential) or to an agent: the ticket closes, basis `confirmed`, and the rating window ends with it (a
    rating afterwards is refused like after any closure). The same confirmation again answers 200 and changes
    nothing; one given before feedback heard of the resolution is kept and applied when it arrives (202), as an
    early rating is. 409 if the ticket is closed otherwise or its window has ended, 403 for another channel's
    ticket, 404 for a ticket feedback never heard of."""
    case, closed = await commands.confirm(svc, str(ticket_id), caller.subject, body.note if body else None,
                                          channel_id=own_channel(caller))
    view = case_view(case)
    if not closed:
        response.status_code = 202
        view.confirmation_kept = "the ticket closes on it when its resolution arrives"
    return view


@router.get("/{ticket_id}/feedback", response_model=CaseView, response_model_exclude_unset=True)
async def get_feedback(ticket_id: UUID, svc: Svc, caller: Reader) -> CaseView:
    """The ticket's feedback case: its result, the notification, the rating window and the rating."""
    return case_view(await commands.feedback_of(svc, str(ticket_id), own_channel(caller)))


@router.post("/{ticket_id}/reopen", response_model=CaseView, response_model_exclude_unset=True)
async def reopen(ticket_id: UUID, body: Reopen, svc: Svc, caller: Reopener) -> CaseView:
    """Reopen a closed ticket within the policy's reopen period, with a reason (§2.4): a Reopened event, and
    dispatch opens the work order again for the same technician. 409 if it is not closed or the period has
    passed; a channel reopens only its own tickets."""
    case = await commands.reopen(svc, str(ticket_id), body.reason, caller.subject, own_channel(caller))
    return case_view(case)


class ReopenCounts(BaseModel):
    """How often tickets were reopened (after "not solved" or on request), in all and by whom and what."""

    total: int
    by_technician: dict[str, int] = Field(description="Technician who resolved the work before it was reopened")
    by_service_type: dict[str, int]
    ticket: dict[str, int] | None = Field(default=None, description="Only with ?ticket_id=: that ticket's count")


@stats_router.get("/reopens", response_model=ReopenCounts, response_model_exclude_none=True)
async def reopen_counts(svc: Svc, caller: StatsReader, ticket_id: UUID | None = None) -> ReopenCounts:
    """Reopen counts per technician and service type (and per ticket, with `ticket_id`)."""
    follow_ups = svc.app.follow_ups
    total, by_tech, by_type = await follow_ups.read(follow_ups.reopen_counts)  # the lock off the event loop
    out = ReopenCounts(total=total, by_technician=by_tech, by_service_type=by_type)
    if ticket_id is not None:
        case = await commands.feedback_of(svc, str(ticket_id))
        out.ticket = {str(ticket_id): case.reopen_count}
    return out


# ---------------------------------------------------------------- notifications at each step (§2.3)

Step = Literal["accepted", "assigned", "pending_information", "resolved", "closed"]


class Subscription(Inbound):
    steps: Annotated[list[Step], Field(max_length=5, description="The steps the applicant is told of (the result, "
                                                                 "resolved, is always sent)")]
    template: Literal["sms", "email", "app"]
    language: Annotated[str, Strict(), Field(min_length=2, max_length=16), TextCheck] = "zh"


class SubscriptionView(BaseModel):
    channel_id: str
    steps: list[str]
    template: str
    language: str


def subscription_view(a: ChannelAccess) -> SubscriptionView:
    return SubscriptionView(channel_id=a.channel_id, steps=a.steps, template=a.template, language=a.language)


def _own_channel_only(caller: Principal, channel_id: str) -> None:
    if caller.channel_id is not None and not caller.has(Role.supervisor) and caller.channel_id != channel_id:
        raise Forbidden("a channel system manages only its own subscription", "channel_id")


@channels_router.put("/{channel_id}/notifications", response_model=SubscriptionView)
async def subscribe(channel_id: UUID, body: Subscription, svc: Svc, caller: Subscriber) -> SubscriptionView:
    """Which steps the channel's applicants are told of (accepted, assigned with the expected time, pending
    information, resolved with result and advice, closed), in which template kind and language."""
    _own_channel_only(caller, str(channel_id))
    access = await commands.subscribe(svc, str(channel_id), list(body.steps), body.template, body.language,
                                      caller.subject)
    return subscription_view(access)


@channels_router.get("/{channel_id}/notifications", response_model=SubscriptionView)
async def get_subscription(channel_id: UUID, svc: Svc, caller: Subscriber) -> SubscriptionView:
    """The channel's subscription (the result only, as SMS in Chinese, until it chose)."""
    _own_channel_only(caller, str(channel_id))
    return subscription_view(await commands.subscription_of(svc, str(channel_id)))


class NotificationView(BaseModel):
    id: str
    ticket_id: str
    step: str
    state: Literal["pending", "delivered", "dead_lettered"]
    attempts: int
    last_error: str | None
    template: str
    language: str
    text: str
    queued_at: str


def notification_view(n: Notification) -> NotificationView:
    return NotificationView(
        id=str(n.id), ticket_id=n.ticket_id, step=n.step,
        state="delivered" if n.delivered else "dead_lettered" if n.dead else "pending",
        attempts=n.attempts, last_error=n.last_error, template=n.template, language=n.language, text=n.text,
        queued_at=n.queued_at.isoformat(),
    )


@router.get("/{ticket_id}/notifications", response_model=list[NotificationView])
async def ticket_notifications(ticket_id: UUID, svc: Svc, caller: Reader) -> list[NotificationView]:
    """The step notifications of a ticket, each with its attempts and state (the result webhook: …/feedback)."""
    await commands.feedback_of(svc, str(ticket_id), own_channel(caller))  # 404 / 403 as for the case
    follow_ups = svc.app.follow_ups
    ids = await follow_ups.read(lambda: list(follow_ups.notifications_of.get(str(ticket_id), [])))
    return [notification_view(n) for n in await commands.load_notifications(svc, ids)]


@stats_router.get("/notifications/dead-lettered", response_model=list[NotificationView])
async def dead_notifications(svc: Svc, caller: StatsReader, limit: Annotated[int, Query(ge=1, le=1000)] = 100
                             ) -> list[NotificationView]:
    """Notifications given up after their last attempt, for an agent to follow up by other means."""
    follow_ups = svc.app.follow_ups
    ids = await follow_ups.read(lambda: list(follow_ups.dead_notifications)[-limit:])
    return [notification_view(n) for n in await commands.load_notifications(svc, ids)]
