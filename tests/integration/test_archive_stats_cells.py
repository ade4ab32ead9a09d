"""The statistics' per-day cells on real PostgreSQL: kept batch by batch by ``save_facts``, they equal the cells
built at once from the tickets (``stats_daily_rebuild``), which a read model from before the cells gets at start;
two instances starting together leave one set of cells."""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from tests.stats_data import lifecycle
from tsop_archive.stats.domain import COUNTERS, Question, TicketFacts, fold_once
from tsop_archive.stats.domain import report as domain_report
from tsop_archive.stats.projection import DDL, FACT_COLUMNS, facts_of, report, row_of, save_facts
from tsop_events.settings import ServiceSettings
from tsop_events.store import ensure_database

D0 = datetime(2026, 5, 25, tzinfo=UTC)
# each cell with its durations as sorted arrays of every value (``stats_daily_values`` counts each value once)
_VALUES = """coalesce((SELECT array_agg(x.v ORDER BY x.v) FROM stats_daily_values x, generate_series(1, x.n)
    WHERE x.kind = '{kind}' AND x.day = d.day AND x.channel IS NOT DISTINCT FROM d.channel
      AND x.service_type IS NOT DISTINCT FROM d.service_type AND x.region IS NOT DISTINCT FROM d.region
      AND x.priority IS NOT DISTINCT FROM d.priority), '{{}}') AS {kind}"""
CELLS = (f"SELECT d.*, {_VALUES.format(kind='assign')}, {_VALUES.format(kind='resolve')} FROM stats_daily d "
         "ORDER BY day, channel, service_type, region, priority")


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

        # as two starts do: each under the service's schema lock (the DDL is not safe against itself: two
        # concurrent CREATE OR REPLACE FUNCTION fail with "tuple concurrently updated")
        await asyncio.gather(ensure_database(s, list(DDL)), ensure_database(s, list(DDL)))
        rebuilt = [dict(r) for r in await pool.fetch(CELLS)]
        # a cell the consumer emptied (a ticket accepted left the cell without priority) stays, all zeros
        live = [r for r in kept if any(r[c] for c in COUNTERS) or r["assign"] or r["resolve"] or r["reasons"] != "{}"]
        assert len(live) < len(kept) and rebuilt == live
    finally:
        await pool.close()


VALUES = ("SELECT day, channel, service_type, region, priority, kind, v, n FROM stats_daily_values "
          "ORDER BY 1, 2, 3, 4, 5, 6, 7")


def _settings(pg: tuple[str, int], name: str) -> ServiceSettings:
    return ServiceSettings(service_name=f"{name}_{uuid.uuid4().hex[:8]}", pg_host=pg[0], pg_port=pg[1])


async def _database(s: ServiceSettings) -> asyncpg.Pool:
    await ensure_database(s, list(DDL))
    return await asyncpg.create_pool(s.pg_dsn(), min_size=1, max_size=4)


WRITES = "SELECT sum(n_tup_ins + n_tup_upd + n_tup_del) FROM pg_stat_xact_all_tables"


async def test_a_batch_writes_as_many_rows_into_a_cell_of_thousands_of_tickets_as_into_one_of_a_few(
    pg: tuple[str, int],
) -> None:
    """A ticket's resolution moves its durations into its day's cell: what that writes (rows inserted, updated,
    deleted, their TOAST included) does not grow with how many tickets the cell already holds."""
    pool = await _database(_settings(pg, "cellcost"))
    rng = random.Random(5)
    day0, day1 = D0, D0 + timedelta(days=1)

    def ticket(day: datetime, resolved: bool) -> TicketFacts:
        t = day + timedelta(seconds=rng.uniform(0, 3600))
        f = TicketFacts(str(uuid.UUID(int=rng.getrandbits(128))), channel="web", service_type="x", region="north",
                        priority=2, submitted_at=t, accepted_at=t + timedelta(minutes=1),
                        first_assigned_at=t + timedelta(seconds=rng.uniform(60, 7200)))
        if resolved:
            f.resolved_at = f.ended_at = t + timedelta(seconds=rng.uniform(7200, 90000))
            f.resolutions = 1
        return f

    try:
        # 4,000 tickets in one cell of day 0, 3 in the same cell of day 1
        crowd = [ticket(day0, True) for _ in range(4000)] + [ticket(day1, True) for _ in range(3)]
        await pool.copy_records_to_table("stats_tickets", records=[row_of(f) for f in crowd],
                                         columns=[*FACT_COLUMNS, "assign_seconds", "resolve_seconds"])
        await pool.execute("SELECT stats_daily_rebuild()")

        async def written(day: datetime) -> int:
            before = ticket(day, False)
            assert before.submitted_at is not None
            end = before.submitted_at + timedelta(hours=9)
            after = replace(before, resolved_at=end, ended_at=end, resolutions=1)
            async with pool.acquire() as conn:
                async with conn.transaction():
                    await save_facts(conn, [before])
                async with conn.transaction():  # (the counts not yet reported of earlier ones: subtracted)
                    earlier = int(await conn.fetchval(WRITES))
                    await save_facts(conn, [after], [before])
                    return int(await conn.fetchval(WRITES)) - earlier

        crowded, sparse = await written(day0), await written(day1)
        assert crowded == sparse, f"a cell of 4,000 tickets: {crowded} rows written, a cell of 3: {sparse}"
        # and the cells still answer exactly
        q = Question(day0, day1 + timedelta(days=1), "day")
        got = await report(pool, q)
        rows = await pool.fetch(f"SELECT {', '.join(FACT_COLUMNS)} FROM stats_tickets")
        want = domain_report(q, [facts_of(r, []) for r in rows])
        assert got.total.time_to_resolve == want.total.time_to_resolve
        assert [p.time_to_assign for p in got.series] == [p.time_to_assign for p in want.series]
    finally:
        await pool.close()


def _events_with_removals(rng: random.Random, n: int) -> list[tuple[str, str, str, dict[str, Any], datetime]]:
    """Lifecycles whose events arrive out of order (a ticket assigned before it is accepted: its time to assign
    counted in the cell without priority, then moved) and some of whose tickets move region after their
    resolution (their durations leave a cell for another)."""
    events = []
    for _ in range(n):
        one = lifecycle(rng, D0, timedelta(days=3), reopen=True)
        if rng.random() < 0.3 and len(one) > 4:
            ticket, _, _, _, at = one[-1]
            one.append((ticket, f"{ticket}-moved", "tsop.ticket.request-updated.v1",
                        {"ticket_id": ticket, "changes": {"region": rng.choice(["west", "north"])}}, at))
        if rng.random() < 0.3 and len(one) > 4:
            one[1], one[3] = one[3], one[1]
        events += one
    return events


async def test_values_kept_with_removals_and_redeliveries_equal_the_values_rebuilt(pg: tuple[str, int]) -> None:
    pool = await _database(_settings(pg, "cellmoves"))
    try:
        for seed in range(3):
            await pool.execute("TRUNCATE stats_tickets, stats_assignments, stats_daily, stats_daily_values")
            rng = random.Random(seed)
            events = _events_with_removals(rng, 40)
            facts: dict[str, TicketFacts] = {}
            i = 0
            while i < len(events):
                batch = events[i:i + rng.randint(1, 10)]
                for _ in range(2 if rng.random() < 0.3 else 1):  # redelivered: folded once
                    before = {t: facts[t] for t, *_ in batch if t in facts}
                    for ticket, event_id, event_type, body, at in batch:
                        facts[ticket] = fold_once(facts.get(ticket) or TicketFacts(ticket), event_id, event_type,
                                                  body, at)
                    async with pool.acquire() as conn, conn.transaction():
                        dirty = sorted({t for t, *_ in batch})
                        await save_facts(conn, [facts[t] for t in dirty], [before[t] for t in dirty if t in before])
                i += len(batch)
            kept = [tuple(r) for r in await pool.fetch(VALUES)]
            assert all(r[-1] > 0 for r in kept)  # a value at 0 is deleted
            await pool.execute("SELECT stats_daily_rebuild()")
            assert [tuple(r) for r in await pool.fetch(VALUES)] == kept
            q = Question(D0, D0 + timedelta(days=4), "day")
            got, want = await report(pool, q), domain_report(q, facts.values())
            assert [(p.time_to_assign, p.time_to_resolve) for p in [got.total, *got.series]] == [
                (p.time_to_assign, p.time_to_resolve) for p in [want.total, *want.series]]
    finally:
        await pool.close()


async def test_cells_that_held_their_values_in_arrays_are_migrated_at_start(pg: tuple[str, int]) -> None:
    """A read model from before ``stats_daily_values`` (each cell's values in arrays): the values are counted
    into the new table once, the arrays dropped, and the reports answer as before; two instances starting at
    once migrate once."""
    s = _settings(pg, "cellsold")
    pool = await _database(s)
    try:
        rng = random.Random(3)
        events = [e for _ in range(50) for e in lifecycle(rng, D0, timedelta(days=3), reopen=True)]
        facts: dict[str, TicketFacts] = {}
        for i in range(0, len(events), 7):
            batch = events[i:i + 7]
            before = {t: facts[t] for t, *_ in batch if t in facts}
            for ticket, event_id, event_type, body, at in batch:
                facts[ticket] = fold_once(facts.get(ticket) or TicketFacts(ticket), event_id, event_type, body, at)
            async with pool.acquire() as conn, conn.transaction():
                dirty = sorted({t for t, *_ in batch})
                await save_facts(conn, [facts[t] for t in dirty], [before[t] for t in dirty if t in before])
        q = Question(D0, D0 + timedelta(days=4), "day")
        answer, values = await report(pool, q), await pool.fetch(VALUES)
        cells = [dict(r) for r in await pool.fetch(CELLS)]
        # the shape of before: the values in arrays in the cells' rows, no table of values
        await pool.execute("ALTER TABLE stats_daily ADD COLUMN assign float8[] NOT NULL DEFAULT '{}', "
                           "ADD COLUMN resolve float8[] NOT NULL DEFAULT '{}'")
        await pool.execute(f"UPDATE stats_daily d SET assign = {_VALUES.format(kind='assign').split(' AS ')[0]}, "
                           f"resolve = {_VALUES.format(kind='resolve').split(' AS ')[0]}")
        await pool.execute("DROP TABLE stats_daily_values")
        assert sum(len(r["assign"]) for r in await pool.fetch("SELECT assign FROM stats_daily")) > 20

        await asyncio.gather(ensure_database(s, list(DDL)), ensure_database(s, list(DDL)))  # as two starts do
        assert await pool.fetch(VALUES) == values
        assert [dict(r) for r in await pool.fetch(CELLS)] == cells
        assert not await pool.fetchval("SELECT count(*) FROM information_schema.columns "
                                       "WHERE table_name = 'stats_daily' AND column_name IN ('assign', 'resolve')")
        assert await report(pool, q) == answer
        want = domain_report(q, facts.values())
        assert [(p.time_to_assign, p.time_to_resolve) for p in [answer.total, *answer.series]] == [
            (p.time_to_assign, p.time_to_resolve) for p in [want.total, *want.series]]
    finally:
        await pool.close()


async def test_concurrent_batches_moving_the_same_values_neither_deadlock_nor_lose_a_count(pg: tuple[str, int]) -> None:
    """Batches of several consumers at once (each ticket in one consumer's batches, as a partition), over the
    same few cells and the same values (whole seconds, so tickets share them), moving tickets between cells:
    none waits on another for ever, and the values kept equal the values rebuilt."""
    pool = await _database(_settings(pg, "cellsrace"))
    try:
        rng = random.Random(9)

        def facts(ticket: str, region: str, resolved: bool) -> TicketFacts:
            t = D0 + timedelta(hours=1)
            f = TicketFacts(ticket, channel="web", service_type="x", region=region, priority=2, submitted_at=t,
                            accepted_at=t, first_assigned_at=t + timedelta(seconds=60 * rng.randint(1, 3)))
            if resolved:
                f.resolved_at = f.ended_at = t + timedelta(seconds=3600 * rng.randint(1, 3))
                f.resolutions = 1
            return f

        held: dict[str, TicketFacts] = {}
        lock = asyncio.Lock()

        async def worker(w: int) -> None:
            for i in range(15):
                # a ticket in one consumer's batches only (its partition), seen again by later batches
                tickets = [f"t{w}-{(i + k) % 6}" for k in range(3)]
                async with lock:
                    before = {t: held[t] for t in tickets if t in held}
                    after = {t: facts(t, rng.choice(["north", "south"]), rng.random() < 0.7) for t in tickets}
                    held.update(after)
                async with pool.acquire() as conn, conn.transaction():
                    await save_facts(conn, [after[t] for t in sorted(after)], [before[t] for t in sorted(before)])

        await asyncio.wait_for(asyncio.gather(*(worker(w) for w in range(4))), 60)
        kept = [tuple(r) for r in await pool.fetch(VALUES)]
        await pool.execute("SELECT stats_daily_rebuild()")
        assert [tuple(r) for r in await pool.fetch(VALUES)] == kept
        assert any(r[-1] > 1 for r in kept)  # values shared by several tickets
    finally:
        await pool.close()


async def test_a_batch_of_tickets_is_written_with_one_statement_and_reads_back_as_it_was_folded(
    pg: tuple[str, int],
) -> None:
    """``save_facts`` writes a batch's tickets (each once) with one statement per table: every column, the events
    folded in (``seen``, in order) and the assignments read back as folded, over two batches (inserted, then
    updated), and the same as a statement per ticket (a ticket twice in one call, which one statement cannot do)."""
    rng = random.Random(5)
    events = [e for _ in range(40) for e in lifecycle(rng, D0, timedelta(days=3), reopen=True)]
    written: list[dict[str, TicketFacts]] = []
    for twice in (False, True):
        s = ServiceSettings(service_name=f"cells_{uuid.uuid4().hex[:8]}", pg_host=pg[0], pg_port=pg[1])
        await ensure_database(s, list(DDL))
        pool = await asyncpg.create_pool(s.pg_dsn(), min_size=1, max_size=2)
        try:
            facts: dict[str, TicketFacts] = {}
            for half in (events[: len(events) // 2], events[len(events) // 2:]):
                before = dict(facts)
                for ticket, event_id, event_type, body, at in half:
                    facts[ticket] = fold_once(facts.get(ticket) or TicketFacts(ticket), event_id, event_type, body,
                                              at)
                dirty = sorted({t for t, *_ in half})
                batch = [facts[t] for t in dirty] + ([facts[dirty[0]]] if twice else [])
                async with pool.acquire() as conn, conn.transaction():
                    await save_facts(conn, batch, [before[t] for t in dirty if t in before])
            rows = {r["ticket_id"]: r for r in await pool.fetch("SELECT * FROM stats_tickets")}
            held: dict[str, list[Any]] = {}
            for a in await pool.fetch("SELECT * FROM stats_assignments"):
                held.setdefault(a["ticket_id"], []).append(a)
            back = {t: facts_of(r, held.get(t, [])) for t, r in rows.items()}
            assert back == facts
            assert all(tuple(rows[t][c] for c in FACT_COLUMNS) == row_of(f)[: len(FACT_COLUMNS)]
                       for t, f in facts.items())
            assert any(len(f.seen) > 3 for f in facts.values()) and any(f.assignments for f in facts.values())
            written.append(back)
        finally:
            await pool.close()
    assert written[0] == written[1]
