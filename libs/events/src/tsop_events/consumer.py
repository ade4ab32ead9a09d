"""Exactly-once consumers: aiokafka groups with offsets kept beside the effect.

A consumer's effect and the position it consumed are written in one PostgreSQL
transaction, either as projection rows (``ProjectionSink``, asyncpg) or as new
aggregate events with an eventsourcing tracking row (``EventStoreSink``). On
assignment the consumer seeks to the stored position, so whatever Kafka
redelivers is applied once. A record that cannot be processed goes to the
dead-letter topic with the error and its position is recorded; transient
failures (database or broker down, a write conflict) are retried instead.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from eventsourcing.persistence import InterfaceError, OperationalError
from pydantic import ValidationError

from tsop_events.commands import UnitOfWork as UnitOfWork  # re-exported: sinks decide through it
from tsop_events.envelope import Envelope, derived_id, header_map, header_value, unwrap, wrap
from tsop_events.epoch import EpochWatcher
from tsop_events.metrics import CONSUMED, CONSUMER_LAG, DEAD_LETTERED
from tsop_events.personal import error_text
from tsop_events.schemas import DeadLettered, WireEvent
from tsop_events.settings import ServiceSettings
from tsop_events.store import EventStoreApp, IntegrityError, Tracking
from tsop_events.topics import Topic
from tsop_events.wake import SAFETY_NET_SECONDS, Waiter

log = logging.getLogger(__name__)

QUIET_SECONDS = 1.0  # a consumer without records this long pauses its fetches until news (if it has a news waiter)
RESUMED_SECONDS = 0.25  # how long a consumer woken without records fetches before pausing again

OFFSETS_DDL = """
CREATE TABLE IF NOT EXISTS tsop_consumer_offsets (
    consumer text NOT NULL,
    epoch text NOT NULL,
    topic text NOT NULL,
    partition int NOT NULL,
    next_offset bigint NOT NULL,
    PRIMARY KEY (consumer, epoch, topic, partition)
)
"""

TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    KafkaError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    OperationalError,
    InterfaceError,
)


class Retry(Exception):
    """Not now: the effect depends on something not there yet, or lost a race."""


RETRYABLE: tuple[type[BaseException], ...] = (*TRANSIENT, Retry)


@dataclass(frozen=True, slots=True)
class Incoming:
    topic: str
    partition: int
    offset: int
    key: str | None
    envelope: Envelope
    event: WireEvent


class Sink(ABC):
    """Where a consumer's effects go; also keeps its positions."""

    name: ClassVar[str]
    topics: ClassVar[tuple[Topic, ...]] = (Topic.tickets,)
    event_types: ClassVar[frozenset[str] | None] = None  # None = every type
    # False: a broadcast: every process reads every record (no consumer group, each partition from its start;
    # the sink keeps its positions in memory), e.g. the erasure listener (tsop_events.runtime.ErasureListener)
    grouped: ClassVar[bool] = True

    async def setup(self) -> None:  # noqa: B027 - optional hook
        """Create what the sink needs (tables); called once at start."""

    def decode(self, envelope: Envelope) -> WireEvent:
        """The event a record carries; a sink may read a type the catalogue does not hold (yet) itself."""
        return envelope.event()

    @abstractmethod
    async def position(self, epoch: str, topic: str, partition: int) -> int | None:
        """The next offset to read in this epoch, or None for the beginning."""

    @abstractmethod
    async def process(
        self, epoch: str, topic: str, partition: int, records: Sequence[Incoming], last_offset: int
    ) -> None:
        """Apply the records not yet applied and record ``last_offset`` as done, atomically."""

    async def keep_position(self, epoch: str, topic: str, partition: int, last_offset: int) -> None:
        """Record ``last_offset`` as done now, nothing to apply: after a dead letter, so that after a crash the
        record is not dead-lettered a second time. A sink that lets the positions of batches needing nothing wait
        for its next save must not let this one wait."""
        await self.process(epoch, topic, partition, [], last_offset)


class ProjectionSink(Sink):
    """Effects are rows in the service's own schema, written with asyncpg."""

    ddl: ClassVar[tuple[str, ...]] = ()

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def setup(self) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(OFFSETS_DDL)
            for stmt in self.ddl:
                await conn.execute(stmt)

    @abstractmethod
    async def apply(self, conn: asyncpg.Connection, incoming: Incoming) -> None:
        """Apply one record inside the batch's transaction."""

    async def position(self, epoch: str, topic: str, partition: int) -> int | None:
        value = await self.pool.fetchval(
            "SELECT next_offset FROM tsop_consumer_offsets "
            "WHERE consumer = $1 AND epoch = $2 AND topic = $3 AND partition = $4",
            self.name,
            epoch,
            topic,
            partition,
        )
        return None if value is None else int(value)

    async def process(
        self, epoch: str, topic: str, partition: int, records: Sequence[Incoming], last_offset: int
    ) -> None:
        key = (self.name, epoch, topic, partition)
        async with self.pool.acquire() as conn, conn.transaction():
            # one round trip: the row exists afterwards and is locked (as FOR UPDATE would) until commit
            done = await conn.fetchval(
                "INSERT INTO tsop_consumer_offsets AS o VALUES ($1, $2, $3, $4, 0) "
                "ON CONFLICT (consumer, epoch, topic, partition) DO UPDATE SET next_offset = o.next_offset "
                "RETURNING o.next_offset",
                *key,
            )
            if done > last_offset:
                return
            for rec in records:
                if rec.offset >= done:
                    await self.apply(conn, rec)
            await conn.execute(
                "UPDATE tsop_consumer_offsets SET next_offset = $5 "
                "WHERE consumer = $1 AND epoch = $2 AND topic = $3 AND partition = $4",
                *key,
                last_offset + 1,
            )


class EventStoreSink(Sink):
    """Effects are new aggregate events, saved with an eventsourcing tracking row."""

    def __init__(self, app: EventStoreApp) -> None:
        self.app = app

    @abstractmethod
    def react(self, uow: UnitOfWork, incoming: Incoming) -> None:
        """Decide what the record means for our aggregates (pure domain calls)."""

    def before_batch(self) -> None:
        """Hook run once before a batch is decided (e.g. refreshing an in-memory view)."""

    def prefetch(self, uow: UnitOfWork, records: Sequence[Incoming]) -> None:
        """Hook run once a batch is known, before it is decided: e.g. ``uow.prefetch`` of the aggregates its
        records will look up, so those never created cost no round trip each."""

    def _tracking_name(self, epoch: str, topic: str, partition: int) -> str:
        return f"{self.name}|{epoch}|{topic}|{partition}"

    async def position(self, epoch: str, topic: str, partition: int) -> int | None:
        last = await asyncio.to_thread(self.app.tracked_position, self._tracking_name(epoch, topic, partition))
        return None if last is None else last + 1

    async def process(
        self, epoch: str, topic: str, partition: int, records: Sequence[Incoming], last_offset: int
    ) -> None:
        await asyncio.to_thread(self._process, self._tracking_name(epoch, topic, partition), records, last_offset)

    #: the most a transaction of this sink applies, in ``weight``: a batch heavier than that is applied in slices,
    #: each saved with its own position, so a fetch of many chunk events is never one huge transaction
    slice_weight: ClassVar[int] = 2000

    def weight(self, incoming: Incoming) -> int:
        """What applying the record costs, in single-record units: 1, or the tickets a chunk event names (an
        incident's ``tickets-linked``: each of its tickets is applied as if it came alone)."""
        return max(1, len(getattr(incoming.event, "ticket_ids", ()) or ()))

    def _process(self, tracking_name: str, records: Sequence[Incoming], last_offset: int) -> None:
        done = self.app.tracked_position(tracking_name)
        if done is not None and done >= last_offset:
            return
        todo = [rec for rec in records if done is None or rec.offset > done]
        for part, upto in self._slices(todo, last_offset):
            self._apply(tracking_name, part, upto)

    def _slices(self, todo: Sequence[Incoming], last_offset: int) -> list[tuple[list[Incoming], int]]:
        """``todo`` cut into parts of at most ``slice_weight`` (a heavier record alone), each with the position it
        is saved at: its last record's offset, the batch's last offset for the final part."""
        slices: list[tuple[list[Incoming], int]] = []
        part: list[Incoming] = []
        weight = 0
        for rec in todo:
            w = self.weight(rec)
            if part and weight + w > self.slice_weight:
                slices.append((part, part[-1].offset))
                part, weight = [], 0
            part.append(rec)
            weight += w
        slices.append((part, last_offset))
        return slices

    def _apply(self, tracking_name: str, todo: Sequence[Incoming], upto: int) -> None:
        uow = UnitOfWork(self.app)
        self.before_batch()
        self.prefetch(uow, todo)
        for rec in todo:
            self.react(uow, rec)
        try:
            self.app.save_tracked(uow.aggregates(), Tracking(tracking_name, upto))
        except IntegrityError:
            done = self.app.tracked_position(tracking_name)
            if done is not None and done >= upto:
                return  # another instance applied this part first
            raise Retry("write conflict; reloading") from None


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: ConsumerRunner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.runner.forget(list(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.runner.seek_stored(list(assigned))


class ConsumerRunner:
    def __init__(
        self,
        sink: Sink,
        settings: ServiceSettings,
        epoch: EpochWatcher,
        producer: AIOKafkaProducer,
        on_stored: Callable[[], None] | None = None,
    ) -> None:
        self.sink = sink
        self.on_stored = on_stored  # told after each batch that stored something (wakes loops waiting for it)
        # rung when a relay announced a publish to one of this sink's topics; with it, a consumer without records
        # for QUIET_SECONDS pauses its partitions (no fetches) until news or the safety net (see tsop_events.wake)
        self.news: Waiter | None = None
        self.settings = settings
        self.epoch_watcher = epoch
        self.producer = producer
        self.consumer: AIOKafkaConsumer | None = None
        self.running = False
        # the sink's tables exist: set by the runtime, which ran every sink's setup under the schema lock. A setup
        # run here as well would race another instance's start (two ``CREATE OR REPLACE FUNCTION`` at once fail
        # with "tuple concurrently updated")
        self.set_up = False
        # the next offset to apply per partition, as stored when the partition was assigned (or the epoch
        # changed) and as advanced by this runner since: no read of the stored position per batch
        self._next: dict[tuple[str, TopicPartition], int | None] = {}
        self.epoch_watcher.subscribe(self._on_epoch)

    async def _on_epoch(self, epoch: str) -> None:
        if self.consumer is not None:
            await self.seek_stored(list(self.consumer.assignment()))

    def forget(self, partitions: list[TopicPartition]) -> None:
        """Drop what this runner knows of the partitions' positions (revoked, or a batch not applied)."""
        gone = set(partitions)
        for known in [k for k in self._next if k[1] in gone]:
            del self._next[known]

    async def seek_stored(self, partitions: list[TopicPartition]) -> None:
        assert self.consumer is not None
        epoch = await self.epoch_watcher.wait_known()
        for tp in partitions:
            pos = await self.sink.position(epoch, tp.topic, tp.partition)
            self._next[(epoch, tp)] = pos
            if pos is None:
                await self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, pos)

    async def run(self) -> None:
        if not self.set_up:
            await self.sink.setup()
            self.set_up = True
        await self.epoch_watcher.wait_known()
        prefix = self.settings.topic_prefix
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=f"{prefix}{self.sink.name}" if self.sink.grouped else None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.settings.consumer_batch,
            fetch_max_wait_ms=self.settings.fetch_max_wait_ms,
            session_timeout_ms=10000,
            heartbeat_interval_ms=1000,
        )
        self.consumer.subscribe([t.qualified(prefix) for t in self.sink.topics], listener=_Rebalance(self))
        await self.consumer.start()
        self.running = True
        loop = asyncio.get_running_loop()
        quiet_since = loop.time()
        try:
            while True:
                batch = await self.consumer.getmany(timeout_ms=200, max_records=self.settings.consumer_batch)
                for tp, records in batch.items():
                    await self._handle(tp, records)
                if batch:
                    quiet_since = loop.time()
                elif self.news is not None and loop.time() - quiet_since >= QUIET_SECONDS:
                    await self._pause_until_news()
                    quiet_since = loop.time() - QUIET_SECONDS + RESUMED_SECONDS
        finally:
            self.running = False
            await self.consumer.stop()

    async def _pause_until_news(self) -> None:
        """Stop fetching (Tansu answers a waiting fetch only when its wait expires: an idle consumer would fetch
        20 times a second) until a relay announces a record for us, or the safety net passes (records no relay
        announces: dead letters, other producers). Positions are kept; nothing is skipped or read twice."""
        assert self.consumer is not None and self.news is not None
        paused = self.consumer.assignment()
        if not paused:
            return
        self.consumer.pause(*paused)
        try:
            await self.news.wait(SAFETY_NET_SECONDS)
        finally:
            assigned = self.consumer.assignment()
            self.consumer.resume(*[tp for tp in paused if tp in assigned])

    def _decode(self, record: Any) -> Incoming:
        env = unwrap(record.headers, record.value)
        return Incoming(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key.decode() if record.key is not None else None,
            envelope=env,
            event=self.sink.decode(env),
        )

    async def _handle(self, tp: TopicPartition, records: list[Any]) -> None:
        assert self.consumer is not None
        epoch = self.epoch_watcher.epoch
        assert epoch is not None
        wanted = self.sink.event_types
        if (epoch, tp) in self._next:
            done = self._next[(epoch, tp)]
        else:
            done = self._next[(epoch, tp)] = await self.sink.position(epoch, tp.topic, tp.partition)
        if done is not None:
            # a rebalance may seek back over records already applied: skip them (and their dead letters)
            records = [r for r in records if r.offset >= done]
            if not records:
                return
        decoded: list[Incoming] = []
        dead = False
        for r in records:
            if wanted is not None and header_value(r.headers, "ce_type") not in wanted:
                CONSUMED.labels(self.sink.name, "ignored").inc()
                continue
            try:
                decoded.append(self._decode(r))
            except (ValueError, ValidationError) as exc:
                await self._dead_letter(r, exc)
                dead = True
        last = records[-1].offset
        try:
            await self.sink.process(epoch, tp.topic, tp.partition, decoded, last)
            CONSUMED.labels(self.sink.name, "applied").inc(len(decoded))
            if dead:
                await self.sink.keep_position(epoch, tp.topic, tp.partition, last)
        except RETRYABLE as exc:
            await self._back_off(tp, records[0].offset, exc)
            return
        except Exception:  # noqa: BLE001 - one bad record must not block its partition
            if not await self._one_by_one(epoch, tp, decoded, last):
                return
        self._next[(epoch, tp)] = last + 1
        if decoded and self.on_stored is not None:
            self.on_stored()
        highwater = self.consumer.highwater(tp)
        if highwater is not None:
            CONSUMER_LAG.labels(self.sink.name, tp.topic, str(tp.partition)).set(max(0, highwater - last - 1))

    async def _one_by_one(self, epoch: str, tp: TopicPartition, decoded: list[Incoming], last: int) -> bool:
        assert self.consumer is not None
        for rec in decoded:
            try:
                await self.sink.process(epoch, tp.topic, tp.partition, [rec], rec.offset)
            except RETRYABLE as exc:
                await self._back_off(tp, rec.offset, exc)
                return False
            except Exception as exc:
                log.exception("consumer %s: record %s:%s:%s failed", self.sink.name, tp.topic, tp.partition, rec.offset)
                await self._dead_letter(rec, exc)
                await self.sink.keep_position(epoch, tp.topic, tp.partition, rec.offset)
        await self.sink.process(epoch, tp.topic, tp.partition, [], last)
        return True

    async def _back_off(self, tp: TopicPartition, offset: int, exc: BaseException) -> None:
        assert self.consumer is not None
        self.forget([tp])  # read the stored position again before the next batch
        log.warning("consumer %s: %s; retrying from %s:%s:%s", self.sink.name, exc, tp.topic, tp.partition, offset)
        self.consumer.seek(tp, offset)
        await asyncio.sleep(0.2)

    async def _dead_letter(self, record: Any, exc: BaseException) -> None:
        if isinstance(record, Incoming):
            topic, partition, offset, key = record.topic, record.partition, record.offset, record.key
            headers, value = record.envelope.headers(), record.envelope.data
        else:
            topic, partition, offset = record.topic, record.partition, record.offset
            key = record.key.decode("utf-8", "replace") if record.key is not None else None
            headers, value = record.headers, record.value or b""
        h = header_map(headers)
        letter = DeadLettered(
            consumer=self.sink.name,
            source_topic=topic,
            source_partition=partition,
            source_offset=offset,
            source_key=key,
            source_headers=h,
            source_value=bytes(value).decode("utf-8", "replace"),
            error=f"{type(exc).__name__}: {error_text(exc)}"[:4000],  # no input values: they may be personal
            failed_at=datetime.now(UTC),
        )
        env = wrap(
            letter,
            event_id=str(derived_id(self.sink.name, h.get("ce_id") or f"{topic}:{partition}:{offset}")),
            source=self.settings.service_name,
        )
        await self.producer.send_and_wait(
            Topic.deadletter.qualified(self.settings.topic_prefix),
            value=env.data,
            key=letter.key().encode(),
            headers=env.headers(),
        )
        DEAD_LETTERED.labels(self.sink.name).inc()
        log.error("consumer %s: dead-lettered %s:%s:%s: %s", self.sink.name, topic, partition, offset, error_text(exc))
