"""Complaints end to end: filed over HTTP, escalated by the durable timer across a SIGKILL of feedback, and
opened from a low rating the customer called solved (read from Kafka)."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from tsop_devstack.stack import SERVICES, Stack

from tests import infra
from tests.e2e.client import Platform, WebhookReceiver, wait_for
from tsop_events import schemas as wire
from tsop_events.envelope import wrap
from tsop_events.news import announce
from tsop_events.settings import ServiceSettings
from tsop_events.topics import Topic

ACKNOWLEDGE_SECONDS = 8  # the service-quality complaints' deadline in this stack


@pytest.fixture(scope="module")
def short_deadlines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Platform]]:
    tmp = Path(tmp_path_factory.mktemp("complaints"))
    policy = tmp / "complaints-policy.json"
    policy.write_text(json.dumps({
        "complaint_types": {
            "service_quality": {"name": "Service visit", "acknowledge_hours": ACKNOWLEDGE_SECONDS / 3600,
                                "answer_hours": 1},
            "billing": {"name": "Billing", "acknowledge_hours": 24, "answer_hours": 120,
                        "ticket_types": ["Bill Dispute"]},
        },
        "low_score": 2,
        "repeat_within_days": 30,
    }))
    s = Stack(
        tmp,
        pg_port=infra.free_port(),
        broker_port=infra.free_port(),
        ports={name: infra.free_port() for name in SERVICES},
        env={"TSOP_TOPIC_PARTITIONS": "3", "TSOP_LOG_LEVEL": "WARNING", "TSOP_COMPLAINTS_POLICY_FILE": str(policy),
             "TSOP_OUTBOUND_ALLOW": "127.0.0.1"},  # the customer's callback (a test receiver) is on 127.0.0.1
    )
    try:
        s.start(timeout=180)
    except Exception as exc:  # noqa: BLE001
        s.stop()
        infra.unavailable(f"the embedded stack did not start: {exc}")
    platform = Platform({name: s.url(name) for name in SERVICES}, s.tokens)
    platform.register_channel()
    platform.register_technician(capacity=10)
    yield s, platform
    s.stop()


def complaint(platform: Platform, cid: str) -> dict[str, Any] | None:
    return platform.found("feedback", f"/v1/complaints/{cid}", platform.auth("supervisor"))


def file(platform: Platform, body: dict[str, Any], key: str | None = None, role: str = "agent") -> Any:
    headers = {**platform.auth(role), **({"Idempotency-Key": key} if key else {})}
    return platform.http.post(platform.url("feedback", "/v1/complaints"), json=body, headers=headers)


def test_an_overdue_complaint_escalates_even_if_feedback_was_killed(short_deadlines: tuple[Stack, Platform]) -> None:
    stack, platform = short_deadlines
    body = {"customer_id": "cust-42", "complaint_type": "service_quality",
            "description": "The technician left without testing the line"}
    r = file(platform, body, key="complaint-1")
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    assert r.headers["location"] == f"/v1/complaints/{cid}"
    assert r.json()["status"] == "received" and r.json()["escalation_level"] == 0
    # an improvement action due in a few seconds: its due date escalates on the same durable timer, once
    due = datetime.now(UTC) + timedelta(seconds=ACKNOWLEDGE_SECONDS)
    opened = platform.http.post(platform.url("feedback", "/v1/improvement-actions"), headers=platform.auth(
        "supervisor"), json={"title": "test the line before leaving", "kind": "corrective", "owner": "field-ops",
                             "due": due.isoformat(), "complaint_id": cid})
    assert opened.status_code == 201, opened.text
    action = platform.url("feedback", f"/v1/improvement-actions/{opened.json()['id']}")
    assert opened.json()["overdue"] is False and opened.json()["escalation_level"] == 0

    stack.kill("feedback", signal.SIGKILL)  # the deadline lives in the event store, not in the process
    killed = datetime.now(UTC)
    stack.start_service("feedback")
    stack.wait_ready(120, ("feedback",))

    again = file(platform, body, key="complaint-1")  # a retry after the lost answer: the same complaint
    assert again.status_code == 200 and again.json()["id"] == cid

    escalated = wait_for(lambda: (c := complaint(platform, cid)) and c["escalation_level"] >= 1 and c,
                         timeout=90, what="the overdue complaint's escalation")
    assert [e["reason"] for e in escalated["escalations"]] == ["acknowledge_overdue"]
    assert datetime.fromisoformat(escalated["escalations"][0]["at"]) > killed, "escalated by the restarted process"
    assert escalated["overdue"] is True
    listed = platform.http.get(platform.url("feedback", "/v1/complaints?escalated=true"),
                               headers=platform.auth("agent")).json()["complaints"]
    assert cid in [c["id"] for c in listed]
    late = wait_for(lambda: (a := platform.found("feedback", action.removeprefix(platform.urls["feedback"]),
                                                 platform.auth("agent"))) and a["escalation_level"] >= 1 and a,
                    timeout=90, what="the overdue improvement action's escalation")
    assert late["overdue"] is True and [e["by"] for e in late["escalations"]] == ["timer"]
    assert datetime.fromisoformat(late["escalations"][0]["at"]) > killed, "escalated by the restarted process"
    overdue = platform.http.get(platform.url("feedback", "/v1/improvement-actions?overdue=true"),
                                headers=platform.auth("agent")).json()["actions"]
    assert late["id"] in [a["id"] for a in overdue]

    # the rest of its life, over HTTP; illegal steps are 409 and change nothing
    url = platform.url("feedback", f"/v1/complaints/{cid}")
    agent = platform.auth("agent")
    refused = platform.http.post(url + "/accept", headers=agent)
    assert refused.status_code == 409 and refused.headers["content-type"] == "application/problem+json"
    assert platform.http.post(url + "/acknowledge", headers=agent).status_code == 200
    assert platform.http.post(url + "/notes", json={"note": "called the technician"}, headers=agent).status_code == 200
    assert platform.http.post(url + "/answer", json={"answer": "a second visit tomorrow"},
                              headers=agent).status_code == 200
    closed = platform.http.post(url + "/accept", headers=agent)
    assert closed.status_code == 200 and closed.json()["status"] == "closed"
    assert closed.json()["closed"]["basis"] == "accepted"
    assert platform.http.post(url + "/notes", json={"note": "late"}, headers=agent).status_code == 409
    assert platform.http.get(action, headers=agent).json()["escalation_level"] == 1  # many timer rounds later: once


def test_bad_complaints_are_refused_naming_the_field_and_roles_are_checked(
    short_deadlines: tuple[Stack, Platform],
) -> None:
    _, platform = short_deadlines
    good = {"customer_id": "cust-1", "complaint_type": "billing", "description": "charged twice"}
    for body, field in [
        ({**good, "complaint_type": "weather"}, "complaint_type"),
        ({k: v for k, v in good.items() if k != "description"}, "description"),
        ({**good, "ticket_ids": ["not-a-ticket"]}, "ticket_ids.0"),
        ({**good, "extra": 1}, "extra"),
    ]:
        r = file(platform, body)
        assert r.status_code == 422, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert field in [e["field"] for e in r.json()["errors"]], r.json()
    filed = file(platform, good, key="k-bad")
    assert filed.status_code == 201
    close = platform.url("feedback", f"/v1/complaints/{filed.json()['id']}/close")
    by_agent = platform.http.post(close, json={"basis": "supervisor"}, headers=platform.auth("agent"))
    assert by_agent.status_code == 403 and by_agent.json()["errors"][0]["field"] == "basis"
    assert platform.http.post(close, json={"basis": "maybe"}, headers=platform.auth("supervisor")).status_code == 422
    closed = platform.http.post(close, json={"basis": "supervisor", "note": "duplicate of a call"},
                                headers=platform.auth("supervisor"))
    assert closed.status_code == 200 and closed.json()["closed"]["basis"] == "supervisor"
    technician = platform.http.get(platform.url("feedback", "/v1/complaints"), headers=platform.auth("technician"))
    assert technician.status_code == 403
    reused = file(platform, {**good, "description": "other"}, key="k-bad")
    assert reused.status_code == 422 and reused.json()["errors"][0]["field"] == "Idempotency-Key"
    assert file(platform, good, role="auditor").status_code == 403
    assert file(platform, good, role="incident_manager").status_code == 403
    assert platform.http.post(platform.url("feedback", "/v1/complaints"), json=good).status_code == 401
    missing = platform.http.get(platform.url("feedback", f"/v1/complaints/{uuid.uuid4()}"),
                                headers=platform.auth("agent"))
    assert missing.status_code == 404


async def _publish(stack: Stack, event: wire.TicketEvent) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    await producer.start()
    try:
        env = wrap(event, event_id=str(uuid.uuid4()), source="feedback")
        await producer.send_and_wait(Topic.tickets.qualified("tsop."), env.data, key=event.key().encode(),
                                     headers=env.headers())
    finally:
        await producer.stop()
    # as relays do: the services' quiet consumers resume at once, not at their safety net
    await announce(ServiceSettings(pg_port=stack.pg_port), {Topic.tickets.qualified("tsop.")})


def test_a_low_rating_the_customer_called_solved_opens_a_complaint(short_deadlines: tuple[Stack, Platform]) -> None:
    stack, platform = short_deadlines
    ticket = platform.submit().json()["id"]
    platform.work_and_resolve(platform.wait_assigned(ticket))
    platform.wait_notified(ticket)
    # the Rated feedback publishes once the rating asks whether the problem was solved (score 1, solved)
    rated = wire.Rated(ticket_id=ticket, score=1, comment="rude and late", tags=["attitude", "on_time"],
                       solved=True, rated_at=datetime.now(UTC))
    asyncio.run(_publish(stack, rated))

    def opened() -> dict[str, Any] | None:
        r = platform.http.get(platform.url("feedback", "/v1/complaints?complaint_type=service_quality"),
                              headers=platform.auth("agent"))
        found = [c for c in r.json()["complaints"] if ticket in c["ticket_ids"]]
        return found[0] if found else None

    summary = wait_for(opened, timeout=60, what="the complaint opened from the low rating")
    got = complaint(platform, summary["id"])
    assert got is not None
    assert got["source"] == "rating" and got["rating_score"] == 1 and got["ticket_ids"] == [ticket]
    assert got["customer_id"].startswith("cust-") and got["channel_id"]
    assert "attitude" in got["description"] and "rude and late" in got["description"]


def test_a_channel_rates_low_but_solved_and_follows_the_complaint_with_its_own_credential(
    short_deadlines: tuple[Stack, Platform],
) -> None:
    _, platform = short_deadlines
    ticket = platform.submit().json()["id"]
    platform.work_and_resolve(platform.wait_assigned(ticket))
    platform.wait_notified(ticket)
    rated = platform.http.post(platform.url("feedback", f"/v1/tickets/{ticket}/rating"),
                               json={"score": 2, "solved": True, "tags": ["communication"],
                                     "comment": "nobody told me"}, headers=platform.as_channel())
    assert rated.status_code in (201, 202), rated.text

    def mine() -> dict[str, Any] | None:
        r = platform.http.get(platform.url("feedback", "/v1/complaints"), headers=platform.as_channel())
        found = [c for c in r.json()["complaints"] if ticket in c["ticket_ids"]] if r.status_code == 200 else []
        return found[0] if found else None

    summary = wait_for(mine, timeout=60, what="the channel's complaint from its low rating")
    own = platform.http.get(platform.url("feedback", f"/v1/complaints/{summary['id']}"), headers=platform.as_channel())
    assert own.status_code == 200 and own.json()["source"] == "rating" and own.json()["rating_score"] == 2

    other = platform.register_channel(name="other shop", kind="web")["credential"]["token"]
    seen = wait_for(lambda: (r := platform.http.get(platform.url("feedback", f"/v1/complaints/{summary['id']}"),
                                                    headers=platform.as_channel(other))).status_code != 401 and r,
                    timeout=30, what="the other channel known to feedback")
    assert seen.status_code == 403  # another channel's complaint
    listed = platform.http.get(platform.url("feedback", "/v1/complaints"), headers=platform.as_channel(other))
    assert listed.status_code == 200 and listed.json()["complaints"] == []

    filed = platform.http.post(platform.url("feedback", "/v1/complaints"), headers={
        **platform.as_channel(), "Idempotency-Key": f"ch-{ticket}"}, json={
        "customer_id": own.json()["customer_id"], "complaint_type": "billing", "description": "charged for the visit",
        "ticket_ids": [ticket]})
    assert filed.status_code == 201 and filed.json()["source"] == "channel"
    assert filed.json()["channel_id"] == own.json()["channel_id"]
    withdrawn = platform.http.post(platform.url("feedback", f"/v1/complaints/{filed.json()['id']}/close"),
                                   json={"basis": "withdrawn"}, headers=platform.as_channel())
    assert withdrawn.status_code == 200 and withdrawn.json()["closed"]["basis"] == "withdrawn"


def test_a_tmf621_complaint_ticket_opens_a_complaint_of_the_mapped_type(
    short_deadlines: tuple[Stack, Platform],
) -> None:
    """The built-in catalogue takes a complaint ``ticketType`` (customer.complaint); feedback's policy maps the
    operator's name to its complaint type, linked to the ticket, for the channel that sent it."""
    _, platform = short_deadlines
    body = {
        "@type": "TroubleTicket", "name": "Charged twice", "description": "The May bill charges the visit twice",
        "severity": "Minor", "ticketType": "Bill Dispute",
        "relatedParty": [{"@type": "RelatedPartyRefOrPartyRoleRef", "role": "customer",
                          "partyOrPartyRole": {"@type": "PartyRef", "id": f"c-{uuid.uuid4().hex[:8]}"}}],
        "troubleTicketCharacteristic": [{"@type": "StringCharacteristic", "name": "region", "value": "north"}],
    }
    created = platform.http.post(platform.url("intake", "/tmf-api/troubleTicket/v5/troubleTicket"), json=body,
                                 headers=platform.as_channel())
    assert created.status_code == 201, created.text
    ticket = created.json()["id"]
    assert created.json()["ticketType"] == "Bill Dispute"

    def opened() -> dict[str, Any] | None:
        r = platform.http.get(platform.url("feedback", "/v1/complaints"), headers=platform.as_channel())
        found = [c for c in r.json()["complaints"] if ticket in c["ticket_ids"]] if r.status_code == 200 else []
        return found[0] if found else None

    summary = wait_for(opened, timeout=60, what="the complaint opened from the TMF621 ticket")
    assert summary["complaint_type"] == "billing" and summary["source"] == "ticket"
    full = platform.http.get(platform.url("feedback", f"/v1/complaints/{summary['id']}"), headers=platform.as_channel())
    assert full.status_code == 200 and full.json()["description"] == body["description"]
    # the complaint desk works it, not a technician: dispatch opens no work order (nor SLA clocks) for it
    wait_for(lambda: platform.http.get(platform.url("intake", f"/tmf-api/troubleTicket/v5/troubleTicket/{ticket}"),
                                       headers=platform.as_channel()).json()["status"] == "acknowledged",
             timeout=30, what="the complaint ticket accepted")
    assert platform.work_order(ticket) is None
    # ... and the ticket closes with its complaint (basis complaint_closed), then its dossier is sealed
    url, agent = platform.url("feedback", f"/v1/complaints/{summary['id']}"), platform.auth("agent")
    assert platform.http.post(url + "/acknowledge", headers=agent).status_code == 200
    assert platform.http.post(url + "/answer", json={"answer": "the second charge is refunded"},
                              headers=agent).status_code == 200
    accepted = platform.http.post(url + "/accept", headers=platform.as_channel())
    assert accepted.status_code == 200 and accepted.json()["status"] == "closed", accepted.text
    case = wait_for(lambda: (c := platform.feedback(ticket)) and c["closed"] and c, timeout=30,
                    what="the complaint ticket closed")
    assert case["closed_basis"] == "complaint_closed"
    closed = wait_for(lambda: (t := platform.http.get(
        platform.url("intake", f"/tmf-api/troubleTicket/v5/troubleTicket/{ticket}"), headers=platform.as_channel()
    ).json())["status"] == "closed" and t, timeout=30, what="the TMF621 view closed")
    assert [h["status"] for h in closed["statusChangeHistory"]][-2:] == ["acknowledged", "closed"]
    dossier = platform.wait_archived(ticket)
    assert [e["type"] for e in dossier["events"]][-2:] == ["tsop.ticket.closed.v1", "tsop.ticket.archived.v1"]


def test_the_customer_is_told_of_their_complaint_and_confirms_the_resolution_through_their_channel(
    short_deadlines: tuple[Stack, Platform],
) -> None:
    _, platform = short_deadlines
    receiver = WebhookReceiver()
    try:
        submitted = platform.submit(callback_url=receiver.url)
        assert submitted.status_code in (201, 202), submitted.text
        ticket = submitted.json()["id"]
        wait_for(lambda: platform.http.get(platform.url("feedback", f"/v1/tickets/{ticket}/feedback"),
                                           headers=platform.as_channel()).status_code == 200,
                 timeout=60, what="feedback's case of the ticket")
        filed = platform.http.post(platform.url("feedback", "/v1/complaints"), headers=platform.as_channel(), json={
            "customer_id": "c-told", "complaint_type": "billing", "description": "charged for a visit",
            "ticket_ids": [ticket]})
        assert filed.status_code == 201, filed.text
        cid = filed.json()["id"]
        ack = platform.http.post(platform.url("feedback", f"/v1/complaints/{cid}/acknowledge"),
                                 headers=platform.auth("agent"))
        assert ack.status_code == 200, ack.text

        def told() -> dict[str, Any] | None:
            return next((d for d in list(receiver.deliveries) if d["body"].get("complaint_id") == cid), None)

        message = wait_for(told, timeout=60, what="the complaint's acknowledgement at the callback")
        assert message["body"]["step"] == "complaint_acknowledged" and message["body"]["ticket_id"] == ticket
        assert message["signature"].startswith("sha256=") and "投诉已受理" in message["body"]["text"]  # app, zh

        platform.work_and_resolve(platform.wait_assigned(ticket))
        platform.wait_notified(ticket)
        path = platform.url("feedback", f"/v1/tickets/{ticket}/confirmation")
        other = platform.register_channel(name="another shop", kind="web")["credential"]["token"]
        refused = wait_for(lambda: (r := platform.http.post(path, json={}, headers=platform.as_channel(other)))
                           .status_code != 401 and r, timeout=30, what="the other channel known to feedback")
        assert refused.status_code == 403
        bad = platform.http.post(path, json={"note": 5}, headers=platform.as_channel())
        assert bad.status_code == 422 and "note" in bad.text
        assert platform.feedback(ticket)["closed"] is False  # type: ignore[index]
        confirmed = platform.http.post(path, json={"note": "works again"}, headers=platform.as_channel())
        assert confirmed.status_code == 200, confirmed.text
        assert confirmed.json()["closed_basis"] == "confirmed" and confirmed.json()["closed_reason"] == "confirmed"
        again = platform.http.post(path, json={"note": "works again"}, headers=platform.as_channel())
        assert again.status_code == 200 and again.json()["closed_basis"] == "confirmed"
        late = platform.http.post(platform.url("feedback", f"/v1/tickets/{ticket}/rating"), json={"score": 5},
                                  headers=platform.as_channel())
        assert late.status_code == 409
    finally:
        receiver.close()
