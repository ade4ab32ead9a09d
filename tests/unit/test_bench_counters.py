"""The bench's accounting of a phase (bench.pgstats, bench.units): each figure is the counters' difference over the
phase divided by its units of work; a statement not run in the phase is left out; the costliest come first."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest

import bench.units as units
from bench import pgstats


def _db(xacts: int, inserted: int) -> dict[str, Any]:
    return {"datname": "tsop_x", "xacts": xacts, "tup_returned": 0, "tup_fetched": 0, "tup_inserted": inserted,
            "tup_updated": 0, "tup_deleted": 0, "blocks": 0}


def test_postgres_figures_are_per_unit_and_the_costliest_statement_comes_first() -> None:
    def stmt(calls: int, ms: float, rows: int, query: str) -> dict[str, Any]:
        return {"datname": "tsop_x", "queryid": hash(query), "query": query, "calls": calls,
                "total_exec_time": ms, "rows": rows}

    before = {"databases": {"tsop_x": _db(100, 10)},
              "statements": {("tsop_x", 1): stmt(5, 10.0, 5, "SELECT 1"), ("tsop_x", 2): stmt(7, 1.0, 7, "old")}}
    after = {"databases": {"tsop_x": _db(140, 30)},
             "statements": {("tsop_x", 1): stmt(25, 14.0, 25, "SELECT 1"), ("tsop_x", 2): stmt(7, 1.0, 7, "old"),
                            ("tsop_x", 3): stmt(10, 36.0, 20, "INSERT  INTO\n t")}}
    got = pgstats.report(before, after, 10)
    assert got["transactions"] == 4.0 and got["databases"]["tsop_x"]["tup_inserted"] == 2.0
    assert got["statements"] == 3.0  # (20 + 10) / 10: the statement not run in the phase is not counted
    assert got["exec_ms"] == 4.0
    assert [t["query"] for t in got["top"]] == ["INSERT INTO t", "SELECT 1"]
    assert got["top"][0] == {"database": "tsop_x", "calls": 1.0, "mean_us": 3600.0, "share": 0.9, "rows": 2.0,
                             "query": "INSERT INTO t"}


def test_units_of_work_come_from_each_services_counters(monkeypatch: Any) -> None:
    registry = CollectorRegistry()
    consumed = Counter("tsop_consumer_records_total", "", ["consumer", "outcome"], registry=registry)
    published = Counter("tsop_relay_published_total", "", ["relay"], registry=registry)
    http = Counter("tsop_http_requests_total", "", ["method", "route", "status"], registry=registry)
    monkeypatch.setattr(units, "_scrape", lambda url: units.parse(generate_latest(registry).decode()))
    consumed.labels("c", "applied").inc(3)
    import asyncio

    before = asyncio.run(units.snapshot({"svc": "http://x"}))
    consumed.labels("c", "applied").inc(20)
    consumed.labels("c", "ignored").inc(10)
    published.labels("svc").inc(40)
    http.labels("POST", "/v1/a", "201").inc(8)
    http.labels("POST", "/v1/a", "409").inc(2)
    after = asyncio.run(units.snapshot({"svc": "http://x"}))
    got = units.report(before, after, 10)
    assert got["totals"] == {"http": 1.0, "published": 4.0, "consumed": 3.0}
    assert got["services"]["svc"] == {"consumed": {"c applied": 2.0, "c ignored": 1.0}, "http": {"POST /v1/a": 1.0},
                                      "published": {"svc": 4.0}}
