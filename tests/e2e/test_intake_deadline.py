"""The completion deadline is a durable timer, and the catalogue is operator data checked at start."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tsop_devstack.stack import Stack

from tests import infra
from tests.e2e.client import Platform, wait_for

COMPLETION_SECONDS = 12  # longer than a restart, so the restarted process is the one that cancels
BUILT_IN = Path(__file__).parents[2] / "libs/events/src/tsop_events/service_types.json"


@pytest.fixture(scope="module")
def intake_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Platform, Path]]:
    tmp = Path(tmp_path_factory.mktemp("deadline"))
    catalogue = json.loads(BUILT_IN.read_text())
    catalogue["completion_hours"] = COMPLETION_SECONDS / 3600
    types = tmp / "types.json"
    types.write_text(json.dumps(catalogue))
    s = Stack(
        tmp,
        pg_port=infra.free_port(),
        broker_port=infra.free_port(),
        ports={"intake": infra.free_port()},
        env={"TSOP_TOPIC_PARTITIONS": "3", "TSOP_LOG_LEVEL": "WARNING", "TSOP_SERVICE_TYPES_FILE": str(types)},
        services=("intake",),
    )
    try:
        s.start(timeout=180)
    except Exception as exc:  # noqa: BLE001
        s.stop()
        infra.unavailable(f"the embedded stack did not start: {exc}")
    platform = Platform({"intake": s.url("intake")}, s.tokens)
    platform.register_channel("deadline portal", "web")
    yield s, platform, types
    s.stop()


def test_an_incomplete_application_is_cancelled_at_its_deadline_even_after_a_crash(
    intake_only: tuple[Stack, Platform, Path],
) -> None:
    stack, platform, _ = intake_only
    r = platform.http.post(
        platform.url("intake", "/v1/requests"),
        json={"customer": {"id": "slow-1"}, "region": "north", "service_type": "fixed.relocation",
              "description": "Moving house next month", "location": {"address": "1 Old Road"}},
        headers=platform.as_channel(),
    )
    assert r.status_code == 201 and r.json()["status"] == "pending_information"
    ticket, complete_by = r.json()["id"], datetime.fromisoformat(r.json()["pending_information"]["complete_by"])

    stack.kill("intake", signal.SIGKILL)  # the deadline lives in the event store, not in the process
    killed = datetime.now(UTC)
    stack.start_service("intake")
    stack.wait_ready(120, ("intake",))

    url = platform.url("intake", f"/v1/requests/{ticket}")
    view = wait_for(
        lambda: (v := platform.http.get(url, headers=platform.as_channel()).json())["status"] == "cancelled" and v,
        timeout=60,
        what="cancellation at the completion deadline",
    )
    assert view["cancellation"]["reason_code"] == "information_deadline_passed"
    assert "details.new_address" in view["cancellation"]["reason"]
    assert datetime.now(UTC) >= complete_by > killed
    wait_for(lambda: "cancelled" in [h["status"] for h in platform.http.get(
        url, headers=platform.as_channel()).json()["status_history"]], what="RequestCancelled on the topic")
    late = platform.http.patch(url, json={"details": {"new_address": "2 New Road"}}, headers=platform.as_channel())
    assert late.status_code == 409


def test_a_bad_catalogue_stops_the_start_with_the_reason(intake_only: tuple[Stack, Platform, Path]) -> None:
    stack, _, types = intake_only
    bad = types.with_name("bad-types.json")
    bad.write_text(types.read_text().replace('"resolve_hours": 24', '"resolve_hours": "soon"', 1))
    original = stack.env["TSOP_SERVICE_TYPES_FILE"]
    stack.env["TSOP_SERVICE_TYPES_FILE"] = str(bad)
    stack.kill("intake", signal.SIGTERM)
    try:
        stack.start_service("intake")
        deadline = time.monotonic() + 60
        while stack.procs["intake"].poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert stack.procs["intake"].returncode not in (None, 0)
        log = (stack.logs / "intake.log").read_text()
        assert "bad-types.json" in log and "resolve_hours" in log
    finally:
        stack.env["TSOP_SERVICE_TYPES_FILE"] = original
        stack.start_service("intake")
        stack.wait_ready(120, ("intake",))
