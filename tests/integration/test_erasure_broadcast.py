"""Every process of a service hears every ``CustomerDataErased`` (docs/erasure.md).

With two instances of a service, an erasure must reach both: each forgets the keys it cached and the aggregates it
holds opened. A listener in a consumer group shared by the instances would hand each erasure to one of them only
(the other kept serving the erased customer's opened data until its cache expired). A process started after the
erasure, or whose listener was down, reads it too (the listener reads the ``customers`` topic from its start).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.conftest import eventually
from tsop_events.envelope import wrap
from tsop_events.news import announce
from tsop_events.runtime import ErasureListener, Runtime
from tsop_events.schemas import CustomerDataErased
from tsop_events.settings import ServiceSettings
from tsop_events.topics import Topic

pytestmark = pytest.mark.parametrize("bus", ["tansu"], indirect=True)


async def _erase(settings: ServiceSettings, customers: list[str]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for c in customers:
            ev = CustomerDataErased(
                customer_id=c, legal_basis="consent_withdrawn", requested_by="dpo", erased_at=datetime.now(UTC)
            )
            env = wrap(ev, event_id=f"erase-{c}", source="test")
            await producer.send_and_wait(
                Topic.customers.qualified(settings.topic_prefix), env.data, key=ev.key().encode(), headers=env.headers()
            )
    finally:
        await producer.stop()
    await announce(settings, {Topic.customers.qualified(settings.topic_prefix)})  # as relays do


def _listen(runtime: Runtime) -> list[str]:
    """What the runtime's erasure listener made the process forget, in order."""
    heard: list[str] = []
    (listener,) = [r.sink for r in runtime.runners if isinstance(r.sink, ErasureListener)]
    listener.forget = lambda customers: heard.append(",".join(sorted(customers)))
    return heard


async def test_every_instance_forgets_on_every_erasure_and_a_late_one_catches_up(settings: ServiceSettings) -> None:
    one, two = Runtime(settings), Runtime(settings)  # two instances of one service
    await one.start()
    await two.start()
    late: Runtime | None = None
    try:
        heard_one, heard_two = _listen(one), _listen(two)
        # several customers: their keys spread over the topic's partitions
        await _erase(settings, [f"cust-{i}" for i in range(6)])

        async def both() -> bool:
            return bool(heard_one) and bool(heard_two)

        await eventually(both, 30, "both instances forgot")
        one_at, two_at = len(heard_one), len(heard_two)
        await _erase(settings, ["cust-x"])  # one further erasure (one partition) reaches both again
        await eventually(lambda: _more(heard_one, one_at), 30, "instance one forgot again")
        await eventually(lambda: _more(heard_two, two_at), 30, "instance two forgot again")

        # a process started after the erasures (or whose listener missed them) reads them from the topic's start
        late = Runtime(settings)
        await late.start()
        (runner,) = [r for r in late.runners if isinstance(r.sink, ErasureListener)]

        listener = runner.sink
        assert isinstance(listener, ErasureListener)

        async def caught_up() -> bool:
            consumer, epoch = runner.consumer, late.epoch.epoch if late is not None else None
            if consumer is None or epoch is None or not consumer.assignment():
                return False
            ends = await consumer.end_offsets(list(consumer.assignment()))
            applied = {tp: await listener.position(epoch, tp.topic, tp.partition) for tp in ends}
            return sum(ends.values()) == 7 and all(applied[tp] == end for tp, end in ends.items() if end)

        await eventually(caught_up, 30, "the late instance read every erasure")
        # positions live in each process's memory: no offset row per process is left behind
        assert await one.pool.fetchval(
            "SELECT count(*) FROM tsop_consumer_offsets WHERE consumer = $1", f"{settings.service_name}-erasure"
        ) == 0
    finally:
        for rt in (one, two, late):
            if rt is not None:
                await rt.stop()


async def _more(heard: list[str], than: int) -> bool:
    return len(heard) > than


async def test_an_instance_that_did_not_serve_the_erasure_stops_serving_opened_data(settings: ServiceSettings) -> None:
    """Two intake instances both hold a customer's request opened in their aggregate cache; the erasure is served
    by one: the other answers ``[erased]`` once it hears ``CustomerDataErased`` (well within the key cache time)."""
    from tests.unit.test_personal import MARK, _request
    from tsop_events.personal import ERASED
    from tsop_intake.commands import IntakeApp
    from tsop_intake.wire import WIRE

    settings = settings.model_copy(update={"keyring_cache_seconds": 3600.0})  # only the broadcast can help
    one = Runtime(settings, app_factory=lambda s: IntakeApp(s), mapper=WIRE)
    two = Runtime(settings, app_factory=lambda s: IntakeApp(s), mapper=WIRE)
    await one.start()
    await two.start()
    try:
        customer = f"cust-{settings.service_name}"
        r = _request(customer)
        await asyncio.to_thread(one.app.save, r)
        for rt in (one, two):  # each instance loads it: opened, in its cache
            assert (await asyncio.to_thread(rt.app.repository.get, r.id)).description == MARK
        await asyncio.to_thread(two.app.index.refresh)  # and its duplicate index keys the request by its address
        assert MARK in repr(two.app.index.open)
        # what intake's request_erasure does on the instance serving it, then the event its relay publishes
        assert await asyncio.to_thread(one.app.keyring.erase, customer) == 1
        one.app.forget_opened()
        await _erase(settings, [customer])

        async def erased_on_two() -> bool:
            return (await asyncio.to_thread(two.app.repository.get, r.id)).description == ERASED

        await eventually(erased_on_two, 20, "the other instance answers [erased]")
        # what its index derived from the customer's location went with it
        assert MARK not in repr(two.app.index.open) and r.id in two.app.index.open
    finally:
        await one.stop()
        await two.stop()
