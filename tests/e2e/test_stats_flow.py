"""The statistics follow the real platform: a lifecycle through the five services appears in the figures."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

from tests.e2e.client import Platform, wait_for


def test_a_completed_request_is_counted_by_the_statistics(platform: Platform) -> None:
    r = platform.submit()
    assert r.status_code == 201, r.text
    ticket = r.json()["id"]
    platform.complete(ticket)
    now = datetime.now(UTC)
    params = {"from": (now - timedelta(days=1)).isoformat(), "to": (now + timedelta(days=1)).isoformat(),
              "channel": "app"}
    report, export = platform.url("archive", "/v1/stats/report"), platform.url("archive", "/v1/stats/export")
    assert platform.http.get(report, params=params).status_code == 401
    assert platform.http.get(report, params=params, headers=platform.auth("agent")).status_code == 403
    assert platform.http.get(export, params=params, headers=platform.auth("technician")).status_code == 403

    def row() -> dict[str, str] | None:
        r = platform.http.get(export, params=params, headers=platform.auth("auditor"))
        found = [x for x in csv.DictReader(io.StringIO(r.text)) if x["ticket_id"] == ticket and x["score"]]
        return found[0] if found else None

    mine = wait_for(row, what="the ticket in the statistics, rated")
    assert mine["channel"] == "app" and mine["resolved_at"] and mine["first_fix"] == "True"
    total = platform.http.get(report, params=params, headers=platform.auth("supervisor")).json()["total"]
    assert total["submitted"] >= 1 and total["rated"] >= 1 and total["by_channel"] == {"app": total["submitted"]}
    assert total["self_service_share"] == 1.0 and total["time_to_resolve"]["count"] >= 1
    page = platform.http.get(platform.url("archive", "/stats"))
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
