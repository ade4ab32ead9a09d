"""Feedback's in-memory views (the follow-up board, channel credentials) and the timers that read them.

``FollowUps`` follows feedback's own log: the cases waiting for a notification,
the open rating windows with their reminders, and the reopen counts per ticket,
technician and service type. ``rating_windows`` reminds and then closes the cases
whose window passed; ``deliver_feedback`` posts the result to the applicant's
callback. ``ChannelTokens`` resolves channel systems' credentials from the copies
feedback keeps of intake's ``channels`` events (SHA-256 only).

Delivery is at-least-once: a case stays on the board until its Notified event
is saved, so a crash between the POST and the save repeats the POST (receivers
de-duplicate on ``X-TSOP-Delivery``). A case with no callback never joins it: its
ResolutionNoted settles the notification (stores written before session 9: a
Notified in the same save).

Every delivery goes through ``tsop_events.outbound``: the callback URL is
resolved and checked again (the platform never posts to loopback, private,
link-local or its own endpoints unless ``TSOP_OUTBOUND_ALLOW`` says so) and the
connection goes to the checked address. Failed attempts back off exponentially
with jitter, at most ``TSOP_OUTBOUND_MAX_ATTEMPTS`` in all (counted per process:
a restart begins the count again); then, or at once when the guard refuses the
destination, the case records ``NotificationAbandoned`` (shown in the case view
as ``notification_failed``), a ``deadletter`` record is published and
``tsop_outbound_deadlettered_total{purpose="webhook"}`` counts it.

Each delivery is its own task, at most ``per_host`` at once per receiver (scheme,
host and port) and ``capacity`` in all, so a slow or failing receiver never delays
the others.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import UUID

import httpx
import orjson
from eventsourcing.domain import Aggregate

from tsop_events import outbound
from tsop_events.auth import Principal, Role, TokenResolver, followed_resolver
from tsop_events.envelope import derived_id
from tsop_events.runtime import Service
from tsop_events.store import LogFollower
from tsop_events.wake import SAFETY_NET_SECONDS, Waiter
from tsop_feedback import commands
from tsop_feedback.domain import DEFAULT_STEPS, ChannelAccess, EarlySteps, FeedbackCase, Notification

log = logging.getLogger(__name__)

DeadLetter = Callable[[FeedbackCase, int, str], Awaitable[None]]


class FollowUps(LogFollower):
    """Cases waiting for a notification, and open rating windows (the durable timers)."""

    def __init__(self, app: commands.FeedbackApp) -> None:
        super().__init__(app)
        self.to_notify: set[UUID] = set()
        self.windows: dict[UUID, datetime] = {}
        self.unreminded: dict[UUID, tuple[datetime, datetime]] = {}  # (resolved at, due) until reminded
        self.service_types: dict[UUID, str | None] = {}
        self.customers: dict[UUID, str] = {}  # case → customer
        self.asked: dict[str, list[datetime]] = {}  # customer → when they were asked to rate (fatigue caps)
        self.reopens: Counter[UUID] = Counter()
        self.reopens_by_technician: Counter[str] = Counter()
        self.reopens_by_type: Counter[str] = Counter()
        # step notifications: pending ones (attempts so far, when last tried, where, their events), the given-up ones
        self.notifications: dict[UUID, Pending] = {}
        self.listeners: list[deque[UUID]] = []  # each gets the id of every notification whose state changed
        self.dead_notifications: dict[UUID, str] = {}  # id → ticket
        self.notifications_of: dict[str, list[UUID]] = {}  # ticket → its notifications, in order
        self.ticket_of: dict[UUID, str] = {}  # notification → its ticket (a give-up finds its ticket at once)
        # who is told of a step without reading the case (feedback's own Closed comes back on ``tickets`` for every
        # rating): the channel of each case with a callback, and each channel's subscribed steps
        self.callback_channel: dict[UUID, str | None] = {}  # case with a callback → its channel
        self.access_channel: dict[UUID, str] = {}  # ChannelAccess id → channel id
        self.channel_steps: dict[str, frozenset[str]] = {}  # channel → the steps it subscribed to
        # the ``EarlySteps`` holding steps that came before their ticket's submission: a submission reads its
        # ticket's only when it is here (or in its own batch), not for every new ticket
        self.early: set[UUID] = set()

    def apply(self, e: Aggregate.Event) -> None:
        cid = e.originator_id
        if isinstance(e, Notification.Event):
            self._notification(e)
        elif isinstance(e, FeedbackCase.Opened):
            self.service_types[cid] = e.service_type
            if e.customer_id:
                self.customers[cid] = e.customer_id
            if e.callback_url:
                self.callback_channel[cid] = e.channel_id
        elif isinstance(e, EarlySteps.Kept):
            self.early.add(cid)
        elif isinstance(e, EarlySteps.Taken):
            self.early.discard(cid)
        elif isinstance(e, ChannelAccess.Known):
            self.access_channel[cid] = e.channel_id
        elif isinstance(e, ChannelAccess.Subscribed):
            if cid in self.access_channel:
                self.channel_steps[self.access_channel[cid]] = frozenset(e.steps)
        elif isinstance(e, FeedbackCase.ResolutionNoted):
            if not e.notified:  # settled in this event (no callback): nothing to deliver
                self.to_notify.add(cid)
            self.windows[cid] = e.rating_due_at
            if e.surveyed:
                self.unreminded[cid] = (e.resolved_at, e.rating_due_at)
                if cid in self.customers:
                    self.asked.setdefault(self.customers[cid], []).append(e.resolved_at)
        elif isinstance(
            e, FeedbackCase.Notified | FeedbackCase.NotificationAbandoned | FeedbackCase.NotifiedAfterClosure
        ):
            self.to_notify.discard(cid)
        elif isinstance(e, FeedbackCase.RatingReminded):
            self.unreminded.pop(cid, None)
        elif isinstance(e, FeedbackCase.Closed | FeedbackCase.Reopened):
            self.windows.pop(cid, None)
            self.unreminded.pop(cid, None)
            if isinstance(e, FeedbackCase.Reopened):
                self.to_notify.discard(cid)
                self.reopens[cid] += 1
                self.reopens_by_technician[e.technician_id or "unknown"] += 1
                self.reopens_by_type[self.service_types.get(cid) or "unknown"] += 1

    def _notification(self, e: Notification.Event) -> None:
        nid = e.originator_id
        if isinstance(e, Notification.Queued):
            self.notifications[nid] = Pending(e.url, 0, None, outbound.receiver_of(e.url), [e])
            self.notifications_of.setdefault(e.ticket_id, []).append(nid)
            self.ticket_of[nid] = e.ticket_id
        elif isinstance(e, Notification.Attempted):
            if e.ok:
                self.notifications.pop(nid, None)
            elif nid in self.notifications:
                p = self.notifications[nid]
                p.attempts, p.last_at = e.attempt, e.at
                p.events.append(e)
        elif isinstance(e, Notification.GivenUp):
            self.notifications.pop(nid, None)
            ticket = self.ticket_of.get(nid)
            if ticket is not None:
                self.dead_notifications[nid] = ticket
        for changed in self.listeners:
            changed.append(nid)

    def listen(self) -> deque[UUID]:
        """A queue that receives the id of every notification whose state changes from now on (a deliverer's).

        Takes no lock (the event loop calls it, while a refresh may hold the lock for long): appending to a list is
        atomic, and a change applied just before is in ``notifications``, which the caller reads after this."""
        changed: deque[UUID] = deque()
        self.listeners.append(changed)
        return changed

    def opened(self, cid: UUID) -> bool:
        """Whether the log (as read so far) holds this case."""
        return cid in self.service_types

    def has_early(self, eid: UUID) -> bool:
        """Whether the log (as read so far) holds steps kept for a ticket's submission (``EarlySteps``)."""
        return eid in self.early

    def may_tell(self, cid: UUID, step: str) -> bool:
        """Whether a step of this case may be told to the applicant: False only when the log (as read so far) holds
        the case and it has no callback, or its channel is not subscribed to the step (then the step needs no read
        of the case); True when this view cannot say (a case it has not read yet)."""
        with self.lock:
            if cid not in self.service_types:
                return True
            if cid not in self.callback_channel:
                return False
            channel = self.callback_channel[cid]
            return step in (self.channel_steps.get(channel, DEFAULT_STEPS) if channel else DEFAULT_STEPS)

    def queued(self, nid: UUID) -> bool:
        """Whether the log (as read so far) holds this notification."""
        return nid in self.ticket_of

    def pending_notification(self, nid: UUID) -> Notification | None:
        """A pending notification rebuilt from the events this view kept (no database read); None if not pending."""
        p = self.notifications.get(nid)
        if p is None:
            return None
        events = list(p.events)  # the refreshing thread may append meanwhile: a snapshot of the list
        n: Notification | None = None
        for e in events:
            n = e.mutate(n)
        return n

    def due(self, now: datetime) -> list[UUID]:
        with self.lock:
            return [cid for cid, due in self.windows.items() if due < now]

    def reminders_due(self, now: datetime, share: float) -> list[UUID]:
        """Open windows past ``share`` of their length whose customer was not reminded yet."""
        with self.lock:
            return [cid for cid, (start, due) in self.unreminded.items() if start + (due - start) * share <= now < due]

    def asked_of(self, customer_id: str | None) -> list[datetime]:
        """When this customer was asked to rate (for the fatigue cap)."""
        with self.lock:
            return list(self.asked.get(customer_id or "", []))

    def reopen_counts(self) -> tuple[int, dict[str, int], dict[str, int]]:
        """(all reopens, per technician who resolved it, per service type)."""
        with self.lock:
            return (sum(self.reopens.values()), dict(self.reopens_by_technician), dict(self.reopens_by_type))


@dataclass
class Pending:
    url: str
    attempts: int
    last_at: datetime | None
    receiver: str = ""  # scheme, host and port: what per-receiver concurrency counts
    events: list[Notification.Event] = field(default_factory=list)  # Queued, then each failed Attempted


class ChannelTokens(LogFollower):
    """Channel systems' live credentials by token hash, from feedback's copies of intake's channel events.

    It decodes only the channel copies' events (``topics``): in a process that serves the routes and runs no
    consumer (``TSOP_ROLE=api``) it is the one follower refreshed on every save, and the log is mostly ratings.
    """

    topics = (f"{ChannelAccess.__module__}:{ChannelAccess.__qualname__}.",)

    def __init__(self, app: commands.FeedbackApp) -> None:
        super().__init__(app)
        self.names: dict[str, str] = {}  # channel id → name
        self.kinds: dict[str, str] = {}
        self.tokens: dict[str, tuple[str, str]] = {}  # token hash → (channel id, credential id)
        self.by_access: dict[UUID, str] = {}  # ChannelAccess id → channel id

    def apply(self, e: Aggregate.Event) -> None:
        if isinstance(e, ChannelAccess.Known):
            self.by_access[e.originator_id] = e.channel_id
            self.names[e.channel_id] = e.name
            self.kinds[e.channel_id] = e.kind
        elif isinstance(e, ChannelAccess.CredentialKnown):
            self.tokens[e.token_hash] = (self.by_access[e.originator_id], e.credential_id)
        elif isinstance(e, ChannelAccess.CredentialWithdrawn):
            self.tokens.pop(e.token_hash, None)

    def principal(self, token_hash: str) -> Principal | None:
        """Without the lock: called on the event loop for every request, it must not wait while a refresh holds the
        lock through a read of the log. Each lookup is one dict read (atomic); a credential is known only after its
        channel's name and kind, which ``apply`` sets first."""
        found = self.tokens.get(token_hash)
        if found is None:
            return None
        channel_id, credential_id = found
        return Principal(f"channel:{self.names.get(channel_id) or channel_id}", frozenset({Role.channel}),
                         channel_id=channel_id,
                         attributes={"kind": self.kinds.get(channel_id), "credential_id": credential_id})


async def follow_channels(svc: Service[commands.FeedbackApp], every: float = 0.5) -> None:
    """Keep the channel credentials current: a revocation is refused here within ``every`` seconds of reading it."""
    wake = svc.waiter(saved=True, pace=every)  # any instance saved (NOTIFY), or the safety net
    while True:
        await asyncio.to_thread(svc.app.channels.refresh)
        await wake.wait()


def channel_tokens(svc: Service[commands.FeedbackApp]) -> TokenResolver:
    """Registered channel systems' credentials, as intake announced them (hashes only; revocable)."""
    view = svc.app.channels
    return followed_resolver(view.principal, view.refresh)


async def rating_windows(svc: Service[commands.FeedbackApp]) -> None:
    """The rating-window timer: close every unrated case whose window has passed, each second."""
    while True:
        await commands.expire_windows(svc)
        await asyncio.sleep(1.0)


# ---------------------------------------------------------------- webhook delivery


def webhook_body(case: FeedbackCase) -> bytes:
    """What the applicant's callback receives: the result and until when it may be rated."""
    assert case.resolution is not None and case.rating_due_at is not None
    return orjson.dumps(
        {
            "ticket_id": case.ticket_id,
            "status": "resolved",
            "result": case.resolution["summary"],
            "resolution_code": case.resolution["resolution_code"],
            "advice": case.resolution["advice"],
            "rating_due_at": case.rating_due_at.isoformat(),
            "text": case.resolution_text,
            "rating_requested": case.surveyed,
        }
    )


since_ever = float("-inf")  # no progress seen yet
sign = outbound.sign  # the ``X-TSOP-Signature`` header: HMAC-SHA256 of the body with the webhook secret

TAKEOVER_SECONDS = 30.0  # how long another instance must show no progress before this one makes its deliveries


@dataclass(frozen=True, slots=True)
class Share:
    """Which deliveries this instance makes when several feedback instances run (``TSOP_SHARD_INDEX`` of
    ``TSOP_SHARD_COUNT``): its own share at once, by a stable draw from the id; another's only when that
    instance showed no progress (no delivery, no attempt of its share in the log) for ``takeover`` seconds while
    the delivery waited: it is down or stuck. So none is lost, and while all run none is made twice (a backlog at
    a slow receiver is progress elsewhere, not a reason to take over). ``takeover`` should exceed a delivery's
    deadline (3 times the timeout)."""

    index: int = 0
    count: int = 1
    takeover: float = TAKEOVER_SECONDS

    def mine(self, key: UUID) -> bool:
        return self.count <= 1 or key.int % self.count == self.index

    def owner(self, key: UUID) -> int:
        return key.int % max(1, self.count)


class Deliverer:
    """Posts the notifications the board says are awaited, each its own task; records them through commands."""

    def __init__(
        self,
        svc: Service[commands.FeedbackApp],
        secret: str,
        guard: outbound.OutboundGuard | None = None,
        policy: outbound.RetryPolicy | None = None,
        *,
        timeout: float = 5.0,
        capacity: int = 200,
        per_host: int = 8,
        dead: DeadLetter | None = None,
        share: Share | None = None,
    ) -> None:
        self.svc, self.secret, self.timeout = svc, secret, timeout
        self.share = share or Share()
        self.foreign_since: dict[UUID, float] = {}  # another instance's case → when this one first saw it awaited
        self.progress: dict[int, float] = {}  # another instance → when one of its cases was last seen delivered
        self.taking: set[UUID] = set()  # another instance's cases this one took over
        self.guard = guard or outbound.guard_for(None)
        self.policy = policy or outbound.RetryPolicy()
        self.capacity, self.per_host, self.dead = capacity, per_host, dead
        self.attempts: dict[UUID, int] = {}
        self.next_try: dict[UUID, float] = {}
        self.inflight: dict[UUID, asyncio.Task[None]] = {}
        self.hosts: Counter[str] = Counter()
        self.delivered: list[commands.Delivered] = []
        self.wake: Waiter | None = None  # rung when a delivery finishes: its outcome is recorded at once
        self.pools: outbound.Connections | None = None  # the lean client; without, posts go through the caller's

    async def run_once(self, client: httpx.AsyncClient) -> int:
        """Record what was delivered, start the due deliveries there is room for; how much happened."""
        recorded = await self._record()
        follow_ups = self.svc.app.follow_ups
        to_notify = await follow_ups.read(lambda: list(follow_ups.to_notify))  # the lock off the event loop
        now = time.monotonic()
        waiting = {d[0] for d in self.delivered}
        todo = [c for c in to_notify
                if c not in self.inflight and c not in waiting and self.next_try.get(c, 0.0) <= now
                and self._taken(c, now)]
        if self.foreign_since:
            awaited = set(to_notify)
            for c in [c for c in self.foreign_since if c not in awaited]:
                del self.foreign_since[c]  # delivered or given up: by its instance, unless taken over here
                if c not in self.taking:
                    self.progress[self.share.owner(c)] = now
                self.taking.discard(c)
        started = 0
        batch = todo[: max(0, self.capacity - len(self.inflight))]
        # the round's cases in one query, not one read per delivery (a bulk resolution queues thousands at once)
        try:
            cases = await commands.load_cases(self.svc, batch) if batch else {}
        except Exception as exc:  # noqa: BLE001 - a failed read skips this round; the posts in flight stay tracked
            log.warning("webhook deliveries: cannot read their cases (%s); next round", exc)
            return recorded
        for cid in batch:
            case = cases.get(cid)
            if case is not None and not case.callback_url:  # nowhere to post: recorded with the round, no task
                self.delivered.append((cid, "none", self.attempts.get(cid, 0) + 1, None, case.resolved_event_id))
                started += 1
                continue
            task = asyncio.create_task(self._deliver(client, cid, case))
            self.inflight[cid] = task
            task.add_done_callback(self._finished(cid))
            started += 1
        return recorded + started

    def _taken(self, cid: UUID, now: float) -> bool:
        """Whether this instance delivers ``cid`` now: its own share, or another's awaited for too long here."""
        if self.share.mine(cid):
            return True
        since = max(self.foreign_since.setdefault(cid, now), self.progress.get(self.share.owner(cid), since_ever))
        # a webhook's attempts are kept in its instance's memory, not in the log: its owner may rightly wait up to
        # the longest back-off between two of them, so only a wait beyond that (and the takeover time) is a sign
        # that the owner is down, not a back-off (which taken over would post twice and restart the count)
        if now - since < self.share.takeover + self.policy.max_seconds:
            return False
        self.taking.add(cid)
        return True

    def _finished(self, cid: UUID) -> Callable[[asyncio.Task[None]], None]:
        def done(_: asyncio.Task[None]) -> None:
            self.inflight.pop(cid, None)
            if self.wake is not None:
                self.wake.ring()

        return done

    async def drain(self, client: httpx.AsyncClient) -> int:
        """Run until nothing is in flight and nothing is due (tests)."""
        total = 0
        while True:
            total += await self.run_once(client)
            if not self.inflight and not self.delivered:
                return total
            if self.inflight:
                await asyncio.wait(list(self.inflight.values()), return_when=asyncio.FIRST_COMPLETED)

    async def _record(self) -> int:
        done, self.delivered = self.delivered, []
        if not done:
            return 0
        await commands.mark_notified(self.svc, done)
        for cid, *_ in done:
            self.attempts.pop(cid, None)
            self.next_try.pop(cid, None)
        return len(done)

    async def _deliver(self, client: httpx.AsyncClient, cid: UUID, case: FeedbackCase | None = None) -> None:
        try:
            if case is None:  # the board (refreshed just now) says it awaits one
                case = await commands.load_case(self.svc, cid)
            if not case.callback_url:
                self.delivered.append((cid, "none", self.attempts.get(cid, 0) + 1, None, case.resolved_event_id))
                return
            host = outbound.receiver_of(case.callback_url)
            if self.hosts[host] >= self.per_host:  # that receiver is busy: later, without counting an attempt
                self.next_try[cid] = time.monotonic() + 0.2
                return
            self.hosts[host] += 1
            try:
                await self._attempt(client, cid, case)
            finally:
                self.hosts[host] -= 1
                if self.hosts[host] <= 0:
                    del self.hosts[host]
        except Exception:  # never stop the deliverer; the case stays on the board and is tried again
            log.exception("webhook delivery of case %s failed unexpectedly", cid)
            self.next_try[cid] = time.monotonic() + 1.0

    async def _attempt(self, client: httpx.AsyncClient, cid: UUID, case: FeedbackCase) -> None:
        assert case.callback_url is not None
        attempts = self.attempts.get(cid, 0) + 1
        self.attempts[cid] = attempts
        sent = await outbound.send(
            self.guard, client if self.pools is None else self.pools, case.callback_url, webhook_body(case),
            purpose="webhook", secret=self.secret,
            headers={"X-TSOP-Delivery": delivery_id(cid, case.resolved_event_id)}, timeout=self.timeout,
        )
        status, error, final = sent.status, sent.error, sent.final
        if error is None:
            outbound.OUTBOUND_ATTEMPTS.labels("webhook", "ok").inc()
            self.delivered.append((cid, "webhook", attempts, status, case.resolved_event_id))
            return
        delay = None if final else self.policy.delay(attempts)
        if delay is not None:
            outbound.OUTBOUND_ATTEMPTS.labels("webhook", "retry").inc()
            log.info("webhook for ticket %s failed (attempt %s of %s): %s", case.ticket_id, attempts,
                     self.policy.max_attempts, error)
            self.next_try[cid] = time.monotonic() + delay
            return
        outbound.OUTBOUND_ATTEMPTS.labels("webhook", "dead").inc()
        await commands.abandon_notification(self.svc, cid, attempts, status, error[:1000], case.resolved_event_id)
        self.attempts.pop(cid, None)
        self.next_try.pop(cid, None)
        if self.dead is not None:
            await self.dead(case, attempts, error)


def share_of(svc: Service[commands.FeedbackApp]) -> Share:
    """This instance's share of the deliveries, from its settings (one instance: all of them)."""
    s = svc.settings
    count = max(1, int(getattr(s, "shard_count", 1)))
    index = int(getattr(s, "shard_index", 0))
    if not 0 <= index < count:
        raise ValueError(f"TSOP_SHARD_INDEX {index} is not one of 0..{count - 1} (TSOP_SHARD_COUNT {count})")
    return Share(index, count, float(getattr(s, "delivery_takeover_seconds", TAKEOVER_SECONDS)))


def delivery_id(cid: UUID, resolved_event_id: str | None) -> str:
    """The result webhook's ``X-TSOP-Delivery``: one per resolution (a reopened ticket's next result is a new
    delivery, not a duplicate of the first), the same for every retry of it."""
    return str(derived_id("feedback-result-delivery", str(cid), resolved_event_id or ""))


async def deliver_feedback(svc: Service[commands.FeedbackApp], secret: str) -> None:
    """The delivery worker: posts each awaited notification, signed with ``secret`` (the webhook secret)."""
    settings = svc.settings

    async def dead(case: FeedbackCase, attempts: int, error: str) -> None:
        assert case.callback_url is not None
        await outbound.dead_letter(
            svc.producer, settings, purpose="webhook", key=str(case.id), url=case.callback_url,
            payload=webhook_body(case), attempts=attempts, error=error, subject=case.ticket_id,
        )

    deliverer = Deliverer(svc, secret, outbound.guard_for(settings), outbound.RetryPolicy.from_settings(settings),
                          dead=dead, share=share_of(svc))
    # a case awaits delivery (any instance saved), a delivery finished; a retry falling due: the safety net
    wake = deliverer.wake = svc.waiter(saved=True)
    deliverer.pools = pools = outbound.Connections(deliverer.timeout)
    try:
        async with outbound.client(deliverer.timeout) as client:
            while True:
                if not await deliverer.run_once(client):
                    await wake.wait()
    finally:
        await pools.aclose()


# ---------------------------------------------------------------- step notifications


class Notifier:
    """Posts the queued step notifications, each its own task; every attempt and its outcome is recorded.

    What is pending, how often it was tried and when comes from the log (``FollowUps``), so a restarted
    process resumes where the last one stopped, with the attempts already made counted (the back-off
    runs from the last recorded attempt). At most ``per_receiver`` at once per receiver (scheme, host and
    port) and ``capacity`` in all: a slow or failing receiver never delays the others.

    Nothing is scanned or read again per delivery: the view tells which notifications changed (``listen``),
    each is queued for its receiver when due (or kept on a timer until its back-off ends), and its message is
    rebuilt from the events the view kept. Outcomes are recorded together: attempts that finish while one
    batch is being saved are saved in the next, in one transaction.
    """

    def __init__(
        self,
        svc: Service[commands.FeedbackApp],
        secret: str,
        guard: outbound.OutboundGuard | None = None,
        policy: outbound.RetryPolicy | None = None,
        *,
        timeout: float = 5.0,
        capacity: int = 512,
        per_receiver: int = 16,
        batch: int = 512,
        dead: Callable[[Notification], Awaitable[None]] | None = None,
        pools: outbound.Connections | None = None,
        share: Share | None = None,
    ) -> None:
        self.svc, self.secret, self.timeout = svc, secret, timeout
        self.share = share or Share()
        self.foreign_since: dict[UUID, datetime] = {}  # another instance's notification → first seen pending here
        self.progress: dict[int, datetime] = {}  # another instance → its last attempt or delivery seen in the log
        self.taking: set[UUID] = set()  # another instance's notifications this one took over
        # id → attempts this process recorded, until the board has read them: a refresh that read the log just
        # before the save still shows the notification as it was, and must not make it be posted again
        self.recorded: dict[UUID, int] = {}
        self.guard = guard or outbound.guard_for(None)
        self.policy = policy or outbound.RetryPolicy()
        self.capacity, self.per_receiver, self.batch, self.dead = capacity, per_receiver, batch, dead
        # the lean client (kept-alive connections per receiver); without, every post goes through the caller's client
        self.pools = pools
        self.inflight: dict[UUID, asyncio.Task[None]] = {}  # posting, or waiting for its outcome to be saved
        self.busy: Counter[str] = Counter()  # receiver → posts under way
        self.waiting: dict[str, deque[UUID]] = {}  # receiver → due notifications waiting for a free slot
        self.timers: list[tuple[datetime, UUID]] = []  # (due, id): retries whose back-off has not ended
        self.scheduled: set[UUID] = set()  # in ``waiting`` or ``timers``
        self.changes: deque[UUID] | None = None
        self.delays: dict[UUID, tuple[int, float]] = {}  # id → (attempts, the back-off drawn for the next try)
        self.outcomes: list[tuple[commands.Attempt, asyncio.Future[Notification]]] = []
        self.recorder: asyncio.Task[None] | None = None
        self.wake: Waiter | None = None  # rung when a post finishes (a slot is free)

    def _due_at(self, nid: UUID, p: Pending, now: datetime) -> datetime | None:
        if p.last_at is None:
            due = None  # at once
        else:
            drawn = self.delays.get(nid)
            if drawn is None or drawn[0] != p.attempts:
                drawn = self.delays[nid] = (p.attempts, self.policy.delay(p.attempts) or 0.0)
            due = p.last_at + timedelta(seconds=drawn[1])
        if self.share.mine(nid) or nid in self.taking:
            return due
        # another instance's: only once that instance showed no progress for the takeover time (down or stuck)
        waited = max(due or self.foreign_since.setdefault(nid, now),
                     self.progress.get(self.share.owner(nid), datetime.min.replace(tzinfo=now.tzinfo)))
        take_at = waited + timedelta(seconds=self.share.takeover)
        if take_at <= now:
            self.taking.add(nid)
            return due
        return take_at

    def _schedule(self, nid: UUID, now: datetime) -> None:
        p = self.svc.app.follow_ups.notifications.get(nid)
        if not self.share.mine(nid) and nid not in self.taking:
            self._note_progress(nid, p, now)
        if nid in self.inflight or nid in self.scheduled:
            return
        if p is None:  # delivered or given up
            self.delays.pop(nid, None)
            self.foreign_since.pop(nid, None)
            self.taking.discard(nid)
            self.recorded.pop(nid, None)
            return
        if self._behind(nid, p):  # the board has not read this process's last attempt: it says so when it has
            return
        due = self._due_at(nid, p, now)
        self.scheduled.add(nid)
        if due is None or due <= now:
            self.waiting.setdefault(p.receiver, deque()).append(nid)
        else:
            heapq.heappush(self.timers, (due, nid))

    def _behind(self, nid: UUID, p: Pending) -> bool:
        """Whether the board has yet to read an attempt this process recorded (its view of ``nid`` is stale)."""
        mine = self.recorded.get(nid)
        if mine is None:
            return False
        if p.attempts >= mine:
            del self.recorded[nid]
            return False
        return True

    def _note_progress(self, nid: UUID, p: Pending | None, now: datetime) -> None:
        """Another instance's notification changed in the log: that instance is at work (not down or stuck)."""
        owner = self.share.owner(nid)
        if p is None:
            if self.foreign_since.pop(nid, None) is not None:  # it delivered (or gave up) one this instance saw
                self.progress[owner] = now
        elif p.last_at is not None:  # it tried one
            self.progress[owner] = max(p.last_at, self.progress.get(owner, p.last_at))

    def next_due(self, now: datetime) -> float | None:
        """Seconds until the next retry falls due (None: none waits)."""
        return max(0.0, (self.timers[0][0] - now).total_seconds()) if self.timers else None

    async def run_once(self, client: httpx.AsyncClient) -> int:
        """Take in what changed, start the due deliveries there is room for; how many started."""
        follow_ups = self.svc.app.follow_ups
        if self.changes is None:
            self.changes = follow_ups.listen()
            # never the lock on the event loop: a refresh in a consumer's thread may hold it for long
            everything = await follow_ups.read(lambda: list(follow_ups.notifications))
            now = self.svc.app.clock.now()
            for nid in everything:  # what was pending before this process listened
                self._schedule(nid, now)
        else:
            await asyncio.to_thread(follow_ups.refresh)
            now = self.svc.app.clock.now()
        while self.changes:
            self._schedule(self.changes.popleft(), now)
        while self.timers and self.timers[0][0] <= now:
            _, nid = heapq.heappop(self.timers)
            self.scheduled.discard(nid)
            self._schedule(nid, now)
        return self._start(client, now)

    def _start(self, client: httpx.AsyncClient, now: datetime) -> int:
        pending = self.svc.app.follow_ups.notifications
        started = 0
        for receiver in list(self.waiting):
            queue = self.waiting[receiver]
            while queue and self.busy[receiver] < self.per_receiver and len(self.inflight) < self.capacity:
                nid = queue.popleft()
                self.scheduled.discard(nid)
                p = pending.get(nid)
                if p is None or nid in self.inflight or self._behind(nid, p):
                    continue
                due = self._due_at(nid, p, now)
                if due is not None and due > now:  # tried meanwhile (another instance): its back-off anew
                    self._schedule(nid, now)
                    continue
                self.busy[receiver] += 1
                self.inflight[nid] = asyncio.create_task(self._deliver(client, nid, receiver))
                started += 1
            if not queue:
                del self.waiting[receiver]
        return started

    async def drain(self, client: httpx.AsyncClient, timeout: float = 30.0) -> None:
        """Run until nothing is pending or in flight (tests)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            await self.run_once(client)
            if self.inflight:
                await asyncio.wait(list(self.inflight.values()), return_when=asyncio.FIRST_COMPLETED)
                continue
            follow_ups = self.svc.app.follow_ups
            await asyncio.to_thread(follow_ups.refresh)
            if not follow_ups.notifications:
                return
            await asyncio.sleep(0.01)

    async def _deliver(self, client: httpx.AsyncClient, nid: UUID, receiver: str) -> None:
        freed = False
        try:
            n = self.svc.app.follow_ups.pending_notification(nid) or await commands.load_notification(self.svc, nid)
            if n.delivered or n.dead:
                return
            body = orjson.dumps({"ticket_id": n.ticket_id, "step": n.step, "text": n.text, "template": n.template,
                                 "language": n.language, **n.payload})
            http = client if self.pools is None else self.pools
            sent = await outbound.send(
                self.guard, http, n.url, body, purpose="notification", secret=self.secret,
                headers={"X-TSOP-Delivery": str(nid), "X-TSOP-Step": n.step}, timeout=self.timeout,
            )
            freed = self._free(receiver)  # the receiver may take the next one while this outcome is saved
            n = await self._record(commands.Attempt(nid, sent.ok, sent.status, sent.error, sent.final))
            self.recorded[nid] = n.attempts
            outcome = "ok" if sent.ok else "retry"
            if n.dead:
                outcome = "dead"
                if self.dead is not None:
                    await self.dead(n)
            outbound.OUTBOUND_ATTEMPTS.labels("notification", outcome).inc()
        except Exception:  # never stop the notifier; the notification stays pending and is tried again
            log.exception("notification %s failed unexpectedly", nid)
            await asyncio.sleep(1.0)
        finally:
            self.inflight.pop(nid, None)
            if self.changes is not None:  # looked at again next round: a retry's back-off (or gone if delivered)
                self.changes.append(nid)
            if not freed:
                self._free(receiver)

    def _free(self, receiver: str) -> bool:
        self.busy[receiver] -= 1
        if self.busy[receiver] <= 0:
            del self.busy[receiver]
        if self.wake is not None:
            self.wake.ring()  # room for the next one
        return True

    async def _record(self, attempt: commands.Attempt) -> Notification:
        """Save this attempt with the others finishing now, in one transaction; the notification after it."""
        future: asyncio.Future[Notification] = asyncio.get_running_loop().create_future()
        self.outcomes.append((attempt, future))
        if self.recorder is None or self.recorder.done():
            self.recorder = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self.outcomes:
            batch, self.outcomes = self.outcomes[: self.batch], self.outcomes[self.batch :]
            try:
                saved = await commands.record_attempts(self.svc, [a for a, _ in batch], self.policy.max_attempts)
            except Exception as exc:  # noqa: BLE001 - every waiter learns it; their notifications stay pending
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), n in zip(batch, saved, strict=True):
                if not future.done():
                    future.set_result(n)


async def deliver_notifications(svc: Service[commands.FeedbackApp], secret: str) -> None:
    """The step-notification worker: posts each pending notification, signed with ``secret``."""
    settings = svc.settings

    async def dead(n: Notification) -> None:
        await outbound.dead_letter(
            svc.producer, settings, purpose="notification", key=str(n.id), url=n.url,
            payload=n.text, attempts=n.attempts, error=n.last_error or "failed", subject=n.ticket_id,
        )

    notifier = Notifier(svc, secret, outbound.guard_for(settings), outbound.RetryPolicy.from_settings(settings),
                        dead=dead, share=share_of(svc))
    notifier.pools = pools = outbound.Connections(notifier.timeout)
    # a notification is pending (any instance saved), a post finished (a slot is free), a retry falls due
    wake = notifier.wake = svc.waiter(saved=True)
    try:
        async with outbound.client(notifier.timeout) as client:
            while True:
                if not await notifier.run_once(client):
                    retry_in = notifier.next_due(svc.app.clock.now())
                    await wake.wait(SAFETY_NET_SECONDS if retry_in is None else min(SAFETY_NET_SECONDS, retry_in))
    finally:
        await pools.aclose()
