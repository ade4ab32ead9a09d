"""Dispatch: filters, score, queue, accept/decline/time-out, the work steps, SLA timers (in memory)."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.dispatch_sync import SyncDispatch
from tsop_dispatch import sla
from tsop_dispatch.commands import DispatchApp, work_order_id
from tsop_dispatch.domain import (
    FILTERS,
    DispatchError,
    Job,
    NotYours,
    OverCapacity,
    Technician,
    TechnicianView,
    WorkOrder,
    rank_candidates,
    score,
)
from tsop_dispatch.wire import WIRE
from tsop_events import schemas as wire
from tsop_events.auth import hash_token
from tsop_events.clock import ManualClock
from tsop_events.errors import Invalid

NOW = datetime(2026, 6, 1, 9, tzinfo=UTC)  # a Monday
FAULT = "broadband.fault_repair"


def tech(capacity: int = 2) -> Technician:
    q = {"service_type": FAULT, "certificate": "c", "level": 1, "valid_from": NOW, "valid_until": None}
    return Technician(
        id=uuid4(),
        name="T",
        regions=["north"],
        capacity=capacity,
        qualifications=[q],
        credential_hash=None,
        registered_at=NOW,
    )


def order(ticket: str = "t1") -> WorkOrder:
    return WorkOrder(
        id=uuid4(),
        ticket_id=ticket,
        service_type=FAULT,
        region="north",
        priority=2,
        resolve_by=None,
        causation_id="c",
        opened_at=NOW,
    )


def new_app(**kw: object) -> tuple[SyncDispatch, ManualClock]:
    clock = ManualClock(NOW)
    app = DispatchApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=clock, **kw)  # type: ignore[arg-type]
    return SyncDispatch(app), clock


def open_order(app: SyncDispatch, ticket: str, service_type: str = FAULT, priority: int = 2, **kw: object) -> UUID:
    wo = app.open_work_order(work_order_id(ticket), ticket, service_type, "north", priority, kw.get("resolve_by"), "c")  # type: ignore[arg-type]
    app.save(wo)
    return wo.id


def wire_events(app: SyncDispatch) -> list[wire.WireEvent]:
    out = [WIRE(app.mapper.to_domain_event(n)) for n in app.recorder.select_notifications(1, 100000)]
    return [o.event for o in out if o is not None]


# --- aggregates ------------------------------------------------------------------------------------


def test_a_technician_never_goes_over_capacity() -> None:
    t = tech(capacity=1)
    order().assign(t, "r", [], NOW)
    with pytest.raises(OverCapacity):
        order().assign(t, "r", [], NOW)
    assert len(t.active) == 1


def test_only_the_assigned_technician_works_it_and_every_step_needs_its_state() -> None:
    t, other = tech(), tech()
    wo = order()
    wo.assign(t, "r", [], NOW)
    with pytest.raises(DispatchError):
        wo.assign(other, "r", [], NOW)
    with pytest.raises(NotYours):
        wo.accept(str(other.id), NOW)
    with pytest.raises(DispatchError):
        wo.start(str(t.id), "remote", NOW)  # not accepted yet
    wo.accept(str(t.id), NOW)
    wo.start(str(t.id), "on_site", NOW)
    wo.log_work(str(t.id), "replaced ONT", "on_site", None, NOW, ["ONT-7"], {"dbm": -19.5})
    wo.pause(str(t.id), "held", "waiting for parts", NOW)
    with pytest.raises(DispatchError):
        wo.resolve(t, "fixed", "ONT replaced", None, NOW)  # paused work is resumed first
    wo.resume(str(t.id), NOW)
    wo.resolve(t, "fixed", "ONT replaced", None, NOW)
    assert wo.status == "resolved" and t.active == []
    assert wo.log[0]["equipment"] == ["ONT-7"] and wo.log[0]["measurements"] == {"dbm": -19.5}


# --- filters and score -----------------------------------------------------------------------------

views = st.builds(
    lambda cap, load, region, qual, expired, level, shift, leave: TechnicianView(
        uuid4(),
        frozenset({region}),
        cap,
        {FAULT: (level, NOW - timedelta(days=30), NOW - timedelta(days=1) if expired else None)} if qual else {},
        [(NOW + timedelta(hours=1), NOW + timedelta(hours=9))] if shift else [],
        [(NOW - timedelta(hours=1), NOW + timedelta(hours=1))] if leave else [],
        {str(i) for i in range(min(load, cap))},
    ),
    st.integers(1, 5),
    st.integers(0, 6),
    st.sampled_from(["north", "south", "*"]),
    st.booleans(),
    st.booleans(),
    st.integers(1, 5),
    st.booleans(),
    st.booleans(),
)


@given(st.lists(views, max_size=25), st.integers(1, 5), st.sets(st.integers(0, 24), max_size=3))
@settings(max_examples=300)
def test_every_eligible_technician_passes_every_filter_and_the_counts_add_up(
    techs: list[TechnicianView], priority: int, declined_idx: set[int]
) -> None:
    declined = frozenset(str(techs[i].id) for i in declined_idx if i < len(techs))
    job = Job(FAULT, "north", priority, excluded=declined)
    decision = rank_candidates(techs, job, NOW)
    ranked_ids = {t.id for _, _, t in decision.ranked}
    for t in techs:
        eligible = (
            t.qualified(FAULT, NOW) is not None
            and t.serves("north")
            and str(t.id) not in declined
            and t.on_shift(NOW)
            and t.load < t.capacity
        )
        assert (t.id in ranked_ids) == eligible
    assert sum(decision.excluded.values()) + len(decision.ranked) == len(techs)
    assert list(decision.excluded) == list(FILTERS)
    totals = [total for total, _, _ in decision.ranked]
    assert totals == sorted(totals, reverse=True)


@given(st.integers(1, 10), st.integers(0, 9), st.integers(0, 9), st.integers(1, 5))
def test_the_less_loaded_of_two_equal_technicians_scores_higher(cap: int, a: int, b: int, priority: int) -> None:
    a, b = min(a, cap - 1), min(b, cap - 1)
    ta = TechnicianView(uuid4(), frozenset({"north"}), cap, {FAULT: (2, NOW, None)}, active={str(i) for i in range(a)})
    tb = TechnicianView(uuid4(), frozenset({"north"}), cap, {FAULT: (2, NOW, None)}, active={str(i) for i in range(b)})
    job = Job(FAULT, "north", priority)
    sa, sb = sum(score(ta, job, 2).values()), sum(score(tb, job, 2).values())
    assert (sa > sb) == (a < b) and (sa == sb) == (a == b)


def test_continuity_affinity_and_level_weigh_in() -> None:
    base = TechnicianView(uuid4(), frozenset({"*"}), 4, {FAULT: (1, NOW, None)})
    local = TechnicianView(uuid4(), frozenset({"north"}), 4, {FAULT: (1, NOW, None)})
    senior = TechnicianView(uuid4(), frozenset({"*"}), 4, {FAULT: (5, NOW, None)})
    job = Job(FAULT, "north", 1, previous=frozenset({str(base.id)}))
    parts = {t.id: score(t, job, t.qualifications[FAULT][0]) for t in (base, local, senior)}
    assert parts[base.id]["continuity"] > 0 and parts[local.id]["continuity"] == 0
    assert parts[local.id]["affinity"] > parts[base.id]["affinity"]
    assert parts[senior.id]["level"] > parts[base.id]["level"]


# --- the application: assignment, queue, accept/decline/time-out ------------------------------------


@given(st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=6), st.integers(1, 30))
@settings(max_examples=30, deadline=None)
def test_queue_drain_never_exceeds_capacity(capacities: list[int], orders: int) -> None:
    app, _ = new_app()
    for c in capacities:
        app.register_technician(uuid4(), "T", [FAULT], ["north"], c)
    for i in range(orders):
        open_order(app, f"t{i}")
    app.drain_queue()
    assigned = sum(len(v.active) for v in app.board.technicians.values())
    assert assigned == min(orders, sum(capacities))
    assert all(len(v.active) <= v.capacity for v in app.board.technicians.values())
    assert len(app.board.waiting) == orders - assigned


def test_the_queue_is_served_by_priority_then_deadline() -> None:
    app, _ = new_app()
    specs = [("late-p2", 2, 9), ("p3", 3, 1), ("early-p2", 2, 2), ("p1", 1, 20)]
    for ticket, priority, hours in specs:
        open_order(app, ticket, priority=priority, resolve_by=NOW + timedelta(hours=hours))
    app.board.refresh()
    order_ = [app.load(i).ticket_id for i, _ in app.board.queue()]
    assert order_ == ["p1", "early-p2", "late-p2", "p3"]
    tid, _ = app.register_technician(uuid4(), "T", [FAULT], ["north"], 2)
    app.drain_queue()
    assert sorted(app.load(UUID(w)).ticket_id for w in app.load(tid.id).active) == ["early-p2", "p1"]


def test_the_assigned_event_explains_filters_counts_and_score() -> None:
    app, _ = new_app()
    winner, _ = app.register_technician(uuid4(), "Win", [FAULT], ["north"], 3)
    app.register_technician(uuid4(), "Elsewhere", [FAULT], ["south"], 3)
    app.register_technician(uuid4(), "Installer", ["broadband.installation"], ["north"], 3)
    _lapsed, _ = app.register_technician(
        uuid4(),
        "Lapsed",
        [],
        ["north"],
        3,
        [
            {
                "service_type": FAULT,
                "certificate": "c",
                "level": 3,
                "valid_from": NOW - timedelta(days=400),
                "valid_until": NOW - timedelta(days=1),
            },
        ],
    )
    open_order(app, "t1")
    app.drain_queue()
    assigned = [e for e in wire_events(app) if isinstance(e, wire.Assigned)]
    assert len(assigned) == 1
    ev = assigned[0]
    assert ev.technician_id == str(winner.id) and ev.accept_by == NOW + timedelta(minutes=15)
    assert "4 technicians considered" in ev.reason and "qualification -2" in ev.reason and "region -1" in ev.reason
    assert "load 40" in ev.reason and "1 eligible" in ev.reason
    assert [c.technician_id for c in ev.candidates] == [str(winner.id)]


def test_a_declined_work_order_goes_to_someone_else_and_a_silent_technician_times_out() -> None:
    app, clock = new_app(accept_within=timedelta(minutes=10))
    a, _ = app.register_technician(uuid4(), "A", [FAULT], ["north"], 1)
    b, _ = app.register_technician(uuid4(), "B", [FAULT], ["north"], 1)
    wo_id = open_order(app, "t1")
    app.drain_queue()
    first = app.load(wo_id).technician_id
    app.decline(wo_id, first, "off sick today")
    second = app.load(wo_id).technician_id
    assert second is not None and second != first
    clock.advance(timedelta(minutes=11))
    assert app.expire_acceptances() == 1
    wo = app.load(wo_id)
    assert wo.status == "waiting" and set(wo.excluded) == {str(a.id), str(b.id)}  # nobody left: it waits
    declines = [e for e in wire_events(app) if isinstance(e, wire.AssignmentDeclined)]
    assert [(d.technician_id, d.timed_out) for d in declines] == [(first, False), (second, True)]
    assert all(len(app.load(t.id).active) == 0 for t in (a, b))


def test_expired_qualifications_shifts_and_leave_stop_assignments() -> None:
    app, clock = new_app()
    t, _ = app.register_technician(
        uuid4(),
        "A",
        [],
        ["north"],
        3,
        [
            {
                "service_type": FAULT,
                "certificate": "c",
                "level": 2,
                "valid_from": NOW,
                "valid_until": NOW + timedelta(days=1),
            },
        ],
    )
    app.schedule(t.id, "shift", NOW + timedelta(hours=1), NOW + timedelta(hours=9))
    wo_id = open_order(app, "t1")
    app.drain_queue()
    assert app.load(wo_id).status == "waiting"  # shift starts at 10:00
    clock.advance(timedelta(hours=2))
    app.schedule(t.id, "leave", NOW, NOW + timedelta(hours=3), "doctor")
    app.drain_queue()
    assert app.load(wo_id).status == "waiting"  # on leave until 12:00
    clock.advance(timedelta(hours=1, minutes=1))
    app.drain_queue()
    assert app.load(wo_id).technician_id == str(t.id)
    clock.advance(timedelta(days=1))  # the qualification lapsed
    w2 = open_order(app, "t2")
    app.schedule(t.id, "shift", clock.now(), clock.now() + timedelta(hours=8))
    app.drain_queue()
    assert app.load(w2).status == "waiting"
    app.grant_qualification(t.id, FAULT, "renewed", 2, clock.now(), None, "training")  # the training record renews it
    app.drain_queue()
    assert app.load(w2).technician_id == str(t.id)
    granted = [e for e in wire_events(app) if isinstance(e, wire.QualificationGranted)]
    assert granted[-1].renewal is True and granted[-1].source == "training"


def test_resources_are_reserved_with_the_work_order_and_freed_on_resolution() -> None:
    app, _ = new_app()
    t, _ = app.register_technician(uuid4(), "A", ["broadband.installation"], ["north"], 3)
    w1 = open_order(app, "i1", "broadband.installation")
    w2 = open_order(app, "i2", "broadband.installation")
    app.drain_queue()
    assert app.load(w1).status == "waiting"  # an installation needs an ONT, and none is registered
    ont, _ = app.register_resource(uuid4(), "ont", "ONT-1", "north")
    app.drain_queue()
    held = [w for w in (w1, w2) if app.load(w).status == "assigned"]
    assert len(held) == 1 and app.load(held[0]).resources == [str(ont.id)]
    tid = str(t.id)
    app.accept(held[0], tid)
    app.start(held[0], tid, "on_site")
    app.resolve(held[0], tid, "installed", "fibre installed", None)
    assert app.load(ont.id).reserved_by is None
    app.drain_queue()
    assert all(app.load(w).status != "waiting" for w in (w1, w2))


def test_a_supervisor_reassigns_with_a_reason_and_the_old_technician_is_freed() -> None:
    app, _ = new_app()
    a, _ = app.register_technician(uuid4(), "A", [FAULT], ["north"], 1)
    b, _ = app.register_technician(uuid4(), "B", [FAULT], ["north"], 1)
    wo_id = open_order(app, "t1")
    app.drain_queue()
    holder = app.load(wo_id).technician_id
    other = b.id if holder == str(a.id) else a.id
    wo = app.reassign(wo_id, other, "customer asked for a Mandarin speaker", "sup-1")
    assert wo.technician_id == str(other) and wo.previous == [holder]
    assert app.load(UUID(holder)).active == []
    ev = [e for e in wire_events(app) if isinstance(e, wire.Assigned)][-1]
    assert ev.assigned_by == "sup-1" and ev.previous_technician_id == holder and "Mandarin" in ev.reason


# --- service-level timers and peak mode ------------------------------------------------------------


def test_each_threshold_is_recorded_once_with_an_escalation_at_breach() -> None:
    app, clock = new_app()
    t, _ = app.register_technician(uuid4(), "A", [FAULT], ["north"], 1)
    wo_id = open_order(app, "t1", priority=2)  # respond 1 h, resolve 24 h, around the clock
    app.drain_queue()
    app.accept(wo_id, str(t.id))
    app.start(wo_id, str(t.id), "remote")
    clock.advance(timedelta(hours=17))
    app.pause(wo_id, str(t.id), "pending", "customer not home")
    clock.advance(timedelta(hours=30))  # paused: no threshold
    assert app.check_clocks() == 0
    app.resume(wo_id, str(t.id))
    clock.advance(timedelta(hours=1, minutes=1))  # 18 h 01 of 24 h: warning
    assert app.check_clocks() == 1
    assert app.check_clocks() == 0
    clock.advance(timedelta(hours=6))
    assert app.check_clocks() == 1 and app.check_clocks() == 0
    events = wire_events(app)
    crossed = [(e.target, e.level) for e in events if isinstance(e, wire.SlaThresholdCrossed)]
    assert crossed == [("resolve", "warning"), ("resolve", "breach")]
    escalated = [e for e in events if isinstance(e, wire.Escalated)]
    assert len(escalated) == 1 and escalated[0].to_role == "supervisor"
    sla = app.explain_clocks(app.load(wo_id))["resolve"]
    assert sla["state"] == "running" and sla["overrun_seconds"] == pytest.approx(60, abs=1)  # 17 h + 1 h 01 + 6 h
    assert [s["state"] for s in sla["segments"]] == ["running", "paused", "running"]


def test_a_priority_change_recalculates_the_targets_and_replay_gives_the_same_clock() -> None:
    app, clock = new_app()
    wo_id = open_order(app, "t1", priority=4)  # 48 h
    clock.advance(timedelta(hours=5))
    app.change_priority(wo_id, 1, "sup-1", "hospital line")  # 8 h: 5 h already elapsed
    sla = app.explain_clocks(app.load(wo_id))["resolve"]
    assert sla["target_seconds"] == 8 * 3600 and sla["elapsed_seconds"] == 5 * 3600
    assert sla["deadline"] == (NOW + timedelta(hours=8)).isoformat()
    fresh = None
    for stored in app.repository.event_store.get(wo_id):  # a replay: the stored events, folded afresh
        fresh = stored.mutate(fresh)
    assert fresh is not None and fresh is not app.load(wo_id)
    assert app.explain_clocks(fresh) == app.explain_clocks(app.load(wo_id))


def test_peak_mode_turns_on_with_the_backlog_and_stretches_the_norm() -> None:
    app, _ = new_app(peak_backlog=4)
    for i in range(4):
        open_order(app, f"t{i}")
    app.board.refresh()
    assert app.auto_peak() is True and app.board.peak
    peak_wo = open_order(app, "late")
    assert app.explain_clocks(app.load(peak_wo))["resolve"]["target_seconds"] == 48 * 3600
    changes = [e for e in wire_events(app) if isinstance(e, wire.PeakModeChanged)]
    assert len(changes) == 1 and changes[0].on and changes[0].changed_by == "auto" and changes[0].backlog == 4
    app.register_technician(uuid4(), "A", [FAULT], ["north"], 10)
    app.drain_queue()
    assert app.auto_peak() is False


def test_an_adopted_policy_recalculates_open_work_and_applies_to_new_work() -> None:
    app, clock = new_app()
    open_wo = open_order(app, "t1", priority=2)  # v1: 24 h
    clock.advance(timedelta(hours=3))
    raw = json.loads(Path(sla.__file__).with_name("sla_policy.json").read_text())
    raw["version"] = "2"
    raw["targets"]["*.fault_repair"]["2"]["resolve_hours"] = 12
    with pytest.raises(Invalid):
        app.adopt_policy({"version": "bad"}, "admin-1")  # nothing adopted from an invalid policy
    assert app.adopt_policy(raw, "admin-1") == 1
    resolve = app.explain_clocks(app.load(open_wo))["resolve"]
    assert resolve["target_seconds"] == 12 * 3600 and resolve["elapsed_seconds"] == 3 * 3600
    assert "policy v1 → v2 adopted by admin-1" in resolve["rule"]
    assert resolve["deadline"] == (NOW + timedelta(hours=12)).isoformat()
    fresh = open_order(app, "t2", priority=2)
    assert app.explain_clocks(app.load(fresh))["resolve"]["rule"].startswith("v2 ")
    assert app.adopt_policy(raw, "admin-1") == 0  # nothing changed: nothing recalculated


def test_a_rotated_credential_revokes_the_old_one() -> None:
    app, _ = new_app()
    tech, old = app.register_technician(uuid4(), "A", [FAULT], ["north"], 1)
    app.board.refresh()
    assert app.board.technician_of(hash_token(old)) == tech.id
    _, new = app.rotate_credential(tech.id)
    assert app.board.technician_of(hash_token(old)) is None
    assert app.board.technician_of(hash_token(new)) == tech.id
    on_the_wire = " ".join(e.model_dump_json() for e in wire_events(app))
    assert hash_token(old) not in on_the_wire and hash_token(new) not in on_the_wire  # hashes stay home


def test_a_cancelled_request_withdraws_its_work_order_and_frees_the_technician() -> None:
    app, _ = new_app()
    a, _ = app.register_technician(uuid4(), "A", [FAULT], ["north"], 1)
    held, waiting = open_order(app, "t1"), open_order(app, "t2")
    app.drain_queue()
    wo = app.load(held)
    assert wo.technician_id == str(a.id) and app.load(waiting).status == "waiting"
    tech_now = app.load(a.id)
    assert wo.withdraw("request cancelled", NOW + timedelta(hours=1), tech_now)
    app.save(wo, tech_now)
    assert app.load(a.id).active == []
    assert sla.explain(app.load(held).facts, NOW + timedelta(hours=5))["resolve"]["stopped_by"] == "withdrawn"
    assert not app.load(held).withdraw("again", NOW)  # nothing left to withdraw
    waiting_wo = app.load(waiting)
    assert waiting_wo.withdraw("request cancelled", NOW)  # a waiting one needs nobody to let go
    app.save(waiting_wo)
    app.board.refresh()
    assert waiting not in dict(app.board.queue())
    assert app.drain_queue() == 0  # nothing else to assign: the freed technician is not given withdrawn work
