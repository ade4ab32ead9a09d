"""Feedback's HTTP routes: the customer's rating."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from fastapi import APIRouter, Depends, Request, Response
from pydantic import Field, Strict

from tsop_events.auth import Principal, Role, requires
from tsop_events.http import Problem, app_of
from tsop_events.inbound import Inbound, Int, TextCheck
from tsop_feedback.application import FeedbackApp, case_id
from tsop_feedback.domain import AlreadyClosed, FeedbackCase, FeedbackError

router = APIRouter(prefix="/v1/tickets", tags=["feedback"])
# service-desk staff record the customer's rating (hotline, survey); channel credentials live in intake
Rater = Annotated[Principal, Depends(requires(Role.agent))]
Reader = Annotated[Principal, Depends(requires(Role.agent, Role.supervisor, Role.auditor))]
SUBMISSION_PATIENCE = 3.0  # seconds a rating waits for feedback to hear of a ticket's submission


class Rating(Inbound):
    score: Annotated[Int, Field(ge=1, le=5)]
    comment: Annotated[str, Strict(), Field(max_length=2000), TextCheck] | None = None


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


@router.post(
    "/{ticket_id}/rating",
    status_code=201,
    responses={202: {"description": "Kept: the ticket's resolution has not reached feedback yet; the rating is "
                                    "recorded when it does (GET …/feedback shows it)"}},
)
async def rate(ticket_id: UUID, body: Rating, request: Request, response: Response, caller: Rater) -> dict[str, Any]:
    """Record the customer's rating (201). One given right after the resolution, before feedback has heard
    of it, is kept and recorded when the resolution arrives (202): a client is never refused for the order
    of events it caused itself."""
    app = _app(request)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SUBMISSION_PATIENCE
    while True:
        try:
            case, recorded = await asyncio.to_thread(app.rate, str(ticket_id), body.score, body.comment)
            break
        except AggregateNotFoundError:
            # feedback opens a case when it reads the submission: a ticket submitted a moment ago may not have one
            if loop.time() > deadline:
                raise Problem(404, "Not found", f"no ticket {ticket_id} awaiting feedback") from None
            await asyncio.sleep(0.1)
        except AlreadyClosed as exc:
            raise Problem(409, "Ticket closed", str(exc)) from None
        except FeedbackError as exc:
            raise Problem(409, "Not allowed now", str(exc)) from None
    view = case_view(case)
    if not recorded:
        response.status_code = 202
        view["rating_kept"] = {"score": body.score, "note": "recorded when the ticket's resolution arrives"}
    return view


@router.get("/{ticket_id}/feedback")
async def get_feedback(ticket_id: UUID, request: Request, caller: Reader) -> dict[str, Any]:
    app = _app(request)
    try:
        case = await asyncio.to_thread(app.load, case_id(str(ticket_id)))
    except AggregateNotFoundError:
        raise Problem(404, "Not found", f"no feedback for ticket {ticket_id}") from None
    return case_view(case)
