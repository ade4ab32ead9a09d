"""Feedback's reactions to the ticket stream."""

from __future__ import annotations

from typing import ClassVar

from tsop_events import schemas as wire
from tsop_events.consumer import EventStoreSink, Incoming, UnitOfWork
from tsop_events.runtime import Service
from tsop_feedback.commands import FeedbackApp, case_id
from tsop_feedback.domain import FeedbackCase


class FollowTickets(EventStoreSink):
    """Open a case when a request is submitted; note its resolution when resolved."""

    name: ClassVar[str] = "feedback-cases"
    event_types: ClassVar[frozenset[str] | None] = frozenset(
        {wire.RequestSubmitted.event_type, wire.Resolved.event_type}
    )

    def __init__(self, app: FeedbackApp) -> None:
        super().__init__(app)
        self.feedback = app

    @classmethod
    def of(cls, svc: Service[FeedbackApp]) -> FollowTickets:
        return cls(svc.app)

    def react(self, uow: UnitOfWork, incoming: Incoming) -> None:
        ev = incoming.event
        cid = case_id(incoming.key or "")
        case = uow.find(FeedbackCase, cid)
        if isinstance(ev, wire.RequestSubmitted):
            if case is None:
                uow.add(
                    FeedbackCase(
                        id=cid, ticket_id=ev.ticket_id, callback_url=ev.callback_url, opened_at=ev.submitted_at
                    )
                )
        elif isinstance(ev, wire.Resolved):
            if case is None:
                raise ValueError(f"Resolved for unknown ticket {ev.ticket_id}")
            case.note_resolution(
                ev.resolution_code,
                ev.summary,
                ev.advice,
                ev.resolved_at,
                self.feedback.rating_window,
                incoming.envelope.id,
            )
