"""Free TCP ports on 127.0.0.1 for the servers a test, a benchmark or a local stack starts.

A port is chosen below the kernel's ephemeral range (``/proc/sys/net/ipv4/ip_local_port_range``, 32768-60999 by
default), never in it: a port in that range that is free when chosen can be taken, before the server binds it,
as the local end of any outgoing connection on the machine (a client of PostgreSQL, of Kafka, of a service). One
Kafka controller failed to start that way ("Address already in use") while other tests ran beside it. Below the
range only another server can take it; ports are drawn at random, so two runs beside each other seldom meet, and a
port already bound is skipped.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST = 20000
RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_range() -> tuple[int, int]:
    """The ports the kernel hands to outgoing connections (32768-60999 when it cannot be read)."""
    try:
        low, high = (int(p) for p in RANGE.read_text().split()[:2])
    except (OSError, ValueError):
        return 32768, 60999
    return low, high


def ephemeral_low() -> int:
    return ephemeral_range()[0]


def port_free(port: int) -> bool:
    """Whether a server could bind ``port`` on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_block(n: int, gap: int = 100) -> int:
    """A base port with ``base .. base+n-1`` and ``base+gap .. base+gap+n-1`` free, all below the ephemeral range
    (a Kafka cluster's client and controller ports; ``n=1, gap=0`` is one port)."""
    low, high = ephemeral_range()
    bottom, top = LOWEST, low - gap - n
    if top - bottom < 1000:  # a range reaching down near LOWEST: above it instead
        bottom, top = high + 1, 65535 - gap - n
    if top <= bottom:
        raise RuntimeError(f"no room for {n} ports (and {n} at +{gap}) outside the ephemeral range {low}-{high}")
    draw = random.Random()  # not the global generator: a seeded test or benchmark must not draw the same ports
    for _ in range(2000):
        base = draw.randrange(bottom, top)
        if all(port_free(p) for p in {*range(base, base + n), *range(base + gap, base + gap + n)}):
            return base
    raise RuntimeError(f"no free block of {n} ports (and {n} at +{gap}) between {bottom} and {top}")


def free_port() -> int:
    """One free port below the ephemeral range."""
    return free_port_block(1, gap=0)
