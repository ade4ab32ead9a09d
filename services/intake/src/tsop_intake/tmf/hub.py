"""TMF621 notifications: ``/hub`` listeners and their deliveries.

A registered listener gets ``POST {callback}/listener/{eventName}`` for each
ticket event it may see (a channel: its own tickets; staff: all). The
notification is written to the ``tmf_hub_delivery`` outbox in the same
transaction as the read-model change that caused it, so none is lost across a
crash; a delivery task sends them in order per listener and ticket, and records
each attempt. ``eventId`` is stable, so a listener can drop the rare repeat
after a crash mid-delivery.

Deliveries go through ``tsop_events.outbound``: the callback is checked when
the listener registers and again, resolved, at every delivery (and connected to
the checked address). Retries are bounded (``TSOP_OUTBOUND_MAX_ATTEMPTS``,
exponential back-off with jitter); after the last attempt, or at once when the
guard refuses the destination, the row is marked ``dead_at`` (with its
``last_error``), a ``deadletter`` record is published and
``tsop_outbound_deadlettered_total{purpose="tmf-hub"}`` counts it; later
notifications of the ticket go on. Each delivery runs on its own (a lease in
``next_at`` keeps other instances off it), at most ``per_listener`` at once per
listener, so a slow or failing listener never holds up the others.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl
from uuid import UUID

import asyncpg
import httpx

from tsop_events import outbound
from tsop_events.consumer import Incoming
from tsop_events.envelope import derived_id
from tsop_events.errors import Invalid
from tsop_events.personal import keyring_of
from tsop_events.runtime import Runtime
from tsop_events.wake import SAFETY_NET_SECONDS, Waiter
from tsop_intake.tmf import model

log = logging.getLogger(__name__)

EVENT_NAMES = (
    "TroubleTicketCreateEvent",
    "TroubleTicketStatusChangeEvent",
    "TroubleTicketAttributeValueChangeEvent",
    "TroubleTicketResolvedEvent",
    "TroubleTicketInformationRequiredEvent",
    "TroubleTicketDeleteEvent",
)
BASE = "/tmf-api/troubleTicket/v5/troubleTicket"

DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS tmf_hub (
        id uuid PRIMARY KEY, callback text NOT NULL, query text, event_types text[],
        owner text NOT NULL, channel_id text, created_at timestamptz NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS tmf_hub_delivery (
        seq bigserial PRIMARY KEY, event_id text NOT NULL, hub_id uuid NOT NULL, ticket_id uuid NOT NULL,
        event_name text NOT NULL, payload jsonb NOT NULL,
        attempts int NOT NULL DEFAULT 0, next_at timestamptz NOT NULL, delivered_at timestamptz,
        last_status int, last_error text, dead_at timestamptz, UNIQUE (event_id, hub_id))""",
    "ALTER TABLE tmf_hub_delivery ADD COLUMN IF NOT EXISTS dead_at timestamptz",
    "DROP INDEX IF EXISTS tmf_hub_delivery_due",
    "DROP INDEX IF EXISTS tmf_hub_delivery_order",
    """CREATE INDEX IF NOT EXISTS tmf_hub_delivery_pending ON tmf_hub_delivery (next_at)
        WHERE delivered_at IS NULL AND dead_at IS NULL""",
    """CREATE INDEX IF NOT EXISTS tmf_hub_delivery_pending_order ON tmf_hub_delivery (hub_id, ticket_id, seq)
        WHERE delivered_at IS NULL AND dead_at IS NULL""",
    """CREATE INDEX IF NOT EXISTS tmf_hub_delivery_dead ON tmf_hub_delivery (hub_id, dead_at)
        WHERE dead_at IS NOT NULL""",
)


class InvalidSubscription(Invalid):
    """A listener's ``query`` the hub cannot follow."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason, field)
        self.extra["field"] = field


async def check_callback(guard: outbound.OutboundGuard, callback: str) -> None:
    """Refuse a listener the outbound guard would never deliver to (checked again, resolved, at every delivery)."""
    try:
        await guard.check(callback)
    except outbound.Refused as exc:
        raise InvalidSubscription("callback", f"{exc.reason}: listeners may not be there") from None


def parse_query(query: str | None) -> list[str] | None:
    """The event types a listener asked for (``eventType=A,B``); None for all."""
    if not query:
        return None
    wanted: list[str] = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name != "eventType":
            raise InvalidSubscription("query", f"only eventType=… can be subscribed to, not {name!r}")
        for v in value.split(","):
            if v not in EVENT_NAMES:
                raise InvalidSubscription("query", f"unknown event type {v!r}; one of {', '.join(EVENT_NAMES)}")
            wanted.append(v)
    return wanted or None


def listener_url(callback: str, event_name: str) -> str:
    return f"{callback.rstrip('/')}/listener/{event_name[0].lower()}{event_name[1:]}"


async def ticket_resource(conn: asyncpg.Connection | asyncpg.Pool, ticket_id: UUID) -> dict[str, Any] | None:
    row = await conn.fetchrow("SELECT * FROM tmf_ticket WHERE ticket_id = $1", ticket_id)
    if row is None:
        return None
    history = await conn.fetch(
        "SELECT status, reason, at FROM tmf_status_change WHERE ticket_id = $1 ORDER BY seq", ticket_id
    )
    ticket = dict(row)
    ticket["doc"] = json.loads(ticket["doc"])
    return model.render(ticket, [dict(h) for h in history], BASE)


class Outbox:
    """Writes notifications beside the read-model change (called by the projection)."""

    async def enqueue(self, conn: asyncpg.Connection, incoming: Incoming, ticket_id: UUID, event_name: str) -> None:
        hubs = await conn.fetch(
            """SELECT id FROM tmf_hub h WHERE (h.event_types IS NULL OR $1 = ANY (h.event_types))
               AND (h.channel_id IS NULL OR h.channel_id = (SELECT channel_id FROM tmf_ticket WHERE ticket_id = $2))""",
            event_name, ticket_id,
        )
        if not hubs:
            return
        resource = await ticket_resource(conn, ticket_id)
        event_id = str(derived_id("tmf-notification", incoming.envelope.id, event_name))
        payload = {
            "@type": event_name,
            "eventId": event_id,
            "eventTime": model.iso(incoming.envelope.time),
            "eventType": event_name,
            "correlationId": incoming.envelope.correlation_id or str(ticket_id),
            "domain": "TroubleTicket",
            "event": {"troubleTicket": resource},
        }
        now = datetime.now(UTC)
        await conn.executemany(
            """INSERT INTO tmf_hub_delivery (event_id, hub_id, ticket_id, event_name, payload, next_at)
               VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING""",
            [(event_id, h["id"], ticket_id, event_name, json.dumps(payload), now) for h in hubs],
        )


DeadLetter = Callable[[asyncpg.Record, int, str], Awaitable[None]]


class Deliverer:
    """Sends due notifications; runs as a service task (several instances may run: rows are leased)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        http: httpx.AsyncClient,
        guard: outbound.OutboundGuard,
        policy: outbound.RetryPolicy,
        *,
        timeout: float = 5.0,
        capacity: int = 200,
        per_listener: int = 8,
        dead: DeadLetter | None = None,
        opener: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.pool, self.http, self.guard, self.policy = pool, http, guard, policy
        self.opener = opener  # the listener gets personal data opened; the stored payload stays sealed
        self.timeout, self.capacity, self.per_listener, self.dead = timeout, capacity, per_listener, dead
        self.lease = timedelta(seconds=2 * timeout + guard.resolve_timeout + 10)
        self.inflight: set[asyncio.Task[None]] = set()
        self.per_hub: Counter[UUID] = Counter()
        self.wake: Waiter | None = None

    async def run(self, idle: float = 0.2, wake: Waiter | None = None) -> None:
        """Claim and start what is due, round after round; between rounds that started nothing, wait for ``wake``
        (the projection stored notifications, a delivery finished) or ``idle`` seconds (a retry falling due)."""
        self.wake = wake
        while True:
            if await self.claim() == 0:
                await self.settle(idle)

    async def settle(self, timeout: float) -> None:
        """Wait until a delivery finishes, or ``timeout``."""
        if self.wake is not None:
            await self.wake.wait(timeout)
        elif self.inflight:
            await asyncio.wait(self.inflight, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        else:
            await asyncio.sleep(timeout)

    async def claim(self) -> int:
        """Lease the due notifications there is room for and start each delivery; how many started."""
        room = self.capacity - len(self.inflight)
        if room <= 0:
            return 0
        busy = [h for h, n in self.per_hub.items() if n >= self.per_listener]
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """SELECT d.seq, d.hub_id, d.ticket_id, d.event_id, d.event_name, d.payload, d.attempts, h.callback
                   FROM tmf_hub_delivery d JOIN tmf_hub h ON h.id = d.hub_id
                   WHERE d.delivered_at IS NULL AND d.dead_at IS NULL AND d.next_at <= now()
                   AND NOT (d.hub_id = ANY ($2::uuid[]))
                   AND NOT EXISTS (SELECT 1 FROM tmf_hub_delivery e WHERE e.hub_id = d.hub_id
                                   AND e.ticket_id = d.ticket_id AND e.delivered_at IS NULL AND e.dead_at IS NULL
                                   AND e.seq < d.seq)
                   ORDER BY d.seq LIMIT $1 FOR UPDATE OF d SKIP LOCKED""",
                room, busy,
            )
            taken: list[asyncpg.Record] = []
            for r in rows:  # at most per_listener of one listener in flight
                if self.per_hub[r["hub_id"]] < self.per_listener:
                    self.per_hub[r["hub_id"]] += 1
                    taken.append(r)
            if taken:
                await conn.execute("UPDATE tmf_hub_delivery SET next_at = now() + $2::interval WHERE seq = ANY ($1)",
                                   [r["seq"] for r in taken], self.lease)
        for r in taken:
            task = asyncio.create_task(self._deliver(r))
            self.inflight.add(task)
            task.add_done_callback(self._finished)
        return len(taken)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.inflight.discard(task)
        if self.wake is not None:
            self.wake.ring()  # room for the next claim

    async def deliver_due(self) -> int:
        """Start what is due and wait for those deliveries (tests; ``run`` never waits for a batch)."""
        started = await self.claim()
        while self.inflight:
            await asyncio.wait(self.inflight)
        return started

    async def _deliver(self, row: asyncpg.Record) -> None:
        try:
            ok, status, error, final = await self._send(row)
            attempts = row["attempts"] + 1
            delay = None if final else self.policy.delay(attempts)
            now = datetime.now(UTC)
            if ok:
                await self.pool.execute(
                    """UPDATE tmf_hub_delivery SET attempts = $2, last_status = $3, last_error = NULL,
                       delivered_at = $4 WHERE seq = $1""", row["seq"], attempts, status, now)
            elif delay is not None:
                await self.pool.execute(
                    """UPDATE tmf_hub_delivery SET attempts = $2, last_status = $3, last_error = $4, next_at = $5
                       WHERE seq = $1""", row["seq"], attempts, status, error, now + timedelta(seconds=delay))
            else:
                await self.pool.execute(
                    """UPDATE tmf_hub_delivery SET attempts = $2, last_status = $3, last_error = $4, dead_at = $5
                       WHERE seq = $1""", row["seq"], attempts, status, error, now)
                if self.dead is not None:
                    await self.dead(row, attempts, error or f"HTTP {status}")
            outbound.OUTBOUND_ATTEMPTS.labels("tmf-hub", "ok" if ok else "dead" if delay is None else "retry").inc()
        except Exception:  # the lease runs out and the row is tried again; never stop the deliverer
            log.exception("hub delivery %s failed to record its outcome", row["seq"])
        finally:
            self.per_hub[row["hub_id"]] -= 1
            if self.per_hub[row["hub_id"]] <= 0:
                del self.per_hub[row["hub_id"]]

    async def _send(self, row: asyncpg.Record) -> tuple[bool, int | None, str | None, bool]:
        """(delivered, status, error, give up now)."""
        payload = row["payload"].encode() if isinstance(row["payload"], str) else bytes(row["payload"])
        if self.opener is not None:
            payload = await asyncio.to_thread(self.opener, payload)
        sent = await outbound.send(self.guard, self.http, listener_url(row["callback"], row["event_name"]),
                                   payload, purpose="tmf-hub", timeout=self.timeout)
        return sent.ok, sent.status, sent.error[:500] if sent.error else None, sent.final


async def deliver(runtime: Runtime, timeout: float) -> None:
    """The delivery task of a service: guard, retry policy and dead letters from its settings."""
    settings = runtime.settings

    async def dead(row: asyncpg.Record, attempts: int, error: str) -> None:
        await outbound.dead_letter(
            runtime.producer, settings, purpose="tmf-hub", key=f"{row['hub_id']}:{row['event_id']}",
            url=listener_url(row["callback"], row["event_name"]), payload=row["payload"], attempts=attempts,
            error=error, subject=str(row["ticket_id"]),
        )

    async with outbound.client(timeout) as http:
        deliverer = Deliverer(runtime.pool, http, outbound.guard_for(settings),
                              outbound.RetryPolicy.from_settings(settings), timeout=timeout, dead=dead,
                              opener=keyring_of(settings).open_json)
        # woken when the projection stored notifications; a due retry is found within the safety net
        await deliverer.run(idle=SAFETY_NET_SECONDS, wake=runtime.waiter(saved=False, stored=True, pace=0.02))
