"""Intake's native API over HTTP: channels and credentials, pending information, review queue, roles."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from tests.e2e.client import Platform, wait_for


def body(**kw: Any) -> dict[str, Any]:
    b: dict[str, Any] = {
        "customer": {"id": f"e2e-{uuid.uuid4().hex[:8]}", "tier": "gold"},
        "region": "north",
        "service_type": "broadband.fault_repair",
        "description": "No internet since this morning",
        "location": {"address": f"{uuid.uuid4().hex[:6]} Station Road"},
    }
    b.update(kw)
    return b


def post(platform: Platform, path: str, json: Any, headers: dict[str, str]) -> httpx.Response:
    return platform.http.post(platform.url("intake", path), json=json, headers=headers)


def statuses(platform: Platform, ticket: str) -> list[str]:
    r = platform.http.get(platform.url("intake", f"/v1/requests/{ticket}"), headers=platform.auth("auditor"))
    return [h["status"] for h in r.json()["status_history"]]


def test_credentials_are_required_checked_and_revocable(platform: Platform) -> None:
    r = post(platform, "/v1/requests", body(), {})
    assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert post(platform, "/v1/requests", body(), {"Authorization": "Bearer nope"}).status_code == 401
    r = post(platform, "/v1/requests", body(), platform.auth("agent"))
    assert r.status_code == 403 and "channel" in r.json()["detail"]
    r = post(platform, "/v1/channels", {"name": "x", "kind": "web"}, platform.as_channel())
    assert r.status_code == 403 and "admin" in r.json()["detail"]

    shop = platform.register_channel("corner shop", "onsite", callback_url="https://shop.example/cb")
    token = shop["credential"]["token"]
    assert shop["kind_label"] == "on-site" and not shop["self_service"]
    listed = platform.http.get(platform.url("intake", "/v1/channels"), headers=platform.auth("admin")).json()
    assert shop["id"] in [c["id"] for c in listed["items"]] and token not in str(listed)
    r = post(platform, "/v1/requests", body(), platform.as_channel(token))
    assert r.status_code == 201 and r.json()["channel"] == "onsite" and r.json()["channel_id"] == shop["id"]
    assert r.json()["callback_url"] == "https://shop.example/cb"
    r = post(platform, "/v1/requests", body(channel="web"), platform.as_channel(token))
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "channel"

    cred = shop["credential"]["id"]
    path = f"/v1/channels/{shop['id']}/credentials/{cred}"
    assert platform.http.delete(platform.url("intake", path), headers=platform.auth("admin")).status_code == 200
    assert post(platform, "/v1/requests", body(), platform.as_channel(token)).status_code == 401
    again = platform.http.delete(platform.url("intake", path), headers=platform.auth("admin"))
    assert again.status_code == 409


def test_a_channel_cannot_see_or_touch_another_channels_request(platform: Platform) -> None:
    ticket = post(platform, "/v1/requests", body(), platform.as_channel()).json()["id"]
    other = platform.register_channel("other portal", "web")["credential"]["token"]
    them = platform.as_channel(other)
    assert platform.http.get(platform.url("intake", f"/v1/requests/{ticket}"), headers=them).status_code == 403
    r = platform.http.patch(platform.url("intake", f"/v1/requests/{ticket}"), json={"description": "mine now"},
                            headers=them)
    assert r.status_code == 403 and r.json()["errors"][0]["field"] == "ticket_id"
    r = post(platform, f"/v1/requests/{ticket}/cancel", {"reason_code": "withdrawn_by_channel"}, them)
    assert r.status_code == 403


def test_missing_information_is_named_completed_and_then_the_request_flows_on(platform: Platform) -> None:
    r = post(platform, "/v1/requests", body(service_type="broadband.relocation"), platform.as_channel())
    assert r.status_code == 201, r.text
    view = r.json()
    ticket = view["id"]
    assert view["status"] == "pending_information"
    assert view["pending_information"]["missing"] == [
        {"field": "details.new_address", "reason": "required for broadband.relocation"}
    ]
    assert view["pending_information"]["complete_by"]
    url = platform.url("intake", f"/v1/requests/{ticket}")
    r = platform.http.patch(url, json={"customer": {"id": "x"}}, headers=platform.as_channel())
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "customer"
    r = platform.http.patch(url, json={"details": {"new_address": 7}, "colour": "red"}, headers=platform.as_channel())
    assert r.status_code == 422 and "colour" in [e["field"] for e in r.json()["errors"]]
    r = platform.http.patch(url, json={"details": {"new_address": "5 New Street"}}, headers=platform.as_channel())
    assert r.status_code == 200 and r.json()["status"] == "accepted" and r.json()["review"]["priority"] == 3
    r = platform.http.patch(url, json={"region": "south"}, headers=platform.as_channel())
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "region"
    wait_for(lambda: "pending_information" in statuses(platform, ticket) and "accepted" in statuses(platform, ticket),
             what="pending then accepted in the status history")


def test_duplicates_are_linked_to_the_open_request(platform: Platform) -> None:
    first = body()
    a = post(platform, "/v1/requests", first, platform.as_channel()).json()
    b = post(platform, "/v1/requests", {**first, "description": "Still no internet, please hurry"},
             platform.as_channel()).json()
    assert a["status"] == "accepted" and b["status"] == "linked" and b["duplicate_of"] == a["id"]
    # the same channel owns the original, so it is named to it
    assert b["review"]["duplicate_of"] == a["id"] and a["id"] not in b["review"]["reason"]


def test_agents_decide_the_review_queue_with_reason_codes(platform: Platform) -> None:
    ticket = post(platform, "/v1/requests", body(service_type="mobile.cancellation"), platform.as_channel()).json()
    assert ticket["status"] == "queued_for_review"
    queue = platform.http.get(platform.url("intake", "/v1/review-queue"), headers=platform.auth("agent"))
    assert queue.status_code == 200
    item = next(i for i in queue.json()["items"] if i["id"] == ticket["id"])
    assert item["reasons"][0].startswith("manual_type")
    assert platform.http.get(platform.url("intake", "/v1/review-queue"), headers=platform.as_channel()).status_code \
        == 403
    path = f"/v1/requests/{ticket['id']}/review"
    r = post(platform, path, {"decision": "accept", "reason_code": "because"}, platform.auth("agent"))
    assert r.status_code == 422 and "agent_verified" in r.json()["known"]
    assert post(platform, path, {"decision": "accept", "reason_code": "retention_done"}, platform.as_channel()) \
        .status_code == 403
    r = post(platform, path, {"decision": "accept", "reason_code": "retention_done"}, platform.auth("agent"))
    assert r.status_code == 200 and r.json()["review"]["decided_by"] == "dev-agent"
    r = post(platform, path, {"decision": "reject", "reason_code": "not_eligible"}, platform.auth("agent"))
    assert r.status_code == 409
    codes = platform.http.get(platform.url("intake", "/v1/reason-codes"), headers=platform.auth("agent")).json()
    assert "information_deadline_passed" in codes["cancel"]


def test_cancellation_and_invalid_transitions(platform: Platform) -> None:
    ticket = post(platform, "/v1/requests", body(), platform.as_channel()).json()["id"]
    path = f"/v1/requests/{ticket}/cancel"
    r = post(platform, path, {"reason_code": "bored"}, platform.as_channel())
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "reason_code"
    r = post(platform, path, {"reason_code": "withdrawn_by_customer", "reason": "fixed itself"}, platform.as_channel())
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    r = post(platform, path, {"reason_code": "withdrawn_by_customer"}, platform.as_channel())
    assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"
    wait_for(lambda: "cancelled" in statuses(platform, ticket), what="cancelled in the status history")


def test_the_self_service_share_is_visible_to_supervisors(platform: Platform) -> None:
    hotline = platform.register_channel("hotline desk", "hotline")["credential"]["token"]
    assert post(platform, "/v1/requests", body(), platform.as_channel(hotline)).status_code == 201
    stats = platform.http.get(platform.url("intake", "/v1/stats/channels"), headers=platform.auth("supervisor"))
    assert stats.status_code == 200
    s = stats.json()
    assert s["by_channel_kind"]["hotline"] >= 1 and s["by_channel_kind"]["app"] >= 1
    assert 0 < s["self_service_share"] < 1 and s["self_service_share"] + s["manual_share"] == 1
    assert platform.http.get(platform.url("intake", "/v1/stats/channels"), headers=platform.as_channel()) \
        .status_code == 403


def test_a_request_finished_downstream_is_no_longer_a_duplicate(platform: Platform) -> None:
    first = body(description="No dial tone since yesterday")
    ticket = post(platform, "/v1/requests", first, platform.as_channel()).json()["id"]
    assert post(platform, "/v1/requests", first, platform.as_channel()).json()["status"] == "linked"
    platform.complete(ticket)  # assigned, worked, resolved, rated, closed, archived
    wait_for(lambda: "closed" in statuses(platform, ticket), what="closed in intake's status history")
    again = post(platform, "/v1/requests", first, platform.as_channel()).json()
    assert again["status"] == "accepted" and again["id"] != ticket


def test_a_registration_retried_with_its_idempotency_key_registers_one_channel(platform: Platform) -> None:
    """A lost answer and a retry must not leave two channel systems (nor a second credential)."""
    key = {"Idempotency-Key": f"reg-{uuid.uuid4().hex}", **platform.auth("admin")}
    name = f"kiosk {uuid.uuid4().hex[:6]}"
    first = post(platform, "/v1/channels", {"name": name, "kind": "onsite"}, key)
    assert first.status_code == 201 and first.json()["credential"]["token"]
    again = post(platform, "/v1/channels", {"name": name, "kind": "onsite"}, key)
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["credential"]["id"] == first.json()["credential"]["id"]
    assert again.json()["credential"]["token"] is None
    other = post(platform, "/v1/channels", {"name": name + " 2", "kind": "onsite"}, key)
    assert other.status_code == 422 and other.json()["errors"][0]["field"] == "Idempotency-Key"
    listed = platform.http.get(platform.url("intake", "/v1/channels"), headers=platform.auth("admin")).json()
    assert [c["name"] for c in listed["items"]].count(name) == 1
    assert len(listed["items"][[c["name"] for c in listed["items"]].index(name)]["live_credentials"]) == 1
