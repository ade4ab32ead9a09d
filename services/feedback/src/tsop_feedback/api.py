"""Feedback's HTTP routes: the customer's rating."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from tsop_events.auth import Principal, Role, requires
from tsop_events.http import Problem, app_of
from tsop_feedback.application import FeedbackApp, case_id
from tsop_feedback.domain import AlreadyClosed, FeedbackCase, FeedbackError

router = APIRouter(prefix="/v1/tickets", tags=["feedback"])
# service-desk staff record the customer's rating (hotline, survey); channel credentials live in intake
Rater = Annotated[Principal, Depends(requires(Role.agent))]
Reader = Annotated[Principal, Depends(requires(Role.agent, Role.supervisor, Role.auditor))]


class Rating(BaseModel):
    model_config = ConfigDict(extra="forbid")
    score: Annotated[int, Field(ge=1, le=5)]
    comment: Annotated[str, Field(max_length=2000)] | None = None


def _app(request: Request) -> FeedbackApp:
    return app_of(request, FeedbackApp)


def case_view(c: FeedbackCase) -> dict[str, Any]:
    return {
        "ticket_id": c.ticket_id,
        "resolution": c.resolution,
        "notified": c.notified,
        "notification_failed": getattr(c, "notification_failed", None),
        "rating_due_at": c.rating_due_at.isoformat() if c.rating_due_at else None,
        "score": c.score,
        "closed": c.closed_reason is not None,
        "closed_reason": c.closed_reason,
    }


@router.post("/{ticket_id}/rating", status_code=201)
async def rate(ticket_id: UUID, body: Rating, request: Request, caller: Rater) -> dict[str, Any]:
    app = _app(request)
    try:
        case = await asyncio.to_thread(app.rate, str(ticket_id), body.score, body.comment)
    except AggregateNotFoundError:
        raise Problem(404, "Not found", f"no ticket {ticket_id} awaiting feedback") from None
    except AlreadyClosed as exc:
        raise Problem(409, "Ticket closed", str(exc)) from None
    except FeedbackError as exc:
        raise Problem(409, "Not allowed now", str(exc)) from None
    return case_view(case)


@router.get("/{ticket_id}/feedback")
async def get_feedback(ticket_id: UUID, request: Request, caller: Reader) -> dict[str, Any]:
    app = _app(request)
    try:
        case = await asyncio.to_thread(app.load, case_id(str(ticket_id)))
    except AggregateNotFoundError:
        raise Problem(404, "Not found", f"no feedback for ticket {ticket_id}") from None
    return case_view(case)
