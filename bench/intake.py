"""``python -m bench.intake``: intake alone on the embedded stack, submissions measured.

Starts embedded PostgreSQL, the embedded broker and only the intake process,
registers a channel system (admin) and submits valid applications with its
credential and an Idempotency-Key, over keep-alive HTTP/1.1 connections (a
tiny client, so the driver takes as little of the machine as possible).

Phases:
  throughput  closed loop, C connections for S seconds: accepted submissions/s
              sustained, and how long the relay took to publish them all
  latency     open loop at R/s for S seconds: submit p50/p95/p99, measured from
              each request's scheduled time (a late start counts as latency)
CPU seconds per submission for intake, PostgreSQL (with its backends), the
broker and the driver show where the machine's cores went.
Results: bench/results/intake-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from tsop_devstack.stack import Stack

from bench.__main__ import cpu_seconds, free_port, on_stack, processes, summary

RESULTS = Path(__file__).parent / "results"


class Connection:
    """One keep-alive HTTP/1.1 connection: a request, then its response, in turn."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def post(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        self.writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
        status_line = await self.reader.readline()
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        payload = await self.reader.readexactly(length) if length else b""
        return int(status_line.split()[1]), payload

    def close(self) -> None:
        self.writer.close()


class Driver:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        url = httpx.URL(stack.url("intake"))
        self.host, self.port = url.host, int(url.port or 80)
        self.token = ""
        self.statuses: dict[str, int] = {}
        self.errors: list[str] = []
        self.sent = 0

    async def register_channel(self) -> None:
        async with httpx.AsyncClient() as http:
            r = await http.post(
                self.stack.url("intake") + "/v1/channels",
                json={"name": "bench portal", "kind": "app", "rate_limit_per_minute": 1_000_000},
                headers={"Authorization": f"Bearer {self.stack.tokens['admin']}"},
            )
            r.raise_for_status()
            self.token = r.json()["credential"]["token"]

    def request(self) -> tuple[bytes, bytes]:
        key = uuid.uuid4().hex
        body = json.dumps(
            {
                "customer": {"id": f"c-{key[:10]}", "tier": "standard"},
                "region": "north",
                "service_type": "broadband.fault_repair",
                "description": "No internet since this morning",
                "location": {"address": f"{key[10:16]} Bench Street"},
            }
        ).encode()
        head = (
            f"POST /v1/requests HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {self.token}\r\n"
            f"Idempotency-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: "
        ).encode()
        return head, body

    async def one(self, conn: Connection) -> float:
        head, body = self.request()
        started = time.perf_counter()
        status, payload = await conn.post(head, body)
        self.sent += 1
        outcome = "accepted" if status == 201 and b'"status":"accepted"' in payload else str(status)
        self.statuses[outcome] = self.statuses.get(outcome, 0) + 1
        if outcome != "accepted" and len(self.errors) < 20:
            self.errors.append(f"{status}: {payload[:200]!r}")
        return time.perf_counter() - started

    async def published(self) -> float:
        async with httpx.AsyncClient() as http:
            text = (await http.get(self.stack.url("intake") + "/metrics")).text
        m = re.search(r'^tsop_relay_published_total\{relay="intake"\} ([0-9.e+]+)$', text, re.M)
        return float(m.group(1)) if m else 0.0

    async def throughput(self, connections: int, seconds: float) -> dict[str, Any]:
        conns = [await Connection.open(self.host, self.port) for _ in range(connections)]
        before, cpu_before, published_before = self.sent, cpu_seconds(self.stack), await self.published()
        self.statuses.clear()
        stop = time.perf_counter() + seconds
        latencies: list[float] = []

        async def loop(conn: Connection) -> None:
            while time.perf_counter() < stop:
                latencies.append(await self.one(conn))

        started = time.perf_counter()
        await asyncio.gather(*(loop(c) for c in conns))
        elapsed = time.perf_counter() - started
        done = self.sent - before
        cpu_after = cpu_seconds(self.stack)
        cpu = {k: round((v - cpu_before.get(k, 0.0)) / max(1, done) * 1000, 3) for k, v in cpu_after.items()}
        accepted = self.statuses.get("accepted", 0)
        expected = published_before + 2 * done  # RequestSubmitted + RequestAccepted per submission
        relay_started = time.perf_counter()
        while await self.published() < expected and time.perf_counter() - relay_started < 120:
            await asyncio.sleep(0.2)
        relay_done = elapsed + (time.perf_counter() - relay_started)
        for c in conns:
            c.close()
        return {
            "connections": connections,
            "seconds": round(elapsed, 2),
            "submissions": done,
            "outcomes": dict(self.statuses),
            "accepted_per_s": round(accepted / elapsed, 1),
            "relay_caught_up_after_s": round(relay_done, 2),
            "published_per_s": round(2 * done / relay_done, 1),
            "cpu_ms_per_submission": cpu,
            "submit": summary(latencies),
        }

    async def latency(self, rate: float, seconds: float, connections: int) -> dict[str, Any]:
        pool: asyncio.Queue[Connection] = asyncio.Queue()
        for _ in range(connections):
            pool.put_nowait(await Connection.open(self.host, self.port))
        self.statuses.clear()
        latencies: list[float] = []
        started = time.perf_counter()
        interval = 1.0 / rate
        tasks = []

        async def one(scheduled: float) -> None:
            conn = await pool.get()
            try:
                await self.one(conn)
                latencies.append(time.perf_counter() - scheduled)
            finally:
                pool.put_nowait(conn)

        for i in range(int(rate * seconds)):
            scheduled = started + i * interval
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(scheduled)))
        offered = len(tasks) / (time.perf_counter() - started)
        await asyncio.gather(*tasks)
        while not pool.empty():
            pool.get_nowait().close()
        return {
            "rate_per_s": rate,
            "offered_per_s": round(offered, 1),
            "seconds": seconds,
            "outcomes": dict(self.statuses),
            "submit": summary(latencies),
        }


async def run(args: argparse.Namespace, stack: Stack) -> dict[str, Any]:
    driver = Driver(stack)
    await driver.register_channel()
    await driver.throughput(args.connections, min(5.0, args.seconds))  # warm-up: caches, pools, JIT of paths
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(),
        "machine": {"cpus": psutil.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)},
        "throughput": await driver.throughput(args.connections, args.seconds),
        "latency": await driver.latency(args.rate, args.latency_seconds, args.latency_connections),
        "intake_rss_mb": round(processes(stack)["intake"].memory_info().rss / 2**20, 1),
        "errors": driver.errors,
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=30.0, help="throughput phase")
    parser.add_argument("--rate", type=float, default=500.0, help="latency phase, submissions per second")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--latency-connections", type=int, default=128, help="enough that none is waited for")
    args = parser.parse_args()
    stack = Stack(
        Path(tempfile.mkdtemp(prefix="tsop-bench-intake-")),
        pg_port=free_port(),
        broker_port=free_port(),
        ports={"intake": free_port()},
        env={"TSOP_LOG_LEVEL": "WARNING"},
        services=("intake",),
    )

    result = on_stack(stack, lambda: run(args, stack))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"intake-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
