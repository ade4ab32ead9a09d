"""The statistics' per-day cells: what one batch costs against the size of the cell it changes.
``python -m bench.stats_cells [--sizes 100,1000,10000] [--batches 200]``.

On embedded PostgreSQL, for each size N: a read model whose one cell (a day, a channel, a service type, a region,
a priority) holds N tickets with their durations (by COPY and ``stats_daily_rebuild``, as the consumer would have
left them), then ``--batches`` batches, each one transaction through ``save_facts`` as the consumer writes it, that
resolve one more ticket of that cell (its time to resolve moves into the cell). Reports the batch's wall time
(p50, p95, mean) and the bytes of WAL it wrote (mean), per size: a batch's cost should not grow with N.
Results go to bench/results/stats-cells-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from tsop_devstack.ports import free_port
from tsop_devstack.postgres import EmbeddedPostgres

from bench.stats import RESULTS
from tsop_archive.stats.domain import TicketFacts
from tsop_archive.stats.projection import DDL, FACT_COLUMNS, row_of, save_facts

DAY = datetime(2025, 6, 1, tzinfo=UTC)


def ticket(rng: random.Random, resolved: bool) -> TicketFacts:
    t = DAY + timedelta(seconds=rng.uniform(0, 80_000))
    f = TicketFacts(str(uuid.UUID(int=rng.getrandbits(128))), channel="web", service_type="broadband.fault_repair",
                    region="north", priority=2, submitted_at=t, accepted_at=t + timedelta(minutes=1),
                    first_assigned_at=t + timedelta(seconds=rng.uniform(60, 7200)))
    if resolved:
        f.resolved_at = f.ended_at = t + timedelta(seconds=rng.uniform(7200, 90_000))
        f.resolutions = 1
    return f


async def one_size(dsn: str, size: int, batches: int) -> dict[str, Any]:
    rng = random.Random(size)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("TRUNCATE stats_tickets, stats_assignments")
        await conn.copy_records_to_table("stats_tickets", records=[row_of(ticket(rng, True)) for _ in range(size)],
                                         columns=[*FACT_COLUMNS, "assign_seconds", "resolve_seconds"])
        await conn.execute("SELECT stats_daily_rebuild()")
        await conn.execute("VACUUM ANALYZE")
        waiting = [ticket(rng, False) for _ in range(batches)]
        for f in waiting:  # submitted, accepted and assigned: in the cell already
            async with conn.transaction():
                await save_facts(conn, [f])
        walls, wal = [], []
        for f in waiting:
            assert f.submitted_at is not None
            end = f.submitted_at + timedelta(seconds=rng.uniform(7200, 90_000))
            done = replace(f, resolved_at=end, ended_at=end, resolutions=1)
            lsn0 = await conn.fetchval("SELECT pg_current_wal_insert_lsn()")
            t0 = time.perf_counter()
            async with conn.transaction():
                await save_facts(conn, [done], [f])
            walls.append((time.perf_counter() - t0) * 1000)
            wal.append(int(await conn.fetchval("SELECT pg_current_wal_insert_lsn() - $1::pg_lsn", lsn0)))
        walls.sort()
        return {"cell_tickets": size, "batches": batches, "p50_ms": round(statistics.median(walls), 3),
                "p95_ms": round(walls[int(0.95 * (len(walls) - 1))], 3), "mean_ms": round(statistics.fmean(walls), 3),
                "wal_bytes_mean": round(statistics.fmean(wal))}
    finally:
        await conn.close()


async def run(dsn: str, sizes: list[int], batches: int) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn.rsplit("/", 1)[0] + "/postgres")
    try:
        await conn.execute("CREATE DATABASE bench_cells")
    finally:
        await conn.close()
    conn = await asyncpg.connect(dsn)
    try:
        for stmt in DDL:
            await conn.execute(stmt)
    finally:
        await conn.close()
    out = []
    for size in sizes:
        r = await one_size(dsn, size, batches)
        print(json.dumps(r), flush=True)
        out.append(r)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100,1000,10000", help="tickets already in the cell, comma-separated")
    ap.add_argument("--batches", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pg", port=free_port())
        pg.start()
        try:
            dsn = f"postgresql://postgres@{pg.host}:{pg.port}/bench_cells"
            results = asyncio.run(run(dsn, [int(s) for s in args.sizes.split(",")], args.batches))
        finally:
            pg.stop()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"stats-cells-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps({"when": datetime.now(UTC).isoformat(), "sizes": results}, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
