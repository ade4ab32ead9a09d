"""The customer's voice end to end, through HTTP and Kafka: a channel rates with its own credential (and
only its own tickets); a low score answered "not solved" reopens the ticket and sends it back to the same
technician, with the resolve clock continuing; the reopen counts answer over the API."""

from __future__ import annotations

import httpx

from tests.e2e.client import Platform, wait_for


def rate_as(platform: Platform, ticket: str, headers: dict[str, str], **body: object) -> httpx.Response:
    return platform.http.post(platform.url("feedback", f"/v1/tickets/{ticket}/rating"), json=body, headers=headers)


def resolved_ticket(platform: Platform) -> tuple[str, dict[str, object]]:
    ticket = platform.submit().json()["id"]
    wo = platform.wait_assigned(ticket)
    platform.work_and_resolve(wo)
    return ticket, wo


def test_a_channel_rates_its_own_ticket_with_its_own_credential_and_no_other(platform: Platform) -> None:
    ticket, _ = resolved_ticket(platform)
    other = platform.register_channel(name="other portal", kind="web")["credential"]["token"]
    # another channel's credential: known to feedback (over the bus), but not this ticket's channel
    refused = wait_for(
        lambda: (r := rate_as(platform, ticket, platform.as_channel(other), score=5)).status_code != 401 and r,
        timeout=30, what="feedback to learn the other channel's credential",
    )
    assert refused.status_code == 403, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    case = platform.feedback(ticket)
    assert case is not None and case["score"] is None and not case["closed"]
    # the ticket's own channel rates it, with tags
    mine = rate_as(platform, ticket, platform.as_channel(), score=4, tags=["on_time", "communication"])
    assert mine.status_code in (201, 202), mine.text
    case = platform.wait_until("feedback", f"/v1/tickets/{ticket}/feedback", lambda c: c["closed"], "closure", 30,
                               headers=platform.auth("supervisor"))
    assert case["score"] == 4 and case["tags"] == ["on_time", "communication"] and case["closed_basis"] == "rated"
    # a second rating is refused and changes nothing
    again = rate_as(platform, ticket, platform.as_channel(), score=1, solved=True)
    assert again.status_code == 409
    assert platform.feedback(ticket)["score"] == 4  # type: ignore[index]
    # the channel sees its own case, not others'
    own = platform.http.get(platform.url("feedback", f"/v1/tickets/{ticket}/feedback"), headers=platform.as_channel())
    assert own.status_code == 200
    theirs = platform.http.get(platform.url("feedback", f"/v1/tickets/{ticket}/feedback"),
                               headers=platform.as_channel(other))
    assert theirs.status_code == 403


def test_a_revoked_channel_credential_is_refused_by_feedback_too(platform: Platform) -> None:
    ch = platform.register_channel(name="short-lived", kind="app")
    token, credential = ch["credential"]["token"], ch["credential"]["id"]
    ticket, _ = resolved_ticket(platform)
    wait_for(lambda: rate_as(platform, ticket, platform.as_channel(token), score=5).status_code == 403,
             timeout=30, what="feedback to learn the credential")
    r = platform.http.delete(platform.url("intake", f"/v1/channels/{ch['id']}/credentials/{credential}"),
                             headers=platform.auth("admin"))
    assert r.status_code in (200, 204), r.text
    wait_for(lambda: rate_as(platform, ticket, platform.as_channel(token), score=5).status_code == 401,
             timeout=30, what="feedback to hear of the revocation")


def test_a_low_score_not_solved_reopens_and_goes_back_to_the_same_technician(platform: Platform) -> None:
    platform.register_technician(capacity=100)  # someone else could take it
    ticket, wo = resolved_ticket(platform)
    first = wo["technician_id"]
    missing = rate_as(platform, ticket, platform.as_channel(), score=1)
    assert missing.status_code == 422 and missing.json()["errors"][0]["field"].endswith("solved"), missing.text
    r = rate_as(platform, ticket, platform.as_channel(), score=1, solved=False, comment="still no internet",
                tags=["solved"])
    assert r.status_code in (201, 202), r.text
    case = platform.wait_until("feedback", f"/v1/tickets/{ticket}/feedback", lambda c: c["reopen_count"] == 1,
                               "the reopening", 30, headers=platform.auth("supervisor"))
    assert not case["closed"] and case["rating_due_at"] is None
    again = platform.wait_until(
        "dispatch", f"/v1/tickets/{ticket}/work-order", lambda w: w["status"] == "assigned", "reassignment", 60,
        headers=platform.auth("supervisor"))
    assert again["technician_id"] == first and again["id"] == wo["id"]
    sla = platform.http.get(platform.url("dispatch", f"/v1/tickets/{ticket}/sla"), headers=platform.auth("supervisor"))
    resolve = sla.json()["clocks"]["resolve"]
    assert resolve["state"] == "running" and resolve["segments"][-1]["why"].startswith("reopened")
    # worked again, resolved, rated well: closed and archived, the reopening in the dossier
    platform.work_and_resolve(again)
    wait_for(lambda: (c := platform.feedback(ticket)) and c["rating_due_at"], timeout=30, what="the new window")
    ok = rate_as(platform, ticket, platform.as_channel(), score=5)
    assert ok.status_code in (201, 202), ok.text
    dossier = platform.wait_archived(ticket)
    types = [e["type"] for e in dossier["events"]]
    assert types.count("tsop.ticket.resolved.v1") == 2 and "tsop.ticket.reopened.v1" in types
    assert types.index("tsop.ticket.reopened.v1") < types.index("tsop.ticket.closed.v1")
    counts = platform.http.get(platform.url("feedback", "/v1/reopens"), params={"ticket_id": ticket},
                               headers=platform.auth("supervisor")).json()
    assert counts["ticket"] == {ticket: 1} and counts["by_technician"][first] >= 1
    assert counts["by_service_type"]["broadband.fault_repair"] >= 1
    status = platform.http.get(platform.url("intake", f"/v1/requests/{ticket}"), headers=platform.as_channel()).json()
    assert "reopened" in [h["status"] for h in status["status_history"]]
