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


def test_a_batch_is_stored_as_its_records_one_by_one_would_be(pg: tuple[str, int]) -> None:
    """The store holds a domain topic's batch and writes it at its last record, a statement per table: the same
    rows as storing each record alone (the path a letter's recovered event still takes), in the same order."""
    topic = f"{PREFIX}tickets"

    async def go() -> None:
        stores: list[tuple[asyncpg.Pool, ArchiveStore]] = []
        for _ in range(2):
            s = ServiceSettings(service_name=f"ab_{uuid.uuid4().hex[:8]}", pg_host=pg[0], pg_port=pg[1],
                                topic_prefix=PREFIX)
            await ensure_database(s, [OFFSETS_DDL, *ARCHIVE_DDL])
            pool = await asyncpg.create_pool(s.pg_dsn(), min_size=1, max_size=2)
            stores.append((pool, ArchiveStore(pool, PREFIX)))
        t1, t2, t3 = (str(uuid.uuid4()) for _ in range(3))
        until = NOW + timedelta(days=2)
        offsets = iter(range(1, 1000))

        def rec(ev: wire.TicketEvent, eid: str) -> Incoming:
            env = wrap(ev, event_id=eid, source="test", time=NOW)
            return Incoming(topic, 0, next(offsets), ev.ticket_id, env, ev)

        submitted = wire.RequestSubmitted(
            ticket_id=t1, channel="web", customer_id="c1", customer_tier="gold", region="north",
            service_type="broadband.fault_repair", description="no\x00signal", time_requirement=wire.TimeRequirement(),
            submitted_at=NOW)
        resolved = wire.Resolved(ticket_id=t1, work_order_id="wo", technician_id="tech", resolution_code="fixed",
                                 summary="fixed", resolved_at=NOW)
        earlier = rec(wire.Closed(ticket_id=t3, reason="rated", closed_at=NOW), "t3-closed")  # sealed before
        batch = [
            rec(submitted, "t1-sub"),  # a body jsonb refuses: kept as it came
            rec(resolved, "t1-res"),
            rec(wire.Closed(ticket_id=t1, reason="rated", basis="rated", reopenable_until=until, closed_at=NOW),
                "t1-closed-1"),
            rec(submitted, "t1-sub"),  # the same event twice in one batch
            rec(wire.Reopened(ticket_id=t1, reason_code="reopen_requested", reason="again", requested_by="agent",
                              reopen_count=1, reopened_at=NOW), "t1-reopened"),
            rec(wire.Closed(ticket_id=t1, reason="rated", closed_at=NOW), "t1-closed-1"),  # redelivered: no effect
            rec(wire.RequestRejected(ticket_id=t2, reason_code="dup", reason="duplicate", rejected_at=NOW), "t2-rej"),
            rec(wire.Closed(ticket_id=t1, reason="rated", closed_at=NOW), "t1-closed-2"),
            rec(wire.Closed(ticket_id=t3, reason="rated", closed_at=NOW), "t3-closed"),  # redelivered after its
            # dossier was sealed: stays off the list
        ]
        res_at = batch[1].offset
        try:
            seen = []
            for i, (pool, store) in enumerate(stores):
                await store.process("ep", topic, 0, [earlier], earlier.offset)
                await projection.settle(pool, [t3])
                # two gaps of t1's Resolved: one failed at another record (a delivery now closes it), one at the
                # very record the batch delivers again (which does not)
                for source in (f"{topic}:0:900", f"{topic}:0:{res_at}"):
                    await pool.execute(
                        "INSERT INTO archive_gaps (letter_id, letter_time, ticket_id, event_id, consumer, error, "
                        "source, noted) VALUES ($1, $2, $3, 't1-res', 'x', 'boom', $1, nextval('archive_arrival'))",
                        source, NOW, t1)
                if i == 0:  # the reference: each record stored alone
                    async with pool.acquire() as conn, conn.transaction():
                        for r in batch:
                            await store._apply_one(conn, r)
                else:
                    await store.process("ep", topic, 0, batch, batch[-1].offset)
                events = await pool.fetch(
                    "SELECT ce_id, kafka_offset, key, ce_type, data, raw FROM archive_events ORDER BY seq")
                to_seal = await pool.fetch(
                    "SELECT ticket_id, closed_event_id, not_before, blocked FROM archive_to_seal ORDER BY ticket_id")
                gaps = await pool.fetch("SELECT source, delivered IS NOT NULL AS delivered FROM archive_gaps "
                                        "ORDER BY source")
                seen.append(([tuple(r) for r in events], [tuple(r) for r in to_seal], [tuple(r) for r in gaps]))
            assert seen[1] == seen[0]
            events, to_seal, gaps = seen[1]
            assert [(e[0], e[1]) for e in events] == [
                ("t3-closed", earlier.offset), ("t1-sub", batch[0].offset), ("t1-res", batch[1].offset),
                ("t1-closed-1", batch[2].offset), ("t1-reopened", batch[4].offset), ("t2-rej", batch[6].offset),
                ("t1-closed-2", batch[7].offset)]
            assert events[1][4] is None and b"\\u0000" in events[1][5]  # kept byte for byte in raw
            assert sorted(to_seal) == sorted([(t1, "t1-closed-2", None, False), (t2, "t2-rej", None, False)])
            assert gaps == [(f"{topic}:0:{res_at}", False), (f"{topic}:0:900", True)]
        finally:
            for pool, _ in stores:
                await pool.close()

    asyncio.run(go())
