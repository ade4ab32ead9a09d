"""Incident and dispatch over a real broker and PostgreSQL (on every broker): a burst of fault tickets
declares an incident, its links reach dispatch and hold the work orders once each (even when the tickets
are published twice), a link that overtakes the ticket's acceptance is applied when the work order opens,
and the incident's resolution resolves each held work order with its own Resolved event (dispatch's timers
apply it in chunks)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from uuid import UUID

from aiokafka import AIOKafkaProducer

from tests.integration.conftest import eventually
from tsop_dispatch.commands import DispatchApp, work_order_id
from tsop_dispatch.domain import WorkOrder
from tsop_dispatch.policies import IncidentHolds, OpenWorkOrders
from tsop_dispatch.views import timers as dispatch_timers
from tsop_dispatch.wire import WIRE as dispatch_wire
from tsop_events.envelope import stable_event_id, wrap
from tsop_events.news import announce
from tsop_events.runtime import Runtime
from tsop_events.schemas import IncidentTicketLinked, RequestAccepted, WireEvent
from tsop_events.settings import ServiceSettings
from tsop_incident import commands
from tsop_incident.commands import IncidentApp, watch_id
from tsop_incident.domain import Plans, Rule, Rules
from tsop_incident.main import load_plans
from tsop_incident.policies import Correlate
from tsop_incident.projection import OpenTickets
from tsop_incident.wire import WIRE as incident_wire

NOW = datetime.now(UTC)
FAULT = "broadband.fault_repair"
RULE = Rule("it-burst", "*.fault_repair", 3, timedelta(minutes=10), "II", "outage")


async def publish(settings: ServiceSettings, events: list[tuple[str, WireEvent]]) -> None:
    """Each event on its own topic, as a relay would publish it."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for event_id, ev in events:
            env = wrap(ev, event_id=event_id, source="test")
            await producer.send_and_wait(ev.topic.qualified(settings.topic_prefix), env.data, key=ev.key().encode(),
                                         headers=env.headers())
    finally:
        await producer.stop()
    # as relays do: quiet consumers resume at once, not at their safety net
    await announce(settings, {ev.topic.qualified(settings.topic_prefix) for _, ev in events})


def accepted(ticket: str, region: str, at: datetime) -> tuple[str, RequestAccepted]:
    return stable_event_id(ticket, 2), RequestAccepted(
        ticket_id=ticket, service_type=FAULT, region=region, priority=2, customer_tier="standard", accepted_at=at
    )


async def test_links_hold_work_orders_once_and_the_resolution_resolves_each(settings: ServiceSettings) -> None:
    plans: Plans = load_plans(None)
    incident_settings = settings.model_copy(update={"service_name": settings.service_name + "_inc"})
    incident = Runtime(
        incident_settings,
        app_factory=lambda s: IncidentApp(s, rules=Rules((RULE,)), plans=plans),
        mapper=incident_wire,
        sinks=[lambda rt: OpenTickets(rt.pool), Correlate.of],
    )
    # dispatch's timers resolve a resolved incident's held work orders (in chunks, views.resolve_held)
    dispatch = Runtime(settings, app_factory=DispatchApp, mapper=dispatch_wire,
                       sinks=[OpenWorkOrders.of, IncidentHolds.of], tasks=[lambda rt: dispatch_timers(rt, 0.2)])
    region = "south"
    burst = [str(uuid.uuid4()) for _ in range(3)]
    early = str(uuid.uuid4())  # linked before its acceptance reaches dispatch
    await incident.start()
    await dispatch.start()
    try:
        records = [accepted(t, region, NOW + timedelta(seconds=i)) for i, t in enumerate(burst)]
        await publish(settings, records)
        await publish(settings, records)  # published twice: a relay republishing after a restart

        async def declared() -> bool:
            w = await asyncio.to_thread(incident.app.find, watch_id(region, FAULT))
            return w is not None and w.incident_id is not None

        await eventually(declared, what="the automatic declaration")
        w = await asyncio.to_thread(incident.app.repository.get, watch_id(region, FAULT))
        iid = UUID(w.incident_id)

        async def held(tickets: list[str]) -> bool:
            for t in tickets:
                wo = dispatch.app.find(work_order_id(t))
                if wo is None or wo.held_by != str(iid):
                    return False
            return True

        await eventually(lambda: held(burst), what="the holds")
        # a link that overtakes the acceptance: kept, applied when the work order opens
        await publish(settings, [(str(uuid.uuid4()), IncidentTicketLinked(
            incident_id=str(iid), ticket_id=early, linked_by="im", linked_at=NOW))])
        await asyncio.sleep(1.0)
        await publish(settings, [accepted(early, "elsewhere", NOW)])
        await eventually(lambda: held([early]), what="the early hold")

        await commands.restore(incident, iid, "spliced", "im")
        await commands.verify(incident, iid, "green", "im")
        await commands.resolve(incident, iid, "outage_restored", "Fibre spliced", None, "im")
        await commands.resolve(incident, iid, "other", "changes nothing", None, "im")

        async def resolved() -> bool:
            return all(dispatch.app.find(work_order_id(t)).status == "resolved" for t in [*burst, early])

        await eventually(resolved, what="each held work order resolved")
        await asyncio.sleep(1.5)
        notes = await asyncio.to_thread(dispatch.app.recorder.select_notifications, 1, 10000)
    finally:
        await dispatch.stop()
        await incident.stop()
    events = [dispatch.app.mapper.to_domain_event(n) for n in notes]
    kinds = Counter(type(e).__qualname__ for e in events)
    assert kinds["WorkOrder.Opened"] == 4 and kinds["WorkOrder.Held"] == 4 and kinds["WorkOrder.Resolved"] == 4
    assert kinds["WorkOrder.Assigned"] == 0  # nobody was sent to a held ticket
    summaries = {e.summary for e in events if isinstance(e, WorkOrder.Resolved)}
    assert summaries == {"Fibre spliced"}
