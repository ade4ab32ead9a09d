"""Incidents end to end (§5): an outage declared automatically from a burst of fault tickets, a plan step
overdue and escalated, linked tickets held by dispatch, one unlinked back to normal dispatch, bulk
restoration resolving each linked ticket, and the review written from the log; all across a SIGKILL of
the incident service.

The e2e stack runs incident with tests/e2e/data's rules (4 fault tickets within 2 minutes in an
``outage-*`` region) and plans (severity II: a step due within 6 seconds).
"""

from __future__ import annotations

import signal
import time
import uuid
from typing import Any

from tsop_devstack.stack import Stack

from tests.e2e.client import Platform, WebhookReceiver, wait_for


def incident(platform: Platform, iid: str) -> dict[str, Any]:
    r = platform.http.get(platform.url("incident", f"/v1/incidents/{iid}"), headers=platform.auth("supervisor"))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def manage(platform: Platform, iid: str, action: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    r = platform.http.post(platform.url("incident", f"/v1/incidents/{iid}/{action}"), json=body,
                           headers=platform.auth("incident_manager"))
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def test_an_outage_from_a_burst_of_faults_held_restored_and_reviewed_across_a_sigkill(
    stack: Stack, platform: Platform
) -> None:
    region = f"outage-{uuid.uuid4().hex[:6]}"
    tickets = []
    receiver = WebhookReceiver()  # the customers' channel: incident notices reach it through feedback
    for _ in range(4):
        r = platform.submit(region=region, callback_url=receiver.url)
        assert r.status_code == 201, r.text
        tickets.append(r.json()["id"])

    # declared automatically from the burst; the four tickets are linked
    def declared() -> dict[str, Any] | None:
        r = platform.http.get(platform.url("incident", f"/v1/tickets/{tickets[-1]}/incident"),
                              headers=platform.auth("supervisor"))
        return r.json() if r.status_code == 200 and r.json()["linked_tickets"] == 4 else None

    inc = wait_for(declared, 60, "the automatic declaration")
    iid = inc["id"]
    assert inc["declared_by"] == "auto" and inc["rule"] == "e2e-burst" and inc["severity"] == "II"
    assert inc["regions"] == [region] and inc["estimated_customers"] == 40 and inc["plan"] == "outage/II"
    assert set(inc["ticket_ids"]) == set(tickets)

    # dispatch holds them: clocks paused
    for t in tickets:
        platform.wait_until("dispatch", f"/v1/tickets/{t}/work-order", lambda wo: wo["held_by_incident"] == iid,
                            f"hold of {t}", 60, headers=platform.auth("supervisor"))
    sla = platform.found("dispatch", f"/v1/tickets/{tickets[1]}/sla", platform.auth("supervisor"))
    assert sla is not None and sla["clocks"]["resolve"]["state"] == "paused"

    # the incident service dies before the 6-second step falls due; a ticket arrives meanwhile
    stack.kill("incident", signal.SIGKILL)
    late = platform.submit(region=region, callback_url=receiver.url)
    assert late.status_code == 201, late.text
    tickets.append(late.json()["id"])
    time.sleep(7)
    stack.start_service("incident")
    stack.wait_ready(120, ("incident",))

    def escalated() -> dict[str, Any] | None:
        i = incident(platform, iid)
        steps = {s["key"]: s["state"] for s in i["steps"]}
        return i if steps.get("customer_notice") == "escalated" and i["linked_tickets"] == 5 else None

    inc = wait_for(escalated, 60, "the overdue step escalated and the late ticket linked")
    assert {s["key"]: s["state"] for s in inc["steps"]}["assemble"] == "running"
    manage(platform, iid, "acknowledge")
    r = platform.http.post(platform.url("incident", f"/v1/incidents/{iid}/steps/assemble/finish"),
                           headers=platform.auth("incident_manager"))
    assert r.status_code == 200 and {s["key"]: s["state"] for s in r.json()["steps"]}["assemble"] == "finished"

    # nobody is sent to a held ticket, even with a technician free in the region; the unlinked one gets one
    platform.register_technician(capacity=10, region=region)
    unrelated = tickets[0]
    inc = manage(platform, iid, f"tickets/{unrelated}/unlink", {"reason": "a broken router at the customer's"})
    assert unrelated in inc["unlinked_tickets"] and inc["linked_tickets"] == 4
    wo = platform.wait_assigned(unrelated, 60)
    assert wo["held_by_incident"] is None
    sla = platform.found("dispatch", f"/v1/tickets/{unrelated}/sla", platform.auth("supervisor"))
    assert sla is not None and sla["clocks"]["resolve"]["state"] == "running"
    for t in tickets[1:]:
        held = platform.work_order(t)
        assert held is not None and held["technician_id"] is None and held["status"] == "waiting"

    # restoration: restored → verified → resolved; each linked ticket resolved with the incident's resolution
    resolution = {"resolution_code": "outage_restored", "summary": "Fibre spliced at the cabinet; service back"}
    r = platform.http.post(platform.url("incident", f"/v1/incidents/{iid}/resolve"), json=resolution,
                           headers=platform.auth("incident_manager"))
    assert r.status_code == 409 and r.headers["content-type"].startswith("application/problem+json")
    manage(platform, iid, "restore", {"note": "cabinet fibre spliced"})
    manage(platform, iid, "verify", {"note": "line tests green"})
    first = manage(platform, iid, "resolve", resolution)
    again = manage(platform, iid, "resolve", {"resolution_code": "other", "summary": "changes nothing"})
    assert first["resolved_at"] == again["resolved_at"] and again["resolution"]["summary"] == resolution["summary"]
    for t in tickets[1:]:
        platform.wait_until("dispatch", f"/v1/tickets/{t}/work-order", lambda wo: wo["status"] == "resolved",
                            f"resolution of {t}", 60, headers=platform.auth("supervisor"))
        case = platform.wait_until("feedback", f"/v1/tickets/{t}/feedback", lambda f: f["resolution"] is not None,
                                   f"feedback of {t}", 60, headers=platform.auth("supervisor"))
        assert case["resolution"]["summary"] == resolution["summary"]
    unrelated_wo = platform.work_order(unrelated)
    assert unrelated_wo is not None and unrelated_wo["status"] != "resolved"

    # each customer was told through feedback's notifications, once per change: linked, restoration under way
    # (acknowledged), restored, or unlinked; the resolution came as the ticket's own result
    def steps_told() -> dict[str, list[str]] | None:
        told: dict[str, list[str]] = {}
        unique = {d["delivery"]: d for d in receiver.deliveries}  # receivers de-duplicate on X-TSOP-Delivery
        for d in unique.values():
            if str(d["body"].get("step", "")).startswith("incident_"):
                told.setdefault(d["body"]["ticket_id"], []).append(d["body"]["step"])
        want = {t: ["incident_linked", "incident_in_progress", "incident_restored"] for t in tickets[1:]}
        want[unrelated] = ["incident_linked", "incident_in_progress", "incident_unlinked"]
        got = {t: sorted(v) for t, v in told.items()}
        return got if got == {t: sorted(v) for t, v in want.items()} else None

    wait_for(steps_told, 60, "the incident notices")
    linked_note = next(d for d in receiver.deliveries if d["body"].get("step") == "incident_linked")
    assert region in linked_note["body"]["text"] and linked_note["signature"]
    receiver.close()

    # the review, written from the log, then completed and published
    r = platform.http.get(platform.url("incident", f"/v1/incidents/{iid}/review"), headers=platform.auth("supervisor"))
    assert r.status_code == 200, r.text
    draft = r.json()["review"]
    assert r.json()["published"] is False
    assert (draft["tickets_affected"], draft["tickets_unlinked"], draft["customers_affected"]) == (4, 1, 4)
    assert [s["step"] for s in draft["late_steps"]] == ["customer_notice"]
    assert sum("customer_notice overdue" in e["what"] for e in draft["timeline"]) == 1  # escalated once
    assert draft["time_to_acknowledge_seconds"] > 0 and draft["sla_paused_seconds"] > 0
    body = {"root_cause": "An excavator cut the feeder fibre",
            "improvement_actions": [
                {"title": "Mark ducts before roadworks", "kind": "preventive", "owner": "field-ops",
                 "due": "2026-12-31"},
                {"title": "Re-splice with a spare loop", "kind": "corrective", "owner": "network", "due": "2026-12-15"},
            ]}
    r = platform.http.post(platform.url("incident", f"/v1/incidents/{iid}/review"), json=body,
                           headers=platform.auth("incident_manager"))
    assert r.status_code == 200 and r.json()["published"], r.text
    md = platform.http.get(platform.url("incident", f"/v1/incidents/{iid}/review.md"),
                           headers=platform.auth("supervisor"))
    assert md.status_code == 200 and md.headers["content-type"].startswith("text/markdown")
    assert "## Root cause" in md.text and "excavator" in md.text and "[preventive] Mark ducts" in md.text
    page = platform.http.get(platform.url("incident", f"/v1/incidents/{iid}/review.html"),
                             headers=platform.auth("supervisor"))
    assert page.status_code == 200 and "<h1>Post-incident review" in page.text

    # the TMF656 view with its trouble tickets
    sp = platform.found("incident", f"/tmf-api/serviceProblemManagement/v4/serviceProblem/{iid}",
                        platform.auth("supervisor"))
    assert sp is not None and sp["status"] == "Resolved" and sp["category"] == "system.originated"
    assert {t["id"] for t in sp["associatedTroubleTicket"]} == set(tickets[1:])
    assert all(t["@referredType"] == "TroubleTicket" for t in sp["associatedTroubleTicket"])


def test_declaring_by_hand_is_idempotent_checked_and_for_incident_managers(platform: Platform) -> None:
    url = platform.url("incident", "/v1/incidents")
    region = f"manual-{uuid.uuid4().hex[:6]}"
    body = {"title": "Power failure at the exchange", "severity": "I", "scenario": "outage",
            "affected_services": ["fixed.fault_repair"], "regions": [region], "estimated_customers": 12000}
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = platform.http.post(url, json=body, headers={**platform.auth("incident_manager"), **key})
    assert first.status_code == 201, first.text
    assert first.headers["location"] == f"/v1/incidents/{first.json()['id']}"
    assert first.json()["plan"] == "outage/I" and first.json()["steps"][0]["state"] == "running"
    again = platform.http.post(url, json=body, headers={**platform.auth("incident_manager"), **key})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    other = platform.http.post(url, json={**body, "title": "x"}, headers={**platform.auth("incident_manager"), **key})
    assert other.status_code == 422
    # the scope is covered: a second incident for it is refused
    dup = platform.http.post(url, json=body, headers=platform.auth("incident_manager"))
    assert dup.status_code == 409 and dup.headers["content-type"].startswith("application/problem+json")
    bad = platform.http.post(url, json={**body, "severity": "V"}, headers=platform.auth("incident_manager"))
    assert bad.status_code == 422 and "severity" in bad.text
    assert bad.headers["content-type"].startswith("application/problem+json")
    neg = platform.http.post(url, json={**body, "estimated_customers": -1}, headers=platform.auth("incident_manager"))
    assert neg.status_code == 422 and "estimated_customers" in neg.text
    assert platform.http.post(url, json=body, headers=platform.auth("supervisor")).status_code == 403
    assert platform.http.post(url, json=body, headers=platform.auth("agent")).status_code == 403
    # a severity change activates that severity's plan
    iid = first.json()["id"]
    r = platform.http.patch(platform.url("incident", f"/v1/incidents/{iid}"),
                            json={"severity": "III", "reason": "the exchange runs on generators"},
                            headers=platform.auth("incident_manager"))
    assert r.status_code == 200 and r.json()["plan"] == "outage/III" and r.json()["severity"] == "III"
