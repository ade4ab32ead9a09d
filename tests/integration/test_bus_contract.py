"""The bus contract: relay, exactly-once consumers and dead-letter, on every broker.

The same tests run against the embedded Tansu broker and a three-broker Apache
Kafka cluster (see conftest), with real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import ClassVar

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import UnknownTopicOrPartitionError

from tests.integration.conftest import eventually
from tsop_dispatch import commands as dispatch
from tsop_dispatch.commands import DispatchApp
from tsop_dispatch.policies import OpenWorkOrders
from tsop_dispatch.wire import WIRE as dispatch_wire
from tsop_events.auth import Principal, Role
from tsop_events.consumer import Incoming, ProjectionSink
from tsop_events.envelope import stable_event_id, wrap
from tsop_events.runtime import Runtime, announce
from tsop_events.schemas import DeadLettered, RequestAccepted, RequestRejected, parse_event
from tsop_events.settings import ServiceSettings
from tsop_events.topics import Topic
from tsop_intake import commands as intake_service
from tsop_intake.commands import IntakeApp
from tsop_intake.wire import WIRE as intake_wire

NOW = datetime(2026, 6, 1, tzinfo=UTC)
STAFF = Principal("hotline-desk", frozenset({Role.agent}))  # staff submitting on a named channel


def request_fields(i: int) -> dict[str, object]:
    return {
        "channel": "web",
        "channel_request_ref": f"ref-{i}",
        "customer_id": f"c{i}",
        "customer_tier": "standard",
        "region": "north",
        "service_type": "broadband.fault_repair",
        "description": "No internet since the storm",
        "time_requirement": {"deadline": None, "window_start": None, "window_end": None},
        "special_needs": None,
        "callback_url": None,
        "location": {"address": f"{i} Main Street"},
    }


async def read_topic(settings: ServiceSettings, topic: Topic, expect: int, timeout: float = 60.0) -> list[object]:
    consumer = await _started_reader(settings, topic)
    records: list[object] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(records) < expect and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for rs in batch.values():
                records.extend(rs)
        # anything more than expected would be a duplicate: look a little longer
        batch = await consumer.getmany(timeout_ms=1000)
        for rs in batch.values():
            records.extend(rs)
    finally:
        await consumer.stop()
    return records


async def _started_reader(settings: ServiceSettings, topic: Topic, timeout: float = 30.0) -> AIOKafkaConsumer:
    """A consumer of the whole topic, started. On a cluster, a topic just created may not be in the metadata of the
    broker asked yet (its creation reaches the other brokers a moment later): aiokafka's start then refuses it
    (UnknownTopicOrPartitionError, seen on the three-broker cluster under load); asked again a moment later."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        consumer = AIOKafkaConsumer(
            topic.qualified(settings.topic_prefix),
            bootstrap_servers=settings.kafka_bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
        )
        try:
            await consumer.start()
            return consumer
        except UnknownTopicOrPartitionError:
            await consumer.stop()
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.5)


async def test_relay_publishes_every_event_in_order_with_stable_ids_and_resumes(settings: ServiceSettings) -> None:
    runtime = Runtime(settings, app_factory=lambda s: IntakeApp(s), mapper=intake_wire)
    await runtime.start()
    try:
        app = runtime.app
        assert isinstance(app, IntakeApp)
        ids = [(await intake_service.submit(runtime, request_fields(i), STAFF, None))[0].id for i in range(30)]
        records = await read_topic(settings, Topic.tickets, 60)
    finally:
        await runtime.stop()
    headers = [dict(r.headers) for r in records]  # type: ignore[attr-defined]
    assert len(records) == 60
    by_key: dict[str, list[str]] = {}
    for r, h in zip(records, headers, strict=True):
        by_key.setdefault(r.key.decode(), []).append(h["ce_type"].decode())  # type: ignore[attr-defined]
    assert set(by_key) == {str(i) for i in ids}
    assert all(v == ["tsop.ticket.request-submitted.v1", "tsop.ticket.request-accepted.v1"] for v in by_key.values())
    assert {h["ce_id"].decode() for h in headers} == {stable_event_id(i, v) for i in ids for v in (1, 2)}

    # a restarted relay resumes from its recorded position: nothing is published twice
    again = Runtime(settings, app_factory=lambda s: IntakeApp(s), mapper=intake_wire)
    await again.start()
    try:
        await asyncio.sleep(1.0)
        assert len(await read_topic(settings, Topic.tickets, 60, timeout=2)) == 60
    finally:
        await again.stop()


class Recorder(ProjectionSink):
    """Appends one row per applied record; fails once, transiently, when told to."""

    name: ClassVar[str] = "recorder"
    ddl: ClassVar[tuple[str, ...]] = (
        "CREATE TABLE IF NOT EXISTS applied (ce_id text, ticket text, partition int, kafka_offset bigint)",
    )
    fail_once_at: ClassVar[set[str]] = set()

    async def apply(self, conn: asyncpg.Connection, incoming: Incoming) -> None:
        await conn.execute(
            "INSERT INTO applied VALUES ($1, $2, $3, $4)",
            incoming.envelope.id,
            incoming.key,
            incoming.partition,
            incoming.offset,
        )
        if incoming.envelope.id in self.fail_once_at:
            self.fail_once_at.discard(incoming.envelope.id)
            raise OSError("simulated connection loss after part of the batch was written")
        if incoming.key == "poison":
            raise ValueError("this record can never be processed")


def rejected(i: int) -> RequestRejected:
    return RequestRejected(ticket_id=f"t{i}", reason_code="x", reason="test", rejected_at=NOW)


async def publish(
    settings: ServiceSettings,
    events: list[tuple[str, object]],
    raw: list[tuple[bytes, list[tuple[str, bytes]], bytes]] = (),  # type: ignore[assignment]
    announced: bool = True,
) -> None:
    """Publish directly to the tickets topic and, as relays do, announce it (quiet consumers resume at once)."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    topic = Topic.tickets.qualified(settings.topic_prefix)
    try:
        for event_id, ev in events:
            env = wrap(ev, event_id=event_id, source="test")  # type: ignore[arg-type]
            await producer.send_and_wait(topic, env.data, key=ev.key().encode(), headers=env.headers())  # type: ignore[attr-defined]
        for key, headers, value in raw:
            await producer.send_and_wait(topic, value, key=key, headers=headers)
    finally:
        await producer.stop()
    if announced:
        await announce(settings, {topic})


async def count_applied(runtime: Runtime) -> list[str]:
    return [r["ce_id"] for r in await runtime.pool.fetch("SELECT ce_id FROM applied")]


async def test_consumer_applies_each_record_once_across_failures_and_restarts(settings: ServiceSettings) -> None:
    events = [(f"e{i}", rejected(i)) for i in range(200)]
    Recorder.fail_once_at = {"e57", "e143"}
    runtime = Runtime(settings, sinks=[lambda rt: Recorder(rt.pool)])
    await runtime.start()
    try:
        await publish(settings, events[:150])
        await eventually(lambda: _len_is(runtime, 150), what="150 applied")
    finally:
        await runtime.stop()
    # a new process of the same consumer group resumes where the effects stop
    runtime = Runtime(settings, sinks=[lambda rt: Recorder(rt.pool)])
    await runtime.start()
    try:
        await publish(settings, events[150:])
        await eventually(lambda: _len_is(runtime, 200), what="200 applied")
        await asyncio.sleep(1.0)
        applied = await count_applied(runtime)
    finally:
        await runtime.stop()
    assert Counter(applied) == Counter(f"e{i}" for i in range(200)), "every record applied exactly once"


async def _len_is(runtime: Runtime, n: int) -> bool:
    return len(await count_applied(runtime)) >= n


async def test_poison_records_go_to_the_dead_letter_topic_and_later_records_are_processed(
    settings: ServiceSettings,
) -> None:
    good = [(f"g{i}", rejected(i)) for i in range(5)]
    bad_body = wrap(rejected(99), event_id="bad-json", source="test")
    raw = [
        (b"t99", bad_body.headers(), b"{not json"),
        (b"t98", [("some", b"header")], b"not a cloudevent"),
    ]
    runtime = Runtime(settings, sinks=[lambda rt: Recorder(rt.pool)])
    await runtime.start()
    try:
        await publish(settings, good[:2], raw)
        await publish(
            settings, [("poison-1", RequestRejected(ticket_id="poison", reason_code="x", reason="y", rejected_at=NOW))]
        )
        await publish(settings, good[2:])
        await eventually(lambda: _len_is(runtime, 5), what="good records applied")
        letters = await read_topic(settings, Topic.deadletter, 3)
        applied = await count_applied(runtime)
    finally:
        await runtime.stop()
    assert sorted(a for a in applied if a.startswith("g")) == [f"g{i}" for i in range(5)]
    assert "poison-1" not in applied, "the failed record's partial effect was rolled back"
    parsed = [parse_event(dict(r.headers)["ce_type"].decode(), r.value) for r in letters]  # type: ignore[attr-defined]
    # dead letters are at-least-once with a stable id; three distinct records failed
    distinct = {dict(r.headers)["ce_id"]: p for r, p in zip(letters, parsed, strict=True)}  # type: ignore[attr-defined]
    assert len(distinct) == 3 and all(isinstance(p, DeadLettered) for p in parsed)
    errors = " | ".join(p.error for p in parsed if isinstance(p, DeadLettered))
    assert "ValidationError" in errors or "json" in errors.lower()
    assert "missing CloudEvents headers" in errors
    assert "this record can never be processed" in errors


async def test_reactions_happen_once_even_when_the_cause_is_published_twice(settings: ServiceSettings) -> None:
    tickets = [str(uuid.uuid4()) for _ in range(20)]
    accepted = [
        (
            stable_event_id(t, 2),
            RequestAccepted(
                ticket_id=t,
                service_type="broadband.fault_repair",
                region="north",
                priority=2,
                customer_tier="standard",
                resolve_by=None,
                accepted_at=NOW,
            ),
        )
        for t in tickets
    ]

    runtime = Runtime(settings, app_factory=DispatchApp, mapper=dispatch_wire, sinks=[OpenWorkOrders.of])
    await runtime.start()
    try:
        app = runtime.app
        await dispatch.register_technician(runtime, uuid.uuid4(), "T", ["broadband.fault_repair"], ["north"], 100)
        await publish(settings, accepted)
        await publish(settings, accepted)  # a relay republishing after a restart

        async def all_assigned() -> bool:
            await asyncio.to_thread(app.board.refresh)
            return sum(len(t.active) for t in app.board.technicians.values()) >= 20

        await eventually(all_assigned, what="20 assignments")
        await asyncio.sleep(1.5)
        notes = await asyncio.to_thread(app.recorder.select_notifications, 1, 10000)
    finally:
        await runtime.stop()
    kinds = Counter(type(app.mapper.to_domain_event(n)).__qualname__ for n in notes)
    assert kinds["WorkOrder.Opened"] == 20
    assert kinds["WorkOrder.Assigned"] == 20
    assert kinds["Technician.Took"] == 20
