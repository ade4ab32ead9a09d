from datetime import UTC, datetime
from uuid import uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tsop_dispatch.application import DispatchApp, to_wire
from tsop_dispatch.domain import DispatchError, OverCapacity, Technician, TechnicianView, WorkOrder, rank_candidates

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def tech(capacity=2, types=("broadband.fault_repair",), regions=("north",)):
    return Technician(
        id=uuid4(), name="T", service_types=list(types), regions=list(regions), capacity=capacity, registered_at=NOW
    )


def order(ticket="t1"):
    return WorkOrder(
        id=uuid4(),
        ticket_id=ticket,
        service_type="broadband.fault_repair",
        region="north",
        priority=2,
        resolve_by=None,
        causation_id="c",
        opened_at=NOW,
    )


def test_a_technician_never_goes_over_capacity():
    t = tech(capacity=1)
    order().assign(t, "r", [], NOW)
    with pytest.raises(OverCapacity):
        order().assign(t, "r", [], NOW)
    assert len(t.active) == 1


def test_a_work_order_is_assigned_once_and_only_its_technician_works_it():
    t, other = tech(), tech()
    wo = order()
    wo.assign(t, "r", [], NOW)
    with pytest.raises(DispatchError):
        wo.assign(other, "r", [], NOW)
    with pytest.raises(DispatchError):
        wo.log_work(str(other.id), "look", "remote", None, NOW)
    wo.log_work(str(t.id), "replaced ONT", "on_site", None, NOW)
    wo.resolve(t, "fixed", "ONT replaced", None, NOW)
    assert wo.status == "resolved" and t.active == []


def test_ranking_filters_on_qualification_region_and_room_and_prefers_least_loaded():
    a = TechnicianView(uuid4(), frozenset({"broadband.fault_repair"}), frozenset({"north"}), 2, {"x"})
    b = TechnicianView(uuid4(), frozenset({"broadband.fault_repair"}), frozenset({"north"}), 2)
    full = TechnicianView(uuid4(), frozenset({"broadband.fault_repair"}), frozenset({"north"}), 1, {"y"})
    wrong_type = TechnicianView(uuid4(), frozenset({"fixed.installation"}), frozenset({"north"}), 5)
    wrong_region = TechnicianView(uuid4(), frozenset({"broadband.fault_repair"}), frozenset({"south"}), 5)
    ranked = rank_candidates([a, b, full, wrong_type, wrong_region], "broadband.fault_repair", "north")
    assert [v.id for _, v in ranked] == [b.id, a.id]


@given(st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=6), st.integers(1, 30))
def test_queue_drain_never_exceeds_capacity(capacities, orders):
    app = DispatchApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    for c in capacities:
        app.register_technician(uuid4(), "T", ["broadband.fault_repair"], ["north"], c)
    for i in range(orders):
        app.save(order(f"t{i}"))
    app.drain_queue()
    app.board.refresh()
    assigned = sum(len(v.active) for v in app.board.technicians.values())
    assert assigned == min(orders, sum(capacities))
    assert all(len(v.active) <= v.capacity for v in app.board.technicians.values())
    assert len(app.board.waiting) == orders - assigned


def test_assigned_wire_event_explains_the_choice():
    app = DispatchApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    app.register_technician(uuid4(), "T", ["broadband.fault_repair"], ["north"], 3)
    app.save(order())
    app.drain_queue()
    out = [to_wire(app.mapper.to_domain_event(n)) for n in app.recorder.select_notifications(1, 50)]
    assigned = [o for o in out if o and o.event.event_type == "tsop.ticket.assigned.v1"]
    assert len(assigned) == 1
    ev = assigned[0].event
    assert "least loaded" in ev.reason and len(ev.candidates) == 1  # type: ignore[attr-defined]
    assert assigned[0].causation_id == "c"
