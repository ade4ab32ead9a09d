"""The archive on real PostgreSQL: a closure that may be reopened is sealed only after its period; a
Reopened takes the ticket off the list until its next Closed; a redelivered older event undoes nothing."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from tsop_archive import projection
from tsop_archive.projection import DDL as ARCHIVE_DDL
from tsop_archive.projection import ArchiveStore
from tsop_events import schemas as wire
from tsop_events.consumer import OFFSETS_DDL, Incoming
from tsop_events.envelope import wrap
from tsop_events.settings import ServiceSettings
from tsop_events.store import ensure_database

NOW = datetime(2026, 6, 1, 9, tzinfo=UTC)
PREFIX = "ar."


def test_the_seal_waits_for_the_reopen_period_and_a_reopening_takes_the_ticket_off(pg: tuple[str, int]) -> None:
    async def go() -> None:
        s = ServiceSettings(service_name=f"ar_{uuid.uuid4().hex[:8]}", pg_host=pg[0], pg_port=pg[1],
                            topic_prefix=PREFIX)
        await ensure_database(s, [OFFSETS_DDL, *ARCHIVE_DDL])
        pool = await asyncpg.create_pool(s.pg_dsn(), min_size=1, max_size=2)
        store = ArchiveStore(pool, PREFIX)
        offset = 0

        async def deliver(ev: wire.TicketEvent, eid: str | None = None) -> str:
            nonlocal offset
            offset += 1
            eid = eid or f"e{offset}"
            env = wrap(ev, event_id=eid, source="test", time=NOW)
            topic = f"{PREFIX}tickets"
            await store.process("ep", topic, 0, [Incoming(topic, 0, offset, ev.ticket_id, env, ev)], offset)
            return eid

        try:
            t = str(uuid.uuid4())
            until = NOW + timedelta(days=2)
            first = await deliver(wire.Closed(ticket_id=t, reason="rated", basis="rated", reopenable_until=until,
                                              closed_at=NOW))
            assert await projection.due(pool, 10, None, NOW + timedelta(days=1)) == []
            assert not await projection.any_due(pool, NOW + timedelta(days=1))
            assert await projection.due(pool, 10, None, until) == [(t, first)]
            await deliver(wire.Reopened(ticket_id=t, reason_code="reopen_requested", reason="dropped again",
                                        requested_by="agent", reopen_count=1, reopened_at=NOW))
            assert await projection.due(pool, 10, None, until + timedelta(days=30)) == []
            await deliver(wire.Closed(ticket_id=t, reason="rated", closed_at=NOW), eid=first)  # a redelivery
            assert await projection.due(pool, 10, None, until + timedelta(days=30)) == []
            last = await deliver(wire.Closed(ticket_id=t, reason="rated", basis="rated", closed_at=NOW))
            assert await projection.due(pool, 10, None, NOW) == [(t, last)]  # a final closure: due at once
        finally:
            await pool.close()

    asyncio.run(go())
