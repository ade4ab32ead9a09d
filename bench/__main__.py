"""``make bench``: complete lifecycles through the embedded stack (PostgreSQL, Tansu, five services), measured.

The driver (bench/lifecycle.py) submits over HTTP, plays the technicians and customers from the
``tickets`` topic and ends a lifecycle when Archived appears. Latencies between events use the
events' own ``ce_time`` (one machine, one clock), so polling never distorts them.

Phases, in order (each error in the report names its phase):
  idle-fresh  the stack's CPU with nothing submitted (channel and technicians registered, then
              --idle-seconds of quiet), per process and in % of one core
  warm-up     up to 200 lifecycles, closed loop, not measured
  throughput  N lifecycles with C in flight: lifecycles/s, CPU per lifecycle per process
  latency     open-loop submissions at R/s for S seconds: submit, submit→Assigned and
              submit→Archived percentiles
  idle-after  the stack's CPU again once everything is archived and the driver has stopped
              following the topic
Each service's peak RSS is sampled throughout, and its RSS at rest is read after the idle phases.
Results: bench/results/bench-*.json and *.png.

``make bench`` then runs the other benchmarks, each on its own stack: ``bench.intake``, ``bench.dispatch``,
``bench.tmf_list``, ``bench.notifications`` (feedback's step notifications to local receivers, 5 % slow and
5 % failing: deliveries/s, latency, none lost), ``bench.ratings`` (ratings over HTTP with the channel's
credential: accepted/s), ``bench.archive`` (verify, chaining and projection rebuild over a million archived events)
and ``bench.stats`` (statistics lag, a month's report over a million tickets); figures in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import tempfile
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from tsop_devstack.ports import free_port
from tsop_devstack.stack import SERVICES, Stack

from bench import lifecycle, pgstats, units
from bench.lifecycle import (
    Driver,
    Targets,
    commit,
    error_summary,
    measure_idle,
    net_of_idle,
    report_text,
    rss_mb,
    strip_raw,
    summary,
)

RESULTS = Path(__file__).parent / "results"



def processes(stack: Stack) -> dict[str, psutil.Process]:
    """The stack's processes and this driver, by name (bench.intake reads intake's RSS from it)."""
    return {name: proc for name, (proc, _) in StackTarget(stack).processes().items()}


def cpu_seconds(stack: Stack) -> dict[str, float]:
    """CPU seconds per process (PostgreSQL with its backends): where the machine's two cores go."""
    return lifecycle.cpu_seconds(StackTarget(stack))


def cpu_per(before: dict[str, float], after: dict[str, float], count: int) -> dict[str, float]:
    """Milliseconds of CPU per unit of work (a delivery, a rating), per process, between two ``cpu_seconds``."""
    n = max(1, count)
    return {k: round((after[k] - before.get(k, 0.0)) / n * 1000, 3) for k in after}


__all__ = ["RESULTS", "cpu_per", "cpu_seconds", "free_port", "on_stack", "processes", "summary"]


class StackTarget:
    """The embedded stack as the driver's target: one process per service, PostgreSQL, Tansu, this driver."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.tokens = stack.tokens
        self.bootstrap = stack.bootstrap
        self._procs: dict[str, tuple[psutil.Process, bool]] | None = None

    def url(self, service: str) -> str:
        return self.stack.url(service)

    def services(self) -> dict[str, str]:
        return {name: name for name in self.stack.procs}

    def processes(self) -> dict[str, tuple[psutil.Process, bool]]:
        if self._procs is None:  # one psutil.Process each, so CPU readings compare
            procs = {name: (psutil.Process(p.pid), False) for name, p in self.stack.procs.items()}
            for name, p in (("postgres", self.stack.postgres.proc), ("broker", self.stack.broker.proc)):
                if p is not None:
                    procs[name] = (psutil.Process(p.pid), True)
            procs["bench-driver"] = (psutil.Process(), False)
            self._procs = procs
        return self._procs


def on_stack(stack: Stack, work: Callable[[], Coroutine[Any, Any, dict[str, Any]]]) -> dict[str, Any]:
    """Start the stack, run ``work`` on it, and stop it whatever happens (SIGTERM included)."""

    def terminated(*_: object) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, terminated)
    try:
        stack.start(180)
        return asyncio.run(work())
    finally:
        stack.stop()


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, phase in zip(axes, ("throughput", "latency"), strict=True):
        if phase not in result:
            continue
        raw = result[phase].pop("_raw")
        for label, values in (
            ("submit", raw["submit"]),
            ("submit→Assigned", raw["assigned"]),
            ("submit→Archived", raw["archived"]),
        ):
            if values:
                xs = sorted(v * 1000 for v in values)
                ax.plot(xs, [i / len(xs) for i in range(len(xs))], label=label)
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log)")
        ax.set_ylabel("fraction of lifecycles")
        ax.set_title(
            "throughput phase" if phase == "throughput" else f"latency phase at {result[phase]['rate_per_s']}/s"
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("TSOP lifecycle latencies (embedded stack, CDF)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def say(text: str) -> None:
    print(text, flush=True)


async def run(args: argparse.Namespace, stack: Stack) -> dict[str, Any]:
    target = StackTarget(stack)
    driver = Driver(target)
    rss = asyncio.create_task(driver.sample_rss())
    follow: asyncio.Task[None] | None = None
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(),
        "commit": commit(),
        "machine": {"cpus": psutil.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
                    "loadavg_at_start": psutil.getloadavg()},
    }
    try:
        await driver.register_channel()
        await driver.register_technicians(args.technicians, args.capacity)
        if args.idle_seconds > 0:
            say(f"bench: idle-fresh, {args.idle_seconds:g}s with nothing submitted")
            await asyncio.sleep(5.0)  # the registrations' events settle
            result["idle_fresh"] = await measure_idle(target, args.idle_seconds)
            result["rss_at_rest_mb"] = rss_mb(target)
        follow = asyncio.create_task(driver.follow())
        await asyncio.wait_for(driver.follower_ready.wait(), 60)
        await asyncio.sleep(1.0)  # the follower has its partitions before the first submission
        say(f"bench: warm-up, then throughput ({args.lifecycles} lifecycles, {args.in_flight} in flight)")
        warm = await driver.closed_loop("warm-up", min(200, args.lifecycles), args.in_flight, args.timeout)
        result["warm_up"] = strip_raw(warm)
        pg_dsn = stack.postgres.dsn()
        pg_before = await pgstats.snapshot(pg_dsn, args.pg_statements)
        urls = {name: stack.url(name) for name in stack.procs}
        units_before = await units.snapshot(urls)
        result["throughput"] = tp = await driver.closed_loop("throughput", args.lifecycles, args.in_flight,
                                                             args.timeout)
        tp["postgres"] = pgstats.report(pg_before, await pgstats.snapshot(pg_dsn, args.pg_statements),
                                        tp["completed"])
        tp["units"] = units.report(units_before, await units.snapshot(urls), tp["completed"])
        if "idle_fresh" in result:
            tp["cpu_per_lifecycle_net_of_idle"] = net_of_idle(
                tp["cpu_per_lifecycle"]["per_process_ms"], result["idle_fresh"]["per_process_pct"],
                tp["elapsed_s"], tp["completed"])
        say(f"bench: latency, open loop at {args.rate:g}/s for {args.seconds:g}s")
        result["latency"] = await driver.open_loop("latency", args.rate, args.seconds, args.timeout)
        follow.cancel()
        await asyncio.gather(follow, return_exceptions=True)
        if args.idle_seconds > 0:
            say("bench: idle-after")
            await asyncio.sleep(5.0)  # the last rating's timers and relays settle
            result["idle_after"] = await measure_idle(target, args.idle_seconds)
            result["rss_after_load_mb"] = rss_mb(target)
        result["machine"]["loadavg_at_end"] = psutil.getloadavg()
        return result
    finally:
        result["peak_rss_mb"] = {k: round(v / 2**20, 1) for k, v in sorted(driver.rss_peak.items())}
        result["errors"] = error_summary(driver.errors)
        result["retried_requests"] = dict(driver.retried)
        result["targets"] = Targets().of(result)
        if follow is not None:
            follow.cancel()
        rss.cancel()
        await driver.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lifecycles", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=100)
    parser.add_argument("--rate", type=float, default=50.0, help="open-loop submissions/s (the latency phase)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--technicians", type=int, default=50)
    parser.add_argument("--capacity", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds each phase may take")
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="each idle measurement; 0 skips them")
    parser.add_argument("--pg-statements", action="store_true",
                        help="preload pg_stat_statements: the throughput phase's statements per lifecycle, most "
                             "time first (it costs PostgreSQL a little CPU)")
    args = parser.parse_args()
    stack = Stack(
        Path(tempfile.mkdtemp(prefix="tsop-bench-")),
        pg_port=free_port(),
        broker_port=free_port(),
        ports={name: free_port() for name in SERVICES},
        # the benchmark's bursts of fault tickets in one region would be declared an outage (and held)
        env={"TSOP_LOG_LEVEL": "WARNING",
             "TSOP_CORRELATION_RULES_FILE": str(Path(__file__).with_name("incident_rules.json"))},
        pg_settings=pgstats.PRELOAD if args.pg_statements else {},
    )

    result = on_stack(stack, lambda: run(args, stack))
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    png = RESULTS / f"bench-{stamp}.png"
    plot(result, png)
    result["plot"] = str(png)
    out = RESULTS / f"bench-{stamp}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print("\n" + report_text(result))
    print(f"\nwritten: {out} and {png}")


if __name__ == "__main__":
    main()
