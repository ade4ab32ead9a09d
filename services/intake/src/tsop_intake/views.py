"""Intake's in-memory views, built by following its own log, and the timers that read them.

``IntakeIndex`` is what commands look up (channels and their credentials, open
requests by customer, type and location, pending deadlines, the review queue,
submission counts); the timers follow the log, cancel pending applications past
their completion deadline, and resolve channel credentials.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from uuid import UUID

from eventsourcing.persistence import Notification

from tsop_events.auth import Principal, Role, TokenResolver, followed_resolver
from tsop_events.clock import SystemClock
from tsop_events.commands import UnitOfWork
from tsop_events.personal import ERASED, erase_tree
from tsop_events.runtime import Service
from tsop_events.store import EventStoreApp, LogFollower
from tsop_intake.domain import SELF_SERVICE, ChannelSystem, ServiceRequest, location_key

if TYPE_CHECKING:
    from tsop_intake.commands import IntakeApp

REFRESH_SECONDS = 0.5

DupKey = tuple[str, str, str]  # customer, service type, normalised location


@dataclass
class ChannelInfo:
    id: str
    name: str
    kind: str
    callback_url: str | None
    rate_limit_per_minute: int | None
    credentials: dict[str, str] = field(default_factory=dict)  # credential id → token hash (live ones)


@dataclass
class OpenRequest:
    customer_id: str
    service_type: str
    location: dict[str, str | None] | None
    status: str
    channel_id: str | None
    customer_tier: str = "standard"
    region: str = ""
    since: datetime | None = None
    reasons: list[str] = field(default_factory=list)

    @property
    def key(self) -> DupKey:
        return (self.customer_id, self.service_type, location_key(self.location))

    @property
    def erased(self) -> bool:
        """Its location was erased (the customer's data keys destroyed): nothing to recognise a duplicate by."""
        return self.location is not None and ERASED in self.location.values()


class Window:
    """Submissions within a sliding time window, each counted once (keyed by ticket)."""

    def __init__(self, span: timedelta) -> None:
        self.span = span
        self.items: OrderedDict[UUID, datetime] = OrderedDict()

    def add(self, ticket: UUID, at: datetime) -> None:
        self.items.setdefault(ticket, at)

    def discard(self, ticket: UUID) -> None:
        self.items.pop(ticket, None)

    def count(self, now: datetime) -> int:
        horizon = now - self.span
        while self.items:
            first = next(iter(self.items.values()))
            if first >= horizon:
                break
            self.items.popitem(last=False)
        return len(self.items)


class IntakeIndex(LogFollower):
    """What intake's commands look up, built by following its own log (so every instance converges).

    Channels and their live credentials, open requests by (customer, type,
    location), pending-information deadlines (the durable timer), the review
    queue, submission counts for the abuse limits, and channel shares.
    """

    def __init__(self, app: EventStoreApp) -> None:
        super().__init__(app)
        self._refreshing = threading.Lock()
        self.refreshed_at = 0.0
        self.versions: dict[UUID, int] = {}
        self.channels: dict[str, ChannelInfo] = {}
        self.tokens: dict[str, tuple[str, str]] = {}  # token hash → (channel id, credential id)
        self.open: dict[UUID, OpenRequest] = {}
        self.finished: dict[UUID, OpenRequest] = {}  # dropped as finished downstream (back in ``open`` if reopened)
        self.by_key: dict[DupKey, UUID] = {}
        # every request of each customer (legal holds on their tickets): a list, the smallest container per customer
        self.by_customer: dict[str, list[UUID]] = {}
        self.pending: dict[UUID, datetime] = {}
        self.queued: dict[UUID, OpenRequest] = {}
        self.per_channel: dict[str, Window] = {}
        self.per_customer: dict[str, Window] = {}
        self.submitted_by_kind: dict[str, int] = {}
        self.outcomes: dict[str, int] = {}

    # -- following the log

    def refresh(self) -> None:
        """Read new notifications (outside the lock, so lookups never wait on the database), apply them."""
        with self._refreshing:
            while True:
                batch = self.app.recorder.select_notifications(self.position + 1, 1000)
                if not batch:
                    break
                # what this process saved was observed already: decode only what is new to it
                events = [self.app.mapper.to_domain_event(n) for n in batch if self._unseen(n)]
                self.observe(events)
                self.position = batch[-1].id
            self.refreshed_at = time.monotonic()

    def _unseen(self, n: Notification) -> bool:
        oid = n.originator_id if isinstance(n.originator_id, UUID) else UUID(str(n.originator_id))
        return self.versions.get(oid, 0) < int(n.originator_version)

    def observe(self, events: Iterable[object]) -> None:
        """Apply events (from the log, or about to be saved here); each is applied once."""
        with self.lock:
            for e in events:
                if not isinstance(e, ServiceRequest.Event | ChannelSystem.Event):
                    continue
                seen = self.versions.get(e.originator_id, 0)
                if e.originator_version <= seen:
                    continue
                self.versions[e.originator_id] = e.originator_version
                self.apply(e)

    def reobserve(self, ticket: UUID) -> None:
        """Apply a request's stored events again: after ``forget``, what a concurrent refresh skipped."""
        stored = self.app.recorder.select_events(ticket)
        self.observe([self.app.mapper.to_domain_event(se) for se in stored])

    def forget(self, ticket: UUID) -> None:
        """Undo what ``observe`` noted for a request whose save failed."""
        with self.lock:
            self.versions.pop(ticket, None)
            noted = self.open.get(ticket)
            if noted is not None and ticket in self.by_customer.get(noted.customer_id, ()):
                self.by_customer[noted.customer_id].remove(ticket)
            self._close(ticket)
            self.pending.pop(ticket, None)
            for w in (*self.per_channel.values(), *self.per_customer.values()):
                w.discard(ticket)

    def apply(self, e: object) -> None:
        if isinstance(e, ServiceRequest.Event):
            self._request(e)
        elif isinstance(e, ChannelSystem.Event):
            self._channel(e)

    def _request(self, e: ServiceRequest.Event) -> None:
        tid = e.originator_id
        if isinstance(e, ServiceRequest.Submitted):
            req = OpenRequest(e.customer_id, e.service_type, e.location, "submitted", e.channel_id,
                              e.customer_tier, e.region, e.submitted_at)
            self.open[tid] = req
            self._index(tid, req)
            if e.customer_id:
                self.by_customer.setdefault(e.customer_id, []).append(tid)
            self.per_channel.setdefault(e.channel_id or e.channel, Window(timedelta(minutes=1))).add(
                tid, e.submitted_at)
            if e.customer_id:  # a ticket without its customer yet counts for nobody
                self.per_customer.setdefault(e.customer_id, Window(timedelta(days=1))).add(tid, e.submitted_at)
            self.submitted_by_kind[e.channel] = self.submitted_by_kind.get(e.channel, 0) + 1
        elif isinstance(e, ServiceRequest.Updated):
            updated = self.open.get(tid)
            if updated is not None:
                req = updated
                if self.by_key.get(req.key) == tid:
                    del self.by_key[req.key]
                for name in ("customer_id", "service_type", "location", "customer_tier", "region"):
                    if name in e.changes:
                        setattr(req, name, e.changes[name])
                self._index(tid, req)
            completed = e.changes.get("customer_id")
            if isinstance(completed, str) and completed:  # a request completed with its customer
                tickets = self.by_customer.setdefault(completed, [])
                if tid not in tickets:
                    tickets.append(tid)
        elif isinstance(e, ServiceRequest.PendingInformation):
            self.pending[tid] = e.complete_by
            self._status(tid, "pending_information")
            self.queued.pop(tid, None)
        elif isinstance(e, ServiceRequest.Queued):
            self.pending.pop(tid, None)
            queued = self._status(tid, "queued_for_review")
            if queued is not None:
                queued.since, queued.reasons = e.queued_at, list(e.reasons)
                self.queued[tid] = queued
            self._outcome("queued_for_review")
        elif isinstance(e, ServiceRequest.Accepted):
            self.pending.pop(tid, None)
            self.queued.pop(tid, None)
            self._status(tid, "accepted")
            self._outcome("accepted_by_rules" if e.decided_by == "rules" else "accepted_by_agent")
        elif isinstance(e, ServiceRequest.Rejected):
            self._close(tid)
            self._outcome("rejected_by_rules" if e.decided_by == "rules" else "rejected_by_agent")
        elif isinstance(e, ServiceRequest.Linked):
            self._close(tid)
            self._outcome("linked_duplicate")
        elif isinstance(e, ServiceRequest.Cancelled):
            self._close(tid)
            self._outcome(f"cancelled:{e.reason_code}")

    def _channel(self, e: ChannelSystem.Event) -> None:
        tid = e.originator_id
        if isinstance(e, ChannelSystem.Registered):
            self.channels[str(tid)] = ChannelInfo(str(tid), e.name, e.kind, e.callback_url, e.rate_limit_per_minute)
        elif isinstance(e, ChannelSystem.CredentialIssued):
            ch = self.channels[str(tid)]
            ch.credentials[e.credential_id] = e.token_hash
            self.tokens[e.token_hash] = (str(tid), e.credential_id)
        elif isinstance(e, ChannelSystem.CredentialRevoked):
            self.channels[str(tid)].credentials.pop(e.credential_id, None)
            self.tokens.pop(e.token_hash, None)
        elif isinstance(e, ChannelSystem.SettingsChanged):
            ch = self.channels[str(tid)]
            for name, value in e.changes.items():
                setattr(ch, name, value)

    def _status(self, tid: UUID, status: str) -> OpenRequest | None:
        req = self.open.get(tid)
        if req is not None:
            req.status = status
        return req

    def _close(self, tid: UUID) -> None:
        self.pending.pop(tid, None)
        self.queued.pop(tid, None)
        req = self.open.pop(tid, None)
        if req is not None and self.by_key.get(req.key) == tid:
            del self.by_key[req.key]

    def _index(self, tid: UUID, req: OpenRequest) -> None:
        """A duplicate target, unless its location was erased (a rebuild from the log reads it as ``[erased]``)."""
        if not req.erased:
            self.by_key.setdefault(req.key, tid)

    def forget_customers(self, customers: Collection[str]) -> None:
        """These customers' personal data was erased: what the index derived from it (the location its duplicate
        keys hold) goes at once, leaving what a rebuild from the log would read (``[erased]``), not what this
        process saw before; their requests stay, as the service record."""
        with self.lock:
            for tid, req in (*self.open.items(), *self.finished.items()):
                if req.customer_id not in customers or req.location is None or req.erased:
                    continue
                if self.by_key.get(req.key) == tid:
                    del self.by_key[req.key]
                req.location = erase_tree(req.location)

    def tickets_of(self, customer_id: str) -> frozenset[UUID]:
        """Every request of the customer this index has read (open or not)."""
        with self.lock:
            return frozenset(self.by_customer.get(customer_id, ()))

    def _outcome(self, name: str) -> None:
        self.outcomes[name] = self.outcomes.get(name, 0) + 1

    # -- lookups (cheap, in memory)

    def principal(self, token_hash: str) -> Principal | None:
        with self.lock:
            found = self.tokens.get(token_hash)
            if found is None:
                return None
            ch = self.channels[found[0]]
            return Principal(f"channel:{ch.name}", frozenset({Role.channel}), channel_id=ch.id,
                             attributes={"kind": ch.kind, "credential_id": found[1]})

    def channel(self, channel_id: str) -> ChannelInfo | None:
        return self.channels.get(channel_id)

    def open_duplicate(
        self, customer_id: str, service_type: str, location: Mapping[str, str | None] | None
    ) -> UUID | None:
        with self.lock:
            return self.by_key.get((customer_id, service_type, location_key(location)))

    def drop_closed(self, ticket: UUID) -> None:
        """A request the rest of the platform finished (resolved, closed): no longer a duplicate target."""
        with self.lock:
            req = self.open.get(ticket)
            self._close(ticket)
            if req is not None:
                self.finished[ticket] = req  # kept: a reopening makes it a duplicate target again

    def reopen_finished(self, ticket: UUID) -> None:
        """A finished request was reopened downstream: open again, a duplicate target for new applications."""
        with self.lock:
            req = self.finished.pop(ticket, None)
            if req is not None and ticket not in self.open:
                req.status = "reopened"
                self.open[ticket] = req
                self._index(ticket, req)

    def recent(self, channel_key: str, customer_id: str, now: datetime) -> tuple[int, int]:
        with self.lock:
            ch = self.per_channel.get(channel_key)
            cu = self.per_customer.get(customer_id)
            return (ch.count(now) if ch else 0, cu.count(now) if cu else 0)

    def due(self, now: datetime) -> list[UUID]:
        with self.lock:
            return [tid for tid, at in self.pending.items() if at < now]

    def next_deadline(self) -> datetime | None:
        """The earliest completion deadline of a pending application (None: none pending)."""
        with self.lock:
            return min(self.pending.values(), default=None)

    def shares(self) -> dict[str, int | float | dict[str, int] | None]:
        with self.lock:
            by_kind = dict(self.submitted_by_kind)
            outcomes = dict(self.outcomes)
        total = sum(by_kind.values())
        self_service = sum(n for k, n in by_kind.items() if k in SELF_SERVICE)
        return {
            "submitted": total,
            "by_channel_kind": by_kind,
            "self_service": self_service,
            "manual": total - self_service,
            "self_service_share": round(self_service / total, 4) if total else None,
            "manual_share": round((total - self_service) / total, 4) if total else None,
            "review_outcomes": outcomes,
        }


# ---------------------------------------------------------------- timers


async def follow_log(svc: Service[IntakeApp]) -> None:
    """Keep the index current with what other instances wrote (revocations included)."""
    wake = svc.waiter(saved=True, pace=REFRESH_SECONDS)  # any instance saved (NOTIFY), or the safety net
    while True:
        await asyncio.to_thread(svc.app.index.refresh)
        await wake.wait()


async def expire_pending(svc: Service[IntakeApp]) -> int:
    """Cancel every pending application whose completion deadline passed; how many it cancelled."""
    app = svc.app
    await asyncio.to_thread(app.index.refresh)
    cancelled = 0
    for tid in app.index.due(app.clock.now()):

        def decide(uow: UnitOfWork, tid: UUID = tid) -> bool:
            request = uow.get(tid)
            return isinstance(request, ServiceRequest) and request.expire(app.clock.now())

        if await svc.commands.run(decide):
            cancelled += 1
    await asyncio.to_thread(app.index.refresh)
    return cancelled


DEADLINE_SAFETY_SECONDS = 60.0  # the longest the completion timer sleeps without a save or a deadline falling due


async def completion_deadlines(svc: Service[IntakeApp]) -> None:
    """The durable timer: pending applications past their completion deadline are cancelled with the reason.

    Not a round each second: the timer sleeps until the earliest deadline the index knows, or until any instance
    saves (a save may add a deadline or settle one; at most one round a second under load)."""
    wake = svc.waiter(saved=True, pace=1.0)
    while True:
        await expire_pending(svc)
        # at least the pace: a deadline already past that the round could not settle (the index and the aggregate
        # out of step a moment) is tried again a second later, not a hundred times a second
        await wake.wait(max(wake.pace, until_next_deadline(svc.app)))


def until_next_deadline(app: IntakeApp) -> float:
    """Seconds until the earliest pending deadline has passed, at most DEADLINE_SAFETY_SECONDS. An injected clock
    (tests move it by hand) is looked at each second, as real time cannot say when it reaches a deadline."""
    if not isinstance(app.clock, SystemClock):
        return 1.0
    deadline = app.index.next_deadline()
    if deadline is None:
        return DEADLINE_SAFETY_SECONDS
    return min(DEADLINE_SAFETY_SECONDS, max(0.0, (deadline - app.clock.now()).total_seconds()) + 0.01)


def channel_tokens(svc: Service[IntakeApp]) -> TokenResolver:
    """Registered channel systems' credentials (only their hashes are stored; revocable)."""
    index = svc.app.index
    return followed_resolver(index.principal, index.refresh)
