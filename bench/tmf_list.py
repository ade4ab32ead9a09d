"""TMF621 list queries over a million tickets: ``python -m bench.tmf_list [--tickets N]``.

Starts intake alone on embedded PostgreSQL and the embedded broker, fills its
TMF read model with N tickets (realistic spreads of status, severity, type,
channel and dates; one to four status changes each) by COPY, then times list queries
over HTTP — a filter plus ``limit=50``, as channel systems and agents page
through tickets — and reports p50/p95/p99 per query shape. Results go to
bench/results/tmf-list-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from tsop_devstack.stack import Stack

from bench.__main__ import RESULTS, free_port, summary

STATUSES = [("closed", 45), ("acknowledged", 15), ("inProgress", 15), ("resolved", 10), ("pending", 5),
            ("held", 3), ("cancelled", 4), ("rejected", 3)]
SEVERITIES = [("minor", 60), ("major", 30), ("critical", 10)]
TYPES = ["fixed.installation", "fixed.fault_repair", "fixed.relocation", "mobile.fault_repair",
         "broadband.installation", "broadband.fault_repair", "broadband.relocation", "cloud.data_migration"]
PRIORITIES = ["Critical", "High", "Medium", "Low"]
CHANNELS = [str(uuid.UUID(int=i + 1)) for i in range(20)]
PATH_TO = ["acknowledged", "inProgress", "resolved", "closed"]


def weighted(pairs: list[tuple[str, int]]) -> list[str]:
    return [value for value, weight in pairs for _ in range(weight)]


async def fill(dsn: str, tickets: int, seed: int = 7) -> float:
    """COPY ``tickets`` rows and their status histories into the read model; seconds taken."""
    rng = random.Random(seed)
    statuses, severities = weighted(STATUSES), weighted(SEVERITIES)
    now = datetime.now(UTC)
    started = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SET synchronous_commit = off")
        batch = 50_000
        for start in range(0, tickets, batch):
            rows, history = [], []
            for _ in range(min(batch, tickets - start)):
                tid = uuid.UUID(int=rng.getrandbits(128), version=4)
                created = now - timedelta(seconds=rng.uniform(0, 90 * 86400))
                status = rng.choice(statuses)
                steps = PATH_TO[: PATH_TO.index(status) + 1] if status in PATH_TO else ["acknowledged", status]
                at = created
                for seq, s in enumerate(steps, 1):
                    history.append((tid, seq, s, f"bench: {s}", at))
                    at += timedelta(minutes=rng.uniform(5, 600))
                doc = {"description": "The line is down since this morning", "channelKind": "web",
                       "characteristic": {"region": rng.choice(["north", "south", "east", "west"])}}
                rows.append((
                    tid, status, at, f"bench: {status}", rng.choice(severities), rng.choice(TYPES),
                    rng.choice(PRIORITIES), rng.choice(CHANNELS), f"c-{rng.randrange(200_000)}",
                    f"crm-{tid.hex[:12]}", created, at, False, json.dumps(doc),
                ))
            await conn.copy_records_to_table(
                "tmf_ticket", records=rows,
                columns=["ticket_id", "status", "status_change_date", "status_change_reason", "severity",
                         "ticket_type", "priority_name", "channel_id", "customer_id", "external_id",
                         "creation_date", "last_update", "deleted", "doc"],
            )
            await conn.copy_records_to_table(
                "tmf_status_change", records=history, columns=["ticket_id", "seq", "status", "reason", "at"]
            )
        await conn.execute(
            """INSERT INTO tmf_ticket_counts SELECT coalesce(channel_id, ''), status, coalesce(severity, ''),
               ticket_type, coalesce(priority_name, ''), 0, count(*) FROM tmf_ticket WHERE NOT deleted
               GROUP BY 1, 2, 3, 4, 5
               ON CONFLICT (channel_id, status, severity, ticket_type, priority_name, part)
               DO UPDATE SET n = tmf_ticket_counts.n + EXCLUDED.n"""
        )
        await conn.execute("VACUUM ANALYZE tmf_ticket")
        await conn.execute("VACUUM ANALYZE tmf_status_change")
    finally:
        await conn.close()
    return time.perf_counter() - started


QUERIES: dict[str, dict[str, str]] = {
    "status filter": {"status": "inProgress", "limit": "50"},
    "status + type, fields": {"status": "acknowledged", "ticketType": "broadband.fault_repair",
                              "fields": "status,ticketType,priority", "limit": "50"},
    "severity, by last update": {"severity": "critical", "sort": "-lastUpdate", "limit": "50"},
    "recent window, page 3": {"creationDate.gte": "", "limit": "50", "offset": "100"},
    "external id lookup": {"externalIdentifier.id": "", "limit": "50"},
}


async def measure(stack: Stack, rounds: int, dsn: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {stack.tokens['auditor']}"}
    url = stack.url("intake") + "/tmf-api/troubleTicket/v5/troubleTicket"
    conn = await asyncpg.connect(dsn)
    externals = [r["external_id"] for r in await conn.fetch(
        "SELECT external_id FROM tmf_ticket TABLESAMPLE SYSTEM (0.1) LIMIT 200")]
    await conn.close()
    results: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=30) as http:
        for name, params in QUERIES.items():
            timings, totals = [], set()
            for i in range(rounds + 5):
                p = dict(params)
                if "creationDate.gte" in p:
                    p["creationDate.gte"] = (datetime.now(UTC) - timedelta(days=1 + i % 7)).isoformat()
                if "externalIdentifier.id" in p:
                    p["externalIdentifier.id"] = externals[i % len(externals)]
                started = time.perf_counter()
                r = await http.get(url, params=p, headers=headers)
                elapsed = time.perf_counter() - started
                assert r.status_code == 200, r.text
                if i >= 5:  # the first few warm caches
                    timings.append(elapsed)
                    totals.add(int(r.headers["X-Total-Count"]))
            results[name] = {**summary(timings), "params": params, "x_total_count": sorted(totals)[:3]}
            print(f"  {name:<28} p50 {results[name]['p50_ms']:>7} ms  p99 {results[name]['p99_ms']:>7} ms  "
                  f"total≈{sorted(totals)[0]}", flush=True)
    return results


async def run(tickets: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tsop-bench-tmf-") as tmp:
        stack = Stack(Path(tmp), pg_port=free_port(), broker_port=free_port(),
                      ports={"intake": free_port()}, services=("intake",),
                      env={"TSOP_LOG_LEVEL": "WARNING", "TSOP_PG_POOL_SIZE": "8"})
        try:
            stack.start(timeout=180)
            dsn = f"postgresql://postgres@127.0.0.1:{stack.pg_port}/tsop_intake"
            print(f"filling the TMF read model with {tickets:,} tickets ...", flush=True)
            fill_s = await fill(dsn, tickets)
            print(f"  filled in {fill_s:.0f} s; querying ({rounds} per shape) ...", flush=True)
            results = await measure(stack, rounds, dsn)
        finally:
            stack.stop()
    return {"tickets": tickets, "rounds": rounds, "fill_seconds": round(fill_s, 1), "queries": results,
            "at": datetime.now(UTC).isoformat()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    report = asyncio.run(run(args.tickets, args.rounds))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"tmf-list-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    worst = max(q["p99_ms"] for q in report["queries"].values())
    print(f"worst p99 {worst} ms (target ≤ 50 ms); results in {out}")


if __name__ == "__main__":
    main()
