"""The statistics' figures (§7.3): ``python -m bench.stats [--rate R] [--seconds S] [--tickets N]``.

Starts the archive alone (its own process) on embedded PostgreSQL and the embedded broker, then:

1. *lag*: publishes complete ticket lifecycles on the tickets topic at ``--rate`` lifecycles per second
   (10 events each; the whole platform peaks near 20 lifecycles/s on this machine) for ``--seconds``,
   and samples, every 100 ms, how long the newest event takes from the broker's acknowledgement to being
   folded into the statistics;
2. *report*: fills the statistics' read model with ``--tickets`` tickets spread over twelve months (by
   COPY, as the projection would have left them, and their per-day cells), then times
   ``GET /v1/stats/report`` for one month by day, over HTTP, unfiltered and filtered (``--queries``
   requests), and reports p50/p95/p99.

Targets (issue 13): lag ≤ 2 s at peak; a month's report over 1,000,000 tickets ≤ 200 ms p99.
Results go to bench/results/stats-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaProducer
from tsop_devstack.ports import free_port
from tsop_devstack.postgres import EmbeddedPostgres
from tsop_devstack.tansu import EmbeddedBroker

from bench.news import News
from tsop_archive.stats.projection import DDL, FACT_COLUMNS
from tsop_events import schemas as wire
from tsop_events.auth import token_table_json
from tsop_events.envelope import Envelope, wrap
from tsop_events.topics import Topic

RESULTS = Path(__file__).parent / "results"
TOKEN = "bench-auditor"
CHANNELS = ["web"] * 4 + ["app"] * 3 + ["hotline"] * 2 + ["onsite"]
TYPES = ["broadband.fault_repair", "broadband.installation", "mobile.fault_repair", "cloud.data_migration"]
REGIONS = ["north", "south", "east", "west"]
PREFIX = "bench."



def quantiles(values: list[float]) -> dict[str, Any]:
    v = sorted(values)

    def at(p: float) -> float | None:
        return round(v[min(len(v) - 1, int(p / 100 * len(v)))] * 1000, 1) if v else None

    return {"count": len(v), "p50_ms": at(50), "p95_ms": at(95), "p99_ms": at(99), "max_ms": at(100),
            "mean_ms": round(statistics.fmean(v) * 1000, 1) if v else None}


def lifecycle(rng: random.Random, now: datetime) -> list[Envelope]:
    ticket = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    wo, tech = f"wo-{ticket[:8]}", f"tech-{rng.randint(1, 200)}"
    channel, stype, region, t = rng.choice(CHANNELS), rng.choice(TYPES), rng.choice(REGIONS), now
    events: list[wire.WireEvent] = [
        wire.RequestSubmitted(ticket_id=ticket, channel=wire.Channel(channel), customer_id="c",
                              customer_tier=wire.CustomerTier.standard,
                              region=region, service_type=stype, description="no service",
                              time_requirement=wire.TimeRequirement(), submitted_at=t),
        wire.RequestAccepted(ticket_id=ticket, service_type=stype, region=region, priority=rng.randint(1, 5),
                             customer_tier=wire.CustomerTier.standard, accepted_at=t),
        wire.Assigned(ticket_id=ticket, work_order_id=wo, technician_id=tech, reason="best", candidates=[],
                      assigned_at=t),
        wire.AssignmentAccepted(ticket_id=ticket, work_order_id=wo, technician_id=tech, accepted_at=t),
        wire.WorkStarted(ticket_id=ticket, work_order_id=wo, technician_id=tech, mode="remote", started_at=t),
        wire.WorkLogged(ticket_id=ticket, work_order_id=wo, technician_id=tech, action="reset", mode="remote",
                        logged_at=t),
        wire.Resolved(ticket_id=ticket, work_order_id=wo, technician_id=tech, resolution_code="fixed",
                      summary="fixed", resolved_at=t),
        wire.FeedbackSent(ticket_id=ticket, channel="none", attempts=1, rating_due_at=t, sent_at=t),
        wire.Rated(ticket_id=ticket, score=rng.randint(1, 5), rated_at=t),
        wire.Closed(ticket_id=ticket, reason="rated", closed_at=t),
    ]
    return [wrap(e, event_id=str(uuid.uuid4()), source="bench", time=t) for e in events]


async def lag_phase(bootstrap: str, dsn: str, rate: float, seconds: float) -> dict[str, Any]:
    """Publish lifecycles at ``rate``/s; sample the fold lag of the newest event every 100 ms."""
    rng = random.Random(3)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    # as the services' relays do: the archive's quiet consumer resumes at once (bench.news), the safety net unmeasured
    news = News(dsn.rsplit("/", 1)[0] + "/postgres")
    await news.start()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    assert pool is not None
    samples: list[tuple[float, str, str]] = []  # (published at, ticket, event id)
    lags: list[float] = []
    published = 0
    done = asyncio.Event()

    acks: list[asyncio.Task[None]] = []

    async def publish() -> None:
        nonlocal published
        start = time.monotonic()
        last_sample = 0.0
        n = 0
        while time.monotonic() - start < seconds:
            due = start + n / rate
            if due > time.monotonic():
                await asyncio.sleep(due - time.monotonic())
            envs = lifecycle(rng, datetime.now(UTC))
            key = (envs[0].subject or "").encode()
            for env in envs:
                sent = await producer.send(Topic.tickets.qualified(PREFIX), env.data, key=key, headers=env.headers())
                sent.add_done_callback(news.on_ack(Topic.tickets.qualified(PREFIX)))
            published += len(envs)
            n += 1
            if time.monotonic() - last_sample >= 0.1:
                last_sample = time.monotonic()
                acks.append(asyncio.create_task(acked(sent, envs[-1].subject or "", envs[-1].id)))
        await producer.flush()
        await asyncio.gather(*acks)
        done.set()

    async def acked(sent: asyncio.Future[Any], ticket: str, event_id: str) -> None:
        """Lag counts from the moment the broker holds the event (not while the bench's producer queues it)."""
        await sent
        samples.append((time.monotonic(), ticket, event_id))

    async def watch() -> None:
        i = 0
        while not done.is_set() or i < len(samples):
            if i >= len(samples):
                await asyncio.sleep(0.01)
                continue
            at, ticket, event_id = samples[i]
            held = await pool.fetchval("SELECT $2 = ANY(seen) FROM stats_tickets WHERE ticket_id = $1", ticket,
                                       event_id)
            if held:
                lags.append(time.monotonic() - at)
                i += 1
            else:
                await asyncio.sleep(0.01)
                if time.monotonic() - at > 120:
                    raise RuntimeError("the statistics fell more than 120 s behind")

    t0 = time.monotonic()
    await asyncio.gather(publish(), watch())
    elapsed = time.monotonic() - t0
    await producer.stop()
    await news.stop()
    await pool.close()
    return {"rate_lifecycles_per_s": rate, "seconds": seconds, "events": published,
            "events_per_s": round(published / elapsed, 1), "lag": quantiles(lags)}


async def fill(dsn: str, tickets: int, start: datetime, seed: int = 5) -> float:
    """COPY ``tickets`` ticket facts spread over 365 days from ``start``; seconds taken."""
    rng = random.Random(seed)
    t0 = time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        for stmt in DDL:
            await conn.execute(stmt)
        await conn.execute("SET synchronous_commit = off")
        columns = [*FACT_COLUMNS, "assign_seconds", "resolve_seconds"]
        batch = 50_000
        for offset in range(0, tickets, batch):
            rows = []
            for _ in range(min(batch, tickets - offset)):
                sub = start + timedelta(seconds=rng.uniform(0, 365 * 86400))
                fate = rng.random()
                assign = rng.uniform(300, 30 * 3600) if fate > 0.1 else None
                resolve = assign + rng.uniform(600, 40 * 3600) if assign and fate > 0.2 else None
                score = rng.randint(1, 5) if resolve and rng.random() < 0.7 else None

                def at(s: float | None, sub: datetime = sub) -> datetime | None:
                    return None if s is None else sub + timedelta(seconds=s)

                row: dict[str, Any] = {
                    "ticket_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    "channel": rng.choice(CHANNELS), "service_type": rng.choice(TYPES),
                    "region": rng.choice(REGIONS), "priority": rng.randint(1, 5) if fate > 0.05 else None,
                    "submitted_at": sub, "accepted_at": sub if fate > 0.05 else None,
                    "rejected_at": sub if fate <= 0.05 else None, "cancelled_at": None, "linked_at": None,
                    "first_assigned_at": at(assign), "responded_at": at(assign), "resolved_at": at(resolve),
                    "ended_at": at(resolve) or (sub if fate <= 0.05 else None), "closed_at": at(resolve),
                    "feedback_sent_at": at(resolve), "rated_at": at(resolve) if score else None,
                    "reject_reason": "out_of_area" if fate <= 0.05 else None, "resolutions": 1 if resolve else 0,
                    "reopens": 1 if resolve and rng.random() < 0.03 else 0, "respond_breached": rng.random() < 0.1,
                    "resolve_breached": rng.random() < 0.15, "score": score, "first_fix": bool(resolve),
                    "resolved_by": "tech-1" if resolve else None, "seen": [], "assign_seconds": assign,
                    "resolve_seconds": resolve,
                }
                rows.append(tuple(row[c] for c in columns))
            await conn.copy_records_to_table("stats_tickets", records=rows, columns=columns)
        await conn.execute("SELECT stats_daily_rebuild()")  # the per-day cells the consumer would have kept
        await conn.execute("VACUUM ANALYZE stats_tickets")
        await conn.execute("VACUUM ANALYZE stats_daily")
        await conn.execute("VACUUM ANALYZE stats_daily_values")
    finally:
        await conn.close()
    return time.perf_counter() - t0


async def report_phase(url: str, month: datetime, queries: int) -> dict[str, Any]:
    nxt = (month + timedelta(days=32)).replace(day=1)
    shapes = {
        "month by day": {},
        "month by day, channel=web": {"channel": "web"},
        "month by week, region=north, priority=2": {"granularity": "week", "region": "north", "priority": "2"},
    }
    out: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=60) as client:
        for name, extra in shapes.items():
            params = {"from": month.isoformat(), "to": nxt.isoformat(), **extra}
            r = await client.get("/v1/stats/report", params=params)
            r.raise_for_status()
            times = []
            for _ in range(queries):
                t = time.perf_counter()
                r = await client.get("/v1/stats/report", params=params)
                times.append(time.perf_counter() - t)
                r.raise_for_status()
            out[name] = {**quantiles(times), "submitted": r.json()["total"]["submitted"]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=50.0, help="lifecycles per second in the lag phase")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--tickets", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tsop-bench-stats-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pg", port=free_port())
        broker = EmbeddedBroker(free_port(), Path(tmp) / "tansu.log")
        pg.start()
        broker.start()
        port = free_port()
        env = {**os.environ, "TSOP_PG_HOST": pg.host, "TSOP_PG_PORT": str(pg.port),
               "TSOP_KAFKA_BOOTSTRAP": broker.bootstrap, "TSOP_TOPIC_PREFIX": PREFIX, "TSOP_HTTP_PORT": str(port),
               "TSOP_AUTH_TOKENS": token_table_json([(TOKEN, "bench", ["auditor"])]), "TSOP_LOG_LEVEL": "WARNING"}
        log = open(Path(tmp) / "archive.log", "wb")  # noqa: SIM115 - the child keeps it
        proc = subprocess.Popen([sys.executable, "-m", "tsop_archive.main"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit((Path(tmp) / "archive.log").read_text()[-3000:])
                time.sleep(0.3)
            dsn = f"postgresql://postgres@{pg.host}:{pg.port}/tsop_archive"
            print(f"lag: {args.rate:g} lifecycles/s for {args.seconds:g} s ...", flush=True)
            lag = asyncio.run(lag_phase(broker.bootstrap, dsn, args.rate, args.seconds))
            print(json.dumps(lag), flush=True)
            year = datetime(2025, 1, 1, tzinfo=UTC)
            print(f"filling {args.tickets:,} tickets ...", flush=True)
            filled = asyncio.run(fill(dsn, args.tickets, year))
            reports = asyncio.run(report_phase(url, datetime(2025, 6, 1, tzinfo=UTC), args.queries))
            result = {"when": datetime.now(UTC).isoformat(), "lag_phase": lag, "tickets": args.tickets,
                      "fill_seconds": round(filled, 1), "month_report": reports,
                      "targets": {"lag_p99_s": 2.0, "report_p99_ms": 200}}
            print(json.dumps(result, indent=2))
            RESULTS.mkdir(exist_ok=True)
            (RESULTS / f"stats-{args.tickets}.json").write_text(json.dumps(result, indent=2))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log.close()
            broker.stop()
            pg.stop()


if __name__ == "__main__":
    main()
