"""Incidents in memory: correlation windows and thresholds, plan steps on the injectable clock, linking,
restoration, the review written from the log, and dispatch's holds on the SLA clocks."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import get_topic

from tests.sync import SyncService
from tests.unit.test_dispatch_domain import tech
from tsop_dispatch import sla
from tsop_dispatch.domain import DispatchError, WorkOrder
from tsop_events import schemas as wire
from tsop_events.clock import ManualClock
from tsop_events.commands import UnitOfWork
from tsop_events.errors import Invalid
from tsop_incident import commands, views
from tsop_incident.commands import IncidentApp, link_id, watch_id
from tsop_incident.domain import (
    AlreadyLinked,
    Incident,
    IncidentError,
    Plans,
    Rule,
    Rules,
    TicketLink,
    Watch,
    draft_review,
    within_window,
)
from tsop_incident.wire import WIRE

NOW = datetime(2026, 6, 1, 9, tzinfo=UTC)
FAULT = "broadband.fault_repair"
PKG = Path(commands.__file__).parent
PLANS = Plans.from_dict(json.loads((PKG / "emergency_plans.json").read_text()))
RULE = Rule("burst", "*.fault_repair", 3, timedelta(minutes=10), "II", "outage", 10)


def test_faults_older_than_the_window_no_longer_count() -> None:
    seen = [("a", NOW), ("b", NOW + timedelta(minutes=5)), ("c", NOW + timedelta(minutes=9))]
    assert [t for t, _ in within_window(seen, NOW + timedelta(minutes=10), timedelta(minutes=10))] == ["a", "b", "c"]
    assert [t for t, _ in within_window(seen, NOW + timedelta(minutes=11), timedelta(minutes=10))] == ["b", "c"]


def test_a_burst_crosses_the_threshold_only_within_its_window() -> None:
    w = Watch(id=uuid4(), region="south", service_type=FAULT)
    assert w.see("t1", NOW, RULE) is None
    assert w.see("t2", NOW + timedelta(minutes=5), RULE) is None
    # the third comes 11 minutes after the first: only two count
    assert w.see("t3", NOW + timedelta(minutes=11), RULE) is None
    assert w.see("t3", NOW + timedelta(minutes=11), RULE) is None  # the same ticket again counts once
    burst = w.see("t4", NOW + timedelta(minutes=12), RULE)
    assert burst is not None and [t for t, _ in burst] == ["t2", "t3", "t4"]


def test_rules_are_operator_data_and_bad_rules_are_refused() -> None:
    rules = Rules.from_dict(json.loads((PKG / "correlation_rules.json").read_text()))
    assert rules.for_type("mobile.fault_repair", "north") is not None
    assert rules.for_type("fixed.installation", "north") is None
    scoped = Rules.from_dict({"rules": [{"service_types": "*.fault_repair", "threshold": 2, "window_seconds": 60,
                                         "regions": ["south*"]}]})
    assert scoped.for_type("mobile.fault_repair", "south-2") is not None
    assert scoped.for_type("mobile.fault_repair", "north") is None
    with pytest.raises(ValueError, match="threshold"):
        Rules.from_dict({"rules": [{"service_types": "*", "threshold": 0, "window_seconds": 60}]})
    with pytest.raises(ValueError, match="severity"):
        Rules.from_dict({"rules": [{"service_types": "*", "threshold": 2, "window_seconds": 60, "severity": "V"}]})
    with pytest.raises(ValueError, match="severity"):
        Plans.from_dict({"scenarios": {"outage": {"0": []}}})


def declare(severity: str = "II", at: datetime = NOW) -> Incident:
    return Incident.declare(uuid4(), "Fibre cut", severity, "outage", [FAULT], ["south"], 500, "im", at, PLANS)


def test_the_plan_of_the_severity_starts_at_declaration_and_each_step_is_due_within_its_limit() -> None:
    inc = declare("II")
    assert inc.plan == "outage/II"
    assert {k: s["due_at"] - NOW for k, s in inc.steps.items()} == {
        "assemble": timedelta(minutes=15), "customer_notice": timedelta(minutes=60), "diagnose": timedelta(minutes=120)
    }
    assert inc.overdue(NOW + timedelta(minutes=14)) == []
    assert inc.finish_step("assemble", "im", NOW + timedelta(minutes=10))
    assert not inc.finish_step("assemble", "im", NOW + timedelta(minutes=11))  # once
    overdue = inc.overdue(NOW + timedelta(minutes=61))
    assert [s["key"] for s in overdue] == ["customer_notice"]
    with pytest.raises(Invalid):
        inc.finish_step("no-such-step", "im", NOW)


def test_a_severity_change_activates_that_severitys_plan() -> None:
    inc = declare("III")
    assert list(inc.steps) == ["diagnose"]
    assert inc.change("I", None, None, 20000, "spreading", "im", NOW + timedelta(minutes=1), PLANS)
    assert inc.plan == "outage/I" and "inform_management" in inc.steps
    assert inc.steps["assemble"]["due_at"] == NOW + timedelta(minutes=11)
    assert not inc.change("I", None, None, 20000, "again", "im", NOW, PLANS)  # nothing changes, nothing recorded
    with pytest.raises(Invalid):
        inc.change("V", None, None, None, "bad", "im", NOW, PLANS)


def sync_app() -> tuple[SyncService[IncidentApp], ManualClock]:
    clock = ManualClock(NOW)
    app = IncidentApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=clock, rules=Rules((RULE,)),
                      plans=PLANS)
    return SyncService(app, "incident", commands, views), clock


def run(app: IncidentApp, decide: object) -> None:
    uow = UnitOfWork(app)
    decide(uow)  # type: ignore[operator]
    app.save(*uow.aggregates())


def test_the_step_timer_escalates_each_overdue_step_once_on_the_injectable_clock() -> None:
    s, clock = sync_app()
    d = commands.Declaration("Outage", "II", "outage", [FAULT], ["south"], 100, [])
    iid = uuid4()
    run(s.app, lambda uow: commands.declare_in(uow, s.app, iid, d, "im"))
    assert s.escalate_overdue() == 0
    clock.advance(timedelta(minutes=16))
    assert s.escalate_overdue() == 1  # assemble (15 min) is overdue
    assert s.escalate_overdue() == 0  # and escalated once
    clock.advance(timedelta(hours=2))
    assert s.escalate_overdue() == 2
    inc = s.app.repository.get(iid)
    assert inc.escalated == {"assemble", "customer_notice", "diagnose"}
    escalations = [WIRE(e) for e in s.app.repository.event_store.get(iid) if isinstance(e, Incident.StepEscalated)]
    assert all(o is not None and isinstance(o.event, wire.PlanStepEscalated) for o in escalations)
    assert {o.event.to_role for o in escalations if o is not None} == {"supervisor"}


def test_a_burst_of_fault_tickets_declares_an_incident_and_later_tickets_in_scope_are_linked() -> None:
    s, _ = sync_app()
    tickets = [str(uuid4()) for _ in range(5)]
    for i, t in enumerate(tickets[:3]):
        run(s.app, lambda uow, t=t, i=i: commands.correlate(uow, s.app, t, "south", FAULT, NOW + timedelta(minutes=i)))
    watch = s.app.repository.get(watch_id("south", FAULT))
    assert watch.incident_id is not None
    inc = s.app.repository.get(UUID(watch.incident_id))
    assert inc.declared_by == "auto" and inc.rule == "burst" and inc.severity == "II"
    assert set(inc.linked) == set(tickets[:3]) and inc.detected_at == NOW and inc.estimated_customers == 30
    # a new fault in scope joins the incident; one elsewhere counts for its own scope only
    run(s.app, lambda uow: commands.correlate(uow, s.app, tickets[3], "south", FAULT, NOW + timedelta(minutes=4)))
    run(s.app, lambda uow: commands.correlate(uow, s.app, tickets[4], "north", FAULT, NOW + timedelta(minutes=4)))
    inc = s.app.repository.get(inc.id)
    assert tickets[3] in inc.linked and tickets[4] not in inc.linked
    # a redelivered acceptance changes nothing
    before = inc.version
    run(s.app, lambda uow: commands.correlate(uow, s.app, tickets[3], "south", FAULT, NOW + timedelta(minutes=4)))
    assert s.app.repository.get(inc.id).version == before


def two_incidents() -> tuple[SyncService[IncidentApp], UUID, UUID]:
    """A stack with two open incidents in the south: A of fault repairs, B of mobile fault repairs."""
    s, _ = sync_app()
    a, b = uuid4(), uuid4()
    run(s.app, lambda uow: commands.declare_in(
        uow, s.app, a, commands.Declaration("A", "III", "outage", [FAULT], ["south"], 1, []), "im"))
    run(s.app, lambda uow: commands.declare_in(
        uow, s.app, b, commands.Declaration("B", "III", "outage", ["mobile.fault_repair"], ["south"], 1, []), "im"))
    return s, a, b


def test_a_ticket_is_linked_to_at_most_one_open_incident_and_linking_is_idempotent() -> None:
    s, a, b = two_incidents()
    t = str(uuid4())
    _, n = s.link(a, [t], "im")
    assert n == 1
    _, n = s.link(a, [t, t], "im")
    assert n == 0
    with pytest.raises(AlreadyLinked):
        s.link(b, [t], "im")
    s.unlink(a, t, "unrelated: a broken router", "im")
    assert s.app.repository.get(link_id(t)).incident_id is None
    # an unrelated ticket is never linked again automatically (a redelivered acceptance, the sweep)
    inc = s.app.repository.get(a)
    assert not inc.link(TicketLink(id=link_id(t), ticket_id=t), "auto", NOW) and t not in inc.linked
    _, n = s.link(b, [t], "im")
    assert n == 1


def test_a_tickets_first_link_is_one_event_of_its_new_record() -> None:
    """Issue 12: a ticket's first link is one ``TicketLink.Started`` carrying the incident (was Started, then
    Linked); a later link of the same record (another incident, after an unlink) is ``Linked`` as before."""
    s, a, b = two_incidents()
    t = str(uuid4())
    assert s.link(a, [t], "im")[1] == 1
    events = list(s.app.repository.event_store.get(link_id(t)))
    assert [type(e) for e in events] == [TicketLink.Started]
    assert events[0].incident_id == str(a) and s.app.repository.get(link_id(t)).incident_id == str(a)
    s.unlink(a, t, "unrelated", "im")
    assert s.link(b, [t], "im")[1] == 1
    assert [type(e) for e in s.app.repository.event_store.get(link_id(t))] == [
        TicketLink.Started, TicketLink.Cleared, TicketLink.Linked]
    assert s.app.repository.get(link_id(t)).incident_id == str(b)
    # a declaration's burst links its tickets the same way
    c, burst = uuid4(), [str(uuid4()) for _ in range(2)]
    run(s.app, lambda uow: commands.declare_in(
        uow, s.app, c, commands.Declaration("C", "III", "outage", [FAULT], ["west"], 1, burst), "auto"))
    for x in burst:
        assert [(type(e), e.incident_id) for e in s.app.repository.event_store.get(link_id(x))] == [
            (TicketLink.Started, str(c))]


def store_old_form_link(app: IncidentApp, ticket_id: str, incident_id: UUID) -> None:
    """A ticket's first link as stores written before session 9 hold it: ``Started`` without an incident (its stored
    state has no ``incident_id`` at all), then ``Linked``."""
    tid = link_id(ticket_id)
    started = TicketLink.Started(originator_id=tid, originator_version=1, timestamp=NOW,
                                 originator_topic=get_topic(TicketLink), ticket_id=ticket_id)
    linked = TicketLink.Linked(originator_id=tid, originator_version=2, timestamp=NOW, incident_id=str(incident_id))
    first, second = (app.mapper.to_stored_event(e) for e in (started, linked))
    state = app.mapper.transcoder.decode(first.state)
    del state["incident_id"]
    first = StoredEvent(first.originator_id, first.originator_version, first.topic, app.mapper.transcoder.encode(state))
    app.recorder.insert_events([first, second])


def test_a_first_link_stored_in_the_old_two_event_form_loads_and_behaves_the_same() -> None:
    s, a, b = two_incidents()
    t = str(uuid4())
    inc = s.app.repository.get(a)
    inc.link(TicketLink(id=uuid4(), ticket_id=t), "auto", NOW)  # the incident's own TicketLinked, as it was saved
    s.app.save(inc)
    store_old_form_link(s.app, t, a)
    tl = s.app.repository.get(link_id(t))
    assert isinstance(tl, TicketLink) and (tl.ticket_id, tl.incident_id, tl.version) == (t, str(a), 2)
    assert s.incident_of_ticket(t).id == a
    with pytest.raises(AlreadyLinked):
        s.link(b, [t], "im")
    # correlation knows it was linked: a redelivered acceptance links and counts nothing
    before = s.app.repository.get(a).version
    run(s.app, lambda uow: commands.correlate(uow, s.app, t, "south", FAULT, NOW))
    assert s.app.repository.get(a).version == before
    s.unlink(a, t, "unrelated", "im")
    assert s.app.repository.get(link_id(t)).incident_id is None
    assert s.link(b, [t], "im")[1] == 1
    assert [type(e) for e in s.app.repository.event_store.get(link_id(t))] == [
        TicketLink.Started, TicketLink.Linked, TicketLink.Cleared, TicketLink.Linked]
    assert s.app.repository.get(link_id(t)).incident_id == str(b)


def test_overlapping_scope_is_refused_while_an_incident_covers_it() -> None:
    s, _ = sync_app()
    d = commands.Declaration("A", "III", "outage", [FAULT], ["south"], 1, [])
    run(s.app, lambda uow: commands.declare_in(uow, s.app, uuid4(), d, "im"))
    with pytest.raises(IncidentError, match="covered"):
        run(s.app, lambda uow: commands.declare_in(uow, s.app, uuid4(), d, "im"))


def test_restoration_is_verified_before_resolution_and_resolving_twice_changes_nothing() -> None:
    inc = declare()
    tl = TicketLink(id=uuid4(), ticket_id="t1")
    inc.link(tl, "auto", NOW)
    with pytest.raises(IncidentError, match="verified"):
        inc.resolve("restored", "fibre spliced", None, "im", NOW)
    with pytest.raises(IncidentError, match="restored"):
        inc.verify("ok", "im", NOW)
    inc.restore("spliced", "im", NOW + timedelta(hours=1))
    inc.verify("all green", "im", NOW + timedelta(hours=1, minutes=10))
    assert inc.resolve("restored", "fibre spliced", None, "im", NOW + timedelta(hours=2))
    version = inc.version
    assert not inc.resolve("other", "again", None, "im", NOW + timedelta(hours=3))
    assert inc.version == version and inc.resolution is not None and inc.resolution["resolution_code"] == "restored"
    with pytest.raises(IncidentError):
        inc.link(TicketLink(id=uuid4(), ticket_id="t2"), "im", NOW)


def test_the_review_is_written_from_the_log() -> None:
    inc = Incident.declare(uuid4(), "Fibre cut", "II", "outage", [FAULT], ["south"], 500, "auto", NOW, PLANS,
                           detected_at=NOW - timedelta(minutes=12), rule="burst")
    for t in ("t1", "t2", "t3"):
        inc.link(TicketLink(id=uuid4(), ticket_id=t), "auto", NOW)
    inc.acknowledge("im", NOW + timedelta(minutes=5))
    inc.finish_step("assemble", "im", NOW + timedelta(minutes=20))  # 5 minutes late
    inc.escalate_overdue(NOW + timedelta(minutes=61), "supervisor")  # customer_notice
    inc.unlink(TicketLink(id=uuid4(), ticket_id="t3"), "unrelated", "im", NOW + timedelta(minutes=30))
    inc.restore("spliced", "im", NOW + timedelta(hours=1))
    inc.verify("green", "im", NOW + timedelta(hours=1))
    inc.resolve("restored", "fibre spliced", None, "im", NOW + timedelta(hours=2))
    r = draft_review(inc.collect_events())
    assert r["time_to_detect_seconds"] == 12 * 60
    assert r["time_to_acknowledge_seconds"] == 5 * 60
    assert r["time_to_restore_seconds"] == 3600
    assert (r["tickets_affected"], r["tickets_unlinked"], r["customers_affected"]) == (2, 1, 2)
    assert r["sla_paused_seconds"] == 2 * 2 * 3600 + 30 * 60  # two held to the end, one until unlinked
    late = {s["step"]: s["late_seconds"] for s in r["late_steps"]}
    assert late == {"assemble": 300.0, "customer_notice": 3600.0}  # diagnose was due just as it resolved
    assert [e["at"] for e in r["timeline"]] == sorted(e["at"] for e in r["timeline"])
    assert any("unlinked" in e["what"] for e in r["timeline"])


def test_a_published_review_goes_on_the_wire_with_its_improvement_actions() -> None:
    inc = declare()
    inc.restore("x", "im", NOW)
    inc.verify("x", "im", NOW)
    with pytest.raises(IncidentError):
        Incident.declare(uuid4(), "x", "II", "outage", [FAULT], ["south"], 1, "im", NOW, PLANS).publish_review(
            {}, "rc", [], "im", NOW)
    inc.resolve("restored", "done", None, "im", NOW + timedelta(hours=1))
    events = list(inc.collect_events())
    actions = [{"title": "Duct survey", "kind": "preventive", "owner": "ops", "due": "2026-07-01"}]
    inc.publish_review(draft_review(events), "excavator cut the duct", actions, "im", NOW + timedelta(days=1))  # type: ignore[list-item]
    published = [WIRE(e) for e in inc.collect_events()][-1]
    assert published is not None and isinstance(published.event, wire.ReviewPublished)
    assert published.event.event_type == "tsop.incident.review-published.v1"
    assert published.event.improvement_actions[0].kind == "preventive"
    assert published.event.improvement_actions[0].due == date(2026, 7, 1)
    assert published.event.key() == str(inc.id)
    # the same completion again is a retry; another one is refused
    assert not inc.publish_review({}, "excavator cut the duct", actions, "im", NOW)  # type: ignore[arg-type]
    with pytest.raises(IncidentError):
        inc.publish_review({}, "another cause", actions, "im", NOW)  # type: ignore[arg-type]


# --- dispatch's side: the hold on the SLA clocks ---------------------------------------------------------

TARGETS = sla.Targets(3600, 4 * 3600, sla.Calendar(), "test").spec()


def work_order() -> WorkOrder:
    return WorkOrder(id=uuid4(), ticket_id="t1", service_type=FAULT, region="south", priority=2, resolve_by=None,
                     causation_id="c", opened_at=NOW, targets=TARGETS)


def test_a_held_ticket_s_clocks_pause_for_the_incident_and_run_again_when_unlinked() -> None:
    wo = work_order()
    assert wo.hold("inc-1", NOW + timedelta(minutes=10))
    assert not wo.hold("inc-1", NOW + timedelta(minutes=11))  # a redelivered link
    later = NOW + timedelta(hours=5)
    assert sla.clocks(wo.facts)["resolve"].elapsed(later) == 600  # held since minute 10
    # five hours after opening, past the 4-hour target, yet nothing is breached: the clocks were held
    assert sla.due_thresholds(wo.facts, set(), later) == []
    assert wo.lift_hold("inc-1", "unrelated", later)
    assert sla.clocks(wo.facts)["resolve"].elapsed(later + timedelta(minutes=5)) == 900


def test_a_held_work_order_is_not_assigned_and_is_resolved_with_the_incident() -> None:
    wo = work_order()
    wo.hold("inc-1", NOW)
    with pytest.raises(DispatchError, match="held"):
        wo.assign(tech(), "x", [], NOW)
    assert not wo.resolve_with_incident("inc-2", "restored", "other incident", None, NOW)
    assert wo.resolve_with_incident("inc-1", "restored", "fibre spliced", None, NOW + timedelta(hours=1))
    assert wo.status == "resolved"
    assert not wo.resolve_with_incident("inc-1", "restored", "again", None, NOW + timedelta(hours=2))
    resolved = [e for e in wo.collect_events() if isinstance(e, WorkOrder.Resolved)]
    assert len(resolved) == 1 and resolved[0].summary == "fibre spliced"


def test_the_board_takes_a_held_work_order_out_of_the_queue_and_puts_it_back_when_the_hold_is_lifted() -> None:
    from tests.unit.test_dispatch_domain import new_app, open_order

    app, clock = new_app()
    held, free = open_order(app, "held-ticket"), open_order(app, "free-ticket")
    wo = app.load(held)
    wo.hold("inc-1", clock.now())
    app.save(wo)
    app.register_technician(uuid4(), "T", [FAULT], ["north"], 5)
    app.drain_queue()
    assert app.load(free).technician_id is not None
    assert app.load(held).technician_id is None and app.load(held).status == "waiting"
    assert held not in dict(app.board.queue()) and app.board.held_by("inc-1") == ([held], [])
    wo = app.load(held)
    wo.lift_hold("inc-1", "unrelated", clock.now())
    app.save(wo)
    app.drain_queue()
    assert app.load(held).technician_id is not None and app.board.held_by("inc-1") == ([], [])


def test_an_incident_with_escalated_steps_is_snapshotted_and_loads_the_same_from_its_snapshot() -> None:
    """Its state holds a set (the escalated steps): without a transcoding every snapshot failed, and each attempt
    replayed the whole incident first (the O(n²) of linking 100,000 tickets)."""
    s, clock = sync_app()
    d = commands.Declaration("Outage", "II", "outage", [FAULT], ["south"], 100, ["t1", "t2"])
    iid = uuid4()
    run(s.app, lambda uow: commands.declare_in(uow, s.app, iid, d, "im"))
    clock.advance(timedelta(hours=2))
    assert s.escalate_overdue() == 3
    before = s.app.repository.get(iid)
    s.app.take_snapshot(iid)
    assert s.app.snapshots is not None and list(s.app.snapshots.get(iid))
    after = s.app.repository.get(iid)  # from the snapshot
    assert after.escalated == before.escalated == {"assemble", "customer_notice", "diagnose"}
    assert after.linked == before.linked and after.steps == before.steps and after.plan == before.plan


def test_the_sweep_s_chunk_links_many_tickets_in_one_event_each_as_if_linked_alone() -> None:
    """The bulk path (issue 12): one TicketsLinked per chunk, one event on the incidents topic; a ticket linked
    already, or unlinked as unrelated, is left out (idempotent, never linked again automatically); the review and
    the board count each ticket of the chunk."""
    inc = Incident.declare(uuid4(), "Fibre cut", "II", "outage", [FAULT], ["south"], 500, "auto", NOW, PLANS,
                           detected_at=NOW, rule="burst")
    links = {t: TicketLink(id=link_id(t), ticket_id=t) for t in ("t1", "t2", "t3", "t4")}
    assert inc.link(links["t1"], "auto", NOW)
    inc.unlink(links["t1"], "unrelated", "im", NOW + timedelta(minutes=1))
    assert inc.link(links["t2"], "auto", NOW)
    at = NOW + timedelta(minutes=2)
    # t1 unrelated (not again automatically), t2 linked already, t3 twice in the chunk
    assert inc.link_many([links["t1"], links["t2"], links["t3"], links["t3"], links["t4"]], "auto", at) == [
        links["t3"], links["t4"]]
    assert inc.link_many([links["t3"], links["t4"]], "auto", at) == []  # a chunk again: nothing new
    assert set(inc.linked) == {"t2", "t3", "t4"} and "t1" not in inc.linked
    assert links["t3"].incident_id == links["t4"].incident_id == str(inc.id) and links["t1"].incident_id is None
    events = inc.collect_events()
    chunks = [e for e in events if isinstance(e, Incident.TicketsLinked)]
    assert [c.ticket_ids for c in chunks] == [["t3", "t4"]]
    out = WIRE(chunks[0])
    assert out is not None and isinstance(out.event, wire.IncidentTicketsLinked)
    assert (out.event.key(), out.event.ticket_ids, out.event.linked_at) == (str(inc.id), ["t3", "t4"], at)
    # by hand, an unrelated ticket may be linked again in a chunk
    assert inc.link_many([links["t1"]], "im", at) == [links["t1"]] and "t1" in inc.linked
    inc.restore("spliced", "im", NOW + timedelta(hours=1))
    inc.verify("green", "im", NOW + timedelta(hours=1))
    inc.resolve("restored", "fibre spliced", None, "im", NOW + timedelta(hours=2))
    r = draft_review([*events, *inc.collect_events()])
    assert (r["tickets_affected"], r["tickets_unlinked"]) == (4, 0)
    board = views.Board(IncidentApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, plans=PLANS))
    for e in events:
        board.apply(e)
    assert board.linked[inc.id] == {"t2", "t3", "t4"} and board.ticket_incident["t4"] == inc.id
