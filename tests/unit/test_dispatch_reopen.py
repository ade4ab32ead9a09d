"""Dispatch on Reopened: the resolved work order waits again, goes back to the technician who resolved it
first, and its resolve clock runs on from where it stopped (in memory, with the injectable clock)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.dispatch_sync import SyncDispatch
from tsop_dispatch import sla
from tsop_dispatch.commands import DispatchApp, work_order_id
from tsop_dispatch.domain import WorkOrder
from tsop_dispatch.policies import OpenWorkOrders
from tsop_events import schemas as wire
from tsop_events.clock import ManualClock
from tsop_events.consumer import Incoming
from tsop_events.envelope import Envelope

NOW = datetime(2026, 6, 1, 9, tzinfo=UTC)
FAULT = "broadband.fault_repair"


def new_app() -> tuple[SyncDispatch, ManualClock]:
    clock = ManualClock(NOW)
    return SyncDispatch(DispatchApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=clock)), clock


class Feed:
    """Hands wire events to dispatch's work-order sink, as the consumer would (one offset each)."""

    def __init__(self, app: SyncDispatch) -> None:
        self.sink = OpenWorkOrders(app.app)
        self.offset = 0

    def __call__(self, ev: wire.TicketEvent) -> None:
        self.offset += 1
        env = Envelope(f"e{self.offset}", ev.event_type, "test", NOW, ev.ticket_id, None, None, b"{}")
        self.sink._process("test|0|tickets|0", [Incoming("tickets", 0, self.offset, ev.ticket_id, env, ev)],
                           self.offset)


def accepted(ticket: str) -> wire.RequestAccepted:
    return wire.RequestAccepted(ticket_id=ticket, service_type=FAULT, region="north", priority=2,
                                customer_tier="gold", accepted_at=NOW)


def reopened(ticket: str, count: int = 1, at: datetime = NOW) -> wire.Reopened:
    return wire.Reopened(ticket_id=ticket, reason_code="not_solved", reason="still no internet",
                         requested_by="channel:portal", reopen_count=count, reopened_at=at)


def resolved_by_first(app: SyncDispatch, clock: ManualClock, feed: Feed, ticket: str, hours: float) -> tuple[UUID, str]:
    feed(accepted(ticket))
    wo_id = work_order_id(ticket)
    wo: WorkOrder = app.load(wo_id)
    assert wo.technician_id is not None
    tech = wo.technician_id
    app.accept(wo_id, tech)
    app.start(wo_id, tech, "on_site")
    clock.advance(timedelta(hours=hours))
    app.resolve(wo_id, tech, "hw_replaced", "ONT replaced", None)
    return wo_id, tech


def test_a_reopened_work_order_goes_back_to_the_same_technician_even_when_another_scores_higher() -> None:
    app, clock = new_app()
    a, _ = app.register_technician(uuid4(), "A", [FAULT], ["north"], 4)
    feed = Feed(app)
    wo_id, first = resolved_by_first(app, clock, feed, "t1", 5)
    assert first == str(a.id)
    for t in ("t2", "t3"):  # A takes two more jobs
        feed(accepted(t))
    assert {app.load(work_order_id(t)).technician_id for t in ("t2", "t3")} == {first}
    b, _ = app.register_technician(uuid4(), "B", [FAULT], ["north"], 4)  # idle
    clock.advance(timedelta(hours=2))
    feed(reopened("t1"))
    wo: WorkOrder = app.load(wo_id)
    assert wo.status == "assigned" and wo.technician_id == first and wo.reopen_count == 1
    # the ranking alone (continuity included) puts idle B ahead: the preference is what sent it back to A
    assert [str(t.id) for _, _, t in app.decide(wo).ranked] == [str(b.id), first]


def test_the_resolve_clock_continues_from_where_it_stopped_and_the_respond_clock_stays_met() -> None:
    app, clock = new_app()
    app.register_technician(uuid4(), "A", [FAULT], ["north"], 3)
    feed = Feed(app)
    wo_id, tech = resolved_by_first(app, clock, feed, "t1", 5)
    clock.advance(timedelta(hours=10))  # between the resolution and the reopening: not counted
    feed(reopened("t1", at=clock.now()))
    clock.advance(timedelta(hours=3))
    clocks = app.explain_clocks(app.load(wo_id))
    resolve, respond = clocks["resolve"], clocks["respond"]
    assert resolve["state"] == "running" and resolve["elapsed_seconds"] == pytest.approx(8 * 3600)
    assert [s["why"].split(":")[0] for s in resolve["segments"]] == ["open", "reopened"]
    assert respond["state"] == "met"
    # the SLA timer follows it again: 18 h of the 24 h target reached → a warning, once
    clock.advance(timedelta(hours=10, minutes=1))
    assert app.check_clocks() == 1 and app.check_clocks() == 0
    app.accept(wo_id, tech)
    app.start(wo_id, tech, "on_site")
    app.resolve(wo_id, tech, "fixed", "fixed for good", None)
    assert app.explain_clocks(app.load(wo_id))["resolve"]["state"] == "met"


def test_a_redelivered_or_stale_reopening_changes_nothing() -> None:
    app, clock = new_app()
    app.register_technician(uuid4(), "A", [FAULT], ["north"], 3)
    feed = Feed(app)
    wo_id, _ = resolved_by_first(app, clock, feed, "t1", 1)
    feed(reopened("t1", 1))
    version = app.load(wo_id).version
    feed(reopened("t1", 1))  # the same reopening again (e.g. republished after a broker loss)
    assert app.load(wo_id).version == version
    feed(reopened("never-dispatched", 1))  # dispatch never had it: nothing to do
    assert app.find(work_order_id("never-dispatched")) is None


@settings(max_examples=40, deadline=None)
@given(work=st.floats(min_value=0.1, max_value=20), gap=st.floats(min_value=0, max_value=100),
       again=st.floats(min_value=0, max_value=20))
def test_time_between_resolution_and_reopening_is_never_counted(work: float, gap: float, again: float) -> None:
    opened = NOW
    targets = {"respond_seconds": 3600.0, "resolve_seconds": 86400.0, "rule": "r", "peak": False,
               "calendar": {"name": "24x7", "always": True, "days": [0, 1, 2, 3, 4], "start": "08:00",
                            "end": "18:00", "holidays": []}}
    resolved = opened + timedelta(hours=work)
    back = resolved + timedelta(hours=gap)
    facts = [sla.Fact(opened, "opened", {"targets": targets}), sla.Fact(opened, "accepted"),
             sla.Fact(resolved, "resolved"), sla.Fact(back, "reopened", {"reason": "x"})]
    c = sla.clocks(facts)["resolve"]
    assert c.elapsed(back + timedelta(hours=again)) == pytest.approx((work + again) * 3600, abs=1e-3)
