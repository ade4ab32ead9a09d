"""Closing the loop on real PostgreSQL and a real broker: a channel's confirmation closes a ticket (basis
``confirmed``) on the tickets topic; a complaint's steps are queued as notifications to the ticket's callback;
an improvement action past its due date escalates once, on the durable timer, across a restart of feedback."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import orjson

from tests.integration.conftest import eventually
from tests.integration.test_bus_contract import read_topic
from tests.integration.test_complaints import publish
from tsop_events import schemas as wire
from tsop_events.auth import Principal, Role
from tsop_events.clock import ManualClock
from tsop_events.errors import NotFound
from tsop_events.settings import ServiceSettings
from tsop_events.topics import Topic
from tsop_feedback import commands as feedback
from tsop_feedback.commands import case_id
from tsop_feedback.complaints import commands
from tsop_feedback.main import FeedbackService, FeedbackSettings, bootstrap

NOW = datetime.now(UTC).replace(microsecond=0)
AGENT = Principal("agent-1", frozenset({Role.agent}))
SUPERVISOR = Principal("sup-1", frozenset({Role.supervisor}))


def submitted(t: str) -> wire.RequestSubmitted:
    return wire.RequestSubmitted(
        ticket_id=t, channel="app", channel_id="portal", customer_id="c1", customer_tier="standard", region="north",
        service_type="broadband.fault_repair", description="no internet", time_requirement=wire.TimeRequirement(),
        callback_url="https://receiver.example/cb", submitted_at=NOW)


def resolved(t: str) -> wire.Resolved:
    return wire.Resolved(ticket_id=t, work_order_id="wo", technician_id="tech-1", resolution_code="fixed",
                         summary="replaced the ONT", resolved_at=NOW + timedelta(minutes=30))


async def started(fs: FeedbackSettings, clock: ManualClock) -> FeedbackService:
    svc = bootstrap(fs)
    await svc.start()
    svc.app.clock = clock
    return svc


async def test_confirmation_closes_complaint_steps_are_told_and_overdue_actions_escalate_once_across_a_restart(
    settings: ServiceSettings,
) -> None:
    fs = FeedbackSettings(**{**settings.model_dump(), "service_name": settings.service_name + "_fu"})
    clock = ManualClock(NOW + timedelta(minutes=40))
    confirmed, complained = str(uuid.uuid4()), str(uuid.uuid4())
    svc = await started(fs, clock)
    try:
        await publish(settings, [submitted(confirmed), resolved(confirmed), submitted(complained)])

        async def known() -> bool:
            try:
                case = await feedback.load_case(svc, case_id(confirmed))
                await feedback.load_case(svc, case_id(complained))
            except NotFound:
                return False
            return case.resolution is not None

        await eventually(known, what="both cases, one resolved")
        case, closed = await feedback.confirm(svc, confirmed, "channel:portal", "all good", channel_id="portal")
        assert closed and case.closed_basis == "confirmed"

        c, _ = await commands.receive(svc, AGENT, customer_id="c1", complaint_type="billing", description="x",
                                      ticket_ids=[complained], idempotency_key=None, body={})
        await commands.change(svc, c.id, AGENT, "acknowledge")
        await asyncio.to_thread(svc.app.follow_ups.refresh)
        (nid,) = svc.app.follow_ups.notifications_of[complained]
        n = await feedback.load_notification(svc, nid)
        assert (n.step, n.url, n.payload["complaint_id"]) == ("complaint_acknowledged", "https://receiver.example/cb",
                                                              str(c.id))

        action, _ = await commands.open_action(svc, SUPERVISOR, title="retrain", kind="corrective", complaint_id=c.id,
                                               owner="ops", due=NOW + timedelta(days=1), idempotency_key=None, body={})
        clock.advance(timedelta(days=2))

        async def escalated() -> bool:
            return (await commands.action(svc, action.id)).escalation_level == 1

        await eventually(escalated, what="the overdue action escalated")
    finally:
        await svc.stop()

    svc = await started(fs, clock)  # a restart: the board is read again from the log; nothing escalates twice
    try:
        await asyncio.sleep(2.5)  # more timer rounds
        assert (await commands.action(svc, action.id)).escalation_level == 1
        assert [a.id for a in await commands.actions(svc, None, None, True)] == [action.id]
    finally:
        await svc.stop()

    published = await read_topic(settings, Topic.complaints, expect=4)
    # one escalation: the relay may publish it again around the restart (at-least-once), always with the same id
    escalations = {dict(r.headers)["ce_id"] for r in published  # type: ignore[attr-defined]
                   if dict(r.headers)["ce_type"] == wire.ImprovementActionEscalated.event_type.encode()}  # type: ignore[attr-defined]
    assert len(escalations) == 1
    tickets = await read_topic(settings, Topic.tickets, expect=5)
    closures = [orjson.loads(r.value) for r in tickets  # type: ignore[attr-defined]
                if dict(r.headers)["ce_type"] == wire.Closed.event_type.encode()]  # type: ignore[attr-defined]
    assert {(x["ticket_id"], x["reason"], x["basis"]) for x in closures} == {(confirmed, "confirmed", "confirmed")}
