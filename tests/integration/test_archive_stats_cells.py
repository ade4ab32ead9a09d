"""The statistics' per-day cells on real PostgreSQL: kept batch by batch by ``save_facts``, they equal the cells
built at once from the tickets (``stats_daily_rebuild``), which a read model from before the cells gets at start;
two instances starting together leave one set of cells."""

from __future__ import annotations

import asyncio
import random
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from tests.stats_data import lifecycle
from tsop_archive.stats.domain import COUNTERS, TicketFacts, fold_once
from tsop_archive.stats.projection import DDL, save_facts
from tsop_events.settings import ServiceSettings
from tsop_events.store import ensure_database

D0 = datetime(2026, 5, 25, tzinfo=UTC)
CELLS = "SELECT * FROM stats_daily ORDER BY day, channel, service_type, region, priority"


async def test_cells_kept_by_the_consumer_equal_the_cells_rebuilt_from_the_tickets(pg: tuple[str, int]) -> None:
    s = ServiceSettings(service_name=f"cells_{uuid.uuid4().hex[:8]}", pg_host=pg[0], pg_port=pg[1])
    await ensure_database(s, list(DDL))
    pool = await asyncpg.create_pool(s.pg_dsn(), min_size=1, max_size=4)
    try:
        rng = random.Random(11)
        events = [e for _ in range(60) for e in lifecycle(rng, D0, timedelta(days=6), reopen=True)]
        facts: dict[str, TicketFacts] = {}
        i = 0
        while i < len(events):  # batches as the consumer writes them: the facts and the cells' deltas together
            batch = events[i:i + rng.randint(1, 12)]
            before = {t: facts[t] for t, *_ in batch if t in facts}
            for ticket, event_id, event_type, body, at in batch:
                facts[ticket] = fold_once(facts.get(ticket) or TicketFacts(ticket), event_id, event_type, body, at)
            async with pool.acquire() as conn, conn.transaction():
                dirty = sorted({t for t, *_ in batch})
                await save_facts(conn, [facts[t] for t in dirty], [before[t] for t in dirty if t in before])
            i += len(batch)
        kept = [dict(r) for r in await pool.fetch(CELLS)]
        assert sum(r["submitted"] for r in kept) == 60 and any(r["assign"] for r in kept)
        # a read model from before the cells: two instances start at once, the cells are built once
        await pool.execute("DELETE FROM stats_daily")

        async def start() -> None:
            async with pool.acquire() as conn:
                for stmt in DDL:
                    await conn.execute(stmt)

        await asyncio.gather(start(), start())
        rebuilt = [dict(r) for r in await pool.fetch(CELLS)]
        # a cell the consumer emptied (a ticket accepted left the cell without priority) stays, all zeros
        live = [r for r in kept if any(r[c] for c in COUNTERS) or r["assign"] or r["resolve"] or r["reasons"] != "{}"]
        assert len(live) < len(kept) and rebuilt == live
    finally:
        await pool.close()
