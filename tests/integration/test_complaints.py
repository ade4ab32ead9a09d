"""Complaints on real PostgreSQL and a real broker: what the bus opens, the deadline timer, quality scores.

Feedback's service runs in-process (its consumer, relay and timers) on the fixture's database and broker, with
a manual clock; the test publishes other services' events by hand, as they would arrive, and reads what the
complaints context publishes on the ``complaints`` topic.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from tests.integration.conftest import eventually
from tests.integration.test_bus_contract import read_topic
from tsop_events import schemas as wire
from tsop_events.auth import Principal, Role
from tsop_events.clock import ManualClock
from tsop_events.envelope import Envelope, stable_event_id, wrap
from tsop_events.news import announce
from tsop_events.settings import ServiceSettings
from tsop_events.topics import Topic
from tsop_feedback.complaints import commands, projection
from tsop_feedback.main import FeedbackSettings, bootstrap

NOW = datetime.now(UTC).replace(microsecond=0)
AGENT = Principal("agent-1", frozenset({Role.agent}))
SUPERVISOR = Principal("sup-1", frozenset({Role.supervisor}))


def ticket_events(t: str, customer: str, technician: str, *, ticket_type: str | None = None,
                  score: int | None = None, solved: bool | None = None, at: datetime = NOW) -> list[wire.WireEvent]:
    attributes: dict[str, Any] = {"ticketType": ticket_type} if ticket_type else {}
    out: list[wire.WireEvent] = [
        wire.RequestSubmitted(
            ticket_id=t, channel="app", channel_id="portal", customer_id=customer, customer_tier="standard",
            region="north", service_type="broadband.fault_repair", description="no internet",
            time_requirement=wire.TimeRequirement(), attributes=attributes, submitted_at=at),
        wire.Assigned(ticket_id=t, work_order_id="wo", technician_id=technician, reason="best", candidates=[],
                      assigned_at=at),
        wire.Resolved(ticket_id=t, work_order_id="wo", technician_id=technician, resolution_code="fixed",
                      summary="replaced the ONT", resolved_at=at + timedelta(minutes=30)),
    ]
    if score is not None:
        out.append(wire.Rated(ticket_id=t, score=score, solved=solved, tags=["attitude"], comment="rude",
                              rated_at=at + timedelta(minutes=40)))
    return out


async def publish(settings: ServiceSettings, events: list[wire.WireEvent], raw: list[tuple[Topic, Envelope]] = ()
                  ) -> None:  # type: ignore[assignment]
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for i, ev in enumerate(events):
            env = wrap(ev, event_id=stable_event_id(ev.key(), 1000 + i), source="test")
            await producer.send_and_wait(ev.topic.qualified(settings.topic_prefix), env.data, key=ev.key().encode(),
                                         headers=env.headers())
        for topic, env in raw:
            await producer.send_and_wait(topic.qualified(settings.topic_prefix), env.data,
                                         key=(env.subject or "").encode(), headers=env.headers())
    finally:
        await producer.stop()
    # as relays do: quiet consumers resume at once, not at their safety net
    await announce(settings, {ev.topic.qualified(settings.topic_prefix) for ev in events}
                   | {topic.qualified(settings.topic_prefix) for topic, _ in raw})


def review_record(incident: str) -> Envelope:
    """Incident's review as its helper will publish it: more fields than complaints reads."""
    body = {
        "incident_id": incident, "summary": "fibre cut at the north exchange", "published_by": "im-1",
        "published_at": NOW.isoformat(), "timeline": [{"at": NOW.isoformat(), "what": "declared"}],
        "improvement_actions": [
            {"title": "add a second feed", "kind": "preventive", "owner": "network-planning",
             "due": (date.today() + timedelta(days=30)).isoformat(), "priority": "high"},
            {"title": "update the emergency plan", "kind": "corrective", "owner": "noc",
             "due": (date.today() + timedelta(days=7)).isoformat()},
        ],
    }
    return Envelope(id=str(uuid.uuid4()), type="tsop.incident.review-published.v1", source="incident", time=NOW,
                    subject=incident, correlation_id=incident, causation_id=None, data=orjson.dumps(body))


async def test_the_bus_opens_complaints_and_actions_and_overdue_complaints_escalate(settings: ServiceSettings) -> None:
    fs = FeedbackSettings(**{**settings.model_dump(), "service_name": settings.service_name + "_fb"})
    svc = bootstrap(fs)
    await svc.start()
    clock = ManualClock(NOW)
    svc.app.clock = clock
    try:
        solved_unhappy, not_solved, happy, tmf = (str(uuid.uuid4()) for _ in range(4))
        pattern = [str(uuid.uuid4()) for _ in range(3)]
        events = [
            *ticket_events(solved_unhappy, "c1", "t1", score=1, solved=True),
            *ticket_events(not_solved, "c2", "t2", score=1, solved=False),  # reopened by feedback, no complaint
            *ticket_events(happy, "c3", "t2", score=5, solved=True),
            *ticket_events(tmf, "c4", "t3", ticket_type="bill dispute"),  # the operator's complaint ticketType
        ]
        for i, t in enumerate(pattern):  # three low scores for t9 within the pattern's period
            events += ticket_events(t, f"p{i}", "t9", score=2, at=NOW + timedelta(hours=i))
        incident = str(uuid.uuid4())
        await publish(settings, events, [(Topic.incidents, review_record(incident))])

        async def opened() -> bool:
            got = await commands.complaints(svc, AGENT)
            acts = await commands.actions(svc, None, None)
            return len(got) >= 2 and len(acts) >= 4

        await eventually(opened, what="two complaints and four actions")
        complaints = {c.source: c for c in await commands.complaints(svc, AGENT)}
        assert set(complaints) == {"rating", "ticket"}
        rating = await commands.complaint(svc, complaints["rating"].id, AGENT)
        assert (rating.customer_id, rating.channel_id, rating.ticket_ids) == ("c1", "portal", [solved_unhappy])
        assert rating.complaint_type == "service_quality" and rating.rating_score == 1
        assert "attitude" in rating.description
        ticket = await commands.complaint(svc, complaints["ticket"].id, AGENT)
        assert (ticket.complaint_type, ticket.customer_id, ticket.ticket_ids) == ("billing", "c4", [tmf])
        acts = await commands.actions(svc, None, None)
        assert sorted(a.origin for a in acts) == ["incident_review"] * 2 + ["low_score_pattern"] * 2
        # five low scores of one service type, three of them for t9 (the policy watches both)
        assert {a.origin_id for a in acts if a.origin == "low_score_pattern"} == {
            "technician:t9", "service_type:broadband.fault_repair"}
        assert {a.title for a in acts if a.origin == "incident_review"} == {"add a second feed",
                                                                             "update the emergency plan"}
        async def inbox_empty() -> bool:  # an entry is removed just after what it opened is saved
            return await projection.inbox(svc.pool) == []

        await eventually(inbox_empty, 30, "the inbox emptied")

        # the same events again (a relay republishing after a broker loss): nothing opens twice
        await publish(settings, events, [(Topic.incidents, review_record(incident))])
        await asyncio.sleep(3)
        assert len(await commands.complaints(svc, AGENT)) == 2
        assert len(await commands.actions(svc, None, None)) == 4

        # the service-quality complaint (received at the rating) is not acknowledged within its 4 hours: the
        # timer escalates it, once; the billing one has 24 hours
        clock.advance(timedelta(hours=5))

        async def escalated() -> bool:
            return (await commands.complaint(svc, rating.id, AGENT)).escalation_level == 1

        await eventually(escalated, what="the overdue complaint escalated")
        await asyncio.sleep(2.5)  # more timer rounds: still one escalation
        got = await commands.complaint(svc, rating.id, AGENT)
        assert [e["reason"] for e in got.escalations] == ["acknowledge_overdue"]

        # quality: an assessment joins the rating in the combined score
        checks = {"standard_followed": True, "log_complete": True, "advice_given": False, "time_kept": True}
        await commands.assess(svc, solved_unhappy, checks, "no advice", SUPERVISOR)

        async def assessed() -> bool:
            fact = await projection.ticket_fact(svc.pool, solved_unhappy)
            return fact is not None and fact["internal_score"] == 75.0

        await eventually(assessed, what="the assessment in the quality facts")
        rows = await projection.quality(svc.pool, "ticket", "all", {"customer": 0.6, "internal": 0.4},
                                        NOW - timedelta(days=1), NOW + timedelta(days=1), solved_unhappy)
        assert [(r.rated, r.assessed, r.combined) for r in rows] == [(1, 1, 30.0)]  # 0.6 * 0 + 0.4 * 75
        by_tech = {r.subject: r for r in await projection.quality(
            svc.pool, "technician", "all", {"customer": 0.6, "internal": 0.4}, NOW - timedelta(days=1),
            NOW + timedelta(days=1))}
        assert by_tech["t2"].tickets == 2 and by_tech["t2"].average_rating == 3.0
        assert by_tech["t9"].combined == 25.0  # three 2s, no assessment
        by_team = await projection.quality(svc.pool, "team", "day", {"customer": 0.6, "internal": 0.4},
                                           NOW - timedelta(days=1), NOW + timedelta(days=1))
        assert {r.subject for r in by_team} == {"north"}  # no team in the policy: the region
        assert sum(r.tickets for r in by_team) == 7
    finally:
        await svc.stop()

    published = await read_topic(settings, Topic.complaints, expect=9)
    types = [dict(r.headers)["ce_type"].decode() for r in published]  # type: ignore[attr-defined]
    assert types.count(wire.ComplaintReceived.event_type) == 2
    assert types.count(wire.ComplaintEscalated.event_type) == 1
    assert types.count(wire.ImprovementActionOpened.event_type) == 4
    assert types.count(wire.TicketAssessed.event_type) == 1
    escalation = next(r for r in published if dict(r.headers)["ce_type"] == b"tsop.complaint.escalated.v1")  # type: ignore[attr-defined]
    assert escalation.key.decode() == str(rating.id)  # type: ignore[attr-defined]
    assert orjson.loads(escalation.value)["reason"] == "acknowledge_overdue"  # type: ignore[attr-defined]
