"""The whole stack's CPU at rest: start it, let it settle, measure every process over a window.

``python -m bench.idle [--settle 20] [--seconds 30]`` prints one JSON document: each process's CPU in %
of one core and the stack's total (the target is ≤3 %, see bench/RESULTS.md, "Hot path (issue 10)").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

import psutil
from tsop_devstack.stack import SERVICES, Stack

from bench.__main__ import StackTarget, free_port
from bench.lifecycle import commit, measure_idle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--settle", type=float, default=20.0, help="seconds between start and measuring")
    parser.add_argument("--seconds", type=float, default=30.0, help="the measured window")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for every service, e.g. TSOP_FETCH_MAX_WAIT_MS=1000 (to attribute idle cost)")
    args = parser.parse_args()
    env = {"TSOP_LOG_LEVEL": "WARNING", **dict(e.split("=", 1) for e in args.env)}
    stack = Stack(Path(tempfile.mkdtemp(prefix="tsop-idle-")), pg_port=free_port(), broker_port=free_port(),
                  ports={name: free_port() for name in SERVICES}, env=env)

    async def work() -> dict[str, object]:
        await asyncio.sleep(args.settle)
        report = await measure_idle(StackTarget(stack), args.seconds)
        return {"commit": commit(), "loadavg": psutil.getloadavg(), "env": env, **report}

    try:
        stack.start(180)
        print(json.dumps(asyncio.run(work()), indent=1))
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
