"""``python -m bench.incident``: the incident figures of issue #12, measured.

1. correlation  incident's correlation consumer (``Correlate``) on embedded PostgreSQL, fed batches of accepted
                fault tickets as its consumer would be (20 regions by 6 service types, a correlation rule of 20
                faults in 15 minutes: outages are declared and later tickets linked to them): tickets/s, against
                the target of keeping up with 2,000/s.
2. bulk         the whole embedded stack (``tsop_devstack``: PostgreSQL, Tansu, the five services as processes):
                N open tickets of one region and service type (their submitted and accepted events published on the
                tickets topic, as intake's relay would), then an incident declared over them by hand (the sweep
                links them all), restored, verified and resolved. Measured from the declaration until dispatch has
                resolved every ticket and the archive holds each ticket's dossier through the incident
                (submitted, accepted, held, resolved with the incident's resolution, each exactly once). Target:
                N = 100,000 in ≤ 60 s, none lost. Also: the events per ticket that crossed the bus, and the CPU
                per ticket of each process until feedback has settled every resolution (FeedbackSent archived),
                gross and net of the stack's idle CPU (sampled before the declaration).

Results: bench/results/incident.json. ``--tickets`` sets N (default 100,000), ``--correlation`` the tickets fed
to the correlation phase (default 20,000); ``--skip-bulk`` / ``--skip-correlation`` run one phase only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
import uuid
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
from aiokafka import AIOKafkaProducer
from tsop_devstack.postgres import EmbeddedPostgres
from tsop_devstack.stack import SERVICES, Stack

from bench import pgstats
from bench.__main__ import free_port, on_stack
from bench.news import News
from tsop_events import schemas as wire
from tsop_events.consumer import Incoming
from tsop_events.envelope import Envelope, stable_event_id, wrap
from tsop_events.settings import ServiceSettings
from tsop_events.store import ensure_database

RESULTS = Path(__file__).parent / "results"
FAULT_TYPES = ["broadband.fault_repair", "fixed.fault_repair", "mobile.fault_repair", "cloud.fault_repair",
               "iptv.fault_repair", "enterprise.fault_repair"]
REGIONS = [f"r{i:02d}" for i in range(20)]
NOW = datetime(2026, 6, 1, 9, tzinfo=UTC)
BULK_TYPE = "broadband.fault_repair"
STANDARD, APP = wire.CustomerTier.standard, wire.Channel.app
BULK_REGION = "bench-outage"
IDLE_SECONDS = 6.0  # the stack's idle CPU is sampled this long (three windows) before the timed phase


def say(text: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", flush=True)


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "loadavg": psutil.getloadavg(),
            "note": "2 cores shared with other helpers' work: measured under contention"}


# --------------------------------------------------------------------------------------------- 1. correlation


def correlation_phase(pg: EmbeddedPostgres, n: int, batch: int) -> dict[str, Any]:
    from tsop_events.clock import ManualClock
    from tsop_incident.commands import IncidentApp
    from tsop_incident.domain import Rule, Rules
    from tsop_incident.main import load_plans
    from tsop_incident.policies import Correlate

    s = ServiceSettings(service_name="bench_incident", pg_host=pg.host, pg_port=pg.port)
    asyncio.run(ensure_database(s))
    rule = Rule("bench", "*.fault_repair", 20, timedelta(minutes=15), "II", "outage")
    app = IncidentApp(s, clock=ManualClock(NOW), rules=Rules((rule,)), plans=load_plans(None))
    sink = Correlate(app)
    # tickets at 2,000/s of event time, spread over 120 scopes: every scope crosses the threshold within its first
    # ~1.2 s of event time and is declared an outage; the later tickets of the scope are linked to it
    records = []
    for i in range(n):
        ev = wire.RequestAccepted(ticket_id=str(uuid.uuid4()), service_type=FAULT_TYPES[i % len(FAULT_TYPES)],
                                  region=REGIONS[(i // len(FAULT_TYPES)) % len(REGIONS)], priority=2,
                                  customer_tier=STANDARD, accepted_at=NOW + timedelta(microseconds=500 * i))
        env = Envelope(f"c{i}", ev.event_type, "bench", ev.accepted_at, ev.ticket_id, None, None, b"{}")
        records.append(Incoming("tickets", 0, i, ev.ticket_id, env, ev))
    say(f"correlation: {n} tickets in batches of {batch}")
    pg_cpu0 = tree_cpu(pg.proc.pid) if pg.proc else 0.0
    cpu0, t0 = time.process_time(), time.perf_counter()
    for lo in range(0, n, batch):
        chunk = records[lo: lo + batch]
        sink._process("bench|0|tickets|0", chunk, chunk[-1].offset)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    pg_cpu = (tree_cpu(pg.proc.pid) if pg.proc else 0.0) - pg_cpu0
    declared = sum(1 for _ in app.recorder.select_notifications(1, 10**7, topics=[
        "tsop_incident.domain:Incident.Declared"]))
    return {"tickets": n, "batch": batch, "seconds": round(wall, 2), "tickets_per_s": round(n / wall),
            "driver_cpu_seconds": round(cpu, 2), "postgres_cpu_seconds": round(pg_cpu, 2),
            # what one core of the consumer's own work (with PostgreSQL's) would sustain, contention aside
            "tickets_per_cpu_second": round(n / (cpu + pg_cpu)),
            "incidents_declared": declared, "target_per_s": 2000, "met": n / wall >= 2000}


# --------------------------------------------------------------------------------------------- 2. bulk


async def publish_tickets(bootstrap: str, pg_dsn: str, tickets: list[str]) -> float:
    """Each ticket's RequestSubmitted and RequestAccepted on the tickets topic (as intake's relay publishes them,
    announcing what the broker acknowledged: bench.news)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=256 * 1024)
    news = News(pg_dsn)
    await producer.start()
    await news.start()
    t0 = time.perf_counter()
    try:
        pending = []
        for t in tickets:
            sub = wire.RequestSubmitted(
                ticket_id=t, channel=APP, channel_id="bench", customer_id=f"c-{t[:8]}", customer_tier=STANDARD,
                region=BULK_REGION, service_type=BULK_TYPE, description="no service",
                time_requirement=wire.TimeRequirement(), callback_url=None, submitted_at=NOW)
            acc = wire.RequestAccepted(ticket_id=t, service_type=BULK_TYPE, region=BULK_REGION, priority=2,
                                       customer_tier=STANDARD, resolve_by=NOW + timedelta(days=2), accepted_at=NOW)
            for n, ev in ((1, sub), (2, acc)):
                env = wrap(ev, event_id=stable_event_id(t, n), source="bench", correlation_id=t)
                sent = await producer.send(ev.topic.qualified("tsop."), env.data, key=t.encode(),
                                           headers=env.headers())
                sent.add_done_callback(news.on_ack(ev.topic.qualified("tsop.")))
                pending.append(sent)
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
        await news.stop()
    return time.perf_counter() - t0


async def count(pool: asyncpg.Pool, sql: str, *args: Any) -> int:
    return int(await pool.fetchval(sql, *args) or 0)


async def wait_count(pool: asyncpg.Pool, sql: str, want: int, what: str, timeout: float, *args: Any) -> float:
    t0 = time.perf_counter()
    last, last_t = -1, t0
    while True:
        got = await count(pool, sql, *args)
        now = time.perf_counter()
        if got >= want:
            return now
        if got != last:
            last, last_t = got, now
        elif now - last_t > timeout:
            raise TimeoutError(f"{what}: {got} of {want}, no progress for {timeout:.0f} s")
        await asyncio.sleep(0.5)


class NewEvents:
    """Counts a service's stored events of one topic incrementally, from the last notification id seen: a poll reads
    only what arrived since the previous one (the notification ids commit in order, under the recorder's table
    lock), not the whole events table (at 100,000 tickets, a sequential scan of ~300,000 rows every half second
    was a visible share of PostgreSQL's CPU, charged to the platform)."""

    def __init__(self, table: str, topic: str) -> None:
        self.sql = (f"SELECT count(*) FILTER (WHERE topic = $2), max(notification_id) FROM {table} "
                    "WHERE notification_id > $1")
        self.topic, self.seen, self.last = topic, 0, 0

    async def __call__(self, pool: asyncpg.Pool) -> int:
        row = await pool.fetchrow(self.sql, self.last, self.topic)
        if row[1] is not None:
            self.seen, self.last = self.seen + int(row[0]), int(row[1])
        return self.seen


async def wait_archived(pool: asyncpg.Pool, ce_type: str, tickets: list[str], want: int, what: str,
                        timeout: float) -> float:
    """Until the archive holds ``want`` events of ``ce_type`` about ``tickets``. Polled from the last ``seq`` seen
    (``seq > last``: what was stored since), and only the exact count (every event of the type about one of the
    tickets: at 100,000 tickets a lookup of 100,000 keys, once ~800,000 index tuples) once that says all are there,
    or after 2 s without news (an insert whose lower ``seq`` committed after a higher one is then counted too)."""
    exact = "SELECT count(*) FROM archive_events WHERE ce_type = $2 AND key = ANY($1::text[])"
    since = "SELECT count(*) FILTER (WHERE ce_type = $2), max(seq) FROM archive_events WHERE seq > $1"
    top = "SELECT coalesce(max(seq), 0) FROM archive_events"

    async def exactly() -> tuple[int, int]:  # the count, and a seq it counted everything up to (or more)
        last = await count(pool, top)
        return await count(pool, exact, tickets, ce_type), last

    seen, last = await exactly()
    progress = checked = time.perf_counter()
    while True:
        now = time.perf_counter()
        if seen >= want or now - checked > 2.0:
            got, at = await exactly()
            checked = now = time.perf_counter()
            if got >= want:
                return now
            if got != seen:
                progress = now
            seen, last = got, at
        row = await pool.fetchrow(since, last, ce_type)
        if row[1] is not None:
            last = int(row[1])
            if row[0]:
                seen, progress = seen + int(row[0]), time.perf_counter()
        if time.perf_counter() - progress > timeout:
            raise TimeoutError(f"{what}: {seen} of {want}, no progress for {timeout:.0f} s")
        await asyncio.sleep(0.5)


async def wait_events(pool: asyncpg.Pool, counter: NewEvents, want: int, what: str, timeout: float) -> float:
    t0 = time.perf_counter()
    last, last_t = -1, t0
    while True:
        got = await counter(pool)
        now = time.perf_counter()
        if got >= want:
            return now
        if got != last:
            last, last_t = got, now
        elif now - last_t > timeout:
            raise TimeoutError(f"{what}: {got} of {want}, no progress for {timeout:.0f} s")
        await asyncio.sleep(0.5)


async def bulk(stack: Stack, n: int, stall: float, statements: bool = False) -> dict[str, Any]:
    pg = stack.postgres
    # the bench's own connections (its waits' queries): their backends' CPU is not the platform's
    own: set[int] = set()

    async def mine(conn: asyncpg.Connection) -> None:
        own.add(int(await conn.fetchval("SELECT pg_backend_pid()")))

    pools = {db: await asyncpg.create_pool(pg.dsn(f"tsop_{db}"), min_size=2, max_size=2, init=mine,
                                           max_inactive_connection_lifetime=0)
             for db in ("dispatch", "incident", "archive", "intake")}
    http = httpx.AsyncClient(timeout=600)
    manager = {"Authorization": f"Bearer {stack.tokens['incident_manager']}"}
    tickets = [str(uuid.uuid4()) for _ in range(n)]
    out: dict[str, Any] = {"tickets": n}
    try:
        say(f"bulk: publishing {n} submitted + accepted tickets")
        out["publish_seconds"] = round(await publish_tickets(stack.bootstrap, stack.postgres.dsn(), tickets), 1)
        t0 = time.perf_counter()
        say("bulk: waiting for dispatch to open every work order and incident to see every open ticket")
        await wait_count(pools["dispatch"], "SELECT count(*) FROM dispatchapp_events WHERE topic = $1", n,
                         "work orders opened", stall, "tsop_dispatch.domain:WorkOrder.Opened")
        await wait_count(pools["incident"], "SELECT count(*) FROM tickets WHERE region = $1 AND stage < 4", n,
                         "open tickets seen by incident", stall, BULK_REGION)
        out["setup_seconds"] = round(time.perf_counter() - t0, 1)
        # the stack's idle CPU (timers, polls, heartbeats), to give the figures net of it too: per process the
        # least of three windows (a consumer still catching up with the set-up in one of them does not count)
        idle_rate: dict[str, float] = {}
        for _ in range(3):
            idle0, t_idle = cpu_seconds(stack, own), time.perf_counter()
            await asyncio.sleep(IDLE_SECONDS / 3)
            idle1 = cpu_seconds(stack, own)
            for k in idle1:
                rate = (idle1[k] - idle0.get(k, 0)) / (time.perf_counter() - t_idle)
                idle_rate[k] = min(rate, idle_rate.get(k, rate))
        dsn_of = {db: pg.dsn(f"tsop_{db}") for db in SERVICES}
        pg0, tabs0 = await pgstats.snapshot(pg.dsn(), statements), await pgstats.tables(dsn_of)
        cpu0, own0 = cpu_seconds(stack, own), own_cpu(own)
        seq0 = await count(pools["archive"], "SELECT coalesce(max(seq), 0) FROM archive_events")

        say("bulk: declaring the incident (the sweep links every open ticket in scope)")
        start, start_wall = time.perf_counter(), datetime.now(UTC)
        r = await http.post(stack.url("incident") + "/v1/incidents", headers=manager, json={
            "title": "bench outage", "severity": "I", "scenario": "outage", "affected_services": [BULK_TYPE],
            "regions": [BULK_REGION], "estimated_customers": n})
        r.raise_for_status()
        iid = r.json()["id"]
        declared = time.perf_counter()
        # per ticket, however linked; each count from where the previous poll left off (the events of the phase). A
        # ticket's first link starts its TicketLink: one Started (with the incident since session 9; before, Started
        # then Linked in the same save), so this counts both forms alike
        linked = await wait_events(pools["incident"], NewEvents("incidentapp_events",
                                                               "tsop_incident.domain:TicketLink.Started"),
                                   n, "tickets linked", stall)
        held = await wait_events(pools["dispatch"], NewEvents("dispatchapp_events",
                                                             "tsop_dispatch.domain:WorkOrder.Held"),
                                 n, "work orders held", stall)
        say("bulk: restore, verify, resolve")
        for action, body in (("restore", {"note": "bench"}), ("verify", {"note": "bench"}),
                             ("resolve", {"resolution_code": "outage_restored", "summary": "bench restored"})):
            r = await http.post(stack.url("incident") + f"/v1/incidents/{iid}/{action}", headers=manager, json=body)
            r.raise_for_status()
        resolve_sent = time.perf_counter()
        resolved = await wait_events(pools["dispatch"], NewEvents("dispatchapp_events",
                                                                 "tsop_dispatch.domain:WorkOrder.Resolved"),
                                     n, "work orders resolved", stall)
        archived = await wait_archived(pools["archive"], "tsop.ticket.resolved.v1", tickets, n, "resolutions archived",
                                       stall)
        end = time.perf_counter()
        cpu1 = cpu_seconds(stack, own)
        # feedback's work on each Resolved (the result webhook settled: FeedbackSent) may finish after the figure's
        # end: wait for it too, so that the CPU per ticket counts everything the resolutions caused
        settled = await wait_archived(pools["archive"], "tsop.ticket.feedback-sent.v1", tickets, n,
                                      "feedback sent archived", stall)
        cpu2, own2 = cpu_seconds(stack, own), own_cpu(own)
        # intake's read models (request status, TMF621) follow the same events; nothing above waits for them, so
        # its share at "settled" may miss part of its work: the figures once intake holds every ticket as resolved
        # in both (TMF621's last event here is Resolved; the native status's is FeedbackSent)
        await wait_count(pools["intake"], "SELECT count(*) FROM request_status WHERE ticket_id = ANY($1::uuid[]) "
                         "AND status = 'feedback_sent'", n, "intake: feedback sent", stall, tickets)
        caught_up = await wait_count(pools["intake"], "SELECT count(*) FROM tmf_ticket WHERE status = 'resolved' "
                                     "AND ticket_id = ANY($1::uuid[])", n, "intake: TMF621 resolved", stall, tickets)
        cpu3 = cpu_seconds(stack, own)
        # PostgreSQL's counters over the same phase (declaration → intake caught up), per ticket: the bench's own waits
        # included (with ``--pg-statements`` they are told apart, as statements of their own)
        out["postgres"] = pgstats.report(pg0, await pgstats.snapshot(pg.dsn(), statements), n, top=40)
        out["postgres_tables"] = pgstats.tables_report(tabs0, await pgstats.tables(dsn_of), n)
        # what crossed the bus during the timed phase (the archive keeps every domain topic's events), per ticket
        by_type = await pools["archive"].fetch(
            "SELECT topic, ce_type, count(*) AS n FROM archive_events WHERE seq > $1 GROUP BY topic, ce_type "
            "ORDER BY topic, ce_type", seq0)
        # each ticket's dossier through the incident: submitted, accepted, held, resolved, each exactly once
        rows = await pools["archive"].fetch(
            "SELECT key, ce_type, count(*) AS n, max(data->>'summary') AS summary FROM archive_events "
            "WHERE key = ANY($1::text[]) AND ce_type = ANY($2::text[]) GROUP BY key, ce_type", tickets,
            ["tsop.ticket.request-submitted.v1", "tsop.ticket.request-accepted.v1", "tsop.ticket.held.v1",
             "tsop.ticket.resolved.v1"])
        # where the wait between dispatch and the archive goes: each event's own time (its domain event's, set by
        # the service that recorded it) against when the archive stored it (its transaction's start)
        lag = await pools["archive"].fetch(
            """SELECT ce_type, count(*) AS n,
                 extract(epoch FROM min(ce_time) - $3::timestamptz) AS first_made,
                 extract(epoch FROM max(ce_time) - $3::timestamptz) AS last_made,
                 extract(epoch FROM max(stored_at) - $3::timestamptz) AS last_stored,
                 percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY extract(epoch FROM stored_at - ce_time))
                   AS lag, extract(epoch FROM max(stored_at - ce_time)) AS lag_max
               FROM archive_events WHERE key = ANY($1::text[]) AND ce_type = ANY($2::text[]) GROUP BY ce_type""",
            tickets, ["tsop.ticket.held.v1", "tsop.ticket.resolved.v1", "tsop.ticket.feedback-sent.v1"], start_wall)
        out["archive_lag"] = {
            r["ce_type"]: {"made_from_s": round(float(r["first_made"]), 2),
                           "made_until_s": round(float(r["last_made"]), 2),
                           "stored_until_s": round(float(r["last_stored"]), 2),
                           "lag_p50_s": round(r["lag"][0], 2), "lag_p95_s": round(r["lag"][1], 2),
                           "lag_max_s": round(float(r["lag_max"]), 2)} for r in lag}
        per: dict[str, dict[str, int]] = {}
        wrong_summary = 0
        for row in rows:
            per.setdefault(row["key"], {})[row["ce_type"]] = row["n"]
            if row["ce_type"] == "tsop.ticket.resolved.v1" and row["summary"] != "bench restored":
                wrong_summary += 1
        complete = sum(1 for t in tickets if len(per.get(t, {})) == 4 and all(v == 1 for v in per[t].values()))
        duplicated = sum(1 for t in tickets if any(v > 1 for v in per.get(t, {}).values()))
        out.update({
            "declare_request_seconds": round(declared - start, 2),
            "all_linked_seconds": round(linked - start, 2),
            "all_held_seconds": round(held - start, 2),
            "resolve_requests_at_seconds": round(resolve_sent - start, 2),
            "all_resolved_in_dispatch_seconds": round(resolved - start, 2),
            "resolve_to_all_resolved_seconds": round(resolved - resolve_sent, 2),
            "end_to_end_seconds": round(archived - start, 2),
            "dossiers_complete": complete, "lost": n - len(per), "duplicated": duplicated,
            "wrong_resolution": wrong_summary,
            "events_per_ticket": {f"{r['topic']} {r['ce_type']}": round(r["n"] / n, 4) for r in by_type},
            "cpu_ms_per_ticket": {k: round(1000 * (cpu1.get(k, 0) - cpu0.get(k, 0)) / n, 2) for k in cpu1},
            "settled_seconds": round(settled - start, 2),
            "intake_caught_up_seconds": round(caught_up - start, 2),
            "cpu_ms_per_ticket_intake_caught_up_net_of_idle": {
                k: round(1000 * (cpu3.get(k, 0) - cpu0.get(k, 0) - idle_rate.get(k, 0) * (caught_up - start)) / n, 2)
                for k in cpu3},
            "cpu_ms_per_ticket_intake_caught_up_net_of_idle_total": round(1000 * sum(
                cpu3.get(k, 0) - cpu0.get(k, 0) - idle_rate.get(k, 0) * (caught_up - start) for k in cpu3) / n, 2),
            "cpu_ms_per_ticket_settled": {k: round(1000 * (cpu2.get(k, 0) - cpu0.get(k, 0)) / n, 2) for k in cpu2},
            "cpu_ms_per_ticket_settled_total": round(1000 * sum(cpu2.get(k, 0) - cpu0.get(k, 0) for k in cpu2) / n,
                                                     2),
            "idle_cpu_share": {k: round(v, 3) for k, v in idle_rate.items()},
            # what the tickets cost, the stack's idle CPU over the same seconds taken off
            "cpu_ms_per_ticket_settled_net_of_idle": {
                k: round(1000 * (cpu2.get(k, 0) - cpu0.get(k, 0) - idle_rate.get(k, 0) * (settled - start)) / n, 2)
                for k in cpu2},
            "cpu_ms_per_ticket_settled_net_of_idle_total": round(1000 * sum(
                cpu2.get(k, 0) - cpu0.get(k, 0) - idle_rate.get(k, 0) * (settled - start) for k in cpu2) / n, 2),
            "cpu_seconds_during": {k: round(cpu1.get(k, 0) - cpu0.get(k, 0), 1) for k in cpu1},
            # PostgreSQL's CPU in the bench's own backends (its waits), left out of "postgres" above
            "bench_queries_cpu_seconds_settled": round(own2 - own0, 2),
            "target_seconds": 60, "met": archived - start <= 60 and complete == n,
        })
        _ = end
        return out
    finally:
        await http.aclose()
        for p in pools.values():
            await p.close()


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and its children."""
    try:
        p = psutil.Process(pid)
        return sum(sum(x.cpu_times()[:2]) for x in [p, *p.children(recursive=True)])
    except psutil.Error:
        return 0.0


def own_cpu(pids: Collection[int]) -> float:
    """CPU seconds of the bench's own PostgreSQL backends."""
    total = 0.0
    for pid in pids:
        try:
            total += sum(psutil.Process(pid).cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def cpu_seconds(stack: Stack, own: Collection[int] = ()) -> dict[str, float]:
    """CPU seconds of each process and its children; PostgreSQL's without the bench's own backends (``own``)."""
    procs = {name: p.pid for name, p in stack.procs.items()}
    for name, proc in (("postgres", stack.postgres.proc), ("broker", stack.broker.proc)):
        if proc is not None:
            procs[name] = proc.pid
    out = {name: tree_cpu(pid) for name, pid in procs.items()}
    if "postgres" in out:
        out["postgres"] -= own_cpu(own)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tickets", type=int, default=100_000)
    parser.add_argument("--correlation", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500, help="records per consumed batch (correlation)")
    parser.add_argument("--stall", type=float, default=120.0, help="give up after this long without progress")
    parser.add_argument("--skip-bulk", action="store_true")
    parser.add_argument("--skip-correlation", action="store_true")
    parser.add_argument("--pg-statements", action="store_true",
                        help="preload pg_stat_statements: the bulk phase's statements per ticket, most time first "
                             "(it costs PostgreSQL a little CPU)")
    args = parser.parse_args()
    result: dict[str, Any] = {"machine": machine(), "at": datetime.now(UTC).isoformat(timespec="seconds")}
    if not args.skip_correlation:
        with tempfile.TemporaryDirectory(prefix="tsop-bench-inc-") as tmp:
            pg = EmbeddedPostgres(Path(tmp) / "pg", port=free_port())
            pg.start()
            try:
                result["correlation"] = correlation_phase(pg, args.correlation, args.batch)
            finally:
                pg.stop()
        say(f"correlation: {json.dumps(result['correlation'])}")
    if not args.skip_bulk:
        stack = Stack(
            Path(tempfile.mkdtemp(prefix="tsop-bench-inc-")),
            pg_port=free_port(), broker_port=free_port(), ports={name: free_port() for name in SERVICES},
            env={"TSOP_LOG_LEVEL": "WARNING",
                 "TSOP_CORRELATION_RULES_FILE": str(Path(__file__).with_name("incident_rules.json"))},
            pg_settings=pgstats.PRELOAD if args.pg_statements else {},
        )

        async def work() -> dict[str, Any]:
            return await bulk(stack, args.tickets, args.stall, args.pg_statements)

        result["bulk"] = on_stack(stack, work)
        say(f"bulk: {json.dumps(result['bulk'])}")
    result["machine"]["loadavg_at_end"] = psutil.getloadavg()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "incident.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
