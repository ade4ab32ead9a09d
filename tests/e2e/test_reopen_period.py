"""A closed ticket reopened within its period (§2.4), end to end on its own stack (a short reopen period as
operator data): the archive does not seal before the period ends, a reopening goes back to the same
technician, and after the period the ticket can no longer be reopened and its dossier is sealed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tsop_devstack.stack import SERVICES, Stack

from tests import infra
from tests.e2e.client import Platform, wait_for

PERIOD_SECONDS = 20.0


@pytest.fixture(scope="module")
def reopenable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    tmp = Path(tmp_path_factory.mktemp("reopen"))
    policy = tmp / "feedback_policy.json"
    policy.write_text(json.dumps({"reopen_period_days": PERIOD_SECONDS / 86400, "low_score": 2}))
    s = Stack(
        tmp,
        pg_port=infra.free_port(),
        broker_port=infra.free_port(),
        ports={name: infra.free_port() for name in SERVICES},
        env={"TSOP_TOPIC_PARTITIONS": "3", "TSOP_LOG_LEVEL": "WARNING", "TSOP_FEEDBACK_POLICY_FILE": str(policy)},
    )
    try:
        s.start(timeout=180)
    except Exception as exc:  # noqa: BLE001
        s.stop()
        infra.unavailable(f"the embedded stack did not start: {exc}")
    platform = Platform({name: s.url(name) for name in SERVICES}, s.tokens)
    platform.register_channel()
    platform.register_technician(capacity=10)
    platform.register_technician(capacity=10)
    yield platform
    s.stop()


def closed(platform: Platform, ticket: str) -> dict[str, object]:
    return platform.wait_until("feedback", f"/v1/tickets/{ticket}/feedback", lambda c: c["closed"], "closure", 60,
                               headers=platform.auth("supervisor"))


def test_reopened_within_the_period_sealed_only_after_it(reopenable: Platform) -> None:
    p = reopenable
    ticket = p.submit().json()["id"]
    wo = p.wait_assigned(ticket)
    p.work_and_resolve(wo)
    wait_for(lambda: (c := p.feedback(ticket)) and c["rating_due_at"], timeout=60, what="the window")
    assert p.rate(ticket, 5).status_code == 201
    case = closed(p, ticket)
    assert case["closed_basis"] == "rated" and case["reopenable_until"]
    time.sleep(3)  # the archive has the closure by now, and must not seal it: it may still be reopened
    dossier = p.dossier(ticket)
    assert dossier is not None and dossier["seal"] is None
    reopen = p.http.post(p.url("feedback", f"/v1/tickets/{ticket}/reopen"), json={"reason": "dropped again"},
                         headers=p.as_channel())
    assert reopen.status_code == 200, reopen.text
    assert reopen.json()["reopen_count"] == 1 and not reopen.json()["closed"]
    again = p.wait_until("dispatch", f"/v1/tickets/{ticket}/work-order", lambda w: w["status"] == "assigned",
                         "reassignment", 60, headers=p.auth("supervisor"))
    assert again["technician_id"] == wo["technician_id"]
    p.work_and_resolve(again)
    wait_for(lambda: (c := p.feedback(ticket)) and c["rating_due_at"], timeout=60, what="the new window")
    assert p.rate(ticket, 4).status_code == 201
    closed(p, ticket)
    sealed = p.wait_archived(ticket, timeout=PERIOD_SECONDS + 60)
    types = [e["type"] for e in sealed["events"]]
    assert types.count("tsop.ticket.closed.v1") == 2 and "tsop.ticket.reopened.v1" in types
    late = p.http.post(p.url("feedback", f"/v1/tickets/{ticket}/reopen"), json={"reason": "once more"},
                       headers=p.auth("agent"))
    assert late.status_code == 409 and "no longer" in late.json()["detail"]
