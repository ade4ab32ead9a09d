"""Lawful erasure against legal holds (docs/erasure.md): an erasure request for a customer a legal hold covers (on
the customer, on one of their tickets, or on an incident linked to one of them) is refused with 409, naming the
hold, and changes nothing; once the hold is released the erasure proceeds."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from tsop_devstack.stack import Stack

from tests.e2e.client import SERVICE_TYPE, Platform, wait_for
from tests.e2e.test_erasure import _topic_bytes

ERASED = "[erased]"
BASIS = {"legal_basis": "consent_withdrawn", "reference": "DPO case 2026-31"}


def _submit(platform: Platform, customer: str, address: str) -> str:
    body = {"customer": {"id": customer, "tier": "gold"}, "region": "north", "service_type": SERVICE_TYPE,
            "description": f"No internet at {address}", "location": {"address": address}}
    r = platform.http.post(platform.url("intake", "/v1/requests"), json=body, headers=platform.as_channel())
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _request(platform: Platform, ticket: str) -> dict[str, Any]:
    r = platform.http.get(platform.url("intake", f"/v1/requests/{ticket}"), headers=platform.auth("agent"))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _hold(platform: Platform, kind: str, subject: str, action: str = "") -> None:
    path = f"/v1/legal-holds/{kind}/{subject}" + (f"/{action}" if action else "")
    r = platform.http.post(platform.url("archive", path), json={"reason": f"inquiry {action or 'opened'}"},
                           headers=platform.auth("auditor"))
    assert r.status_code in (200, 201), r.text


def _intake_knows(platform: Platform, customer: str, holds: int) -> dict[str, Any]:
    """Wait until intake has heard of the holds covering the customer (the window docs/erasure.md describes)."""
    return platform.wait_until(
        "intake", f"/v1/customers/{customer}/legal-holds", lambda b: len(b["holds"]) == holds,
        f"intake hearing of {holds} hold(s) on {customer}", 30, every=0.1, headers=platform.auth("auditor"))


def _erase(platform: Platform, customer: str) -> Any:
    return platform.http.post(platform.url("intake", f"/v1/customers/{customer}/erasure"), json=BASIS,
                              headers=platform.auth("auditor"))


def _refused_then_erased(platform: Platform, customer: str, ticket: str, address: str, kind: str,
                         subject: str) -> None:
    known = _intake_knows(platform, customer, 1)
    assert [(h["kind"], h["subject"]) for h in known["holds"]] == [(kind, subject)]
    refused = _erase(platform, customer)
    assert refused.status_code == 409, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    problem = refused.json()
    assert subject in problem["detail"] and kind in problem["detail"]
    assert [(h["kind"], h["subject"]) for h in problem["holds"]] == [(kind, subject)]
    # nothing changed: the customer's data still reads, and a second refusal is the same
    assert _request(platform, ticket)["location"]["address"] == address
    assert _erase(platform, customer).status_code == 409
    assert _request(platform, ticket)["location"]["address"] == address

    _hold(platform, kind, subject, "release")
    _intake_knows(platform, customer, 0)
    done = _erase(platform, customer)
    assert done.status_code == 201, done.text
    assert done.json()["keys_destroyed"] >= 1
    gone = _request(platform, ticket)
    assert gone["location"]["address"] == ERASED and gone["description"] == ERASED


def test_a_hold_on_the_customer_refuses_their_erasure_until_released(platform: Platform, stack: Stack) -> None:
    customer, address = f"cust-held-{uuid.uuid4().hex[:8]}", f"{uuid.uuid4().hex[:8]} Held Street"
    ticket = _submit(platform, customer, address)
    _hold(platform, "customer", customer)
    _intake_knows(platform, customer, 1)
    # released, then placed again (the archive's PlacedAgain): in force again, as intake hears it
    _hold(platform, "customer", customer, "release")
    _intake_knows(platform, customer, 0)
    _hold(platform, "customer", customer)
    _refused_then_erased(platform, customer, ticket, address, "customer", customer)
    # the hold's decisions and the refusals are auditable events on the customers topic (relayed a moment later)
    def customers_topic() -> list[tuple[bytes, bytes | None]] | None:
        _, records = asyncio.run(_topic_bytes(stack.bootstrap, "tsop."))
        found = [(h["ce_type"], k) for t, k, h in records if t == "tsop.customers"]
        return found if (b"tsop.customer.data-erased.v1", customer.encode()) in found else None

    on_customers = wait_for(customers_topic, 30, "the erasure on the customers topic", every=0.5)
    assert on_customers.count((b"tsop.customer.erasure-refused.v1", customer.encode())) == 2
    assert on_customers.count((b"tsop.customer.data-erased.v1", customer.encode())) == 1
    types = {t for t, _ in on_customers}
    assert {b"tsop.legal-hold.placed.v1", b"tsop.legal-hold.released.v1", b"tsop.legal-hold.placed-again.v1"} <= types

def test_a_hold_on_one_of_the_customers_tickets_refuses_their_erasure(platform: Platform) -> None:
    customer, address = f"cust-ticket-{uuid.uuid4().hex[:8]}", f"{uuid.uuid4().hex[:8]} Ticket Road"
    ticket = _submit(platform, customer, address)
    other = _submit(platform, customer, f"{uuid.uuid4().hex[:8]} Other Road")
    _hold(platform, "ticket", ticket)
    _refused_then_erased(platform, customer, other, _request(platform, other)["location"]["address"], "ticket",
                         ticket)


def test_a_hold_on_an_incident_linked_to_the_customers_ticket_refuses_their_erasure(platform: Platform) -> None:
    customer, address = f"cust-incident-{uuid.uuid4().hex[:8]}", f"{uuid.uuid4().hex[:8]} Outage Lane"
    ticket = _submit(platform, customer, address)
    region = f"manual-{uuid.uuid4().hex[:6]}"
    r = platform.http.post(platform.url("incident", "/v1/incidents"), headers=platform.auth("incident_manager"),
                           json={"title": "Fibre cut", "severity": "III", "scenario": "outage",
                                 "affected_services": [SERVICE_TYPE], "regions": [region],
                                 "estimated_customers": 10})
    assert r.status_code == 201, r.text
    incident = r.json()["id"]
    platform.wait_until("incident", f"/v1/incidents/{incident}", lambda _: True, "the incident", 30,
                        headers=platform.auth("incident_manager"))

    def linked() -> bool:
        r = platform.http.post(platform.url("incident", f"/v1/incidents/{incident}/tickets"),
                               json={"ticket_ids": [ticket]}, headers=platform.auth("incident_manager"))
        return r.status_code == 200

    wait_for(lambda: linked() or None, 30, "the ticket linked to the incident", every=0.2)
    _hold(platform, "incident", incident)
    _refused_then_erased(platform, customer, ticket, address, "incident", incident)
