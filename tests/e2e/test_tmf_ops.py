"""Issue 8's TMF621 and read-your-writes items, over the running platform.

The conformance kit's minimal create, severity echoed and matched in any case, list parameters at the
edges answered 4xx (never 500), a duplicate's original never named to another channel, and a rating given
right after the resolve never refused.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.client import Platform, wait_for
from tests.e2e.test_tmf import HUB, TT, Listener, channel, tmf

MINIMAL = {  # all that TM Forum's conformance kit sends on a create
    "@type": "TroubleTicket",
    "description": "The line has been dead since noon",
    "severity": "Critical",
    "ticketType": "Broadband Fault",  # the operator's name for broadband.fault_repair (built-in catalogue)
}


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener()
    yield lst
    lst.close()


def test_the_conformance_minimum_is_created_pending_and_completed_later(
    platform: Platform, listener: Listener
) -> None:
    _, headers = channel(platform, "ctk")
    hub = platform.http.post(platform.url("intake", HUB), headers=headers, json={
        "callback": listener.url, "query": "eventType=TroubleTicketInformationRequiredEvent"})
    assert hub.status_code == 201, hub.text
    r = platform.http.post(platform.url("intake", TT), json=MINIMAL, headers=headers)
    assert r.status_code == 201, r.text
    t = r.json()
    assert t["status"] == "pending"
    assert t["severity"] == "Critical" and t["ticketType"] == "Broadband Fault"  # echoed as sent
    assert "relatedParty" in t["statusChangeReason"] and "region" in t["statusChangeReason"]
    assert "relatedParty" not in t  # no customer yet
    got = wait_for(lambda: listener.for_ticket(t["id"]), what="the information-required notification")
    path, note = got[0]
    assert path == "/tmf/listener/troubleTicketInformationRequiredEvent"
    assert note["eventType"] == "TroubleTicketInformationRequiredEvent"
    # severity and ticketType filters match what the client sent (severity in any case)
    for severity in ("Critical", "critical", "CRITICAL"):
        listed = wait_for(lambda s=severity: (r := platform.http.get(
            platform.url("intake", TT), params={"severity": s, "ticketType": "Broadband Fault", "fields": "severity"},
            headers=headers)).status_code == 200 and r.json() and r, what=f"severity={severity}")
        assert [x["id"] for x in listed.json()] == [t["id"]] and listed.json()[0]["severity"] == "Critical"
    # the channel completes the ticket: the customer (once), the region and what the type requires
    patch = platform.http.patch(platform.url("intake", f"{TT}/{t['id']}"), headers={
        **headers, "content-type": "application/merge-patch+json"}, content=json.dumps({
            "relatedParty": [{"@type": "RelatedPartyRefOrPartyRoleRef", "role": "customer",
                              "partyOrPartyRole": {"@type": "PartyRef", "id": f"c-{uuid.uuid4().hex[:8]}"}}],
            "troubleTicketCharacteristic": [
                {"@type": "StringCharacteristic", "name": "region", "value": "north"},
                {"@type": "StringCharacteristic", "name": "address", "value": f"{uuid.uuid4().hex[:6]} High St"}],
        }))
    assert patch.status_code == 200, patch.text
    done = patch.json()
    assert done["status"] == "acknowledged", done
    assert [h["status"] for h in done["statusChangeHistory"]] == ["pending", "acknowledged"]
    assert done["relatedParty"][0]["partyOrPartyRole"]["id"].startswith("c-")
    again = platform.http.patch(platform.url("intake", f"{TT}/{t['id']}"), headers={
        **headers, "content-type": "application/merge-patch+json"}, content=json.dumps({
            "relatedParty": [{"role": "customer", "partyOrPartyRole": {"id": "someone-else"}}]}))
    assert again.status_code == 400 and "customer_id" in again.json()["message"]  # the customer is now fixed


@pytest.mark.parametrize(
    "query",
    [
        "severity=a%00b",  # NUL: refused at the edge
        "offset=18446744073709551616",  # beyond 64 bits
        "offset=1_0",
        "limit=%201",
        "creationDate.gte=0001-01-01T00:00:00%2B14:00",  # year 0 in UTC
        "lastUpdate.lt=9999-12-31T23:59:59-14:00",  # year 10000 in UTC
        "creationDate.lte=9999-12-31T23:59:59.999999-00:01",
        "sort=-creationDate,%00",
        "fields=%00",
    ],
)
def test_list_parameters_out_of_range_are_a_tmf_400(platform: Platform, query: str) -> None:
    r = platform.http.get(f"{platform.url('intake', TT)}?{query}", headers=platform.auth("supervisor"))
    assert r.status_code == 400, (query, r.status_code, r.text)
    body = r.json()
    assert body["@type"] == "Error" and body["status"] == "400" and body["message"]


def test_the_largest_offset_and_the_calendar_edges_in_utc_answer(platform: Platform) -> None:
    for query in ("offset=9223372036854775807", "creationDate.gte=0001-01-01T00:00:00Z",
                  "lastUpdate.lt=9999-12-31T23:59:59Z", "creationDate.gte=0001-01-01T00:00:00-14:00"):
        r = platform.http.get(f"{platform.url('intake', TT)}?{query}", headers=platform.auth("supervisor"))
        assert r.status_code == 200, (query, r.text)
        assert isinstance(r.json(), list)


def native(customer: str, address: str) -> dict[str, Any]:
    return {"customer": {"id": customer, "tier": "gold"}, "region": "north", "service_type": "broadband.fault_repair",
            "description": "No internet since this morning", "location": {"address": address}}


def test_a_duplicate_never_names_another_channels_ticket(platform: Platform) -> None:
    _, hotline = channel(platform, "hotline-desk")
    _, app = channel(platform, "self-care-app")
    customer, address = f"c-{uuid.uuid4().hex[:8]}", f"{uuid.uuid4().hex[:6]} Main Street"
    requests = platform.url("intake", "/v1/requests")
    original = platform.http.post(requests, json=native(customer, address), headers=hotline).json()
    assert original["status"] == "accepted", original
    secret = original["id"]
    answer = platform.http.post(requests, json=native(customer, address), headers=app)
    assert answer.status_code == 201 and answer.json()["status"] == "linked"
    dup = answer.json()["id"]
    assert secret not in answer.text and answer.json()["duplicate_of"] is None
    read = platform.http.get(f"{requests}/{dup}", headers=app)
    assert read.status_code == 200 and secret not in read.text
    assert read.json()["review"]["reason"] == "the same customer, type and location is already open"
    # the TMF621 view: neither the reason, the history nor a relationship names it, single or listed
    shown = wait_for(lambda: (v := tmf(platform, app, dup)).get("lastUpdate") and v, what="read model")
    assert shown["status"] == "cancelled" and secret not in json.dumps(shown)
    assert "troubleTicketRelationship" not in shown
    listed = wait_for(lambda: (r := platform.http.get(platform.url("intake", TT), params={"status": "cancelled"},
                                                      headers=app)).status_code == 200 and dup in r.text and r,
                      what="the duplicate in the read model's list")
    assert secret not in listed.text
    # staff see which ticket it duplicates, natively and in TMF terms
    staff = platform.http.get(f"{requests}/{dup}", headers=platform.auth("agent")).json()
    assert staff["duplicate_of"] == secret
    related = tmf(platform, platform.auth("supervisor"), dup)["troubleTicketRelationship"]
    assert related == [{"@type": "TroubleTicketRelationship", "id": secret, "href": f"{TT}/{secret}",
                        "relationshipType": "isDuplicateOf"}]
    # the hotline's own second call is told which of its tickets it duplicates
    own = platform.http.post(requests, json=native(customer, address), headers=hotline).json()
    assert own["status"] == "linked" and own["duplicate_of"] == secret


def test_a_rating_right_after_the_resolve_is_never_refused(platform: Platform) -> None:
    """The README's quick start: resolve, then rate at once, before feedback has heard of Resolved."""
    refused = []
    for _ in range(3):
        ticket = platform.submit().json()["id"]
        wo = platform.wait_assigned(ticket)
        platform.work_and_resolve(wo)
        r = platform.rate(ticket, score=4)
        if r.status_code not in (201, 202):
            refused.append((r.status_code, r.text))
            continue
        case = platform.wait_until("feedback", f"/v1/tickets/{ticket}/feedback", lambda f: f["closed"],
                                   "the rating recorded", 60, headers=platform.auth("supervisor"))
        assert case["score"] == 4 and case["closed_reason"] == "rated"
        dossier = platform.wait_archived(ticket)
        assert [e["data"]["score"] for e in dossier["events"] if e["type"] == "tsop.ticket.rated.v1"] == [4]
    assert not refused
