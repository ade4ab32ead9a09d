"""Every process of a service hears every ``CustomerDataErased`` (docs/erasure.md).

With two instances of a service, an erasure must reach both: each forgets the keys it cached and the aggregates it
holds opened. A listener in a consumer group shared by the instances would hand each erasure to one of them only
(the other kept serving the erased customer's opened data until its cache expired). A process started after the
erasure, or whose listener was down, reads it too (the listener reads the ``customers`` topic from its start).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.conftest import eventually
from tsop_events.envelope import wrap
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


def _listen(runtime: Runtime) -> list[str]:
    """What the runtime's erasure listener made the process forget, in order."""
    heard: list[str] = []
    (listener,) = [r.sink for r in runtime.runners if isinstance(r.sink, ErasureListener)]
    listener.forget = lambda: heard.append("forgot")
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
        one._announce({Topic.customers.qualified(settings.topic_prefix)})

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
