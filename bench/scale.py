"""``python -m bench.scale``: the lifecycle bench on a 3-broker Apache Kafka cluster, with 1 then 2
instances of intake and dispatch, against the same load on the embedded stack (Tansu).

Configurations, each measured with the same driver (bench/lifecycle.py) and the same load:

  tansu-1   the embedded stack: PostgreSQL, Tansu, one process per service
  kafka-1   PostgreSQL, a 3-node Apache Kafka (KRaft) cluster with the production topic settings
            (replication 3, ``min.insync.replicas=2``, idempotent producers, acks=all), one process
            per service
  kafka-2   the same cluster, with a second process of intake and of dispatch: each consumer group
            shares the partitions between the two, both write to the one database, dispatch splits
            the queue between its instances (``TSOP_SHARD_INDEX``/``TSOP_SHARD_COUNT``; dispatch-0
            is restarted with the new count)

For each: the stack's idle CPU (nothing submitted) per process, a warm-up, then N lifecycles
closed loop with C in flight: lifecycles/s and CPU per lifecycle per process, per service and in
total (the bench driver apart). Technicians are few and their capacity small (default 20 technicians of capacity 2 for
60 in flight), so work queues and capacity binds. After the Kafka runs the ``tickets`` topic is
read from the start and the load of every technician is replayed from Assigned and Resolved (by
their own times): the report names any moment a technician held more than their capacity, and
how close to it each came.

On a 2-core machine throughput cannot grow with instances; the figures that matter are CPU per
lifecycle as instances are added, and correctness. Results: bench/results/scale-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from tsop_devstack.apache_kafka import KafkaCluster
from tsop_devstack.ports import free_port, free_port_block
from tsop_devstack.postgres import EmbeddedPostgres
from tsop_devstack.stack import SERVICES, Stack, dev_tokens

from bench.chaos import Recorded, read_tickets
from bench.lifecycle import (
    Driver,
    commit,
    error_summary,
    measure_idle,
    net_of_idle,
    rss_mb,
    strip_raw,
)
from tsop_events.auth import token_table_json

RESULTS = Path(__file__).parent / "results"
SCALED = ("intake", "dispatch")

# the bench's bursts of fault tickets in one region would be declared an outage (and held)
NO_OUTAGE_RULES = str(Path(__file__).with_name("incident_rules.json"))


# ------------------------------------------------------------------------------ the replay check


def replay_load(records: dict[str, list[Recorded]], capacity: dict[str, int]) -> dict[str, Any]:
    """Each technician's load over time from Assigned (+1) and Resolved (-1), each event counted once
    (by ``ce_id``) and ordered by its own time, a release before a take at one instant.

    Returns the moments any technician held more than their capacity (must be none), the most each
    held, and how many assignments found their technician full afterwards (capacity was binding).
    """
    changes: list[tuple[datetime, int, str, str]] = []
    seen: set[str] = set()
    for events in records.values():
        for e in events:
            if e.ce_id in seen or e.type not in ("tsop.ticket.assigned.v1", "tsop.ticket.resolved.v1"):
                continue
            seen.add(e.ce_id)
            delta = 1 if e.type == "tsop.ticket.assigned.v1" else -1
            changes.append((e.time, delta, e.body["technician_id"], e.body["work_order_id"]))
    changes.sort(key=lambda c: (c[0], c[1]))
    held: dict[str, set[str]] = defaultdict(set)
    peak: dict[str, int] = defaultdict(int)
    violations: list[dict[str, Any]] = []
    filled = 0
    for at, delta, tech, wo in changes:
        if delta < 0:
            held[tech].discard(wo)
            continue
        held[tech].add(wo)
        n = len(held[tech])
        peak[tech] = max(peak[tech], n)
        if n > capacity.get(tech, 0):
            violations.append({"technician": tech, "at": at.isoformat(), "held": n,
                               "capacity": capacity.get(tech, 0)})
        elif n == capacity.get(tech, 0):
            filled += 1
    return {
        "assignments": sum(1 for c in changes if c[1] > 0),
        "resolutions": sum(1 for c in changes if c[1] < 0),
        "over_capacity": len(violations),
        "over_capacity_first": violations[:20],
        "assignments_that_filled_a_technician": filled,
        "technicians_that_reached_capacity": sum(1 for t, n in peak.items() if n >= capacity.get(t, 0)),
        "peak_held_max": max(peak.values(), default=0),
        "capacity": sorted(set(capacity.values())),
    }


def per_service(per_process_ms: dict[str, float]) -> dict[str, float]:
    """CPU per lifecycle summed over each service's instances (``intake-0`` + ``intake-1``) and the brokers."""
    out: dict[str, float] = defaultdict(float)
    for name, ms in per_process_ms.items():
        base = name.rsplit("-", 1)[0] if name.rsplit("-", 1)[-1].isdigit() else name
        if base == "kafka":
            base = "broker"
        out[base] += ms
    return {k: round(v, 2) for k, v in out.items()}


# -------------------------------------------------------------------------------- the platforms


class KafkaPlatform:
    """PostgreSQL, 3 Apache Kafka nodes and one or two processes of each service, as a driver target."""

    def __init__(self, data_dir: Path, partitions: int) -> None:
        self.data_dir = data_dir
        self.logs = data_dir / "logs"
        self.partitions = partitions
        self.pg = EmbeddedPostgres(data_dir / "postgres" / "data", port=free_port())
        self.kafka = KafkaCluster(data_dir / "kafka", brokers=3, base_port=free_port_block(3))
        self.tokens = dev_tokens(data_dir / "tokens.json")
        self.bootstrap = self.kafka.bootstrap
        self.names = [f"{svc}-0" for svc in SERVICES] + [f"{svc}-1" for svc in SCALED]
        self.ports = {name: free_port() for name in self.names}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.count = {svc: 1 for svc in SERVICES}
        self.turn = itertools.count()
        self._ps: dict[int, psutil.Process] = {}

    # the driver's view

    def url(self, service: str) -> str:
        live = [n for n in self.procs if n.rsplit("-", 1)[0] == service]
        return f"http://127.0.0.1:{self.ports[live[next(self.turn) % len(live)]]}"

    def services(self) -> dict[str, str]:
        return {name: name.rsplit("-", 1)[0] for name in self.procs}

    def _p(self, pid: int) -> psutil.Process:
        if pid not in self._ps:
            self._ps[pid] = psutil.Process(pid)
        return self._ps[pid]

    def processes(self) -> dict[str, tuple[psutil.Process, bool]]:
        out = {name: (self._p(p.pid), False) for name, p in self.procs.items() if p.poll() is None}
        if self.pg.proc is not None:
            out["postgres"] = (self._p(self.pg.proc.pid), True)
        for i, pid in enumerate(self.kafka.pids):
            out[f"kafka-{i}"] = (self._p(pid), False)
        out["bench-driver"] = (self._p(os.getpid()), False)
        return out

    # running it

    def env(self, name: str) -> dict[str, str]:
        svc, index = name.rsplit("-", 1)
        own = [*self.ports.values(), self.pg.port]
        own += [p for i in range(3) for p in (self.kafka.client_port(i), self.kafka.controller_port(i))]
        env = dict(os.environ)
        env.update({
            "TSOP_PLATFORM_ENDPOINTS": ",".join(str(p) for p in sorted(own)),
            "TSOP_SERVICE_NAME": svc,
            "TSOP_HTTP_PORT": str(self.ports[name]),
            "TSOP_PG_PORT": str(self.pg.port),
            "TSOP_KAFKA_BOOTSTRAP": self.kafka.bootstrap,
            "TSOP_KAFKA_IDEMPOTENCE": "true",
            "TSOP_TOPIC_REPLICATION": "3",
            "TSOP_TOPIC_MIN_INSYNC_REPLICAS": "2",
            "TSOP_TOPIC_PARTITIONS": str(self.partitions),
            "TSOP_LOG_LEVEL": "WARNING",
            "TSOP_CORRELATION_RULES_FILE": NO_OUTAGE_RULES,
            "TSOP_SHARD_INDEX": index,
            "TSOP_SHARD_COUNT": str(self.count[svc]),
            "TSOP_AUTH_TOKENS": token_table_json(
                (token, f"bench-{role}", [role]) for role, token in self.tokens.items()
            ),
        })
        return env

    def start_instance(self, name: str) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        with (self.logs / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", f"tsop_{name.rsplit('-', 1)[0]}.main"], env=self.env(name),
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def stop_instance(self, name: str) -> None:
        proc = self.procs.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def wait_ready(self, names: list[str], timeout: float = 240) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        pending = set(names)
        while pending:
            for name in sorted(pending):
                if self.procs[name].poll() is not None:
                    raise RuntimeError(f"{name} exited; see {self.logs / (name + '.log')}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://127.0.0.1:{self.ports[name]}/readyz", timeout=2).status_code == 200:
                        pending.discard(name)
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"not ready after {timeout}s: {sorted(pending)}")
            time.sleep(0.25)

    def start(self) -> None:
        self.pg.start()
        self.kafka.start(timeout=240)
        first = [f"{svc}-0" for svc in SERVICES]
        for name in first:
            self.start_instance(name)
        self.wait_ready(first)

    def scale_to_two(self) -> None:
        """A second intake and dispatch; dispatch-0 restarted so both split the queue in two."""
        self.count.update({svc: 2 for svc in SCALED})
        self.stop_instance("dispatch-0")
        # one at a time: two processes of a service starting together race on creating their tables
        for name in ["dispatch-0", *(f"{svc}-1" for svc in SCALED)]:
            self.start_instance(name)
            self.wait_ready([name])

    def stop(self) -> None:
        for name in list(self.procs):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self.stop_instance(name)
        self.kafka.stop()
        self.pg.stop()


class TansuPlatform:
    """The embedded stack (bench/__main__.py's), as a driver target with the same process names."""

    def __init__(self, data_dir: Path) -> None:
        from bench.__main__ import StackTarget

        self.stack = Stack(data_dir, pg_port=free_port(), broker_port=free_port(),
                           ports={name: free_port() for name in SERVICES},
                           env={"TSOP_LOG_LEVEL": "WARNING", "TSOP_CORRELATION_RULES_FILE": NO_OUTAGE_RULES})
        self.inner = StackTarget(self.stack)
        self.tokens = self.stack.tokens
        self.bootstrap = self.stack.bootstrap

    def url(self, service: str) -> str:
        return self.stack.url(service)

    def services(self) -> dict[str, str]:
        return {f"{name}-0": name for name in self.stack.procs}

    def processes(self) -> dict[str, tuple[psutil.Process, bool]]:
        return {(f"{k}-0" if k in SERVICES else k): v for k, v in self.inner.processes().items()}

    def start(self) -> None:
        self.stack.start(180)

    def stop(self) -> None:
        self.stack.stop()


# ------------------------------------------------------------------------------------- the runs


async def measure(platform: Any, label: str, args: argparse.Namespace, driver: Driver | None = None) -> dict[str, Any]:
    """Idle, then a warm-up and the measured closed loop, on a started platform."""
    own = driver is None
    if driver is None:
        driver = Driver(platform)
        await driver.register_channel()
        await driver.register_technicians(args.technicians, args.capacity)
    out: dict[str, Any] = {"config": label, "instances": dict(platform.services())}
    await asyncio.sleep(5.0)
    if args.idle_seconds > 0:
        out["idle"] = await measure_idle(platform, args.idle_seconds)
    out["rss_at_rest_mb"] = rss_mb(platform)
    driver.follower_ready = asyncio.Event()
    follow = asyncio.create_task(driver.follow())
    rss = asyncio.create_task(driver.sample_rss())
    try:
        await asyncio.wait_for(driver.follower_ready.wait(), 60)
        await asyncio.sleep(1.0)
        warm = await driver.closed_loop(f"{label} warm-up", args.warm_up, args.in_flight, args.timeout)
        out["warm_up"] = strip_raw(warm)
        run = strip_raw(await driver.closed_loop(label, args.lifecycles, args.in_flight, args.timeout))
        run["cpu_per_lifecycle"]["per_service_ms"] = per_service(run["cpu_per_lifecycle"]["per_process_ms"])
        if "idle" in out:
            net = net_of_idle(run["cpu_per_lifecycle"]["per_process_ms"], out["idle"]["per_process_pct"],
                              run["elapsed_s"], run["completed"])
            net["per_service_ms"] = per_service(net["per_process_ms"])
            run["cpu_per_lifecycle_net_of_idle"] = net
        out["run"] = run
    finally:
        follow.cancel()
        rss.cancel()
        await asyncio.gather(follow, rss, return_exceptions=True)
    out["peak_rss_mb"] = {k: round(v / 2**20, 1) for k, v in sorted(driver.rss_peak.items())}
    out["errors"] = error_summary(driver.errors)
    out["retried_requests"] = dict(driver.retried)
    out["loadavg_at_end"] = psutil.getloadavg()
    if own:
        await driver.aclose()
    return out


async def on_kafka(platform: KafkaPlatform, args: argparse.Namespace, out: dict[str, Any]) -> None:
    """kafka-1, then kafka-2, then the replay; each result lands in ``out`` as soon as it is measured."""
    driver = Driver(platform)
    await driver.register_channel()
    await driver.register_technicians(args.technicians, args.capacity)
    try:
        out["kafka-1"] = await measure(platform, "kafka-1", args, driver)
        print(f"scale: kafka-1 done: {summary_line(out['kafka-1'])}", flush=True)
        driver.errors.clear()
        driver.retried.clear()
        driver.rss_peak.clear()
        await asyncio.to_thread(platform.scale_to_two)
        await asyncio.sleep(10.0)  # the consumer groups rebalance onto the new members
        out["kafka-2"] = await measure(platform, "kafka-2", args, driver)
        print(f"scale: kafka-2 done: {summary_line(out['kafka-2'])}", flush=True)
        await asyncio.sleep(5.0)  # the last Resolved events are on the topic
        records = await read_tickets(platform.bootstrap, args.partitions)
        out["replay"] = replay_load(records, driver.capacity)
    finally:
        await driver.aclose()


def summary_line(m: dict[str, Any]) -> str:
    run = m.get("run", {})
    cpu = run.get("cpu_per_lifecycle", {})
    return (f"{run.get('completed')}/{run.get('lifecycles')} completed, {run.get('lifecycles_per_s')}/s, "
            f"platform {cpu.get('platform_ms')} ms per lifecycle {cpu.get('per_service_ms')}, "
            f"idle {m.get('idle', {}).get('stack_pct_of_one_core')} % of a core, errors {m['errors']['count']}")


@contextlib.contextmanager
def _dir(base: Path | None, name: str) -> Iterator[Path]:
    """``base/name``, emptied first and kept afterwards (every process's log stays there); else a temp dir."""
    if base is not None:
        where = (base / name).resolve()
        if where.exists():
            shutil.rmtree(where)
        where.mkdir(parents=True)
        yield where
        return
    with tempfile.TemporaryDirectory(prefix=f"tsop-scale-{name}-") as tmp:
        yield Path(tmp)


def _terminated(*_: object) -> None:
    raise SystemExit(143)  # the platforms stop in the finally blocks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lifecycles", type=int, default=300, help="measured lifecycles per configuration")
    parser.add_argument("--warm-up", type=int, default=50)
    parser.add_argument("--in-flight", type=int, default=60)
    parser.add_argument("--technicians", type=int, default=20)
    parser.add_argument("--capacity", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=6, help="of every topic on the Kafka cluster")
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--skip-tansu", action="store_true", help="only the Apache Kafka configurations")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="data and logs under this folder, emptied first and kept (default: temp dirs)")
    args = parser.parse_args(argv)

    signal.signal(signal.SIGTERM, _terminated)
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(),
        "commit": commit(),
        "machine": {"cpus": psutil.cpu_count(), "loadavg_at_start": psutil.getloadavg()},
        "load": {k: getattr(args, k) for k in ("lifecycles", "warm_up", "in_flight", "technicians", "capacity",
                                                "partitions", "idle_seconds")},
    }
    out = RESULTS / f"scale-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    try:
        if not args.skip_tansu:
            with _dir(args.data_dir, "tansu") as where:
                tansu = TansuPlatform(where)
                print("scale: tansu-1 (embedded stack) ...", flush=True)
                try:
                    tansu.start()
                    result["tansu-1"] = asyncio.run(measure(tansu, "tansu-1", args))
                finally:
                    tansu.stop()
                print(f"scale: tansu-1 done: {summary_line(result['tansu-1'])}", flush=True)
        with _dir(args.data_dir, "kafka") as where:
            kafka = KafkaPlatform(where, args.partitions)
            print("scale: starting PostgreSQL and 3 Apache Kafka nodes ...", flush=True)
            try:
                kafka.start()
                asyncio.run(on_kafka(kafka, args, result))
            finally:
                kafka.stop()
    finally:  # what was measured is kept, even when a later configuration failed
        result["machine"]["loadavg_at_end"] = psutil.getloadavg()
        RESULTS.mkdir(exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result, indent=2, default=str))
    replay = result.get("replay", {})
    print(f"\nreplay: {replay.get('over_capacity')} moments over capacity in {replay.get('assignments')} "
          f"assignments ({replay.get('assignments_that_filled_a_technician')} filled a technician)")
    print(f"written: {out}")
    failed = any(result.get(c, {}).get("errors", {}).get("count") for c in ("tansu-1", "kafka-1", "kafka-2"))
    return 1 if replay.get("over_capacity") or failed else 0


if __name__ == "__main__":
    sys.exit(main())
