"""Intake's event store, its in-process index, the completion timer, and the one wire mapping."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from tsop_events import schemas as wire
from tsop_events.auth import Principal, Role
from tsop_events.clock import Clock, SystemClock
from tsop_events.relay import Outgoing
from tsop_events.settings import ServiceSettings
from tsop_events.store import EventStoreApp, LogFollower, retry_on_conflict
from tsop_intake.catalogue import Catalogue
from tsop_intake.domain import (
    SELF_SERVICE,
    ChannelCredentialIssued,
    ChannelCredentialRevoked,
    ChannelRegistered,
    ChannelSettingsChanged,
    ServiceRequest,
    ServiceRequestAccepted,
    ServiceRequestCancelled,
    ServiceRequestLinked,
    ServiceRequestPending,
    ServiceRequestQueued,
    ServiceRequestRejected,
    ServiceRequestSubmitted,
    ServiceRequestUpdated,
    location_key,
)

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
    location: dict[str, Any] | None
    status: str
    channel_id: str | None
    customer_tier: str = "standard"
    region: str = ""
    since: datetime | None = None
    reasons: list[str] = field(default_factory=list)

    @property
    def key(self) -> DupKey:
        return (self.customer_id, self.service_type, location_key(self.location))


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
        self.by_key: dict[DupKey, UUID] = {}
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

    def _unseen(self, n: Any) -> bool:
        oid = n.originator_id if isinstance(n.originator_id, UUID) else UUID(str(n.originator_id))
        return self.versions.get(oid, 0) < int(n.originator_version)

    def observe(self, events: Iterable[Any]) -> None:
        """Apply events (from the log, or about to be saved here); each is applied once."""
        with self.lock:
            for e in events:
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
            self._close(ticket)
            self.pending.pop(ticket, None)
            for w in (*self.per_channel.values(), *self.per_customer.values()):
                w.discard(ticket)

    def apply(self, e: Any) -> None:
        tid = e.originator_id
        if isinstance(e, ServiceRequestSubmitted):
            req = OpenRequest(e.customer_id, e.service_type, e.location, "submitted", e.channel_id,
                              e.customer_tier, e.region, e.submitted_at)
            self.open[tid] = req
            self.by_key.setdefault(req.key, tid)
            self.per_channel.setdefault(e.channel_id or e.channel, Window(timedelta(minutes=1))).add(
                tid, e.submitted_at)
            if e.customer_id:  # a ticket without its customer yet counts for nobody
                self.per_customer.setdefault(e.customer_id, Window(timedelta(days=1))).add(tid, e.submitted_at)
            self.submitted_by_kind[e.channel] = self.submitted_by_kind.get(e.channel, 0) + 1
        elif isinstance(e, ServiceRequestUpdated):
            updated = self.open.get(tid)
            if updated is not None:
                req = updated
                if self.by_key.get(req.key) == tid:
                    del self.by_key[req.key]
                for name in ("customer_id", "service_type", "location", "customer_tier", "region"):
                    if name in e.changes:
                        setattr(req, name, e.changes[name])
                self.by_key.setdefault(req.key, tid)
        elif isinstance(e, ServiceRequestPending):
            self.pending[tid] = e.complete_by
            self._status(tid, "pending_information")
            self.queued.pop(tid, None)
        elif isinstance(e, ServiceRequestQueued):
            self.pending.pop(tid, None)
            queued = self._status(tid, "queued_for_review")
            if queued is not None:
                queued.since, queued.reasons = e.queued_at, list(e.reasons)
                self.queued[tid] = queued
            self._outcome("queued_for_review")
        elif isinstance(e, ServiceRequestAccepted):
            self.pending.pop(tid, None)
            self.queued.pop(tid, None)
            self._status(tid, "accepted")
            self._outcome("accepted_by_rules" if e.decided_by == "rules" else "accepted_by_agent")
        elif isinstance(e, ServiceRequestRejected):
            self._close(tid)
            self._outcome("rejected_by_rules" if e.decided_by == "rules" else "rejected_by_agent")
        elif isinstance(e, ServiceRequestLinked):
            self._close(tid)
            self._outcome("linked_duplicate")
        elif isinstance(e, ServiceRequestCancelled):
            self._close(tid)
            self._outcome(f"cancelled:{e.reason_code}")
        elif isinstance(e, ChannelRegistered):
            self.channels[str(tid)] = ChannelInfo(str(tid), e.name, e.kind, e.callback_url, e.rate_limit_per_minute)
        elif isinstance(e, ChannelCredentialIssued):
            ch = self.channels[str(tid)]
            ch.credentials[e.credential_id] = e.token_hash
            self.tokens[e.token_hash] = (str(tid), e.credential_id)
        elif isinstance(e, ChannelCredentialRevoked):
            self.channels[str(tid)].credentials.pop(e.credential_id, None)
            self.tokens.pop(e.token_hash, None)
        elif isinstance(e, ChannelSettingsChanged):
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

    def open_duplicate(self, customer_id: str, service_type: str, location: dict[str, Any] | None) -> UUID | None:
        with self.lock:
            return self.by_key.get((customer_id, service_type, location_key(location)))

    def drop_closed(self, ticket: UUID) -> None:
        """A request the rest of the platform finished (resolved, closed): no longer a duplicate target."""
        with self.lock:
            self._close(ticket)

    def recent(self, channel_key: str, customer_id: str, now: datetime) -> tuple[int, int]:
        with self.lock:
            ch = self.per_channel.get(channel_key)
            cu = self.per_customer.get(customer_id)
            return (ch.count(now) if ch else 0, cu.count(now) if cu else 0)

    def due(self, now: datetime) -> list[UUID]:
        with self.lock:
            return [tid for tid, at in self.pending.items() if at < now]

    def shares(self) -> dict[str, Any]:
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


class IntakeApp(EventStoreApp):
    def __init__(
        self,
        settings: ServiceSettings | None = None,
        env: dict[str, str] | None = None,
        catalogue: Catalogue | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(settings, env)
        self.catalogue = catalogue or Catalogue.load()
        self.clock = clock or SystemClock()
        self.index = IntakeIndex(self)

    def get_request(self, ticket_id: UUID) -> ServiceRequest | None:
        found = self.find(ticket_id)
        return found if isinstance(found, ServiceRequest) else None

    def expire_pending(self) -> int:
        """The completion-deadline timer: cancel every pending application whose deadline passed."""
        self.index.refresh()
        cancelled = 0
        for tid in self.index.due(self.clock.now()):
            if self._expire(tid):
                cancelled += 1
        self.index.refresh()
        return cancelled

    @retry_on_conflict()
    def _expire(self, tid: UUID) -> bool:
        request = self.get_request(tid)
        if request is None or not request.expire(self.clock.now()):
            return False
        self.save(request)
        return True


def to_wire(event: Any) -> Outgoing | None:
    ticket = str(event.originator_id)
    if isinstance(event, ServiceRequestSubmitted):
        return Outgoing(
            wire.RequestSubmitted(
                ticket_id=ticket,
                channel=wire.Channel(event.channel),
                channel_id=event.channel_id,
                channel_request_ref=event.channel_request_ref,
                customer_id=event.customer_id,
                customer_tier=wire.CustomerTier(event.customer_tier),
                region=event.region,
                service_type=event.service_type,
                description=event.description,
                time_requirement=wire.TimeRequirement.model_validate(event.time_requirement),
                special_needs=event.special_needs,
                callback_url=event.callback_url,
                location=wire.Location.model_validate(event.location) if event.location else None,
                details=event.details,
                attributes=getattr(event, "attributes", None) or {},
                submitted_at=event.submitted_at,
            )
        )
    if isinstance(event, ServiceRequestAccepted):
        return Outgoing(
            wire.RequestAccepted(
                ticket_id=ticket,
                service_type=event.service_type,
                region=event.region,
                priority=event.priority,
                customer_tier=wire.CustomerTier(event.customer_tier),
                resolve_by=event.resolve_by,
                reason_code=event.reason_code,
                decided_by=event.decided_by,
                accepted_at=event.accepted_at,
            )
        )
    if isinstance(event, ServiceRequestRejected):
        return Outgoing(
            wire.RequestRejected(
                ticket_id=ticket, reason_code=event.reason_code, reason=event.reason, decided_by=event.decided_by,
                rejected_at=event.rejected_at,
            )
        )
    if isinstance(event, ServiceRequestPending):
        return Outgoing(
            wire.RequestPendingInformation(
                ticket_id=ticket,
                missing=[wire.MissingInformation(**m) for m in event.missing],
                complete_by=event.complete_by,
                pending_at=event.pending_at,
            )
        )
    if isinstance(event, ServiceRequestQueued):
        return Outgoing(wire.RequestQueuedForReview(ticket_id=ticket, reasons=event.reasons, queued_at=event.queued_at))
    if isinstance(event, ServiceRequestLinked):
        return Outgoing(
            wire.RequestLinked(
                ticket_id=ticket, duplicate_of=event.duplicate_of, reason=event.reason, linked_at=event.linked_at
            )
        )
    if isinstance(event, ServiceRequestUpdated):
        return Outgoing(
            wire.RequestUpdated(
                ticket_id=ticket, changes=event.changes, updated_by=event.updated_by, updated_at=event.updated_at
            )
        )
    if isinstance(event, ServiceRequestCancelled):
        return Outgoing(
            wire.RequestCancelled(
                ticket_id=ticket,
                reason_code=event.reason_code,
                reason=event.reason,
                cancelled_by=event.cancelled_by,
                cancelled_at=event.cancelled_at,
            )
        )
    return None  # channel registry events stay inside intake
