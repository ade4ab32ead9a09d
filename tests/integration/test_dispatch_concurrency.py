"""Two dispatch instances on one PostgreSQL never over-assign a technician nor assign a work order twice.

Optimistic concurrency on the event store is the only guard: each instance decides
on its own board and saves; a conflicting save is retried on fresh state.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.dispatch_sync import SyncDispatch
from tests.integration.conftest import eventually
from tests.integration.test_bus_contract import publish
from tsop_dispatch import commands
from tsop_dispatch.commands import DispatchApp, work_order_id
from tsop_dispatch.domain import Technician, WorkOrder
from tsop_dispatch.policies import OpenWorkOrders
from tsop_dispatch.views import timers
from tsop_dispatch.wire import WIRE
from tsop_events.clock import ManualClock
from tsop_events.envelope import stable_event_id
from tsop_events.errors import DomainError
from tsop_events.runtime import Service
from tsop_events.schemas import RequestAccepted
from tsop_events.settings import ServiceSettings
from tsop_events.store import IntegrityError

FAULT = "broadband.fault_repair"


def pg_settings(pg: tuple[str, int]) -> ServiceSettings:
    return ServiceSettings(service_name=f"it_dispatch_{uuid.uuid4().hex[:8]}", pg_host=pg[0], pg_port=pg[1])


def check_log(app: DispatchApp | SyncDispatch, capacities: dict[uuid.UUID, int]) -> Counter[str]:
    """Replay the whole log in commit order: at no point is anyone over capacity or a work order held twice."""
    load: Counter[uuid.UUID] = Counter()
    holder: dict[uuid.UUID, str | None] = {}
    kinds: Counter[str] = Counter()
    for n in app.recorder.select_notifications(1, 1_000_000):
        e = app.mapper.to_domain_event(n)
        kinds[type(e).__qualname__] += 1
        if isinstance(e, Technician.Took):
            load[e.originator_id] += 1
            assert load[e.originator_id] <= capacities[e.originator_id], f"{e.originator_id} over capacity"
        elif isinstance(e, Technician.Released):
            load[e.originator_id] -= 1
        elif isinstance(e, WorkOrder.Assigned):
            assert holder.get(e.originator_id) is None, f"work order {e.originator_id} assigned twice"
            holder[e.originator_id] = e.technician_id
        elif isinstance(e, WorkOrder.Declined | WorkOrder.Resolved):
            holder[e.originator_id] = None
    return kinds


def test_two_instances_draining_one_queue_never_over_assign(pg: tuple[str, int]) -> None:
    settings = pg_settings(pg)
    asyncio.run(ensure_db(settings))
    one = SyncDispatch(DispatchApp(settings, accept_within=timedelta(minutes=5)))
    two = SyncDispatch(DispatchApp(settings, accept_within=timedelta(minutes=5)))
    try:
        capacities = {}
        for i in range(6):
            tech, _ = one.register_technician(uuid.uuid4(), f"T{i}", [FAULT], ["north"], 1 + i % 3)
            capacities[tech.id] = tech.capacity
        orders = 60
        for i in range(orders):
            ticket = str(uuid.uuid4())
            wo = one.open_work_order(work_order_id(ticket), ticket, FAULT, "north", 1 + i % 5, None, f"c{i}")
            (one if i % 2 else two).save(wo)
        total = sum(capacities.values())
        errors: list[BaseException] = []
        start = threading.Barrier(2)

        def instance(app: SyncDispatch, churn: bool) -> None:
            try:
                start.wait()
                for _ in range(40):
                    app.drain_queue(limit=7)
                    if churn:  # free places while the other instance assigns: decline and reassign
                        app.board.refresh()
                        for tid, view in list(app.board.technicians.items()):
                            for wo_id in list(view.active)[:1]:
                                try:
                                    app.decline(uuid.UUID(wo_id), str(tid), "busy elsewhere")
                                except (DomainError, IntegrityError):  # the other instance moved it meanwhile
                                    pass
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=instance, args=(a, c)) for a, c in ((one, False), (two, True))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not errors, errors
        one.drain_queue()
        kinds = check_log(one, capacities)
        assert kinds["WorkOrder.Assigned"] >= total  # both instances assigned, and reassigned after declines
        assert kinds["WorkOrder.Declined"] > 0
        one.board.refresh()
        held = sum(len(v.active) for v in one.board.technicians.values())
        assert held <= total and held + len(one.board.waiting) >= min(orders, total)
    finally:
        one.close()
        two.close()


async def ensure_db(settings: ServiceSettings) -> None:
    from tsop_events.store import ensure_database

    await ensure_database(settings)


async def test_two_running_instances_share_the_consumer_and_never_over_assign(settings: ServiceSettings) -> None:
    """Two dispatch runtimes (one consumer group, one database) take a flood of RequestAccepted from the bus."""
    tickets = [str(uuid.uuid4()) for _ in range(40)]
    now = datetime(2026, 6, 1, tzinfo=UTC)
    accepted: list[tuple[str, Any]] = [
        (
            stable_event_id(t, 2),
            RequestAccepted(
                ticket_id=t,
                service_type=FAULT,
                region="north",
                priority=1 + i % 5,
                customer_tier="standard",
                resolve_by=now + timedelta(hours=i),
                accepted_at=now,
            ),
        )
        for i, t in enumerate(tickets)
    ]

    async def every_tenth_second(svc: Service[DispatchApp]) -> None:
        await timers(svc, 0.1)

    runtimes = [
        Service(settings, app_factory=DispatchApp, mapper=WIRE, sinks=[OpenWorkOrders.of], tasks=[every_tenth_second])
        for _ in range(2)
    ]
    for rt in runtimes:
        await rt.start()
    try:
        svc = runtimes[0]
        app = svc.app
        capacities = {}
        for i in range(5):
            tech, _ = await commands.register_technician(svc, uuid.uuid4(), f"T{i}", [FAULT], ["north"], 3)
            capacities[tech.id] = 3
        await publish(settings, accepted)
        await publish(settings, accepted[:10])  # a relay republishing part of it

        async def all_opened_and_full() -> bool:
            await asyncio.to_thread(app.board.refresh)
            held = sum(len(t.active) for t in app.board.technicians.values())
            return held == 15 and len(app.board.waiting) == 25

        await eventually(all_opened_and_full, what="15 assigned, 25 waiting")
        # every technician resolves one job at a time; both instances' timers drain the queue meanwhile
        for _ in range(25):
            await asyncio.to_thread(app.board.refresh)
            tid, view = next((i, v) for i, v in app.board.technicians.items() if v.active)
            wo_id = uuid.UUID(sorted(view.active)[0])
            await commands.accept(svc, wo_id, str(tid))
            await commands.start(svc, wo_id, str(tid), "remote")
            await commands.resolve(svc, wo_id, str(tid), "fixed", "done", None)

            async def refilled() -> bool:
                await asyncio.to_thread(app.board.refresh)
                return (
                    sum(len(t.active) for t in app.board.technicians.values()) == min(15, 15 + len(app.board.waiting))
                    or not app.board.waiting
                )

            await eventually(refilled, what="the freed place taken from the queue")
        await eventually(lambda: asyncio.sleep(0, result=not app.board.waiting), what="queue drained")
        kinds = await asyncio.to_thread(check_log, app, capacities)
    finally:
        for rt in runtimes:
            await rt.stop()
    assert kinds["WorkOrder.Opened"] == 40
    assert kinds["WorkOrder.Assigned"] == 40
    assert kinds["WorkOrder.Resolved"] == 25


def test_sla_timers_survive_a_restart_and_two_instances_record_each_threshold_once(pg: tuple[str, int]) -> None:
    settings = pg_settings(pg)
    asyncio.run(ensure_db(settings))
    clock = ManualClock(datetime(2026, 6, 1, 9, tzinfo=UTC))
    first = SyncDispatch(DispatchApp(settings, clock=clock))
    tech, _ = first.register_technician(uuid.uuid4(), "A", [FAULT], ["north"], 2)
    ticket = str(uuid.uuid4())
    wo = first.open_work_order(work_order_id(ticket), ticket, FAULT, "north", 2, None, "c")  # 24 h, around the clock
    first.save(wo)
    first.drain_queue()
    first.accept(wo.id, str(tech.id))
    first.start(wo.id, str(tech.id), "remote")
    clock.advance(timedelta(hours=19))  # past the warning; the process dies before its timer runs
    first.close()

    restarted = [SyncDispatch(DispatchApp(settings, clock=clock)) for _ in range(2)]
    try:

        def tick_all() -> None:
            barrier = threading.Barrier(len(restarted))

            def run(app: SyncDispatch) -> None:
                barrier.wait()
                for _ in range(5):
                    app.check_clocks()

            threads = [threading.Thread(target=run, args=(a,)) for a in restarted]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)

        tick_all()
        clock.advance(timedelta(hours=6))  # past the breach
        tick_all()
        kinds = check_log(restarted[0], {tech.id: 2})
        sla = restarted[1].explain_clocks(restarted[1].load(wo.id))["resolve"]
    finally:
        for app in restarted:
            app.close()
    assert kinds["WorkOrder.ThresholdCrossed"] == 2  # warning and breach, once each
    assert kinds["WorkOrder.Escalated"] == 1
    assert sla["overrun_seconds"] == 3600.0
