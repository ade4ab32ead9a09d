"""Feedback's use cases: each loads, decides and saves through ``svc.commands.run`` (tsop_events.commands).

Also the write model's handle, ``FeedbackApp``: the event store with feedback's
clock, its policy (rating windows, reminders, reopening; ``domain.FeedbackPolicy``),
its follow-up board (``views.FollowUps``) and the channel credentials it knows
(``views.ChannelTokens``).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar
from uuid import UUID

from tsop_events.clock import Clock, SystemClock
from tsop_events.commands import UnitOfWork
from tsop_events.envelope import derived_id
from tsop_events.errors import NotFound
from tsop_events.personal import PersonalFields
from tsop_events.runtime import Service
from tsop_events.settings import ServiceSettings
from tsop_events.store import EventStoreApp
from tsop_feedback import views
from tsop_feedback.complaints.domain import Complaint
from tsop_feedback.domain import (
    DEFAULT_STEPS,
    ChannelAccess,
    FeedbackCase,
    FeedbackPolicy,
    Notification,
    Templates,
)

SUBMISSION_PATIENCE = 3.0  # seconds a rating waits for feedback to hear of a ticket's submission

Delivered = tuple[UUID, str, int, int | None, str | None]  # case, channel, attempts, status, the Resolved event id


@functools.lru_cache(maxsize=65536)  # a name-based UUID (SHA-1) each time, for every rating and step otherwise
def case_id(ticket_id: str) -> UUID:
    return derived_id("feedback-case", ticket_id)


def early_steps_id(ticket_id: str) -> UUID:
    """The ticket's ``EarlySteps``: its steps that came before its submission."""
    return derived_id("feedback-early-steps", ticket_id)


def access_id(channel_id: str) -> UUID:
    """Feedback's copy of a channel system's credentials and subscription."""
    return derived_id("feedback-channel", channel_id)


def notification_id(cause_event_id: str) -> UUID:
    """A step's notification derives from the event that caused it: a redelivered cause queues nothing new."""
    return derived_id("notification", cause_event_id)


def _ticket_of(e: Any) -> str:
    return str(e.ticket_id)


class FeedbackApp(EventStoreApp):
    """Feedback's event store, its clock, the rating window and the follow-up board."""

    # lawful erasure: what the customer wrote is stored sealed under the ticket's (or complaint's) data key
    personal: ClassVar[Mapping[type, PersonalFields]] = {
        FeedbackCase.RatingKept: PersonalFields(frozenset({"comment"}), subject=_ticket_of),
        FeedbackCase.Rated: PersonalFields(frozenset({"comment"}), subject=_ticket_of),
        FeedbackCase.ConfirmationKept: PersonalFields(frozenset({"note"}), subject=_ticket_of),
        FeedbackCase.Confirmed: PersonalFields(frozenset({"note"}), subject=_ticket_of),
        Complaint.Received: PersonalFields(frozenset({"description"}), customer="customer_id"),
    }

    def __init__(
        self,
        settings: ServiceSettings | None = None,
        env: dict[str, str] | None = None,
        clock: Clock | None = None,
        rating_window: timedelta = timedelta(hours=24),
        policy: FeedbackPolicy | None = None,
        templates: Templates | None = None,
    ) -> None:
        super().__init__(settings, env)
        self.clock = clock or SystemClock()
        self.rating_window = rating_window
        self.policy = policy or FeedbackPolicy(default_window=rating_window)
        self.templates = templates or Templates.built_in()
        self.follow_ups = views.FollowUps(self)
        self.channels = views.ChannelTokens(self)
        self.cases = CaseLoads(self)

    def window_for(self, service_type: str | None) -> timedelta:
        return self.policy.window_for(service_type)



class CaseLoads:
    """The cases of concurrent answers (ratings, confirmations) loaded together: one query and one thread hop for
    all the answers that arrive while the previous load runs, not one each.

    What it hands out is a case as stored at the load; the command's save still checks its version (optimistic
    concurrency), so a case changed meanwhile by another writer makes the save conflict and the command decide
    again on a fresh read (``_answer``). Two answers for one case in one load: the first gets the loaded case, the
    others read their own (each command must hold its own copy).
    """

    def __init__(self, app: EventStoreApp) -> None:
        self.app = app
        self._pending: dict[UUID, list[asyncio.Future[tuple[bool, FeedbackCase | None]]]] = {}
        self._loader: asyncio.Task[None] | None = None

    async def get(self, cid: UUID) -> tuple[bool, FeedbackCase | None]:
        """(loaded, the case or None if it was never created); loaded False: the caller reads it itself."""
        future: asyncio.Future[tuple[bool, FeedbackCase | None]] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(cid, []).append(future)
        if self._loader is None:
            self._loader = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, {}
                try:
                    found = await asyncio.to_thread(self.app.find_many, list(batch))
                except Exception as exc:  # noqa: BLE001 - every waiter learns what happened
                    for futures in batch.values():
                        for f in futures:
                            if not f.done():
                                f.set_exception(exc)
                    continue
                for cid, futures in batch.items():
                    case = found.get(cid)
                    for i, f in enumerate(futures):
                        if not f.done():
                            f.set_result((True, case) if i == 0 and (case is None or isinstance(case, FeedbackCase))
                                         else (False, None))
        finally:  # stopped (cancelled) with answers still waiting: they learn it now, none waits forever
            self._loader = None
            left, self._pending = self._pending, {}
            for futures in left.values():
                for f in futures:
                    f.cancel()


async def _answer(svc: Service[FeedbackApp], ticket_id: str, channel_id: str | None, patience: float,
                  act: Callable[[FeedbackCase], bool]) -> tuple[FeedbackCase, bool]:
    """The customer's answer to a resolution (a rating, a confirmation): (the case, what ``act`` said).

    Feedback opens a case when it reads the ticket's submission from the bus, so a ticket submitted a
    moment ago may not have one yet: the answer waits up to ``patience`` seconds for it, then 404.
    A channel (``channel_id``) answers only for the tickets it submitted (403 otherwise, nothing changes).
    """

    cid = case_id(ticket_id)
    loaded: FeedbackCase | None = None
    fresh = False  # ``loaded`` is this command's own copy, as stored moments ago, not yet decided on

    def decide(uow: UnitOfWork) -> tuple[FeedbackCase, bool]:
        nonlocal fresh
        if fresh:  # the first decision: on the case loaded with the other answers' (no read of its own)
            fresh = False
            case = loaded
            if case is not None:
                uow.add(case)
        else:  # a retry after a conflict, or a duplicate in one load: a read of its own, in a worker thread
            case = uow.find(FeedbackCase, cid)
        if case is None:
            raise NotFound(f"no ticket {ticket_id} awaiting feedback")
        case.check_channel(channel_id)
        return case, act(case)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    while True:  # waiting for another service's event, not retrying a write (run does that)
        try:
            fresh, loaded = await svc.app.cases.get(cid)
            # with the case loaded, the first decision is domain code only: on the event loop, no thread hop
            return await svc.commands.run(decide, inline=fresh)
        except NotFound:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def rate(
    svc: Service[FeedbackApp],
    ticket_id: str,
    score: int,
    comment: str | None,
    patience: float = SUBMISSION_PATIENCE,
    *,
    tags: list[str] | None = None,
    solved: bool | None = None,
    channel_id: str | None = None,
    by: str = "customer",
) -> tuple[FeedbackCase, bool]:
    """Rate a ticket: (the case, True when recorded; False when kept until its resolution arrives)."""
    return await _answer(svc, ticket_id, channel_id, patience, lambda case: case.rate(
        score, comment, svc.app.clock.now(), tags=tags, solved=solved, by=by, rules=svc.app.policy.rules))


async def confirm(
    svc: Service[FeedbackApp],
    ticket_id: str,
    by: str,
    note: str | None = None,
    patience: float = SUBMISSION_PATIENCE,
    *,
    channel_id: str | None = None,
) -> tuple[FeedbackCase, bool]:
    """The customer confirmed the resolution (§2.4): (the case, True when closed; False when kept until its
    resolution arrives, as an early rating is)."""
    return await _answer(svc, ticket_id, channel_id, patience,
                         lambda case: case.confirm(by, svc.app.clock.now(), note, svc.app.policy.rules))


async def reopen(
    svc: Service[FeedbackApp], ticket_id: str, reason: str, by: str, channel_id: str | None = None
) -> FeedbackCase:
    """Reopen a closed ticket within the operator's reopen period, with a reason (§2.4)."""

    def decide(uow: UnitOfWork) -> FeedbackCase:
        case = uow.find(FeedbackCase, case_id(ticket_id))
        if case is None:
            raise NotFound(f"no feedback for ticket {ticket_id}")
        case.check_channel(channel_id)
        case.reopen(reason, by, svc.app.clock.now())
        return case

    return await svc.commands.run(decide)


async def feedback_of(svc: Service[FeedbackApp], ticket_id: str, channel_id: str | None = None) -> FeedbackCase:
    """The ticket's feedback case (nothing is saved); 404 if feedback has none, 403 for another channel's."""

    def read(uow: UnitOfWork) -> FeedbackCase:
        case = uow.find(FeedbackCase, case_id(ticket_id))
        if case is None:
            raise NotFound(f"no feedback for ticket {ticket_id}")
        case.check_channel(channel_id)
        return case

    return await svc.commands.run(read)


async def load_case(svc: Service[FeedbackApp], cid: UUID) -> FeedbackCase:
    """One case by its id (nothing is saved)."""
    return await svc.commands.run(lambda uow: uow.load(FeedbackCase, cid))


async def load_cases(svc: Service[FeedbackApp], cids: list[UUID]) -> dict[UUID, FeedbackCase]:
    """The cases of ``cids`` that exist, read in one query (nothing is saved)."""

    def read(uow: UnitOfWork) -> dict[UUID, FeedbackCase]:
        uow.preload(cids)
        return {cid: case for cid in cids if (case := uow.find(FeedbackCase, cid)) is not None}

    return await svc.commands.run(read)


async def mark_notified(svc: Service[FeedbackApp], deliveries: list[Delivered]) -> None:
    """Record delivered notifications (case, channel, attempts, status), together in one save (the cases read in
    one query)."""

    def decide(uow: UnitOfWork) -> None:
        now = svc.app.clock.now()
        uow.preload(d[0] for d in deliveries)
        for cid, channel, attempts, status_code, resolved_event_id in deliveries:
            uow.load(FeedbackCase, cid).mark_notified(channel, attempts, status_code, now, resolved_event_id)

    await svc.commands.run(decide)


async def abandon_notification(
    svc: Service[FeedbackApp], cid: UUID, attempts: int, status_code: int | None, error: str,
    resolved_event_id: str | None = None,
) -> None:
    """Record that the webhook (of the resolution ``resolved_event_id``) was given up (the case leaves the board; an
    agent sees why)."""

    def decide(uow: UnitOfWork) -> None:
        uow.load(FeedbackCase, cid).abandon_notification(
            attempts, status_code, error, svc.app.clock.now(), resolved_event_id
        )

    await svc.commands.run(decide)


async def expire_window(svc: Service[FeedbackApp], cid: UUID) -> bool:
    """Close the case unrated if its rating window has passed; True if it did."""
    return await svc.commands.run(
        lambda uow: uow.load(FeedbackCase, cid).expire(svc.app.clock.now(), svc.app.policy.rules))


async def remind(svc: Service[FeedbackApp], cid: UUID) -> bool:
    """Remind the customer to rate, once, when the policy's share of the window has passed; True if it did."""
    app = svc.app

    def decide(uow: UnitOfWork) -> bool:
        return uow.load(FeedbackCase, cid).remind(app.clock.now(), app.policy.remind_at)

    return await svc.commands.run(decide)


async def expire_windows(svc: Service[FeedbackApp]) -> int:
    """Remind, then close, every case whose window says so (the board says which); how many closed."""
    follow_ups = svc.app.follow_ups
    now = svc.app.clock.now()
    # the lock off the event loop (a refresh in a consumer's thread may hold it for long)
    for cid in await follow_ups.read(lambda: follow_ups.reminders_due(now, svc.app.policy.remind_at)):
        await remind(svc, cid)
    closed = 0
    for cid in await follow_ups.read(lambda: follow_ups.due(now), refresh=False):
        closed += await expire_window(svc, cid)
    await asyncio.to_thread(follow_ups.refresh)
    return closed


# ---------------------------------------------------------------- notifications at each step


def channel_template(uow: UnitOfWork, channel_id: str | None) -> tuple[str, str, list[str]]:
    """(template kind, language, steps) a channel chose; SMS in Chinese, the result only, until it chose."""
    access = uow.find(ChannelAccess, access_id(channel_id)) if channel_id else None
    if access is None:
        return "sms", "zh", list(DEFAULT_STEPS)
    return access.template, access.language, access.steps


def queue_notification(
    uow: UnitOfWork, app: FeedbackApp, *, cause: str, ticket_id: str, url: str, channel_id: str | None, step: str,
    at: datetime, values: dict[str, str | None], board_fresh: bool = False,
) -> Notification | None:
    """Queue one message to the applicant, rendered now from their channel's template, for the delivery worker
    (``views.Notifier``: every attempt an event, retries, the dead letter). Its id derives from ``cause``, so the
    same cause queues it once; None when it was queued already. ``board_fresh``: the follow-up board was refreshed
    for this unit of work (a consumer's batch), so it answers whether it is queued without a store read."""
    nid = notification_id(cause)
    if uow.holds(nid) or app.follow_ups.queued(nid):
        return None
    if not board_fresh and uow.find(Notification, nid) is not None:
        return None
    kind, language, _ = channel_template(uow, channel_id)
    payload = {"ticket_id": ticket_id, **values}
    n = Notification(id=nid, ticket_id=ticket_id, step=step, url=url, template=kind, language=language,
                     text=app.templates.render(kind, language, step, payload), payload=payload, queued_at=at)
    uow.add(n)
    return n



async def subscribe(
    svc: Service[FeedbackApp], channel_id: str, steps: list[str], template: str, language: str, by: str
) -> ChannelAccess:
    """Which steps a channel's applicants are told of, and how (404 until feedback has heard of the channel)."""
    languages = frozenset(svc.app.templates.table[template]) if template in svc.app.templates.table else frozenset()

    def decide(uow: UnitOfWork) -> ChannelAccess:
        access = uow.find(ChannelAccess, access_id(channel_id))
        if access is None:
            raise NotFound(f"no channel {channel_id} known to feedback (yet)", "channel_id")
        access.subscribe(steps, template, language, by, svc.app.clock.now(), languages or frozenset({"zh", "en"}))
        return access

    return await svc.commands.run(decide)


async def subscription_of(svc: Service[FeedbackApp], channel_id: str) -> ChannelAccess:
    def read(uow: UnitOfWork) -> ChannelAccess:
        access = uow.find(ChannelAccess, access_id(channel_id))
        if access is None:
            raise NotFound(f"no channel {channel_id} known to feedback (yet)", "channel_id")
        return access

    return await svc.commands.run(read)


async def load_notification(svc: Service[FeedbackApp], nid: UUID) -> Notification:
    return await svc.commands.run(lambda uow: uow.load(Notification, nid))


async def load_notifications(svc: Service[FeedbackApp], ids: list[UUID]) -> list[Notification]:
    def read(uow: UnitOfWork) -> list[Notification]:
        return [n for i in ids if (n := uow.find(Notification, i)) is not None]

    return await svc.commands.run(read)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One delivery attempt's outcome, to be recorded."""

    nid: UUID
    ok: bool
    status_code: int | None
    error: str | None
    final: bool = False


async def record_attempts(svc: Service[FeedbackApp], attempts: list[Attempt], max_attempts: int) -> list[Notification]:
    """Record many delivery attempts in one transaction; each notification after its attempt, in order.

    The pending notifications are rebuilt from the events the follow-up board kept (no read per attempt); when
    another writer saved first, the retry loads them from the store.
    """
    tries = 0

    def decide(uow: UnitOfWork) -> list[Notification]:
        nonlocal tries
        tries += 1
        now = svc.app.clock.now()
        out = []
        for a in attempts:
            n = uow.find(Notification, a.nid) if tries > 1 or uow.holds(a.nid) else None
            if n is None:
                n = svc.app.follow_ups.pending_notification(a.nid)
                if n is None:
                    n = uow.load(Notification, a.nid)
                else:
                    uow.add(n)
            n.record_attempt(a.ok, a.status_code, a.error, now, max_attempts, a.final)
            out.append(n)
        return out

    return await svc.commands.run(decide)


async def record_attempt(
    svc: Service[FeedbackApp], nid: UUID, ok: bool, status_code: int | None, error: str | None, max_attempts: int,
    final: bool = False,
) -> Notification:
    """Record one delivery attempt and its outcome (the last allowed one that failed gives the delivery up)."""

    def decide(uow: UnitOfWork) -> Notification:
        n = uow.load(Notification, nid)
        n.record_attempt(ok, status_code, error, svc.app.clock.now(), max_attempts, final)
        return n

    return await svc.commands.run(decide)
