"""Feedback's HTTP routes: the customer's rating and the case view."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, Field, Strict

from tsop_events.auth import Principal, Role, requires
from tsop_events.http import service_dependency
from tsop_events.inbound import Inbound, Int, TextCheck
from tsop_events.runtime import Service
from tsop_feedback import commands
from tsop_feedback.commands import FeedbackApp
from tsop_feedback.domain import FeedbackCase

router = APIRouter(prefix="/v1/tickets", tags=["feedback"])
Svc = Annotated[Service[FeedbackApp], Depends(service_dependency(FeedbackApp))]
# service-desk staff record the customer's rating (hotline, survey); channel credentials live in intake
Rater = Annotated[Principal, Depends(requires(Role.agent))]
Reader = Annotated[Principal, Depends(requires(Role.agent, Role.supervisor, Role.auditor))]


class Rating(Inbound):
    score: Annotated[Int, Field(ge=1, le=5)]
    comment: Annotated[str, Strict(), Field(max_length=2000), TextCheck] | None = None


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
    closed: bool
    closed_reason: str | None = Field(description="rated or rating_window_expired; null while open")
    rating_kept: RatingKeptView | None = Field(
        default=None, description="Only in a 202: the rating kept until the ticket's resolution arrives")


def case_view(c: FeedbackCase) -> CaseView:
    return CaseView(
        ticket_id=c.ticket_id,
        resolution=None if c.resolution is None else ResolutionView(**c.resolution),
        notified=c.notified,
        notification_failed=None if c.notification_failed is None else NotificationFailedView(
            **c.notification_failed),
        rating_due_at=c.rating_due_at.isoformat() if c.rating_due_at else None,
        score=c.score,
        closed=c.closed_reason is not None,
        closed_reason=c.closed_reason,
    )


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
    """Record the customer's rating (201). One given right after the resolution, before feedback has heard
    of it, is kept and recorded when the resolution arrives (202): a client is never refused for the order
    of events it caused itself."""
    case, recorded = await commands.rate(svc, str(ticket_id), body.score, body.comment)
    view = case_view(case)
    if not recorded:
        response.status_code = 202
        view.rating_kept = RatingKeptView(score=body.score, note="recorded when the ticket's resolution arrives")
    return view


@router.get("/{ticket_id}/feedback", response_model=CaseView, response_model_exclude_unset=True)
async def get_feedback(ticket_id: UUID, svc: Svc, caller: Reader) -> CaseView:
    """The ticket's feedback case: its result, the notification, the rating window and the rating."""
    return case_view(await commands.feedback_of(svc, str(ticket_id)))
