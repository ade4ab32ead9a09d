"""``python -m bench.archive``: the archive as evidence, measured on embedded PostgreSQL.

1. fill ``archive_events`` with N ticket events (10 per ticket, realistic bodies), straight in SQL;
2. chain them (the chainer's batches): records linked per second;
3. ``verify`` the whole chain (record hashes recomputed by PostgreSQL, links in Python, checkpoints
   checked): events/s, target ≥ 200,000/s over 1,000,000;
4. rebuild a projection from the log (every ticket's state, ``records.domain.Backlog``): events/s,
   target ≥ 50,000/s;
5. rebuild a read model the platform serves from the same log: the statistics' ticket facts and per-day
   cells (``stats.projection.rebuild``: folded, written back, cells rebuilt): events/s, same target.
6. purge the records of a share of the tickets (``--expired-share``, default 0.1), each ticket's expiry with its
   signed announcement (``records.domain.announcement``), link the announcements, and ``verify`` again: what
   holding every expired record to a linked, signed announcement costs (``verify_expired``; no target).

Results: bench/results/archive.json. ``--events`` sets N (default 1,000,000).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import psutil
from tsop_devstack.postgres import EmbeddedPostgres

from tsop_archive.projection import DDL
from tsop_archive.records import projection as rp
from tsop_archive.records.commands import Signer, chain_and_checkpoint, rebuild_backlog, verify
from tsop_archive.records.domain import ANNOUNCEMENT_PARTITION, ANNOUNCEMENT_TYPE, announcement, announcement_id, signed
from tsop_archive.stats import projection as stats_projection
from tsop_events.consumer import OFFSETS_DDL
from tsop_events.settings import ServiceSettings
from tsop_events.store import ensure_database

RESULTS = Path(__file__).parent / "results"
TOPIC = "tsop.tickets"
TYPES = [
    "tsop.ticket.request-submitted.v1", "tsop.ticket.request-accepted.v1", "tsop.ticket.assigned.v1",
    "tsop.ticket.assignment-accepted.v1", "tsop.ticket.work-started.v1", "tsop.ticket.work-logged.v1",
    "tsop.ticket.resolved.v1", "tsop.ticket.feedback-sent.v1", "tsop.ticket.rated.v1", "tsop.ticket.closed.v1",
]

FILL = """
INSERT INTO archive_events (ce_id, topic, kafka_partition, kafka_offset, key, ce_type, ce_source, ce_time,
  correlation_id, causation_id, data)
SELECT 'e' || g, $1, g % 6, g, 't' || (g / 10), ($2::text[])[(g % 10) + 1], 'bench',
  timestamptz '2026-01-01' + (g || ' seconds')::interval, 't' || (g / 10),
  CASE WHEN g % 10 = 0 THEN NULL ELSE 'e' || (g - 1) END,
  jsonb_build_object('ticket_id', 't' || (g / 10), 'service_type', 'broadband.fault_repair', 'region', 'north',
    'priority', 1 + g % 5, 'customer_tier', 'gold', 'technician_id', 'tech-' || (g % 500),
    'work_order_id', 'wo-' || (g / 10), 'description', 'No internet since this morning, the light is red',
    'at', (timestamptz '2026-01-01' + (g || ' seconds')::interval)::text)
FROM generate_series($3::bigint, $4::bigint) g
"""


EXPIRE = f"""
INSERT INTO archive_expiries (seq, action, event_id, expiry_id, record_class, matter, after_hash, at)
SELECT e.seq, 'purged', e.ce_id, md5(e.key)::uuid, 'service_records', e.key,
  {rp.hash_sql('e', 'NULL::jsonb', 'NULL::bytea')}, now()
FROM archive_events e WHERE e.topic = $1 AND substr(e.key, 2)::bigint % $2 = 0
"""
PURGE = """UPDATE archive_events e SET data = NULL FROM archive_expiries x WHERE x.seq = e.seq"""
ANNOUNCED = """SELECT x.matter, x.expiry_id, array_agg(x.seq ORDER BY x.seq) AS seqs,
  array_agg(x.event_id ORDER BY x.seq) AS ids FROM archive_expiries x GROUP BY 1, 2"""


async def expire_share(pool: asyncpg.Pool, share: float, signer: Signer) -> tuple[int, int]:
    """Purge every record of one ticket in ``1/share`` (in bulk, as retention's transactions would leave them) and
    store each ticket's signed announcement. Returns (records purged, announcements)."""
    every = max(1, round(1 / share))
    await pool.execute(EXPIRE, TOPIC, every)
    purged = int((await pool.execute(PURGE)).split()[-1])
    at = datetime.now(UTC)
    rows = []
    for r in await pool.fetch(ANNOUNCED):
        body = signed(announcement(r["expiry_id"], r["matter"], "service_records", "purged", 1095, at,
                                   list(r["seqs"]), list(r["ids"])), signer.key_id, signer.sign)
        rows.append((announcement_id(r["expiry_id"]), "tsop.archive", ANNOUNCEMENT_PARTITION, -1, r["matter"],
                     ANNOUNCEMENT_TYPE, "bench", at, orjson.dumps(body).decode()))
    await pool.executemany(
        "INSERT INTO archive_events (ce_id, topic, kafka_partition, kafka_offset, key, ce_type, ce_source, ce_time,"
        " data) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb)", rows)
    return purged, len(rows)


async def fill(pool: asyncpg.Pool, n: int, batch: int = 100_000) -> float:
    t = time.perf_counter()
    for lo in range(0, n, batch):
        await pool.execute(FILL, TOPIC, TYPES, lo, min(n, lo + batch) - 1)
    return time.perf_counter() - t


def cpu_seconds(pg_pid: int) -> float:
    """CPU time used so far by this process and PostgreSQL's processes: the machine is shared, so wall
    time alone says little; events per CPU-second says what the work costs."""
    procs = [psutil.Process(), psutil.Process(pg_pid)]
    procs += procs[1].children(recursive=True)
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def measured(n: int, wall: float, cpu: float, target: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "events": n, "seconds": round(wall, 2), "per_second": round(n / wall),
        "cpu_seconds": round(cpu, 2), "per_cpu_second": round(n / cpu) if cpu else None,
        "load_average": [round(x, 1) for x in os.getloadavg()],
    }
    if target is not None:
        out["target_per_second"] = target
    return out


async def run(dsn_settings: ServiceSettings, n: int, pg_pid: int, share: float = 0.0) -> dict[str, Any]:
    await ensure_database(dsn_settings, [OFFSETS_DDL, *DDL, *rp.DDL, *stats_projection.DDL])
    pool = await asyncpg.create_pool(dsn_settings.pg_dsn(), min_size=1, max_size=4)
    out: dict[str, Any] = {"events": n}
    try:
        print(f"filling {n:,} events …", flush=True)
        out["fill_seconds"] = round(await fill(pool, n), 2)
        await pool.execute("VACUUM ANALYZE archive_events")
        signer = Signer.load_or_create(None)
        t, c = time.perf_counter(), cpu_seconds(pg_pid)
        linked = await chain_and_checkpoint(pool, signer, datetime.now(UTC), 10_000, 60)
        out["chain"] = measured(linked, time.perf_counter() - t, cpu_seconds(pg_pid) - c)
        print("chain", out["chain"], flush=True)
        await pool.execute("VACUUM ANALYZE archive_chain")
        t, c = time.perf_counter(), cpu_seconds(pg_pid)
        v = await verify(pool)
        out["verify"] = {"ok": v.ok, **measured(v.checked, time.perf_counter() - t, cpu_seconds(pg_pid) - c, 200_000)}
        print("verify", out["verify"], flush=True)
        t, c = time.perf_counter(), cpu_seconds(pg_pid)
        view, seen = await rebuild_backlog(pool, TOPIC)
        took = measured(seen, time.perf_counter() - t, cpu_seconds(pg_pid) - c, 50_000)
        out["rebuild"] = {"open_tickets": len(view.open()), "tickets": len(view.tickets), **took}
        print("rebuild", out["rebuild"], flush=True)
        # a read model the platform serves, rebuilt: the statistics' ticket facts and per-day cells, folded again
        # from the same log and written back (python -m tsop_archive.records.main rebuild-stats)
        t, c = time.perf_counter(), cpu_seconds(pg_pid)
        folded = await stats_projection.rebuild(pool, TOPIC)
        took = measured(folded, time.perf_counter() - t, cpu_seconds(pg_pid) - c, 50_000)
        tickets = int(await pool.fetchval("SELECT count(*) FROM stats_tickets"))
        out["rebuild_stats"] = {"tickets": tickets, **took}
        print("rebuild_stats", out["rebuild_stats"], flush=True)
        if share > 0:
            purged, announced = await expire_share(pool, share, signer)
            await chain_and_checkpoint(pool, signer, datetime.now(UTC), 10_000, 60)
            await pool.execute("VACUUM ANALYZE archive_events")
            t, c = time.perf_counter(), cpu_seconds(pg_pid)
            v = await verify(pool)
            out["verify_expired"] = {"ok": v.ok, "expired": v.expired, "announcements": announced,
                                     **measured(v.checked, time.perf_counter() - t, cpu_seconds(pg_pid) - c)}
            assert v.ok and v.expired == purged, (v.broken, v.expired, purged)
            print("verify_expired", out["verify_expired"], flush=True)
    finally:
        await pool.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.archive", description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--expired-share", type=float, default=0.1,
                        help="share of the tickets whose records are then purged and announced (0: skip step 5)")
    args = parser.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tsop-bench-archive-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pg", port=_free_port())
        pg.start()
        try:
            s = ServiceSettings(service_name="bench_archive", pg_host=pg.host, pg_port=pg.port,
                                pg_user="postgres")
            assert pg.proc is not None
            result = asyncio.run(run(s, args.events, pg.proc.pid, args.expired_share))
        finally:
            pg.stop()
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    result["measured_at"] = datetime.now(UTC).isoformat()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "archive.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path} in {result['total_seconds']} s")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    main()
