"""``python -m bench.holds``: the window between a legal hold and intake refusing an erasure (docs/erasure.md).

Starts embedded PostgreSQL, the embedded broker, the archive and intake. For each of N customers, one after the
other: place a legal hold on the customer at the archive, then poll intake's ``GET /v1/customers/{id}/legal-holds``
(every 5 ms) until it lists the hold; then release it and poll until it is gone. The time from the archive's answer
to intake's first listing is the window in which an erasure would not yet be refused (placed) or still be refused
(released). Results: bench/results/holds-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from tsop_devstack.stack import Stack

from bench.__main__ import RESULTS, free_port, on_stack, summary

POLL = 0.005


async def _until(client: httpx.AsyncClient, url: str, headers: dict[str, str], count: int, timeout: float) -> float:
    """Seconds until intake lists ``count`` holds for the customer."""
    start = time.monotonic()
    while True:
        r = await client.get(url, headers=headers)
        if r.status_code == 200 and len(r.json()["holds"]) == count:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"intake did not list {count} hold(s) within {timeout} s: {r.text}")
        await asyncio.sleep(POLL)


async def run(args: argparse.Namespace, stack: Stack) -> dict[str, Any]:
    auditor = {"Authorization": f"Bearer {stack.tokens['auditor']}"}
    placed: list[float] = []
    released: list[float] = []
    async with httpx.AsyncClient(timeout=10.0) as client:
        for i in range(args.holds + args.warmup):
            customer = f"bench-hold-{uuid.uuid4().hex[:8]}"
            hold = stack.url("archive") + f"/v1/legal-holds/customer/{customer}"
            known = stack.url("intake") + f"/v1/customers/{customer}/legal-holds"
            r = await client.post(hold, json={"reason": "bench"}, headers=auditor)
            r.raise_for_status()
            on = await _until(client, known, auditor, 1, 30.0)
            r = await client.post(hold + "/release", json={"reason": "bench"}, headers=auditor)
            r.raise_for_status()
            off = await _until(client, known, auditor, 0, 30.0)
            if i >= args.warmup:
                placed.append(on)
                released.append(off)
    return {
        "when": datetime.now(UTC).isoformat(),
        "machine": {"cpus": psutil.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
                    "load_average": psutil.getloadavg()},
        "poll_ms": POLL * 1000,
        "placed_to_known": {**summary(placed), "max_ms": round(max(placed) * 1000, 1)},
        "released_to_known": {**summary(released), "max_ms": round(max(released) * 1000, 1)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--holds", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    stack = Stack(
        Path(tempfile.mkdtemp(prefix="tsop-bench-holds-")),
        pg_port=free_port(),
        broker_port=free_port(),
        ports={"intake": free_port(), "archive": free_port()},
        env={"TSOP_LOG_LEVEL": "WARNING"},
        services=("intake", "archive"),
    )
    result = on_stack(stack, lambda: run(args, stack))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"holds-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
