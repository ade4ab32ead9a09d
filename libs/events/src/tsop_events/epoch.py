"""The broker epoch: which incarnation of the Kafka cluster we are talking to.

The embedded broker keeps nothing across a restart while every service's event
store does. The first record ever written to the one-partition ``epoch`` topic
names the incarnation; whoever finds the topic empty writes a fresh id, and
everyone reads offset 0, so all processes agree. When the epoch changes, relays
republish from the start of their outbox and consumers start again from the
beginning of each partition; effects are idempotent, so nothing doubles.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from tsop_events import kafka_fixes  # noqa: F401 - aiokafka under uvloop put right (see it)
from tsop_events.settings import ServiceSettings
from tsop_events.topics import Topic, ensure_topics

log = logging.getLogger(__name__)

Listener = Callable[[str], Awaitable[None]]
REFRESH_SECONDS = 10.0  # the longest an epoch change waits for the producer's metadata refresh


class EpochWatcher:
    def __init__(self, settings: ServiceSettings, producer: AIOKafkaProducer) -> None:
        self.settings = settings
        self.producer = producer
        self.topic = Topic.epoch.qualified(settings.topic_prefix)
        self.epoch: str | None = None
        self._listeners: list[Listener] = []
        self._known = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def wait_known(self) -> str:
        await self._known.wait()
        assert self.epoch is not None
        return self.epoch

    async def _read_first(self) -> str | None:
        if self._consumer is None:
            self._consumer = AIOKafkaConsumer(
                bootstrap_servers=self.settings.kafka_bootstrap,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                request_timeout_ms=10000,
                consumer_timeout_ms=1000,
            )
            await self._consumer.start()
            self._consumer.assign([TopicPartition(self.topic, 0)])
        tp = TopicPartition(self.topic, 0)
        self._consumer.seek(tp, 0)
        # fetched only while reading: between checks the partition is paused, or aiokafka would keep a fetch
        # waiting on the broker (answered, on Tansu, each time its wait expires: twice a second per process)
        self._consumer.resume(tp)
        try:
            batch = await self._consumer.getmany(tp, timeout_ms=1500, max_records=1)
        finally:
            self._consumer.pause(tp)
        for records in batch.values():
            for r in records:
                if r.offset == 0 and r.value:
                    return bytes(r.value).decode()
        return None

    async def read(self) -> str:
        """The current epoch, creating the topics and the first record if needed."""
        first = await self._read_first()
        if first is not None:
            return first
        await ensure_topics(
            self.settings.kafka_bootstrap,
            self.settings.topic_prefix,
            self.settings.topic_partitions,
            self.settings.topic_replication,
            min_insync=self.settings.topic_min_insync_replicas,
        )
        for _ in range(20):
            first = await self._read_first()
            if first is not None:
                return first
            end = await self._end_offset()
            if end == 0:
                await self.producer.send_and_wait(self.topic, uuid.uuid4().hex.encode(), partition=0)
            await asyncio.sleep(0.1)
        raise RuntimeError("could not read the broker epoch")

    async def _end_offset(self) -> int:
        assert self._consumer is not None
        tp = TopicPartition(self.topic, 0)
        offsets = await self._consumer.end_offsets([tp])
        return int(offsets[tp])

    async def check(self) -> None:
        epoch = await self.read()
        if epoch != self.epoch:
            previous = self.epoch
            if previous is not None:
                # the relays republish as soon as they see the new epoch, with the partitions their producer
                # knows: learn the new incarnation's first (its count may differ, see consumer.refresh_metadata)
                await self._refresh_producer()
            self.epoch = epoch
            self._known.set()
            if previous is not None:
                log.warning("broker epoch changed from %s to %s", previous, epoch)
            for listener in self._listeners:
                try:
                    await listener(epoch)
                except Exception:  # one consumer's failure must not keep the others on the old epoch
                    log.exception("epoch change: a listener failed")

    async def _refresh_producer(self) -> None:
        try:
            async with asyncio.timeout(REFRESH_SECONDS):
                await self.producer.client.force_metadata_update()
        except TimeoutError:
            log.warning("producer metadata not refreshed within %s s after an epoch change", REFRESH_SECONDS)

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except (KafkaError, OSError, RuntimeError) as exc:
                log.warning("epoch check failed: %s", exc)
                await self._reset_consumer()
            await asyncio.sleep(self.settings.epoch_check_seconds)

    async def _reset_consumer(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            try:
                await consumer.stop()
            except KafkaError:
                pass

    async def close(self) -> None:
        await self._reset_consumer()
