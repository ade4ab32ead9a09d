"""``python -m bench.ratings``: customers' ratings through feedback's HTTP API, with the channel's credential.

Starts embedded PostgreSQL, the embedded broker and feedback alone (``bench.feedback``). The driver registers
a channel system with a credential on ``channels`` (as intake would: only the token's SHA-256 travels), then
publishes ``--tickets`` tickets of that channel on ``tickets`` (RequestSubmitted without a callback, then
Resolved), waits until feedback has opened every rating window, and rates them: ``POST
/v1/tickets/{id}/rating`` with the channel's own bearer token over ``--connections`` keep-alive connections
(closed loop), each ticket once.

With ``--api-instances N --workers M`` feedback runs as process roles (``TSOP_ROLE``, docs/operations.md): N
api processes, which the driver sends every rating to, and M worker processes (consumers, relay, timers and
delivery workers); ``--instances`` (full processes) is then ignored.

It reports accepted ratings/s (201), the answer's p50/p95/p99, every other answer by status, and CPU per
rating per process and for all feedback processes together; then checks on a sample that the ratings were
recorded (closed, basis rated). Target (issue 11): ≥ 1,000 ratings/s accepted. Results: bench/results/ratings-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import httpx
import psutil
from tsop_devstack.stack import Stack

from bench.__main__ import cpu_per, cpu_seconds, on_stack
from bench.feedback import Events, feedback_stack, feedback_total, more_instances, resolved, submitted, write
from bench.intake import Connection
from bench.lifecycle import summary


async def publish(events: Events, channel_id: str, n: int) -> list[str]:
    tickets = [str(uuid.uuid4()) for _ in range(n)]
    for t in tickets:
        now = datetime.now(UTC)
        await events.publish([submitted(t, channel_id, None, now), resolved(t, now)], now)
    await events.flush()
    return tickets


async def windows_open(http: httpx.AsyncClient, stack: Stack, token: str, tickets: list[str],
                       timeout: float) -> float:
    """Wait until feedback has opened every rating window and told the customer (the result, here channel
    ``none``: no callback); checked on the last ticket of each 1 %. A customer rates after being told."""
    t0 = time.monotonic()
    sample = tickets[len(tickets) // 100 - 1::max(1, len(tickets) // 100)] or tickets[-1:]
    while sample:
        r = await http.get(f"{stack.url('feedback')}/v1/tickets/{sample[-1]}/feedback",
                           headers={"Authorization": f"Bearer {token}"})
        if r.status_code == 200 and r.json().get("rating_due_at") and r.json().get("notified"):
            sample.pop()
            continue
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"feedback did not open the rating windows within {timeout:g}s")
        await asyncio.sleep(0.2)
    return time.monotonic() - t0


async def rate_all(stack: Stack, token: str, tickets: list[str], connections: int,
                   targets: list[str] | None = None) -> dict[str, Any]:
    """Rate every ticket over ``connections`` connections spread over the ``targets`` processes (default: every
    feedback process)."""
    ports = [port for name, port in stack.ports.items()
             if (name in targets if targets is not None else name == "feedback" or name.startswith("feedback-"))]
    todo = list(tickets)
    statuses: Counter[int] = Counter()
    times: list[float] = []
    errors: list[str] = []
    body = json.dumps({"score": 5, "tags": ["on_time", "solved"], "comment": "quick and friendly"}).encode()

    async def worker(port: int) -> None:
        conn = await Connection.open("127.0.0.1", port)
        try:
            while todo:
                ticket = todo.pop()
                head = (f"POST /v1/tickets/{ticket}/rating HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: ").encode()
                t = time.perf_counter()
                status, payload = await conn.post(head, body)
                times.append(time.perf_counter() - t)
                statuses[status] += 1
                if status != 201 and len(errors) < 10:
                    errors.append(f"{ticket}: {status} {payload[:200]!r}")
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(ports[i % len(ports)]) for i in range(connections)))  # spread over instances
    elapsed = time.perf_counter() - t0
    return {"ratings": len(tickets), "seconds": round(elapsed, 2), "accepted": statuses[201],
            "accepted_per_s": round(statuses[201] / elapsed, 1), "statuses": dict(statuses),
            "latency": summary(times), "errors": errors}


async def recorded(http: httpx.AsyncClient, stack: Stack, token: str, tickets: list[str]) -> dict[str, int]:
    """How many of a sample were recorded as rated and closed on the rating."""
    out: Counter[str] = Counter()
    for t in random.Random(1).sample(tickets, min(50, len(tickets))):
        r = await http.get(f"{stack.url('feedback')}/v1/tickets/{t}/feedback",
                           headers={"Authorization": f"Bearer {token}"})
        view = r.json()
        out["rated" if view.get("score") == 5 else "not rated"] += 1
        out["closed" if view.get("closed") else "open"] += 1
    return dict(out)


async def run(args: argparse.Namespace, stack: Stack) -> dict[str, Any]:
    events = Events(stack.bootstrap, stack.postgres.dsn())
    await events.start()
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            targets = await asyncio.to_thread(more_instances, stack, args.instances, args.api_instances,
                                              args.workers)
            channel_id, token = await events.channel()
            warm = await publish(events, channel_id, 200)
            await windows_open(http, stack, token, warm, args.timeout)
            await rate_all(stack, token, warm, args.connections, targets)  # warm-up: pools, caches, code paths
            print(f"bench.ratings: publishing {args.tickets} resolved tickets", flush=True)
            tickets = await publish(events, channel_id, args.tickets)
            settled = await windows_open(http, stack, token, tickets, args.timeout)
            await asyncio.sleep(3.0)  # the result webhooks ("none": no callback) and the relay settle
            print(f"bench.ratings: rating {args.tickets} tickets over {args.connections} connections", flush=True)
            cpu0, load0 = cpu_seconds(stack), psutil.getloadavg()
            result = await rate_all(stack, token, tickets, args.connections, targets)
            result["rated_by"] = targets
            cpu1 = cpu_seconds(stack)
            result["cpu_per_rating_ms"] = cpu_per(cpu0, cpu1, result["accepted"])
            result["cpu_per_rating_ms"]["feedback_all_instances"] = feedback_total(result["cpu_per_rating_ms"])
            result["windows_opened_in_s"] = round(settled, 1)
            await asyncio.sleep(2.0)
            result["sample_recorded"] = await recorded(http, stack, token, tickets)
            result["loadavg"] = {"start": load0, "end": psutil.getloadavg()}
            return result
    finally:
        await events.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tickets", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds feedback may take to open the windows")
    parser.add_argument("--instances", type=int, default=1,
                        help="feedback processes (role all); the connections are spread over them")
    parser.add_argument("--api-instances", type=int, default=0,
                        help="feedback processes with TSOP_ROLE=api; the connections are spread over them")
    parser.add_argument("--workers", type=int, default=0, help="feedback processes with TSOP_ROLE=worker")
    args = parser.parse_args()
    roles = args.api_instances > 0 or args.workers > 0
    if roles and (args.api_instances < 1 or args.workers < 1):
        parser.error("process roles need at least one api process and one worker")
    if roles:
        args.instances = 1
        stack = feedback_stack("tsop-bench-ratings-", env={"TSOP_ROLE": "api"})
    else:
        stack = feedback_stack("tsop-bench-ratings-", instances=args.instances)
    result = on_stack(stack, lambda: run(args, stack))
    layout = {"api_instances": args.api_instances, "workers": args.workers} if roles else {}
    write("ratings", {**result, "targets": {"accepted_per_s": 1000}}, connections=args.connections,
          instances=args.instances, **layout)

if __name__ == "__main__":
    main()
