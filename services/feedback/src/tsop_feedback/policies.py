"""Feedback's reactions to the ticket stream and to intake's channel registry."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import ClassVar

from tsop_events import schemas as wire
from tsop_events.consumer import EventStoreSink, Incoming, UnitOfWork
from tsop_events.runtime import Service
from tsop_events.topics import Topic
from tsop_feedback.commands import (
    FeedbackApp,
    access_id,
    case_id,
    channel_template,
    early_steps_id,
    queue_notification,
)
from tsop_feedback.domain import ChannelAccess, EarlySteps, FeedbackCase, FeedbackError

# steps that only tell the applicant (nothing else changes on the case): skipped without reading the case when the
# follow-up board says nobody is told of them (no callback, or the channel did not subscribe to the step)
TELL_ONLY: dict[type[wire.WireEvent], str] = {
    wire.Assigned: "assigned", wire.RequestPendingInformation: "pending_information", wire.Closed: "closed",
}


def when(at: datetime | None) -> str | None:
    return at.isoformat(timespec="minutes") if at else None


class FollowTickets(EventStoreSink):
    """Open a case when a request is submitted; note its resolution when resolved (again after a reopen).

    At each step the ticket's channel subscribed to (accepted, assigned, pending information, closed; the result
    always goes, as the resolution webhook), queue a notification rendered from the channel's template.
    """

    name: ClassVar[str] = "feedback-cases"
    event_types: ClassVar[frozenset[str] | None] = frozenset(
        {wire.RequestSubmitted.event_type, wire.Resolved.event_type, wire.RequestAccepted.event_type,
         wire.Assigned.event_type, wire.RequestPendingInformation.event_type, wire.Closed.event_type,
         wire.ResolutionConfirmed.event_type}
    )

    #: how long the position of batches that need nothing (no record of a type followed here, or only steps nobody
    #: is told of: feedback's own ``Closed`` of every rating) may go unsaved; after a crash they come again and again
    #: need nothing, so each is not worth a transaction of its own (one a batch, all through the rating phase)
    idle_tracking_seconds: ClassVar[float] = 1.0

    def __init__(self, app: FeedbackApp) -> None:
        super().__init__(app)
        self.feedback = app
        self.asked_now: dict[str, list[datetime]] = {}
        self.saved_at: dict[str, float] = {}  # tracking name → when its position was last saved (monotonic)

    @classmethod
    def of(cls, svc: Service[FeedbackApp]) -> FollowTickets:
        return cls(svc.app)

    def _process(self, tracking_name: str, records: Sequence[Incoming], last_offset: int) -> None:
        """A batch that needs nothing, within ``idle_tracking_seconds`` of this partition's last save, is not tracked:
        its position waits for the next saved batch of the partition to cover it (after a crash it comes again and
        again needs nothing). Any other batch is applied and tracked as before; a dead letter's position is kept
        at once (``keep_position``)."""
        if self.needs_nothing(records) and \
                time.monotonic() - self.saved_at.get(tracking_name, float("-inf")) < self.idle_tracking_seconds:
            return
        super()._process(tracking_name, records, last_offset)
        self.saved_at[tracking_name] = time.monotonic()

    async def keep_position(self, epoch: str, topic: str, partition: int, last_offset: int) -> None:
        """After a dead letter: saved now, never left to wait (redelivered after a crash, the record would be
        dead-lettered a second time)."""
        name = self._tracking_name(epoch, topic, partition)
        await asyncio.to_thread(super()._process, name, [], last_offset)
        self.saved_at[name] = time.monotonic()

    def needs_nothing(self, records: Sequence[Incoming]) -> bool:
        """No record (all of types not followed here), or only steps nobody is told of, as the board says now."""
        if not records:
            return True
        if any(type(r.event) not in TELL_ONLY for r in records):
            return False
        self.feedback.follow_ups.refresh()  # as before a batch: a case opened or a channel subscribed meanwhile
        return all(self.untold(r) for r in records)

    def before_batch(self) -> None:
        self.feedback.follow_ups.refresh()  # who was asked to rate lately (the fatigue cap)
        self.asked_now = {}  # asked in this batch, not yet in the log

    def prefetch(self, uow: UnitOfWork, records: Sequence[Incoming]) -> None:
        """The cases the batch's steps need, in one query (not a read per event): every record but the submission
        of a ticket the board has not seen (a new case, nothing to read); then their channels' records, in one."""
        follow_ups = self.feedback.follow_ups
        wanted, early = [], []
        for rec in records:
            cid = case_id(rec.key or "")
            if self.untold(rec):
                continue  # e.g. feedback's own Closed of every rating, back on ``tickets``: no read
            if not isinstance(rec.event, wire.RequestSubmitted) or follow_ups.opened(cid):
                wanted.append(cid)
            elif follow_ups.has_early(eid := early_steps_id(rec.key or "")):
                early.append(eid)  # steps that came before this submission, applied with it
        uow.preload([*wanted, *early])
        # and their channels' subscriptions (most channels have none: one query learns it, not a read per event)
        channels = {case.channel_id for cid in wanted
                    if (case := uow.find(FeedbackCase, cid)) is not None and case.channel_id}
        channels |= {r.event.channel_id for r in records
                     if isinstance(r.event, wire.RequestSubmitted) and r.event.channel_id}
        uow.preload(access_id(c) for c in channels)

    def surveyed(self, case: FeedbackCase, at: datetime) -> bool:
        """Whether to ask this customer: the ticket is in the type's sample and they are under the fatigue cap."""
        policy = self.feedback.policy
        if not policy.sampled(case.ticket_id, case.service_type):
            return False
        if case.customer_id is None:
            return True
        asked = self.feedback.follow_ups.asked_of(case.customer_id) + self.asked_now.get(case.customer_id, [])
        if policy.fatigued(asked, at):
            return False
        self.asked_now.setdefault(case.customer_id, []).append(at)
        return True

    def untold(self, incoming: Incoming) -> bool:
        """A step that only tells the applicant, of a case the board knows nobody is told of it."""
        step = TELL_ONLY.get(type(incoming.event))
        return step is not None and not self.feedback.follow_ups.may_tell(case_id(incoming.key or ""), step)

    def react(self, uow: UnitOfWork, incoming: Incoming) -> None:
        if self.untold(incoming):
            return
        ev = incoming.event
        cid = case_id(incoming.key or "")
        if isinstance(ev, wire.RequestSubmitted) and not uow.holds(cid) and not self.feedback.follow_ups.opened(cid):
            case = None  # the board, refreshed for this batch, knows every case: a new ticket needs no read
        else:
            case = uow.find(FeedbackCase, cid)
        if isinstance(ev, wire.RequestSubmitted):
            if case is None:
                uow.add(
                    FeedbackCase(
                        id=cid, ticket_id=ev.ticket_id, callback_url=ev.callback_url, opened_at=ev.submitted_at,
                        channel_id=ev.channel_id, service_type=ev.service_type, customer_id=ev.customer_id or None,
                    )
                )
                self.take_early_steps(uow, incoming)
            return
        if case is None:
            # a step before the ticket's submission: within a broker epoch never (one partition, each step
            # published by a service that read the earlier ones), but after a broker change each service's relay
            # publishes its outbox again on its own, so another service's step can come first. Kept for the case
            self.keep_early_step(uow, incoming)
            return
        cause = incoming.envelope.id
        if isinstance(ev, wire.Resolved):
            policy = self.feedback.policy
            window = policy.window_for(case.service_type)
            text = None  # the result as the customer reads it: only for a case with somewhere to send it
            if case.callback_url:
                kind, language, _ = self.subscription(uow, case)
                text = self.feedback.templates.render(kind, language, "resolved", {
                    "ticket_id": case.ticket_id, "result": ev.summary, "advice": ev.advice,
                    "rating_due_at": when(ev.resolved_at + window)})
            case.note_resolution(
                ev.resolution_code,
                ev.summary,
                ev.advice,
                ev.resolved_at,
                window,
                cause,
                technician_id=ev.technician_id,
                rules=policy.rules,
                text=text,
                surveyed=case.resolution is None and cause not in case.resolutions_seen
                and self.surveyed(case, ev.resolved_at),
            )
        elif isinstance(ev, wire.RequestAccepted):
            case.expect(ev.resolve_by)
            self.notify(uow, case, "accepted", cause, ev.accepted_at, {"expected_by": when(ev.resolve_by)})
        elif isinstance(ev, wire.Assigned):
            self.notify(uow, case, "assigned", cause, ev.assigned_at, {"expected_by": when(case.expected_by)})
        elif isinstance(ev, wire.RequestPendingInformation):
            missing = ", ".join(m.field for m in ev.missing)
            self.notify(uow, case, "pending_information", cause, ev.pending_at,
                        {"missing": missing, "complete_by": when(ev.complete_by)})
        elif isinstance(ev, wire.Closed):
            self.notify(uow, case, "closed", cause, ev.closed_at, {"closed_basis": ev.basis or ev.reason})
        elif isinstance(ev, wire.ResolutionConfirmed):
            # the customer's confirmation, passed on by intake (a TMF621 channel closed its resolved ticket): as
            # POST /v1/tickets/{id}/confirmation, kept until the resolution arrives if it has not yet
            note = self.feedback.keyring.open(ev.comment)  # sealed again in feedback's own store
            try:
                case.confirm(ev.confirmed_by, ev.confirmed_at, note, self.feedback.policy.rules)
            except FeedbackError:
                # closed meanwhile (rated, or the window lapsed), or another early answer kept already (a rating,
                # a confirmation with other words): the customer's first answer stands; one record never stops
                # the consumer
                pass

    @staticmethod
    def keep_early_step(uow: UnitOfWork, incoming: Incoming) -> None:
        ev = incoming.event
        assert isinstance(ev, wire.TicketEvent)
        eid = early_steps_id(ev.ticket_id)
        early = uow.find_or_add(EarlySteps, eid, lambda: EarlySteps(id=eid, ticket_id=ev.ticket_id))
        early.keep(incoming.envelope.id, ev.event_type, incoming.envelope.time, ev.model_dump_json())

    def take_early_steps(self, uow: UnitOfWork, submission: Incoming) -> None:
        """The case just opened: the steps that came before its submission, applied now in the order they came
        (read only when the board or this batch says there are some)."""
        eid = early_steps_id(submission.key or "")
        if not uow.holds(eid) and not self.feedback.follow_ups.has_early(eid):
            return
        early = uow.find(EarlySteps, eid)
        for event_id, event_type, at, data in early.take() if early is not None else []:
            env = replace(submission.envelope, id=event_id, type=event_type, time=at, data=data.encode())
            self.react(uow, replace(submission, envelope=env, event=wire.parse_event(event_type, data)))

    def subscription(self, uow: UnitOfWork, case: FeedbackCase) -> tuple[str, str, list[str]]:
        """(template kind, language, steps) of the ticket's channel; SMS in Chinese, the result only, by default."""
        return channel_template(uow, case.channel_id)

    def notify(self, uow: UnitOfWork, case: FeedbackCase, step: str, cause: str, at: datetime,
               values: dict[str, str | None]) -> None:
        _, _, steps = self.subscription(uow, case)
        if step not in steps or not case.callback_url:
            return
        # the board was refreshed for this batch: it knows what is queued, no store read per event
        queue_notification(uow, self.feedback, cause=cause, ticket_id=case.ticket_id, url=case.callback_url,
                           channel_id=case.channel_id, step=step, at=at, values=values, board_fresh=True)


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
        aid = access_id(ev.channel_id)
        access = uow.find(ChannelAccess, aid)
        if access is None:
            name, kind = (ev.name, ev.kind) if isinstance(ev, wire.ChannelRegistered) else ("", "")
            access = ChannelAccess(id=aid, channel_id=ev.channel_id, name=name, kind=kind)
            uow.add(access)
        if isinstance(ev, wire.ChannelCredentialIssued):
            access.know(ev.credential_id, ev.token_sha256)
        elif isinstance(ev, wire.ChannelCredentialRevoked):
            access.withdraw(ev.credential_id, ev.token_sha256)
