"""Complaints (§4.3), improvement actions (§4.4) and the internal assessment (§4.2): the rules, on a manual clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.sync import SyncService
from tsop_events import schemas as wire
from tsop_events.auth import Principal, Role
from tsop_events.clock import ManualClock
from tsop_events.errors import Conflict, Forbidden, Invalid
from tsop_feedback.commands import FeedbackApp
from tsop_feedback.complaints import commands
from tsop_feedback.complaints.domain import (
    DEFAULT_POLICY,
    Complaint,
    ComplaintHistory,
    ImprovementAction,
    Policy,
    densest_window,
    overdue_deadlines,
    repeats_of,
)
from tsop_feedback.complaints.wire import WIRE

NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
AGENT = Principal("agent-1", frozenset({Role.agent}))
SUPERVISOR = Principal("sup-1", frozenset({Role.supervisor}))
PORTAL = Principal("channel:portal", frozenset({Role.channel}), channel_id="portal")
SHOP = Principal("channel:shop", frozenset({Role.channel}), channel_id="shop")


def desk() -> tuple[SyncService[FeedbackApp], ManualClock]:
    clock = ManualClock(NOW)
    app = FeedbackApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=clock)
    return SyncService(app, "feedback", commands), clock


def file(d: SyncService[FeedbackApp], caller: Principal = AGENT, customer: str = "c1", kind: str = "billing",
         key: str | None = None) -> Complaint:
    c, _ = d.receive(caller, customer_id=customer, complaint_type=kind, description="charged twice",
                     ticket_ids=[], idempotency_key=key, body={"customer": customer, "kind": kind})
    return c


def test_a_complaint_is_acknowledged_investigated_answered_and_closed_when_the_customer_accepts() -> None:
    d, _clock = desk()
    c = file(d)
    kind = DEFAULT_POLICY.complaint_types["billing"]
    assert c.status == "received" and c.acknowledge_by == NOW + kind.acknowledge_hours * HOUR
    assert c.answer_by == NOW + kind.answer_hours * HOUR
    with pytest.raises(Conflict):  # investigated before it is acknowledged
        d.change(c.id, AGENT, "note", note="looked at the bill")
    d.change(c.id, AGENT, "acknowledge")
    with pytest.raises(Conflict):
        d.change(c.id, AGENT, "acknowledge")
    with pytest.raises(Conflict):  # nothing to accept yet
        d.change(c.id, AGENT, "accept")
    assert d.change(c.id, AGENT, "note", note="looked at the bill").status == "investigating"
    d.change(c.id, AGENT, "answer", answer="refunded")
    with pytest.raises(Conflict):  # one answer awaits the customer
        d.change(c.id, AGENT, "answer", answer="refunded twice")
    closed = d.change(c.id, AGENT, "accept")
    assert closed.status == "closed" and closed.closed is not None and closed.closed["basis"] == "accepted"
    for act, args in [("acknowledge", {}), ("note", {"note": "x"}), ("answer", {"answer": "x"}),
                      ("close", {"basis": "supervisor"}), ("escalate", {"reason": "x"})]:
        with pytest.raises(Conflict):
            d.change(c.id, SUPERVISOR, act, **args)


def test_an_overdue_complaint_escalates_once_per_deadline_on_the_durable_timer() -> None:
    d, clock = desk()
    c = file(d, kind="staff_conduct")  # acknowledge within 4 h, answer within 48 h
    assert d.escalate_overdue() == 0
    clock.advance(4 * HOUR)
    assert d.escalate_overdue() == 0  # due at the deadline, overdue only after it
    clock.advance(timedelta(seconds=1))
    assert d.escalate_overdue() == 1
    assert d.escalate_overdue() == 0  # once
    got = d.complaint(c.id, AGENT)
    assert [(e["reason"], e["level"], e["by"]) for e in got.escalations] == [("acknowledge_overdue", 1, "timer")]
    d.change(c.id, AGENT, "acknowledge")  # late, but acknowledged: that deadline is settled
    clock.advance(48 * HOUR)
    assert d.escalate_overdue() == 1
    got = d.complaint(c.id, AGENT)
    assert [e["reason"] for e in got.escalations] == ["acknowledge_overdue", "answer_overdue"]
    assert got.escalation_level == 2
    d.change(c.id, AGENT, "answer", answer="apologies")
    clock.advance(1000 * HOUR)
    assert d.escalate_overdue() == 0  # answered: nothing is overdue while the customer decides


def test_a_refused_answer_escalates_and_a_new_answer_is_due() -> None:
    d, clock = desk()
    c = file(d, caller=PORTAL)
    d.change(c.id, AGENT, "acknowledge")
    d.change(c.id, AGENT, "answer", answer="the charge was right")
    clock.advance(HOUR)
    refused = d.change(c.id, PORTAL, "reject", reason="it was not")
    assert refused.status == "investigating" and refused.escalation_level == 1
    assert refused.escalations[0]["reason"] == "answer_not_accepted"
    assert refused.answer_by == NOW + HOUR + DEFAULT_POLICY.complaint_types["billing"].answer_hours * HOUR
    d.change(c.id, SUPERVISOR, "answer", answer="refunded")
    assert d.change(c.id, PORTAL, "accept").status == "closed"


def test_a_channel_acts_only_on_its_own_complaints() -> None:
    d, _ = desk()
    c = file(d, caller=PORTAL)
    assert c.channel_id == "portal" and c.source == "channel"
    with pytest.raises(Forbidden):
        d.complaint(c.id, SHOP)
    with pytest.raises(Forbidden):
        d.change(c.id, SHOP, "close", basis="withdrawn")
    assert [x.id for x in d.complaints(SHOP)] == []
    assert [x.id for x in d.complaints(PORTAL)] == [c.id]
    assert [x.id for x in d.complaints(AGENT)] == [c.id]


def test_a_repeat_is_the_same_customer_and_cause_within_the_period() -> None:
    d, clock = desk()
    first = file(d, customer="c1", kind="billing")
    assert not first.repeat
    other_cause = file(d, customer="c1", kind="network")
    other_customer = file(d, customer="c2", kind="billing")
    assert not other_cause.repeat and not other_customer.repeat
    clock.advance(timedelta(days=DEFAULT_POLICY.repeat_within_days) - HOUR)
    second = file(d, customer="c1", kind="billing")
    assert second.repeat and second.repeat_of == [str(first.id)]
    clock.advance(2 * HOUR)  # the first is now outside the period; the second is not
    third = file(d, customer="c1", kind="billing")
    assert third.repeat_of == [str(second.id)]
    assert {c.id for c in d.complaints(AGENT, repeat=True)} == {second.id, third.id}


def test_a_complaint_put_in_another_type_is_judged_again_for_repeats() -> None:
    d, clock = desk()
    billing = file(d, customer="c1", kind="billing")
    clock.advance(HOUR)
    network = file(d, customer="c1", kind="network")
    assert not network.repeat
    moved = d.change(network.id, AGENT, "categorise", complaint_type="billing")
    assert moved.complaint_type == "billing" and moved.repeat_of == [str(billing.id)]
    assert [c.id for c in d.complaints(AGENT, repeat=True)] == [network.id]
    back = d.change(network.id, AGENT, "categorise", complaint_type="network")
    assert back.repeat_of == []  # its only company in network is itself
    clock.advance(HOUR)
    assert file(d, customer="c1", kind="billing").repeat_of == [str(billing.id)]  # network's is not billing now


def test_an_idempotency_key_files_once_and_refuses_another_body() -> None:
    d, _ = desk()
    first = file(d, key="k1")
    again = file(d, key="k1")
    assert again.id == first.id and len(d.complaints(AGENT)) == 1
    with pytest.raises(Invalid):
        file(d, key="k1", kind="network")


def test_an_unknown_complaint_type_is_refused_naming_the_field() -> None:
    d, _ = desk()
    with pytest.raises(Invalid) as refused:
        file(d, kind="weather")
    assert refused.value.field == "complaint_type"
    assert d.complaints(AGENT) == []


def test_a_complaint_from_the_bus_is_opened_once() -> None:
    d, _ = desk()
    ticket = str(uuid4())
    args = {"customer_id": "c9", "channel_id": "portal", "source": "rating", "complaint_type": "service_quality",
            "description": "rated 1", "ticket_id": ticket, "at": NOW, "rating_score": 1}
    a = d.receive_from_bus(f"rating:{ticket}", **args)
    b = d.receive_from_bus(f"rating:{ticket}", **args)
    assert a.id == b.id and a.ticket_ids == [ticket] and a.rating_score == 1
    assert len(d.complaints(AGENT)) == 1


def test_improvement_actions_are_verified_before_they_close() -> None:
    d, _clock = desk()
    c = file(d)
    a, _ = d.open_action(SUPERVISOR, title="retrain billing desk", kind="corrective", complaint_id=c.id,
                         owner="billing-lead", due=NOW + 14 * 24 * HOUR, idempotency_key=None, body={})
    assert a.origin == "complaint" and a.origin_id == str(c.id) and a.status == "open"
    with pytest.raises(Conflict):
        d.change_action(a.id, SUPERVISOR, "close")
    d.change_action(a.id, SUPERVISOR, "verify", effective=False, note="complaints went on")
    assert d.action(a.id).status == "open"
    d.change_action(a.id, SUPERVISOR, "reassign", owner="ops-lead", due=None)
    d.change_action(a.id, SUPERVISOR, "verify", effective=True, note="none since")
    closed = d.change_action(a.id, SUPERVISOR, "close", note="done")
    assert closed.status == "closed" and closed.owner == "ops-lead"
    with pytest.raises(Conflict):
        d.change_action(a.id, SUPERVISOR, "verify", effective=True, note="again")


def test_a_pattern_of_low_scores_opens_one_action_per_period() -> None:
    d, _clock = desk()
    first = d.open_action_from_pattern("technician", "t1", count=3, at=NOW)
    assert first is not None and first.origin == "low_score_pattern" and first.kind == "corrective"
    assert d.open_action_from_pattern("technician", "t1", count=3, at=NOW) is None  # read again
    assert d.open_action_from_pattern("technician", "t1", count=4, at=NOW + HOUR) is None  # same period
    assert d.open_action_from_pattern("technician", "t2", count=3, at=NOW + HOUR) is not None
    later = NOW + timedelta(days=DEFAULT_POLICY.low_score_pattern.within_days) + HOUR
    assert d.open_action_from_pattern("technician", "t1", count=3, at=later) is not None
    assert len(d.actions(None, "low_score_pattern")) == 3


def test_an_incident_review_opens_each_action_once() -> None:
    d, _ = desk()
    a = d.open_action_from_review("inc-1", 0, title="add a spare", kind="preventive", owner="ops", due=NOW)
    b = d.open_action_from_review("inc-1", 0, title="add a spare", kind="preventive", owner="ops", due=NOW)
    assert a.id == b.id and a.origin == "incident_review" and a.origin_id == "inc-1"


def test_the_assessment_scores_the_checklist_and_is_recorded_once() -> None:
    d, _ = desk()
    ticket = str(uuid4())
    checks = {"standard_followed": True, "log_complete": True, "advice_given": False, "time_kept": True}
    a = d.assess(ticket, checks, None, SUPERVISOR)
    assert a.score == 75.0
    assert d.assess(ticket, checks, None, SUPERVISOR).id == a.id  # a retry
    with pytest.raises(Conflict):
        d.assess(ticket, {**checks, "advice_given": True}, None, SUPERVISOR)
    with pytest.raises(Invalid) as missing:
        d.assess(str(uuid4()), {"standard_followed": True}, None, SUPERVISOR)
    assert missing.value.field == "checks.advice_given"
    with pytest.raises(Invalid) as unknown:
        d.assess(str(uuid4()), {**checks, "smiled": True}, None, SUPERVISOR)
    assert unknown.value.field == "checks.smiled"


def test_every_event_of_the_context_goes_on_the_complaints_topic() -> None:
    d, _clock = desk()
    c = file(d, caller=PORTAL)
    for act, args in [("acknowledge", {}), ("categorise", {"complaint_type": "network"}),
                      ("link", {"ticket_id": str(uuid4())}), ("note", {"note": "n"}), ("answer", {"answer": "a"}),
                      ("reject", {"reason": "no"}), ("escalate", {"reason": "vip"}), ("answer", {"answer": "b"}),
                      ("accept", {})]:
        d.change(c.id, SUPERVISOR if act == "escalate" else AGENT, act, **args)
    a, _ = d.open_action(SUPERVISOR, title="t", kind="preventive", complaint_id=None, owner="o", due=NOW,
                         idempotency_key=None, body={})
    d.change_action(a.id, SUPERVISOR, "reassign", owner="p", due=None)
    _clock.advance(HOUR)
    assert d.escalate_overdue_actions() == 1
    d.change_action(a.id, SUPERVISOR, "verify", effective=True, note="ok")
    d.change_action(a.id, SUPERVISOR, "close", note=None)
    d.assess(str(uuid4()), dict.fromkeys(DEFAULT_POLICY.checklist, True), None, SUPERVISOR)
    published = []
    for n in d.app.recorder.select_notifications(1, 1000):
        out = WIRE(d.app.mapper.to_domain_event(n))
        if out is not None:
            published.append(out.event)
    types = {e.event_type for e in published}
    assert {cls.event_type for cls in WIRE.mapped().values()} == types  # every row used, every event mapped
    assert all(e.topic.value == "complaints" for e in published)
    received = next(e for e in published if isinstance(e, wire.ComplaintReceived))
    assert received.complaint_id == str(c.id) and received.channel_id == "portal" and received.repeat is False
    assert all(e.key() == str(c.id) for e in published if isinstance(e, wire.ComplaintEvent))


def test_a_policy_file_that_names_no_rating_type_is_refused() -> None:
    with pytest.raises(ValueError, match="rating_complaint_type"):
        Policy.from_json('{"complaint_types": {"billing": {"name": "B", "acknowledge_hours": 1, '
                         '"answer_hours": 2}}}', "test")
    with pytest.raises(ValueError, match="acknowledge_hours"):
        Policy.from_json('{"complaint_types": {"service_quality": {"name": "B", "acknowledge_hours": 0, '
                         '"answer_hours": 2}}}', "test")


def test_the_combined_score_weights_the_rating_and_the_internal_score() -> None:
    p = DEFAULT_POLICY
    assert p.combined(5, 100.0) == 100.0 and p.combined(1, 0.0) == 0.0
    assert p.combined(3, None) == 50.0 and p.combined(None, 80.0) == 80.0 and p.combined(None, None) is None
    assert p.combined(5, 0.0) == 60.0  # 0.6 * 100 + 0.4 * 0


moments = st.integers(min_value=0, max_value=10_000).map(lambda m: NOW + timedelta(minutes=m))


@given(st.lists(moments, max_size=20), moments, st.integers(min_value=1, max_value=5000))
def test_repeats_are_exactly_the_earlier_complaints_within_the_period(
    earlier: list[datetime], at: datetime, minutes: int
) -> None:
    within = timedelta(minutes=minutes)
    history = [(f"c{i}", when) for i, when in enumerate(earlier)]
    found = repeats_of(history, at, within)
    assert found == [cid for cid, when in history if when <= at and at - when <= within]


@given(st.sampled_from(["received", "acknowledged", "investigating", "answered", "closed"]), moments, moments,
       moments, st.booleans(), st.booleans())
def test_a_deadline_is_overdue_only_once_passed_unsettled_and_not_yet_escalated(
    status: str, ack_by: datetime, answer_by: datetime, now: datetime, ack_done: bool, answer_done: bool
) -> None:
    escalated: set[tuple[str, str | None]] = set()
    if ack_done:
        escalated.add(("acknowledge_overdue", ack_by.isoformat()))
    if answer_done:
        escalated.add(("answer_overdue", answer_by.isoformat()))
    due = dict(overdue_deadlines(status, ack_by, answer_by, escalated, now))
    assert ("acknowledge_overdue" in due) == (status == "received" and now > ack_by and not ack_done)
    assert ("answer_overdue" in due) == (status not in ("answered", "closed") and now > answer_by
                                         and not answer_done)


def test_the_history_notes_each_complaint_once() -> None:
    h = ComplaintHistory(id=ComplaintHistory.id_for("c1", "billing"))
    assert h.note("a", NOW, HOUR) == []
    assert h.note("a", NOW, HOUR) == ["a"]  # read again: the same complaint, not noted twice
    assert len(h.complaints) == 1


def test_an_action_reassigned_to_the_same_owner_and_due_changes_nothing() -> None:
    a = ImprovementAction(id=uuid4(), title="t", kind="corrective", origin="manual", origin_id="", owner="o",
                          due=NOW, opened_by="s", opened_at=NOW)
    a.collect_events()
    a.reassign("o", NOW, "s", NOW)
    assert a.collect_events() == []


@given(st.lists(moments, min_size=1, max_size=12), st.integers(min_value=1, max_value=3000), st.randoms())
def test_a_pattern_is_judged_the_same_whichever_score_arrived_last(
    times: list[datetime], minutes: int, rnd: Any
) -> None:
    """Low scores come from different partitions in any order: once all are known, the densest window is the
    same from whichever one it is judged, and no window counts more than fit in the period."""
    period = timedelta(minutes=minutes)
    shuffled = list(times)
    rnd.shuffle(shuffled)
    best_overall = max(sum(1 for x in times if s <= x <= s + period) for s in times)
    judged = [densest_window(shuffled, t, period)[0] for t in times]
    assert max(judged) == best_overall
    for t, count in zip(times, judged, strict=True):
        assert count == max(sum(1 for x in times if s <= x <= s + period) for s in times if s <= t <= s + period)
