"""A request travels intake → dispatch → feedback → archive as Kafka events, over real HTTP."""

from __future__ import annotations

import hashlib
import hmac

from tests.e2e.client import Platform, WebhookReceiver, wait_for

LIFECYCLE = [
    "tsop.ticket.request-submitted.v1",
    "tsop.ticket.request-accepted.v1",
    "tsop.ticket.assigned.v1",
    "tsop.ticket.assignment-accepted.v1",
    "tsop.ticket.work-started.v1",
    "tsop.ticket.work-logged.v1",
    "tsop.ticket.resolved.v1",
    "tsop.ticket.feedback-sent.v1",
    "tsop.ticket.rated.v1",
    "tsop.ticket.closed.v1",
    "tsop.ticket.archived.v1",
]


def test_a_request_ends_as_a_sealed_dossier(platform: Platform, webhook: WebhookReceiver) -> None:
    r = platform.submit(callback_url=webhook.url)
    assert r.status_code == 201 and r.headers["location"].endswith(r.json()["id"])
    ticket = r.json()["id"]
    assert r.json()["review"]["decision"] == "accepted"

    dossier = platform.complete(ticket)
    assert [e["type"] for e in dossier["events"]] == LIFECYCLE
    assert dossier["seal"]["verified"] is True and dossier["seal"]["event_count"] == len(LIFECYCLE) - 1
    sources = {e["type"]: e["source"] for e in dossier["events"]}
    assert sources["tsop.ticket.assigned.v1"] == "dispatch" and sources["tsop.ticket.rated.v1"] == "feedback"
    # each event names the event that caused it
    by_id = {e["id"]: e for e in dossier["events"]}
    assigned = next(e for e in dossier["events"] if e["type"].endswith("assigned.v1"))
    assert by_id[assigned["causation_id"]]["type"] == "tsop.ticket.request-accepted.v1"

    delivery = next(d for d in webhook.deliveries if d["body"]["ticket_id"] == ticket)
    assert delivery["body"]["status"] == "resolved" and delivery["body"]["result"] == "ONT replaced, line OK"
    assert delivery["signature"].startswith("sha256=")

    history = wait_for(
        lambda: [h["status"] for h in platform.http.get(
            platform.url("intake", f"/v1/requests/{ticket}"), headers=platform.as_channel()
        ).json()["status_history"] if h["status"] == "archived"],
        what="intake status archived",
    )
    assert history == ["archived"]


def test_webhook_signature_verifies_with_the_configured_secret(platform: Platform, webhook: WebhookReceiver) -> None:
    ticket = platform.submit(callback_url=webhook.url).json()["id"]
    platform.work_and_resolve(platform.wait_assigned(ticket))
    platform.wait_notified(ticket)
    delivery = next(d for d in webhook.deliveries if d["body"]["ticket_id"] == ticket)
    # over the bytes received (the body carries the applicant's text, in their language: not ASCII-escaped)
    expected = "sha256=" + hmac.new(b"change-me", delivery["raw"], hashlib.sha256).hexdigest()
    assert delivery["signature"] == expected


def test_open_tickets_are_projected_by_region_and_service_type(platform: Platform) -> None:
    ticket = platform.submit(region="south").json()["id"]
    assert ticket

    def counted() -> bool:
        s = platform.http.get(
            platform.url("incident", "/v1/open-tickets/summary?region=south"), headers=platform.auth("supervisor")
        ).json()
        return bool(s["total"] >= 1 and s["groups"][0]["service_type"] == "broadband.fault_repair")

    wait_for(counted, what="south ticket in the incident projection")


def test_a_retried_submission_returns_the_same_request(platform: Platform) -> None:
    first = platform.submit(key="retry-me-1")
    again = platform.submit(key="retry-me-1")
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"


def test_a_reused_idempotency_key_with_another_body_is_refused(platform: Platform) -> None:
    platform.submit(key="reuse-1")
    r = platform.http.post(
        platform.url("intake", "/v1/requests"),
        headers={"Idempotency-Key": "reuse-1", **platform.as_channel()},
        json={
            "channel": "app",
            "customer": {"id": "someone-else"},
            "region": "north",
            "service_type": "broadband.fault_repair",
            "description": "A different request entirely",
        },
    )
    assert r.status_code == 422 and r.json()["title"] == "Idempotency-Key reused"
