"""Following a complaint up (§4.3, §4.4), on a manual clock: the customer is told of each step of their complaint
through the step-notification pipeline (rendered from their channel's template, every attempt an event, the
dead letter after the last), and improvement actions past their due date escalate once per due date, across a
restart."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from uuid import UUID

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.feedback_sync import service
from tests.sync import SyncService
from tests.unit.test_feedback_notifications import NOW, TEMPLATES, Bus, make_app, notifier, submitted, until
from tsop_events import schemas as wire
from tsop_events.auth import Principal, Role
from tsop_events.clock import ManualClock
from tsop_events.consumer import Incoming
from tsop_events.envelope import Envelope
from tsop_events.errors import Conflict
from tsop_feedback import commands as feedback_commands
from tsop_feedback.commands import FeedbackApp
from tsop_feedback.complaints import commands
from tsop_feedback.complaints.domain import ImprovementAction, action_overdue
from tsop_feedback.complaints.policies import plain_ratings
from tsop_feedback.complaints.wire import WIRE
from tsop_feedback.domain import COMPLAINT_STEPS, Notification, Templates

DAY = timedelta(days=1)
AGENT = Principal("agent-1", frozenset({Role.agent}))
SUPERVISOR = Principal("sup-1", frozenset({Role.supervisor}))
PORTAL = Principal("channel:portal", frozenset({Role.channel}), channel_id="ch-1")
TICKET = "0b7c4c3e-6a55-4b8e-9a59-3f0f5d1c2a10"


def told(app: FeedbackApp, ticket: str = TICKET) -> list[Notification]:
    app.follow_ups.refresh()
    return [app.repository.get(n) for n in app.follow_ups.notifications_of.get(ticket, [])]


def complaint_desk(template: str = "email", language: str = "en") -> tuple[SyncService[FeedbackApp], ManualClock]:
    app, clock = make_app()
    bus = Bus(app)
    bus(wire.ChannelRegistered(channel_id="ch-1", name="portal", kind="web", registered_at=NOW))
    asyncio.run(feedback_commands.subscribe(service(app), "ch-1", ["resolved"], template, language, "channel:portal"))
    bus(submitted(TICKET, "https://ok.example/cb"))
    return SyncService(app, "feedback", commands), clock


def test_the_customer_is_told_each_step_of_their_complaint_in_their_channels_template_once() -> None:
    d, _ = complaint_desk()
    c, _ = d.receive(PORTAL, customer_id="c1", complaint_type="billing", description="charged twice",
                     ticket_ids=[TICKET], idempotency_key=None, body={})
    assert told(d.app) == []  # received: the acknowledgement tells them
    d.change(c.id, AGENT, "acknowledge")
    with pytest.raises(Conflict):  # acknowledged again: refused, nothing more told
        d.change(c.id, AGENT, "acknowledge")
    d.change(c.id, AGENT, "answer", answer="the second charge is refunded")
    d.change(c.id, PORTAL, "reject", reason="I want it in cash")
    d.change(c.id, AGENT, "answer", answer="refunded in cash at the shop")
    d.change(c.id, PORTAL, "accept")
    messages = told(d.app)
    assert [n.step for n in messages] == ["complaint_acknowledged", "complaint_answered", "complaint_escalated",
                                          "complaint_answered", "complaint_closed"]
    assert all(n.template == "email" and n.language == "en" and n.url == "https://ok.example/cb" for n in messages)
    assert "Billing" in messages[0].text and str(c.id) in messages[0].text
    assert (c.answer_by.isoformat(timespec="minutes")) in messages[0].text
    assert "the second charge is refunded" in messages[1].text and "level 1" in messages[2].text
    assert messages[1].payload["complaint_id"] == str(c.id)


def test_an_overdue_complaint_escalated_by_the_timer_is_told_once_in_chinese_by_sms() -> None:
    d, clock = complaint_desk("sms", "zh")
    d.receive(AGENT, customer_id="c1", complaint_type="service_quality", description="late", ticket_ids=[TICKET],
              idempotency_key=None, body={})
    clock.advance(timedelta(hours=5))  # past the 4-hour acknowledgement
    assert d.escalate_overdue() == 1
    assert d.escalate_overdue() == 0
    (n,) = told(d.app)
    assert n.step == "complaint_escalated" and n.template == "sms" and "已升级" in n.text and "第 1 级" in n.text


def test_a_complaint_with_no_ticket_of_its_own_to_call_back_is_told_nothing() -> None:
    d, _ = complaint_desk()
    c, _ = d.receive(AGENT, customer_id="c1", complaint_type="billing", description="x", ticket_ids=[],
                     idempotency_key=None, body={})
    d.change(c.id, AGENT, "acknowledge")
    shop = Principal("channel:shop", frozenset({Role.channel}), channel_id="ch-2")
    other, _ = d.receive(shop, customer_id="c1", complaint_type="billing", description="x", ticket_ids=[TICKET],
                         idempotency_key=None, body={})  # linked to a ticket another channel submitted
    d.change(other.id, AGENT, "acknowledge")
    assert told(d.app) == [] and d.app.follow_ups.notifications == {}


def test_complaint_messages_go_through_the_delivery_pipeline_with_retries_and_the_dead_letter() -> None:
    d, clock = complaint_desk()
    c, _ = d.receive(PORTAL, customer_id="c1", complaint_type="billing", description="x", ticket_ids=[TICKET],
                     idempotency_key=None, body={})
    d.change(c.id, AGENT, "acknowledge")
    (n,) = told(d.app)
    bodies: list[dict[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append({**json.loads(request.content), "step": request.headers["x-tsop-step"]})
        return httpx.Response(204 if len(bodies) > 2 else 500)

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            await until(notifier(d.app, []), client, clock, lambda: d.app.repository.get(n.id).delivered)

    asyncio.run(go())
    delivered: Notification = d.app.repository.get(n.id)
    assert delivered.delivered and delivered.attempts == 3
    assert bodies[-1]["step"] == "complaint_acknowledged" and bodies[-1]["complaint_id"] == str(c.id)
    d.change(c.id, AGENT, "answer", answer="refunded")
    answered = told(d.app)[-1]
    dead: list[str] = []

    async def never() -> None:
        transport = httpx.MockTransport(lambda r: httpx.Response(503))
        async with httpx.AsyncClient(transport=transport) as client:
            # dead in the store, then handed to the dead-letter callback (after the save, in the delivery's task)
            await until(notifier(d.app, dead, attempts=2), client, clock,
                        lambda: d.app.repository.get(answered.id).dead and dead)

    asyncio.run(never())
    d.app.follow_ups.refresh()
    assert dead == [TICKET] and answered.id in d.app.follow_ups.dead_notifications


def test_an_operator_file_without_complaint_texts_still_loads_with_plain_ones() -> None:
    data = json.loads(TEMPLATES.read_text())
    for kind in ("sms", "email", "app"):
        for lang in ("zh", "en"):
            for step in COMPLAINT_STEPS:
                del data[kind][lang][step]
    t = Templates.from_dict(data)
    assert t.render("sms", "en", "complaint_closed", {"complaint_id": "k1"}) == "k1: complaint closed"
    data["sms"]["en"]["complaint_closed"] = 7
    with pytest.raises(ValueError, match="complaint_closed"):
        Templates.from_dict(data)


# ---------------------------------------------------------------- improvement actions past their due date


def action_desk() -> tuple[SyncService[FeedbackApp], ManualClock, UUID]:
    app, clock = make_app()
    d = SyncService(app, "feedback", commands)
    a, _ = d.open_action(SUPERVISOR, title="retrain the night shift", kind="corrective", complaint_id=None,
                         owner="ops", due=NOW + DAY, idempotency_key=None, body={})
    return d, clock, a.id


def escalations(d: SyncService[FeedbackApp], aid: UUID) -> list[wire.ImprovementActionEscalated]:
    out = [WIRE(e) for e in d.app.repository.event_store.get(aid)]
    return [o.event for o in out if o is not None and isinstance(o.event, wire.ImprovementActionEscalated)]


def test_an_action_past_its_due_date_escalates_once_and_again_for_a_new_due_date_across_a_restart() -> None:
    d, clock, aid = action_desk()
    assert d.escalate_overdue_actions() == 0
    clock.advance(DAY)  # exactly due: not yet past it
    assert d.escalate_overdue_actions() == 0
    clock.advance(timedelta(seconds=1))
    assert d.escalate_overdue_actions() == 1
    assert d.escalate_overdue_actions() == 0
    d.svc.extras.pop(commands.DESK_KEY)  # as after a restart: a new board, read from the log from the start
    assert d.escalate_overdue_actions() == 0
    stale: ImprovementAction = d.app.repository.get(aid)  # the aggregate decides on its own events
    assert stale.escalate_overdue(clock.now()) is False
    listed = d.actions(None, None, True)
    assert [a.id for a in listed] == [aid] and listed[0].escalation_level == 1
    (ev,) = escalations(d, aid)
    assert ev.level == 1 and ev.due == NOW + DAY and ev.escalated_by == "timer"
    d.change_action(aid, SUPERVISOR, "reassign", owner="ops-2", due=clock.now() + DAY)
    assert d.escalate_overdue_actions() == 0 and d.actions(None, None, True) == []
    clock.advance(DAY * 2)
    assert d.escalate_overdue_actions() == 1
    assert [e.level for e in escalations(d, aid)] == [1, 2]
    a: ImprovementAction = d.app.repository.get(aid)
    assert a.escalation_level == 2 and a.overdue(clock.now())


def test_a_verified_or_closed_action_never_escalates() -> None:
    d, clock, aid = action_desk()
    d.change_action(aid, SUPERVISOR, "verify", effective=True, note="done")
    clock.advance(DAY * 3)
    assert d.escalate_overdue_actions() == 0
    d.change_action(aid, SUPERVISOR, "close", note=None)
    assert d.escalate_overdue_actions() == 0 and escalations(d, aid) == []


@given(st.sampled_from(["open", "verified", "closed"]), st.integers(-5, 5), st.booleans())
def test_an_action_is_due_for_escalation_only_open_past_its_date_and_not_escalated_for_it(
    status: str, hours: int, escalated: bool,
) -> None:
    due = NOW + timedelta(hours=hours)
    done = {due.isoformat()} if escalated else set()
    assert action_overdue(status, due, done, NOW) == (status == "open" and hours < 0 and not escalated)


def _rated(ticket: str, score: int, minute: int) -> Incoming:
    ev = wire.Rated(ticket_id=ticket, score=score, solved=True, tags=[], comment=None,
                    rated_at=NOW + timedelta(minutes=minute))
    env = Envelope(f"e{minute}", ev.event_type, "feedback", NOW, ticket, None, None, b"{}")
    return Incoming("tickets", 0, minute, ticket, env, ev)


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(1, 5)), max_size=12))
def test_a_batchs_plain_ratings_are_each_tickets_last_and_never_a_ticket_with_a_low_one(
    ratings: list[tuple[str, int]],
) -> None:
    """What QualitySignals writes in one statement: a ticket's last rating of the batch, only when none of its
    ratings there is low (a low one reads the projection and notes complaints and patterns, in order)."""
    records = [_rated(t, s, i) for i, (t, s) in enumerate(ratings)]
    plain = plain_ratings(records, low_score=2)
    for t in {t for t, _ in ratings}:
        scores = [s for u, s in ratings if u == t]
        if min(scores) <= 2:
            assert t not in plain
        else:
            assert plain[t].score == scores[-1]
            assert plain[t].rated_at == max(r.event.rated_at for r in records if r.key == t)  # type: ignore[attr-defined]
    assert set(plain) <= {t for t, _ in ratings}
