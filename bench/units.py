"""The units of work behind a phase of a bench, from each service's own ``/metrics``: HTTP requests served,
events each relay published, records each consumer applied or skipped. With the phase's CPU they say what one unit
costs (a lifecycle's CPU is the sum of units times their price), the accounting issue 10's note asks for."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Mapping
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

_COUNTERS = {
    "tsop_http_requests": ("route", "http"),
    "tsop_relay_published": ("relay", "published"),
    "tsop_consumer_records": ("consumer", "consumed"),
}


def _scrape(url: str) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return parse(answer.read().decode())


def parse(text: str) -> dict[tuple[str, str], float]:
    """The counters of one service's ``/metrics`` text, by (kind, name)."""
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name not in _COUNTERS:
            continue
        label, kind = _COUNTERS[family.name]
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            name = sample.labels.get(label, "")
            if kind == "consumed":
                name += f" {sample.labels.get('outcome', '')}"
            elif kind == "http":
                name = f"{sample.labels.get('method', '')} {name}"
            out[(kind, name)] = out.get((kind, name), 0.0) + sample.value
    return out


async def snapshot(urls: Mapping[str, str]) -> dict[str, dict[tuple[str, str], float]]:
    """Each service's counters now (``urls``: service → its base URL)."""
    got = await asyncio.gather(*(asyncio.to_thread(_scrape, f"{u}/metrics") for u in urls.values()))
    return dict(zip(urls, got, strict=True))


def report(before: Mapping[str, Mapping[tuple[str, str], float]],
           after: Mapping[str, Mapping[tuple[str, str], float]], n: int) -> dict[str, Any]:
    """Per unit of work (``n``): HTTP requests, events published and records consumed, per service and in all."""
    per = max(n, 1)
    services: dict[str, Any] = {}
    totals = {"http": 0.0, "published": 0.0, "consumed": 0.0}
    for service, now in after.items():
        old = before.get(service, {})
        rows: dict[str, dict[str, float]] = {}
        for (kind, name), value in now.items():
            delta = (value - old.get((kind, name), 0.0)) / per
            if delta > 0:
                rows.setdefault(kind, {})[name] = round(delta, 2)
                totals[kind] += delta
        services[service] = {kind: dict(sorted(v.items())) for kind, v in sorted(rows.items())}
    return {"per": n, "totals": {k: round(v, 2) for k, v in totals.items()}, "services": services}
