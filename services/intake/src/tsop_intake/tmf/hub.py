"""TMF621 notifications: ``/hub`` listeners and their deliveries.

A registered listener gets ``POST {callback}/listener/{eventName}`` for each
ticket event it may see (a channel: its own tickets; staff: all). The
notification is written to the ``tmf_hub_delivery`` outbox in the same
transaction as the read-model change that caused it, so none is lost across a
crash; a delivery task sends them in order per listener and ticket, retrying
with exponential back-off, and records each attempt. ``eventId`` is stable, so
a listener can drop the rare repeat after a crash mid-delivery.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl
from uuid import UUID

import asyncpg
import httpx

from tsop_events.consumer import Incoming
from tsop_events.envelope import derived_id
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
        last_status int, last_error text, UNIQUE (event_id, hub_id))""",
    "CREATE INDEX IF NOT EXISTS tmf_hub_delivery_due ON tmf_hub_delivery (next_at) WHERE delivered_at IS NULL",
    """CREATE INDEX IF NOT EXISTS tmf_hub_delivery_order ON tmf_hub_delivery (hub_id, ticket_id, seq)
        WHERE delivered_at IS NULL""",
)


class InvalidSubscription(ValueError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


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


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(600.0, 0.5 * 2 ** min(attempts, 20)))


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


class Deliverer:
    """Sends due notifications; runs as a service task (several instances may run: rows are locked)."""

    def __init__(self, pool: asyncpg.Pool, http: httpx.AsyncClient, batch: int = 100) -> None:
        self.pool, self.http, self.batch = pool, http, batch

    async def run(self, idle: float = 0.2) -> None:
        while True:
            if await self.deliver_due() == 0:
                await asyncio.sleep(idle)

    async def deliver_due(self) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """SELECT d.seq, d.event_name, d.payload, d.attempts, h.callback FROM tmf_hub_delivery d
                   JOIN tmf_hub h ON h.id = d.hub_id
                   WHERE d.delivered_at IS NULL AND d.next_at <= now()
                   AND NOT EXISTS (SELECT 1 FROM tmf_hub_delivery e WHERE e.hub_id = d.hub_id
                                   AND e.ticket_id = d.ticket_id AND e.delivered_at IS NULL AND e.seq < d.seq)
                   ORDER BY d.seq LIMIT $1 FOR UPDATE OF d SKIP LOCKED""",
                self.batch,
            )
            if not rows:
                return 0
            results = await asyncio.gather(*(self._send(r) for r in rows))
            now = datetime.now(UTC)
            await conn.executemany(
                """UPDATE tmf_hub_delivery SET attempts = attempts + 1, last_status = $2, last_error = $3,
                   delivered_at = CASE WHEN $4::boolean THEN $5::timestamptz END, next_at = $6 WHERE seq = $1""",
                [
                    (r["seq"], status, error, ok, now, now + backoff(r["attempts"]))
                    for r, (ok, status, error) in zip(rows, results, strict=True)
                ],
            )
            return sum(1 for ok, _, _ in results if ok)

    async def _send(self, row: asyncpg.Record) -> tuple[bool, int | None, str | None]:
        url = listener_url(row["callback"], row["event_name"])
        try:
            r = await self.http.post(url, content=row["payload"], headers={"Content-Type": "application/json"})
        except httpx.HTTPError as exc:
            return False, None, f"{type(exc).__name__}: {exc}"[:500]
        if 200 <= r.status_code < 300:
            return True, r.status_code, None
        return False, r.status_code, r.text[:500]
