"""Dispatch end to end: a flood drains in priority and deadline order, nobody over capacity; decline, pause, SLA."""

from __future__ import annotations

import uuid
from typing import Any

from tests.e2e.client import SERVICE_TYPE, Platform, wait_for


def submit(platform: Platform, region: str, tier: str) -> str:
    r = platform.http.post(
        platform.url("intake", "/v1/requests"),
        json={
            "channel": "app",
            "customer": {"id": f"c-{uuid.uuid4().hex[:8]}", "tier": tier},
            "region": region,
            "service_type": SERVICE_TYPE,
            "description": "No internet since this morning",
            "location": {"address": f"{uuid.uuid4().hex[:8]} Main Street"},
        },
        headers={"Idempotency-Key": uuid.uuid4().hex, **platform.as_channel()},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def queue(platform: Platform, region: str) -> list[dict[str, Any]]:
    r = platform.http.get(platform.url("dispatch", "/v1/queue?limit=10000"), headers=platform.auth("supervisor"))
    r.raise_for_status()
    return [i for i in r.json()["items"] if i["region"] == region]


def technician(platform: Platform, tid: str) -> dict[str, Any]:
    r = platform.http.get(platform.url("dispatch", f"/v1/technicians/{tid}"), headers=platform.auth("supervisor"))
    r.raise_for_status()
    return dict(r.json())


def work_order(platform: Platform, wo_id: str) -> dict[str, Any]:
    r = platform.http.get(platform.url("dispatch", f"/v1/work-orders/{wo_id}"), headers=platform.auth("supervisor"))
    r.raise_for_status()
    return dict(r.json())


def test_a_flood_beyond_capacity_drains_in_priority_and_deadline_order(platform: Platform) -> None:
    region = f"flood{uuid.uuid4().hex[:6]}"
    techs = [platform.register_technician(capacity=2, region=region) for _ in range(3)]
    capacity = 6
    tiers = ["standard", "gold", "vip", "enterprise"]
    tickets = [submit(platform, region, tiers[i % len(tiers)]) for i in range(20)]
    assert len(tickets) == 20

    def settled() -> list[dict[str, Any]] | None:
        q = queue(platform, region)
        return q if len(q) == len(tickets) - capacity else None

    waiting: list[dict[str, Any]] = wait_for(settled, timeout=90, what="6 assigned and 14 waiting")
    keys = [(i["priority"], i["deadline"]) for i in waiting]
    assert keys == sorted(keys), "the queue is ordered by priority, then deadline"
    assert len({i["priority"] for i in waiting}) > 1, "the flood mixes priorities"

    served: list[str] = []
    while waiting:
        loads = {t: technician(platform, t)["active_work_orders"] for t in techs}
        assert all(len(a) <= 2 for a in loads.values()), f"over capacity: {loads}"
        assert sum(len(a) for a in loads.values()) == capacity
        # one job is done somewhere: the head of the queue, and only it, takes the freed place
        busy = next(t for t, a in loads.items() if a)
        platform.work_and_resolve(work_order(platform, loads[busy][0]))
        head = waiting[0]["work_order_id"]
        got = wait_for(
            lambda h=head: (wo := work_order(platform, h))["technician_id"] and wo,
            timeout=30,
            what=f"the head of the queue {head} assigned",
        )
        assert got["technician_id"] == busy, "the only free place is the one just released"
        now_waiting = queue(platform, region)
        assert [i["work_order_id"] for i in now_waiting] == [i["work_order_id"] for i in waiting[1:]]
        served.append(head)
        waiting = now_waiting
    assert len(served) == len(tickets) - capacity
    for t in techs:
        assert len(technician(platform, t)["active_work_orders"]) <= 2


def test_decline_reassigns_pause_stops_the_clock_and_the_sla_is_explained(platform: Platform) -> None:
    region = f"decl{uuid.uuid4().hex[:6]}"
    a = platform.register_technician(capacity=1, region=region)
    b = platform.register_technician(capacity=1, region=region)
    ticket = submit(platform, region, "gold")
    wo = platform.wait_assigned(ticket)
    first = wo["technician_id"]
    other = b if first == a else a
    # the other technician may not see it, let alone decline it
    r = platform.http.get(platform.url("dispatch", f"/v1/work-orders/{wo['id']}"), headers=platform.tech_auth(other))
    assert r.status_code == 403
    r = platform.work(wo, "decline", {"reason": ""})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "reason"
    assert platform.work(wo, "decline", {"reason": "out of spare ONTs"}).status_code == 200
    wo = wait_for(lambda: (w := platform.work_order(ticket)) and w["technician_id"] == other and w, what="reassignment")
    assert wo["declined_by"] == [first]
    assert platform.work(wo, "accept").status_code == 200
    assert platform.work({**wo}, "start", {"mode": "remote"}).status_code == 200
    assert platform.work(wo, "pause", {"kind": "pending", "reason": "customer not home"}).status_code == 200
    r = platform.work(wo, "log", {"action": "called the customer", "mode": "remote", "measurements": {"attempts": 2}})
    assert r.status_code == 201
    assert platform.work(wo, "resume").status_code == 200

    sla = platform.http.get(platform.url("dispatch", f"/v1/tickets/{ticket}/sla"), headers=platform.auth("agent"))
    assert sla.status_code == 200
    clocks = sla.json()["clocks"]
    assert clocks["respond"]["state"] == "met" and clocks["respond"]["stopped_by"] == "accepted"
    resolve = clocks["resolve"]
    assert [s["state"] for s in resolve["segments"]] == ["running", "paused", "running"]
    assert resolve["segments"][1]["why"] == "pending: customer not home"
    assert resolve["target_seconds"] > 0 and resolve["deadline"] and resolve["remaining_seconds"] > 0
    platform.work_and_resolve(platform.work_order(ticket) or {})

    platform.wait_notified(ticket)
    assert platform.rate(ticket).status_code == 201
    dossier = platform.wait_archived(ticket, timeout=90)
    kinds = [e["type"].removeprefix("tsop.ticket.").removesuffix(".v1") for e in dossier["events"]]
    assert kinds[kinds.index("assigned") :][:6] == [
        "assigned",
        "assignment-declined",
        "assigned",
        "assignment-accepted",
        "work-started",
        "work-paused",
    ]


def test_the_sla_policy_is_data_only_an_admin_changes_it_and_a_bad_one_is_named(platform: Platform) -> None:
    url = platform.url("dispatch", "/v1/sla-policy")
    policy = platform.http.get(url, headers=platform.auth("agent"))
    assert policy.status_code == 200
    assert policy.json()["calendars"]["business"]["always"] is False
    assert policy.json()["type_calendars"]["*.installation"] == "business"
    assert platform.http.put(url, json=policy.json(), headers=platform.auth("supervisor")).status_code == 403
    r = platform.http.put(url, json={"version": "broken"}, headers=platform.auth("admin"))
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"][0]["field"] == "calendars"
    assert platform.http.get(url, headers=platform.auth("agent")).json()["version"] == policy.json()["version"]


def test_a_technician_credential_is_shown_once_and_a_rotated_one_revokes_the_old(platform: Platform) -> None:
    tid = platform.register_technician(capacity=1, region=f"cred{uuid.uuid4().hex[:6]}")
    me = platform.url("dispatch", f"/v1/technicians/{tid}")
    old = platform.tech_auth(tid)
    assert platform.http.get(me, headers=old).status_code == 200
    assert platform.http.get(me).status_code == 401
    assert (
        platform.http.post(platform.url("dispatch", f"/v1/technicians/{tid}/credential"), headers=old).status_code
        == 403
    )
    r = platform.http.post(
        platform.url("dispatch", f"/v1/technicians/{tid}/credential"), headers=platform.auth("supervisor")
    )
    assert r.status_code == 201 and r.json()["token"] != platform.technician_tokens[tid]
    platform.technician_tokens[tid] = r.json()["token"]
    assert platform.http.get(me, headers=old).status_code == 401
    assert platform.http.get(me, headers=platform.tech_auth(tid)).status_code == 200
    assert "token" not in platform.http.get(me, headers=platform.auth("supervisor")).json()


def test_a_request_cancelled_after_assignment_frees_its_technician(platform: Platform) -> None:
    region = f"cancel-{uuid.uuid4().hex[:6]}"
    tid = platform.register_technician(capacity=1, region=region)
    r = platform.submit(region=region)
    assert r.status_code == 201, r.text
    ticket = r.json()["id"]
    wo = platform.wait_assigned(ticket)
    assert wo["technician_id"] == tid and technician(platform, tid)["active_work_orders"] == [wo["id"]]
    r = platform.http.post(
        platform.url("intake", f"/v1/requests/{ticket}/cancel"),
        json={"reason_code": "withdrawn_by_customer", "reason": "fixed itself"},
        headers=platform.as_channel(),
    )
    assert r.status_code == 200, r.text
    withdrawn = wait_for(lambda: (w := work_order(platform, wo["id"]))["status"] == "withdrawn" and w,
                         what="the work order withdrawn")
    assert withdrawn["technician_id"] is None
    assert technician(platform, tid)["active_work_orders"] == []
    assert platform.work(wo, "accept").status_code == 403  # no longer theirs to accept
    dossier = platform.wait_archived(ticket)  # the cancelled ticket's record is sealed
    assert "tsop.ticket.request-cancelled.v1" in [e["type"] for e in dossier["events"]]
