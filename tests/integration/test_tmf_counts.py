"""TMF621's X-Total-Count rows never make two intake instances wait on each other (real PostgreSQL).

The per-combination counts used to be one row per combination of the categorical filters, shared by every
partition of the tickets topic. Two instances, each applying a batch of its own partitions, then locked the same
rows in different orders: one waited for the other's whole batch, or both deadlocked until PostgreSQL aborted one.
The rows are now per combination *and partition*: an instance applies its own partitions, so its rows are its own.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from tsop_events import schemas as wire
from tsop_events.consumer import OFFSETS_DDL, Incoming
from tsop_events.envelope import wrap
from tsop_events.settings import ServiceSettings
from tsop_events.store import ensure_database
from tsop_intake.tmf.projection import DDL, TmfTicketProjection

NOW = datetime(2026, 6, 1, 9, tzinfo=UTC)
pytestmark = pytest.mark.parametrize("bus", ["tansu"], indirect=True)


def submitted(partition: int, offset: int) -> Incoming:
    ticket = str(uuid.uuid4())
    event = wire.RequestSubmitted(
        ticket_id=ticket, channel="web", channel_id="portal", customer_id="c1", customer_tier="gold",
        region="north", service_type="broadband.fault_repair", description="no line",
        time_requirement=wire.TimeRequirement(), submitted_at=NOW,
    )
    env = wrap(event, event_id=f"{ticket}-0", source="test", time=NOW)
    return Incoming("tickets", partition, offset, ticket, env, event)


async def total(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT coalesce(sum(n), 0) FROM tmf_ticket_counts WHERE channel_id = 'portal'"))


async def test_two_instances_applying_their_partitions_never_wait_for_each_other(settings: ServiceSettings) -> None:
    await ensure_database(settings, [OFFSETS_DDL, *DDL])
    pool = await asyncpg.create_pool(settings.pg_dsn(), min_size=2, max_size=4)
    try:
        one, two = TmfTicketProjection(pool), TmfTicketProjection(pool)  # two instances, one database
        # instance one is in the middle of a batch of partition 0 (its transaction open, its rows locked) ...
        conn = await pool.acquire()
        tx = conn.transaction()
        await tx.start()
        try:
            await one.apply(conn, submitted(0, 0))
            # ... while instance two applies a batch of partition 1 with a ticket of the same combination
            await asyncio.wait_for(two.process("e", "tickets", 1, [submitted(1, 0)], 0), timeout=5)
        finally:
            await tx.commit()
            await pool.release(conn)
        assert await total(pool) == 2
    finally:
        await pool.close()


async def test_counts_from_before_the_partitions_rows_move_over_once(settings: ServiceSettings) -> None:
    await ensure_database(settings, [
        """CREATE TABLE tmf_ticket_count (
             channel_id text NOT NULL, status text NOT NULL, severity text NOT NULL, ticket_type text NOT NULL,
             priority_name text NOT NULL, n bigint NOT NULL,
             PRIMARY KEY (channel_id, status, severity, ticket_type, priority_name))""",
        "INSERT INTO tmf_ticket_count VALUES ('portal', 'acknowledged', '', 'fault', '', 7)",
    ])
    await ensure_database(settings, [OFFSETS_DDL, *DDL])
    await ensure_database(settings, [OFFSETS_DDL, *DDL])  # a second start changes nothing
    pool = await asyncpg.create_pool(settings.pg_dsn(), min_size=1, max_size=2)
    try:
        assert await total(pool) == 7
        assert await pool.fetchval("SELECT to_regclass('tmf_ticket_count')") is None
        await TmfTicketProjection(pool).process("e", "tickets", 2, [submitted(2, 0)], 0)
        assert await total(pool) == 8
    finally:
        await pool.close()
