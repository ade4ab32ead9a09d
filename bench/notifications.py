"""``python -m bench.notifications``: step notifications fanned out to local receivers, measured.

Starts embedded PostgreSQL, the embedded broker and feedback alone (``bench.feedback``), and a receiver
process (this module's ``receive`` command, uvicorn) listening on ``--receivers`` loopback addresses
(127.0.0.10, 127.0.0.11, …, one port), each address one receiver host:

* 90 % of the receivers answer at once (200);
* 5 % answer slowly (after 2 to 4.5 s, drawn per request), then 200;
* 5 % fail: the first ``--fail-first`` attempts of each delivery get a 500, the next one a 200.

Every request's ``X-TSOP-Signature`` (HMAC-SHA256 of the body with the webhook secret) is verified, and
deliveries are counted per ``X-TSOP-Delivery`` (the notification's id): unique ones, repeats of a delivered
one (duplicates) and bad signatures.

The driver registers a channel system on ``channels`` (as intake would), subscribes it to the ``accepted``
and ``assigned`` steps over feedback's API, then publishes tickets on ``tickets`` at ``--rate`` tickets/s for
``--seconds`` (RequestSubmitted with a callback to one of the receivers, RequestAccepted, Assigned: two
notifications each), and waits until every notification was delivered (or ``--timeout``).

It reports deliveries/s (to the healthy receivers over the publishing window and its drain, and all of them),
the delivery latency from publication to the receiver's first 2xx (p50/p95/p99, per receiver kind), lost,
duplicated and badly signed deliveries, and CPU per delivery per process. Targets (issue 11): ≥ 2,000
deliveries/s, none lost, p99 ≤ 1 s for the healthy receivers. Results: bench/results/notifications-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from tsop_devstack.stack import Stack

from bench.__main__ import cpu_per, cpu_seconds, free_port, on_stack
from bench.feedback import Events, accepted, assigned, feedback_stack, feedback_total, more_instances, submitted, write
from bench.lifecycle import summary

SECRET = "bench-webhook-secret"
STEPS = ("accepted", "assigned")

# ------------------------------------------------------------------------------------- the receiver

Scope = dict[str, Any]


class Receiver:
    """An ASGI app on many addresses: each is one receiver of a kind (fast, slow, failing, control)."""

    def __init__(self, secret: str, kinds: dict[str, str], slow: tuple[float, float], fail_first: int) -> None:
        self.secret, self.kinds, self.slow, self.fail_first = secret.encode(), kinds, slow, fail_first
        self.delivered: dict[str, tuple[float, str, str, str, int]] = {}  # id → (at, kind, ticket, step, attempt)
        self.attempts: Counter[str] = Counter()
        self.duplicates = 0
        self.duplicates_by_kind: Counter[str] = Counter()
        self.bad_signatures = 0
        self.disconnected = 0
        self.requests = 0
        self.by_kind: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":  # the sender gave up (its deadline) before the body came
                self.disconnected += 1
                return
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        kind = self.kinds.get(scope["server"][0], "fast")
        if kind == "control":
            await self.answer(send, 200, self.report(scope["path"] == "/dump"))
            return
        await self.answer(send, *await self.hook(kind, dict(scope["headers"]), body))

    async def hook(self, kind: str, headers: dict[bytes, bytes], body: bytes) -> tuple[int, bytes]:
        self.requests += 1
        expected = "sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected.encode(), headers.get(b"x-tsop-signature", b"")):
            self.bad_signatures += 1
            if self.bad_signatures <= 3:
                print(f"receiver: bad signature: {headers!r} {body[:300]!r}", file=sys.stderr, flush=True)
            return 401, b'{"error":"bad signature"}'
        delivery = headers.get(b"x-tsop-delivery", b"").decode()
        self.attempts[delivery] += 1
        if kind == "slow":
            await asyncio.sleep(random.uniform(*self.slow))
        if kind == "failing" and self.attempts[delivery] <= self.fail_first:
            return 500, b'{"error":"try again"}'
        if delivery in self.delivered:
            self.duplicates += 1
            self.duplicates_by_kind[kind] += 1
        else:
            data = json.loads(body)
            self.delivered[delivery] = (time.time(), kind, data["ticket_id"], data["step"], self.attempts[delivery])
            self.by_kind[kind] += 1
        return 200, b"{}"

    def report(self, full: bool) -> bytes:
        out: dict[str, Any] = {"unique": len(self.delivered), "by_kind": dict(self.by_kind),
                               "duplicates": self.duplicates,
                               "duplicates_by_kind": dict(self.duplicates_by_kind),
                               "bad_signatures": self.bad_signatures,
                               "disconnected": self.disconnected,
                               "requests": self.requests}
        if full:
            out["delivered"] = self.delivered
        return json.dumps(out).encode()

    @staticmethod
    async def answer(send: Any, status: int, body: bytes) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def receive(args: argparse.Namespace) -> None:
    """The receiver process: one uvicorn server, a socket per address (``host:port=kind``)."""
    import uvicorn

    kinds: dict[str, str] = {}
    sockets = []
    for spec in args.listen:
        where, kind = spec.split("=")
        host, port = where.split(":")
        kinds[host] = kind
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, int(port)))
        sockets.append(s)
    app = Receiver(args.secret, kinds, (args.slow_min, args.slow_max), args.fail_first)
    config = uvicorn.Config(app, log_level="warning", access_log=False, backlog=4096, timeout_keep_alive=30,
                            loop="uvloop", http="httptools", lifespan="on")
    asyncio.run(uvicorn.Server(config).serve(sockets=sockets))


# ---------------------------------------------------------------------------------------- the driver


class Receivers:
    """The receiver process as the driver sees it: which address is which, and its counts."""

    def __init__(self, count: int, slow_share: float, fail_share: float, fail_first: int) -> None:
        n_slow, n_fail = max(1, round(count * slow_share)), max(1, round(count * fail_share))
        hosts = [f"127.0.{(10 + i) // 256}.{(10 + i) % 256}" for i in range(count)]
        self.kinds = {h: "slow" for h in hosts[:n_slow]}
        self.kinds.update({h: "failing" for h in hosts[n_slow:n_slow + n_fail]})
        self.kinds.update({h: "fast" for h in hosts[n_slow + n_fail:]})
        self.hosts = hosts
        self.port, self.control = free_port(), free_port()
        specs = [f"{h}:{self.port}={k}" for h, k in self.kinds.items()] + [f"127.0.0.1:{self.control}=control"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.notifications", "receive", "--secret", SECRET,
             "--fail-first", str(fail_first), "--listen", *specs],
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        )
        self.psutil = psutil.Process(self.proc.pid)

    def url_for(self, i: int) -> str:
        """Ticket ``i``'s callback: the receivers in turn, so each kind gets its share of the tickets."""
        return f"http://{self.hosts[i % len(self.hosts)]}:{self.port}/hook"

    async def stats(self, http: httpx.AsyncClient, full: bool = False) -> dict[str, Any]:
        r = await http.get(f"http://127.0.0.1:{self.control}/{'dump' if full else 'stats'}", timeout=60)
        r.raise_for_status()
        result: dict[str, Any] = r.json()
        return result

    async def ready(self, http: httpx.AsyncClient) -> None:
        for _ in range(200):
            try:
                await self.stats(http)
                return
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
        raise RuntimeError("the receiver did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


async def subscribe(http: httpx.AsyncClient, stack: Stack, channel_id: str) -> None:
    """Subscribe the channel to the steps (404 until feedback has read the channel's registration)."""
    for _ in range(300):
        r = await http.put(f"{stack.url('feedback')}/v1/channels/{channel_id}/notifications",
                           json={"steps": list(STEPS), "template": "app", "language": "en"},
                           headers={"Authorization": f"Bearer {stack.tokens['supervisor']}"})
        if r.status_code == 200:
            await asyncio.sleep(1.0)  # the subscription reaches the consumer's view
            return
        if r.status_code != 404:
            raise RuntimeError(f"subscription: HTTP {r.status_code}: {r.text[:300]}")
        await asyncio.sleep(0.1)
    raise RuntimeError("feedback never heard of the bench's channel")


async def phase(events: Events, receivers: Receivers, http: httpx.AsyncClient, channel_id: str, rate: float,
                seconds: float, timeout: float, first: int) -> tuple[dict[str, float], int, float, bool]:
    """Publish tickets at ``rate``/s for ``seconds``; wait until all their notifications arrived.

    Returns (ticket → published at), the notifications expected, the phase's start and whether it timed out.
    """
    published: dict[str, float] = {}
    n = int(rate * seconds)
    before = (await receivers.stats(http))["unique"]
    started = time.time()
    t0 = time.perf_counter()
    for i in range(n):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        ticket = str(uuid.uuid4())
        now = datetime.now(UTC)
        published[ticket] = time.time()
        await events.publish([submitted(ticket, channel_id, receivers.url_for(first + i), now),
                              accepted(ticket, now), assigned(ticket, now)], now)
    await events.flush()
    expected = len(STEPS) * n
    deadline = time.monotonic() + timeout
    last_said = time.monotonic()
    while (got := (await receivers.stats(http))["unique"] - before) < expected:
        if time.monotonic() > deadline:
            return published, expected, started, True
        if time.monotonic() - last_said > 10:
            last_said = time.monotonic()
            print(f"  {got} of {expected} delivered after {time.time() - started:.0f}s", flush=True)
        await asyncio.sleep(0.2)
    return published, expected, started, False


def measure(published: dict[str, float], expected: int, started: float, delivered: dict[str, list[Any]],
            timed_out: bool) -> dict[str, Any]:
    mine = [d for d in delivered.values() if d[2] in published]
    lat: dict[str, list[float]] = {}
    for at, kind, ticket, _, _ in mine:
        lat.setdefault(kind, []).append(at - published[ticket])
    healthy = [d for d in mine if d[1] == "fast"]
    last_healthy = max((d[0] for d in healthy), default=started)
    last = max((d[0] for d in mine), default=started)
    return {
        "tickets": len(published),
        "notifications_expected": expected,
        "delivered_unique": len(mine),
        "lost": expected - len(mine),
        "timed_out": timed_out,
        "deliveries_per_s_healthy": round(len(healthy) / max(1e-9, last_healthy - started), 1),
        "deliveries_per_s_all": round(len(mine) / max(1e-9, last - started), 1),
        "seconds_to_last_healthy": round(last_healthy - started, 2),
        "seconds_to_last": round(last - started, 2),
        "attempts_of_failing": dict(Counter(d[4] for d in mine if d[1] == "failing")),
        "latency": {kind: summary(values) for kind, values in sorted(lat.items())},
    }


async def run(args: argparse.Namespace, stack: Stack, receivers: Receivers) -> dict[str, Any]:
    events = Events(stack.bootstrap, stack.postgres.dsn())
    await events.start()
    async with httpx.AsyncClient(timeout=30) as http:
        try:
            await asyncio.to_thread(more_instances, stack, args.instances)
            await receivers.ready(http)
            channel_id, _ = await events.channel()
            await subscribe(http, stack, channel_id)
            print("bench.notifications: warm-up", flush=True)
            await phase(events, receivers, http, channel_id, min(args.rate, 200.0), 1.0, args.timeout, 0)
            await asyncio.sleep(2.0)
            print(f"bench.notifications: {args.rate:g} tickets/s for {args.seconds:g}s "
                  f"({len(STEPS) * args.rate:g} notifications/s)", flush=True)
            cpu0 = {**cpu_seconds(stack), "receiver": sum(receivers.psutil.cpu_times()[:2])}
            load0 = psutil.getloadavg()
            published, expected, started, timed_out = await phase(
                events, receivers, http, channel_id, args.rate, args.seconds, args.timeout, 1_000_000)
            cpu1 = {**cpu_seconds(stack), "receiver": sum(receivers.psutil.cpu_times()[:2])}
            stats = await receivers.stats(http, full=True)
            result = measure(published, expected, started, stats.pop("delivered"), timed_out)
            result["cpu_per_delivery_ms"] = cpu_per(cpu0, cpu1, result["delivered_unique"])
            result["cpu_per_delivery_ms"]["feedback_all_instances"] = feedback_total(result["cpu_per_delivery_ms"])
            result["receiver"] = stats
            result["loadavg"] = {"start": load0, "end": psutil.getloadavg()}
            return result
        finally:
            await events.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    rec = sub.add_parser("receive", help="(internal) the receiver process")
    rec.add_argument("--secret", required=True)
    rec.add_argument("--listen", nargs="+", required=True, help="host:port=kind …")
    rec.add_argument("--slow-min", type=float, default=2.0)
    rec.add_argument("--slow-max", type=float, default=4.5)
    rec.add_argument("--fail-first", type=int, default=2)
    parser.add_argument("--rate", type=float, default=1000.0, help="tickets per second (two notifications each)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--receivers", type=int, default=100)
    parser.add_argument("--slow-share", type=float, default=0.05)
    parser.add_argument("--fail-share", type=float, default=0.05)
    parser.add_argument("--fail-first", type=int, default=2, help="500s before a failing receiver takes one")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the last delivery")
    parser.add_argument("--instances", type=int, default=1,
                        help="feedback processes, each delivering its share (TSOP_SHARD_INDEX of TSOP_SHARD_COUNT)")
    args = parser.parse_args()
    if args.command == "receive":
        receive(args)
        return
    stack = feedback_stack("tsop-bench-notifications-", {
        "TSOP_OUTBOUND_ALLOW": "127.0.0.0/8",  # the local receivers; the stack's own ports stay refused
        "TSOP_WEBHOOK_SECRET": SECRET,
        "TSOP_OUTBOUND_BACKOFF_BASE_SECONDS": "0.2",
    }, instances=args.instances)
    receivers = Receivers(args.receivers, args.slow_share, args.fail_share, args.fail_first)
    try:
        result = on_stack(stack, lambda: run(args, stack, receivers))
    finally:
        receivers.stop()
    write("notifications", {**result, "targets": {"deliveries_per_s": 2000, "lost": 0, "healthy_p99_ms": 1000}},
          rate_tickets_per_s=args.rate, seconds=args.seconds, receivers=args.receivers, instances=args.instances)

if __name__ == "__main__":
    main()
