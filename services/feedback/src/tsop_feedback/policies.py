"""Feedback's reactions to the ticket stream and to intake's channel registry."""

from __future__ import annotations

from typing import ClassVar

from tsop_events import schemas as wire
from tsop_events.consumer import EventStoreSink, Incoming, UnitOfWork
from tsop_events.envelope import derived_id
from tsop_events.runtime import Service
from tsop_events.topics import Topic
from tsop_feedback.commands import FeedbackApp, case_id
from tsop_feedback.domain import ChannelAccess, FeedbackCase


class FollowTickets(EventStoreSink):
    """Open a case when a request is submitted; note its resolution when resolved (again after a reopen)."""

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
                        id=cid, ticket_id=ev.ticket_id, callback_url=ev.callback_url, opened_at=ev.submitted_at,
                        channel_id=ev.channel_id, service_type=ev.service_type, customer_id=ev.customer_id or None,
                    )
                )
        elif isinstance(ev, wire.Resolved):
            if case is None:
                raise ValueError(f"Resolved for unknown ticket {ev.ticket_id}")
            policy = self.feedback.policy
            case.note_resolution(
                ev.resolution_code,
                ev.summary,
                ev.advice,
                ev.resolved_at,
                policy.window_for(case.service_type),
                incoming.envelope.id,
                technician_id=ev.technician_id,
                rules=policy.rules,
            )


class FollowChannels(EventStoreSink):
    """Keep a copy of each channel system's live credentials (SHA-256 only), so channels rate with their own."""

    name: ClassVar[str] = "feedback-channels"
    topics: ClassVar[tuple[Topic, ...]] = (Topic.channels,)

    @classmethod
    def of(cls, svc: Service[FeedbackApp]) -> FollowChannels:
        return cls(svc.app)

    def react(self, uow: UnitOfWork, incoming: Incoming) -> None:
        ev = incoming.event
        if not isinstance(ev, wire.ChannelEvent):
            return
        aid = derived_id("feedback-channel", ev.channel_id)
        access = uow.find(ChannelAccess, aid)
        if access is None:
            name, kind = (ev.name, ev.kind) if isinstance(ev, wire.ChannelRegistered) else ("", "")
            access = ChannelAccess(id=aid, channel_id=ev.channel_id, name=name, kind=kind)
            uow.add(access)
        if isinstance(ev, wire.ChannelCredentialIssued):
            access.know(ev.credential_id, ev.token_sha256)
        elif isinstance(ev, wire.ChannelCredentialRevoked):
            access.withdraw(ev.credential_id, ev.token_sha256)
