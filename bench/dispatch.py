"""``python -m bench.dispatch``: the dispatch figures of issue #4, measured.

1. decision   10,000 technicians and 100,000 open work orders in the board (built
              by following a real event log): the assignment decision (index,
              hard filters, score, explanation) for random work orders, p50/p99.
2. explain    the SLA clock explanation of a work order with pauses and a
              retarget: in memory, and loaded from PostgreSQL (what GET does).
3. throughput on embedded PostgreSQL, with the same 10,000 technicians and
              100,000 waiting work orders: assignments/s sustained by one
              instance draining the queue, then by two instances (two processes,
              one database), counted from the event log afterwards; the log is
              then replayed to check nobody went over capacity.

Results: bench/results/dispatch.json. ``--quick`` uses a tenth of the sizes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import statistics
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tsop_devstack.postgres import EmbeddedPostgres

from tsop_dispatch import commands
from tsop_dispatch.commands import DispatchApp, work_order_id
from tsop_dispatch.domain import QualificationRecord, Technician, WorkOrder
from tsop_dispatch.views import drain_queue
from tsop_events.clock import ManualClock
from tsop_events.commands import Commands
from tsop_events.runtime import Service
from tsop_events.settings import ServiceSettings

RESULTS = Path(__file__).parent / "results"
TYPES = [
    "broadband.fault_repair",
    "broadband.installation",
    "fixed.fault_repair",
    "fixed.relocation",
    "mobile.fault_repair",
    "cloud.fault_repair",
]
REGIONS = [f"r{i:02d}" for i in range(20)]
NOW = datetime(2026, 6, 1, 9, tzinfo=UTC)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))] * 1000, 3)


def stats(values: list[float]) -> dict[str, Any]:
    return {
        "count": len(values),
        "p50_ms": pct(values, 50),
        "p99_ms": pct(values, 99),
        "max_ms": round(max(values) * 1000, 3),
        "mean_ms": round(statistics.fmean(values) * 1000, 3),
    }


def technicians(n: int, rng: random.Random) -> list[Technician]:
    out = []
    for i in range(n):
        quals = [
            QualificationRecord(
                service_type=st,
                certificate="cert",
                level=rng.randint(1, 5),
                valid_from=NOW - timedelta(days=9),
                valid_until=None if rng.random() < 0.9 else NOW - timedelta(days=1),
            )
            for st in rng.sample(TYPES, 2)
        ]
        out.append(
            Technician(
                id=uuid.uuid4(),
                name=f"T{i}",
                regions=rng.sample(REGIONS, 2),
                capacity=rng.randint(5, 20),
                qualifications=quals,
                credential_hash=None,
                registered_at=NOW,
            )
        )
    return out


def work_orders(app: DispatchApp, n: int, rng: random.Random) -> list[WorkOrder]:
    out = []
    for i in range(n):
        ticket = str(uuid.UUID(int=rng.getrandbits(128)))
        st = "broadband.fault_repair" if i % 3 else rng.choice(TYPES)
        out.append(
            commands.open_work_order(
                app,
                work_order_id(ticket),
                ticket,
                st,
                rng.choice(REGIONS),
                rng.randint(1, 5),
                NOW + timedelta(hours=rng.randint(1, 72)),
                f"cause-{i}",
            )
        )
    return out


def populate(app: DispatchApp, techs: int, orders: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    batch = 1000
    ts = technicians(techs, rng)
    for i in range(0, len(ts), batch):
        app.save(*ts[i : i + batch])
    wos = work_orders(app, orders, rng)
    for i in range(0, len(wos), batch):
        app.save(*wos[i : i + batch])


def decision_phase(techs: int, orders: int, samples: int) -> dict[str, Any]:
    app = DispatchApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=ManualClock(NOW))
    started = time.perf_counter()
    populate(app, techs, orders)
    app.board.refresh()
    built = time.perf_counter() - started
    queue = list(app.board.waiting)
    rng = random.Random(1)
    timings: list[float] = []
    eligible: list[int] = []
    for wo_id in rng.sample(queue, min(samples, len(queue))):
        wo: WorkOrder = app.load(wo_id)
        t0 = time.perf_counter()
        decision = commands.decide(app, wo)
        if decision.ranked:
            decision.explain(decision.ranked[0][2])
            decision.candidates()
        timings.append(time.perf_counter() - t0)
        eligible.append(len(decision.ranked))
    return {
        "technicians": len(app.board.technicians),
        "open_work_orders": len(app.board.waiting),
        "board_built_seconds": round(built, 2),
        "decision": stats(timings),
        "eligible_candidates_mean": round(statistics.fmean(eligible), 1),
    }


def explain_sample(app: DispatchApp, wo_ids: list[uuid.UUID], samples: int) -> dict[str, Any]:
    in_memory: list[float] = []
    loaded: list[float] = []
    for wo_id in wo_ids[:samples]:
        t0 = time.perf_counter()
        wo = app.load(wo_id)
        t1 = time.perf_counter()
        app.explain_clocks(wo)
        t2 = time.perf_counter()
        in_memory.append(t2 - t1)
        loaded.append(t2 - t0)
    return {"explain_in_memory": stats(in_memory), "load_and_explain": stats(loaded)}


def service(app: DispatchApp, settings: ServiceSettings) -> Service[DispatchApp]:
    """The service around ``app``, with its commands, without starting the rest (HTTP, broker, timers)."""
    svc: Service[DispatchApp] = Service(settings)
    svc.app = app
    svc.commands = Commands(app)
    return svc


def drain_worker(
    settings: dict[str, Any], shard: tuple[int, int], seconds: float, ready: Any, go: Any, out: Any
) -> None:
    # the work orders were opened at NOW: on the same clock, the shard grace (work anyone may take) never elapses
    import asyncio

    s = ServiceSettings(**settings)
    app = DispatchApp(s, clock=ManualClock(NOW), shard=shard, shard_grace=timedelta(hours=1))
    svc = service(app, s)
    app.board.refresh()
    ready.put(shard)
    go.wait()

    async def drain() -> tuple[int, int, float]:
        t0 = time.perf_counter()
        rounds = assigned = 0
        while time.perf_counter() - t0 < seconds:
            assigned += await drain_queue(svc, limit=250)
            rounds += 1
        return rounds, assigned, time.perf_counter() - t0

    rounds, assigned, elapsed = asyncio.run(drain())
    out.put({"shard": shard, "rounds": rounds, "conflicts": app.conflicts, "assigned": assigned, "elapsed": elapsed})
    app.close()


def assigned_count(app: DispatchApp) -> tuple[int, int]:
    """Assignments in the log, and the highest load anyone reached over their capacity (replayed in order)."""
    load: Counter[uuid.UUID] = Counter()
    capacity: dict[uuid.UUID, int] = {}
    worst = 0
    assigned = 0
    pos = 1
    while True:
        batch = app.recorder.select_notifications(pos, 5000)
        if not batch:
            break
        for n in batch:
            if n.topic.endswith("Technician.Registered"):
                registered: Any = app.mapper.to_domain_event(n)
                capacity[registered.originator_id] = registered.capacity
            elif n.topic.endswith("Technician.Took"):
                e = app.mapper.to_domain_event(n)
                assert isinstance(e, Technician.Took)
                load[e.originator_id] += 1
                worst = max(worst, load[e.originator_id] - capacity[e.originator_id])
            elif n.topic.endswith("Technician.Released"):
                e = app.mapper.to_domain_event(n)
                assert isinstance(e, Technician.Released)
                load[e.originator_id] -= 1
            elif n.topic.endswith("WorkOrder.Assigned"):
                assigned += 1
        pos = batch[-1].id + 1
    return assigned, worst


def throughput_phase(pg: EmbeddedPostgres, techs: int, orders: int, seconds: float, samples: int) -> dict[str, Any]:
    import asyncio

    from tsop_events.store import ensure_database

    result: dict[str, Any] = {}
    settings: dict[str, Any] = {"service_name": "bench_dispatch", "pg_host": pg.host, "pg_port": pg.port}
    s = ServiceSettings(**settings)
    asyncio.run(ensure_database(s))
    app = DispatchApp(s, clock=ManualClock(NOW))
    svc = service(app, s)
    t0 = time.perf_counter()
    populate(app, techs, orders)
    result["populate_seconds"] = round(time.perf_counter() - t0, 1)
    ctx = mp.get_context("spawn")
    before = 0
    for instances in (1, 2):  # the same database: the two-instance run continues the queue the first left
        ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
        procs = [
            ctx.Process(target=drain_worker, args=(settings, (i, instances), seconds, ready, go, out))
            for i in range(instances)
        ]
        for p in procs:
            p.start()
        for _ in procs:
            ready.get(timeout=600)  # every instance has built its board before the clock starts
        go.set()
        reports = [out.get(timeout=seconds + 600) for _ in procs]
        for p in procs:
            p.join(60)
        assigned, worst = assigned_count(app)
        elapsed = max(r["elapsed"] for r in reports)
        result[f"{instances}_instance"] = {
            "instances": instances,
            "assigned": assigned - before,
            "seconds": round(elapsed, 2),
            "assignments_per_second": round((assigned - before) / elapsed, 1),
            "rounds": [r["rounds"] for r in reports],
            "rounds_lost_to_conflicts": [r["conflicts"] for r in reports],
            "max_over_capacity": worst,
        }
        before = assigned
    app.board.refresh()
    some = [i for i, _ in app.board.queue(samples)]
    for wo_id in some[: samples // 2]:  # half of them with a history: a priority change mid-flight
        asyncio.run(commands.change_priority(svc, wo_id, 1, "bench", "benchmark"))
    result["sla_explanation"] = explain_sample(app, some, samples)
    app.close()
    one = result["1_instance"]["assignments_per_second"]
    two = result["2_instance"]["assignments_per_second"]
    result["two_over_one"] = round(two / one, 2) if one else None
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--technicians", type=int, default=10_000)
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=15.0, help="drain time per instance count")
    parser.add_argument("--quick", action="store_true", help="a tenth of the sizes")
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.technicians, args.orders, args.samples = args.technicians // 10, args.orders // 10, args.samples // 4
    started = time.perf_counter()
    result: dict[str, Any] = {"started_at": datetime.now(UTC).isoformat(), "args": vars(args)}
    print(f"decision: {args.technicians} technicians, {args.orders} open work orders …", flush=True)
    result["decision"] = decision_phase(args.technicians, args.orders, args.samples)
    print(json.dumps(result["decision"], indent=2), flush=True)
    if not args.skip_throughput:
        with tempfile.TemporaryDirectory(prefix="tsop-bench-dispatch-") as tmp:
            pg = EmbeddedPostgres(Path(tmp) / "pg", port=_free_port())
            pg.start()
            try:
                print("throughput on PostgreSQL: 1 then 2 instances …", flush=True)
                result["throughput"] = throughput_phase(pg, args.technicians, args.orders, args.seconds, args.samples)
                print(json.dumps(result["throughput"], indent=2), flush=True)
            finally:
                pg.stop()
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "dispatch.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path} in {result['total_seconds']} s")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    main()
