"""The TMF621 facade over the running platform: same tickets, real lifecycle, listeners, TMF errors."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import httpx
import pytest
from tsop_devstack.stack import Stack

from tests.e2e.client import Platform, complete_despite_failures, wait_for
from tsop_intake.tmf import model

TT = "/tmf-api/troubleTicket/v5/troubleTicket"
HUB = "/tmf-api/troubleTicket/v5/hub"


class Listener:
    """A TMF621 notification listener that can be down for its first ``fail_first`` deliveries."""

    def __init__(self, fail_first: int = 0) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.refused = 0
        lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with lock:
                    if owner.refused < fail_first:
                        owner.refused += 1
                        self.send_response(503)
                        self.end_headers()
                        return
                    owner.received.append((self.path, json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/tmf"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def for_ticket(self, ticket_id: str) -> list[tuple[str, dict[str, Any]]]:
        return [(p, b) for p, b in list(self.received) if b["event"]["troubleTicket"]["id"] == ticket_id]

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener()
    yield lst
    lst.close()


def channel(platform: Platform, name: str) -> tuple[str, dict[str, str]]:
    """A channel system of its own (a CRM speaking TMF621), registered by an admin."""
    r = platform.http.post(platform.url("intake", "/v1/channels"), json={"name": name, "kind": "web"},
                           headers=platform.auth("admin"))
    assert r.status_code == 201, r.text
    c = r.json()
    return str(c["id"]), {"Authorization": f"Bearer {c['credential']['token']}"}


def ticket_body(customer: str | None = None, **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "@type": "TroubleTicket",
        "name": "No broadband",
        "description": "The broadband line has been down since this morning",
        "severity": "Major",
        "ticketType": "broadband.fault_repair",
        "relatedParty": [
            {
                "@type": "RelatedPartyRefOrPartyRoleRef",
                "role": "customer",
                "partyOrPartyRole": {"@type": "PartyRef", "id": customer or f"c-{uuid.uuid4().hex[:8]}"},
            }
        ],
        "troubleTicketCharacteristic": [
            {"@type": "StringCharacteristic", "name": "region", "value": "north"},
            {"@type": "StringCharacteristic", "name": "address", "value": f"{uuid.uuid4().hex[:6]} Main Street"},
        ],
        "externalIdentifier": [{"@type": "ExternalIdentifier", "id": f"crm-{uuid.uuid4().hex[:8]}"}],
        "note": [{"@type": "Note", "text": "Customer is home after 6 pm"}],
    }
    body.update(over)
    return body


def create(platform: Platform, headers: dict[str, str], **over: Any) -> dict[str, Any]:
    r = platform.http.post(platform.url("intake", TT), json=ticket_body(**over), headers=headers)
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"{TT}/{r.json()['id']}"
    created: dict[str, Any] = r.json()
    return created


def tmf(platform: Platform, headers: dict[str, str], ticket_id: str) -> dict[str, Any]:
    r = platform.http.get(platform.url("intake", f"{TT}/{ticket_id}"), headers=headers)
    assert r.status_code == 200, r.text
    found: dict[str, Any] = r.json()
    return found


def test_a_tmf_ticket_and_a_native_request_are_the_same_ticket(platform: Platform) -> None:
    _, headers = channel(platform, "crm-a")
    t = create(platform, headers)
    assert t["status"] == "acknowledged" and t["severity"] == "Major" and t["priority"] == "High"  # as sent
    assert t["statusChangeHistory"][0]["status"] == "acknowledged"
    native = platform.http.get(platform.url("intake", f"/v1/requests/{t['id']}"), headers=headers)
    assert native.status_code == 200, native.text
    assert native.json()["description"] == t["description"]
    # the read model catches up and lists it, with attribute selection and paging headers
    wait_for(lambda: tmf(platform, headers, t["id"]).get("lastUpdate"), what="read model")
    listed = wait_for(
        lambda: (r := platform.http.get(
            platform.url("intake", TT),
            params={"externalIdentifier.id": t["externalIdentifier"][0]["id"], "fields": "status,severity"},
            headers=headers,
        )).status_code == 200 and r.json() and r,
        what="the ticket in the list",
    )
    assert listed.headers["X-Total-Count"] == "1" and listed.headers["X-Result-Count"] == "1"
    assert listed.json() == [{"@type": "TroubleTicket", "id": t["id"], "href": t["href"], "status": "acknowledged",
                              "severity": "Major"}]


def test_a_channel_sees_only_its_own_tickets(platform: Platform) -> None:
    _, mine = channel(platform, "crm-mine")
    _, theirs = channel(platform, "crm-theirs")
    t = create(platform, mine)
    r = platform.http.get(platform.url("intake", f"{TT}/{t['id']}"), headers=theirs)
    assert r.status_code == 403 and r.json()["@type"] == "Error" and r.json()["code"] == "ERR403"
    r = platform.http.patch(platform.url("intake", f"{TT}/{t['id']}"), json={"description": "mine now, thanks"},
                            headers={**theirs, "Content-Type": "application/merge-patch+json"})
    assert r.status_code == 403
    ext = t["externalIdentifier"][0]["id"]
    r = platform.http.get(platform.url("intake", TT), params={"externalIdentifier.id": ext}, headers=theirs)
    assert r.status_code == 200 and r.json() == [] and r.headers["X-Total-Count"] == "0"


def test_status_follows_the_real_lifecycle_and_listeners_hear_it(platform: Platform, listener: Listener) -> None:
    _, headers = channel(platform, "crm-lifecycle")
    r = platform.http.post(platform.url("intake", HUB), json={"@type": "Hub", "callback": listener.url},
                           headers=headers)
    assert r.status_code == 201, r.text
    hub = r.json()
    assert platform.http.get(platform.url("intake", f"{HUB}/{hub['id']}"), headers=headers).json() == hub
    # registered again (a retry after a lost answer): the same listener, so it hears each event once
    again = platform.http.post(platform.url("intake", HUB), json={"@type": "Hub", "callback": listener.url},
                               headers=headers)
    assert again.status_code == 200 and again.json() == hub, again.text
    t = create(platform, headers)
    complete_despite_failures(platform, t["id"])
    closed = wait_for(lambda: (x := tmf(platform, headers, t["id"]))["status"] == "closed" and x, what="closed")
    statuses = [h["status"] for h in closed["statusChangeHistory"]]
    assert statuses[0] == "acknowledged" and statuses[-2:] == ["resolved", "closed"]
    assert "inProgress" in statuses
    previous = None
    for s in statuses:
        assert model.can_move(previous, s), statuses
        previous = s
    assert closed["resolutionDate"]

    def heard() -> list[tuple[str, dict[str, Any]]] | None:
        got = listener.for_ticket(t["id"])
        return got if any(b["event"]["troubleTicket"].get("status") == "closed" for _, b in got) else None

    got = wait_for(heard, what="notifications up to closed")
    paths = [p for p, _ in got]
    assert paths[0] == "/tmf/listener/troubleTicketCreateEvent"
    assert "/tmf/listener/troubleTicketResolvedEvent" in paths
    changes = [b["event"]["troubleTicket"]["status"] for p, b in got if p.endswith("StatusChangeEvent")]
    assert changes == statuses  # every status change, in order
    assert len({b["eventId"] for _, b in got}) == len(got)
    assert platform.http.delete(platform.url("intake", f"{HUB}/{hub['id']}"), headers=headers).status_code == 204


def test_notifications_survive_a_listener_outage_and_an_intake_crash(platform: Platform, stack: Stack) -> None:
    flaky = Listener(fail_first=4)
    try:
        _, headers = channel(platform, "crm-flaky")
        r = platform.http.post(platform.url("intake", HUB), json={"callback": flaky.url,
                               "query": "eventType=TroubleTicketCreateEvent,TroubleTicketStatusChangeEvent"},
                               headers=headers)
        assert r.status_code == 201, r.text
        t = create(platform, headers)
        wait_for(lambda: flaky.refused >= 1, what="a refused delivery")
        stack.kill("intake")
        stack.start_service("intake")
        stack.wait_ready(services=("intake",))
        got = wait_for(lambda: len(flaky.for_ticket(t["id"])) >= 2 and flaky.for_ticket(t["id"]), timeout=90,
                       what="deliveries after the outage")
        assert [p.rsplit("/", 1)[1] for p, _ in got[:2]] == ["troubleTicketCreateEvent",
                                                             "troubleTicketStatusChangeEvent"]
        assert flaky.refused == 4
    finally:
        flaky.close()


def patch(platform: Platform, headers: dict[str, str], ticket_id: str, body: Any,
          content_type: str = "application/merge-patch+json") -> httpx.Response:
    return platform.http.patch(platform.url("intake", f"{TT}/{ticket_id}"), content=json.dumps(body),
                               headers={**headers, "Content-Type": content_type})


def test_merge_patch_changes_what_a_client_owns_and_refuses_the_rest(platform: Platform) -> None:
    _, headers = channel(platform, "crm-patch")
    t = create(platform, headers)
    r = patch(platform, headers, t["id"], {"description": "Down again after a short recovery",
                                           "note": [{"@type": "Note", "text": "second call"}]})
    assert r.status_code == 200, r.text
    assert r.json()["description"] == "Down again after a short recovery"
    assert [n["text"] for n in r.json()["note"]] == ["Customer is home after 6 pm", "second call"]
    same = patch(platform, headers, t["id"], {"description": "Down again after a short recovery"})
    assert same.status_code == 200 and same.json()["description"] == "Down again after a short recovery"
    assert same.elapsed.total_seconds() < 4  # nothing changed: it does not wait for the read model
    for body, field in (({"lastUpdate": "2026-01-01T00:00:00Z"}, "lastUpdate"), ({"ticketType": "x"}, "ticketType"),
                        ({"severity": "meh"}, "severity"), ({"colour": "red"}, "colour")):
        r = patch(platform, headers, t["id"], body)
        assert r.status_code == 400, r.text
        assert r.json()["code"] == "ERR400" and field in r.json()["message"]
    r = patch(platform, headers, t["id"], {"status": "resolved"})
    assert r.status_code == 409 and "resolved" in r.json()["message"]
    assert patch(platform, headers, t["id"], {"description": "x" * 20}, "text/plain").status_code == 415
    r = patch(platform, headers, t["id"], {"status": "cancelled", "statusChangeReason": "fixed itself"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"
    assert r.json()["statusChangeHistory"][-1]["statusChangeReason"].endswith("fixed itself")
    assert patch(platform, headers, t["id"], {"description": "too late for this"}).status_code == 409


def test_a_channel_closes_a_resolved_ticket_on_its_customers_confirmation(platform: Platform, stack: Stack) -> None:
    """TMF621's way of saying "the customer confirms it is solved" (§2.4): PATCH a resolved ticket to closed.
    Intake records the confirmation and feedback closes the ticket on it, basis ``confirmed``."""
    _, headers = channel(platform, "crm-confirm")
    t = create(platform, headers)
    early = patch(platform, headers, t["id"], {"status": "closed"})
    assert early.status_code == 409 and "resolved" in early.json()["message"], early.text  # not resolved yet
    platform.work_and_resolve(platform.wait_assigned(t["id"]))
    wait_for(lambda: tmf(platform, headers, t["id"])["status"] == "resolved", what="resolved in the TMF view")
    bad = patch(platform, headers, t["id"], {"status": "closed", "statusChangeReason": {"text": "x"}})
    assert bad.status_code == 400 and "statusChangeReason" in bad.json()["message"], bad.text
    _, others = channel(platform, "crm-not-theirs")
    assert patch(platform, others, t["id"], {"status": "closed"}).status_code == 403  # not their ticket
    r = patch(platform, headers, t["id"], {"status": "closed", "statusChangeReason": "works again, thanks"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "closed", r.json()["status"]
    case = platform.feedback(t["id"])
    assert case is not None and case["closed_basis"] == "confirmed", case
    again = patch(platform, headers, t["id"], {"status": "closed", "statusChangeReason": "works again, thanks"})
    assert again.status_code == 200 and again.json()["status"] == "closed", again.text  # a retry
    late = platform.http.post(platform.url("feedback", f"/v1/tickets/{t['id']}/rating"), json={"score": 5},
                              headers=platform.auth("agent"))
    assert late.status_code == 409, late.text  # closed on the confirmation: the window ended with it
    dossier = platform.wait_archived(t["id"])
    confirmed = [e for e in dossier["events"] if e["type"] == "tsop.ticket.resolution-confirmed.v1"]
    assert len(confirmed) == 1 and confirmed[0]["data"]["comment"] == "works again, thanks"  # opened for the auditor
    # ... and stored sealed: the customer's words are personal data (docs/erasure.md)
    stored = asyncio.run(_archived_data(stack, t["id"], "tsop.ticket.resolution-confirmed.v1"))
    assert "confirmed_by" in stored and "works again" not in stored


async def _archived_data(stack: Stack, ticket: str, ce_type: str) -> str:
    """The archive's stored body of the ticket's one event of ``ce_type``, as PostgreSQL holds it."""
    conn = await asyncpg.connect(host="127.0.0.1", port=stack.pg_port, user="postgres", database="tsop_archive")
    try:
        found = await conn.fetchval(
            "SELECT data::text FROM archive_events WHERE key = $1 AND ce_type = $2", ticket, ce_type)
        return str(found)
    finally:
        await conn.close()


def test_delete_is_for_admins(platform: Platform) -> None:
    _, headers = channel(platform, "crm-delete")
    t = create(platform, headers)
    url = platform.url("intake", f"{TT}/{t['id']}")
    r = platform.http.delete(url, headers=headers)
    assert r.status_code == 403 and r.json()["@type"] == "Error"
    assert platform.http.delete(url, headers=platform.auth("admin")).status_code == 204
    wait_for(lambda: platform.http.get(url, headers=headers).status_code == 404, what="deleted")
    # the list reads the read model only, which may still be applying the ticket's events (the single GET
    # of a ticket the read model has not yet seen answers from intake's own events)
    for params in ({"externalIdentifier.id": t["externalIdentifier"][0]["id"]}, {"status": "cancelled"}):
        r = wait_for(lambda p=params: (r := platform.http.get(platform.url("intake", TT), params=p, headers=headers))
                     .status_code == 200 and r.json() == [] and r, what=f"gone from the list ({params})")
        assert r.headers["X-Total-Count"] == "0", (params, r.text)
    # its record is complete: the archive seals it as it does a closed ticket's
    dossier = platform.wait_archived(t["id"])
    assert "tsop.ticket.request-cancelled.v1" in [e["type"] for e in dossier["events"]]


@pytest.mark.parametrize(
    "case",
    ["no token", "bad token", "malformed", "missing severity", "unknown type", "oversized", "bad filter"],
)
def test_mistakes_get_tmf_error_bodies_naming_the_field(platform: Platform, case: str) -> None:
    _, headers = channel(platform, f"crm-errors-{case}")
    url = platform.url("intake", TT)
    body = ticket_body()
    expected, mentions = 400, ""
    if case == "no token":
        r, expected, mentions = platform.http.post(url, json=body), 401, "Authorization"
    elif case == "bad token":
        r, expected = platform.http.post(url, json=body, headers={"Authorization": "Bearer forged"}), 401
    elif case == "malformed":
        r = platform.http.post(url, content=b'{"@type": "TroubleTicket",', headers={**headers,
                               "Content-Type": "application/json"})
    elif case == "missing severity":
        body.pop("severity")
        r, mentions = platform.http.post(url, json=body, headers=headers), "severity"
    elif case == "unknown type":
        r, mentions = platform.http.post(url, json={**body, "ticketType": "teleport"}, headers=headers), "ticketType"
    elif case == "oversized":
        big = {**body, "description": "x" * 100_000}
        r, expected = platform.http.post(url, json=big, headers=headers), 413
    else:
        r, mentions = platform.http.get(url, params={"colour": "red"}, headers=headers), "colour"
    assert r.status_code == expected, r.text
    err = r.json()
    assert err["@type"] == "Error" and err["code"] == f"ERR{expected}" and err["reason"]
    assert mentions in err["message"]


def test_missing_information_is_asked_for_and_completed_by_patch(platform: Platform, listener: Listener) -> None:
    _, headers = channel(platform, "crm-pending")
    r = platform.http.post(platform.url("intake", HUB), json={"callback": listener.url}, headers=headers)
    assert r.status_code == 201, r.text
    no_address = [{"@type": "StringCharacteristic", "name": "region", "value": "north"}]
    t = create(platform, headers, troubleTicketCharacteristic=no_address)  # the type requires location.address
    assert t["status"] == "pending", t
    assert t["statusChangeReason"] == "information required: troubleTicketCharacteristic address"  # TMF terms
    asked = wait_for(lambda: [b for p, b in listener.for_ticket(t["id"])
                              if p.endswith("troubleTicketInformationRequiredEvent")], what="information required")
    assert asked[0]["event"]["troubleTicket"]["status"] == "pending"
    r = patch(platform, headers, t["id"], {"troubleTicketCharacteristic": [
        {"@type": "StringCharacteristic", "name": "address", "value": "7 Harbour Road"}]})
    assert r.status_code == 200, r.text
    done = wait_for(lambda: (x := tmf(platform, headers, t["id"]))["status"] == "acknowledged" and x,
                    what="acknowledged once complete")
    assert [h["status"] for h in done["statusChangeHistory"]] == ["pending", "acknowledged"]
    assert {"name": "address", "value": "7 Harbour Road"}.items() <= next(
        c for c in done["troubleTicketCharacteristic"] if c["name"] == "address").items()
