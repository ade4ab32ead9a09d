"""Ports for the servers tests and benchmarks start: free, and below the kernel's ephemeral range (where an
outgoing connection could take one between the choice and the server's bind)."""

from __future__ import annotations

import socket

from tsop_devstack import ports


def test_ports_are_free_and_below_the_ephemeral_range() -> None:
    low = ports.ephemeral_low()
    for _ in range(20):
        base = ports.free_port_block(3)
        assert base >= ports.LOWEST and base + 100 + 3 <= low
        assert all(ports.port_free(p) for p in (*range(base, base + 3), *range(base + 100, base + 103)))
        single = ports.free_port()
        assert ports.LOWEST <= single < low


def test_a_bound_port_is_not_free() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports.free_port()))
        s.listen()
        assert not ports.port_free(s.getsockname()[1])


def test_a_range_reaching_down_to_the_usual_ports_is_avoided_from_above(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(ports, "ephemeral_range", lambda: (10000, 40000))
    for _ in range(20):
        base = ports.free_port_block(3)
        assert base > 40000 and base + 103 <= 65535
