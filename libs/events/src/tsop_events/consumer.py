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
import weakref
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError
from eventsourcing.persistence import InterfaceError, OperationalError
from pydantic import ValidationError

from tsop_events import kafka_fixes  # noqa: F401 - aiokafka under uvloop put right (see it)
from tsop_events.commands import UnitOfWork as UnitOfWork  # re-exported: sinks decide through it
from tsop_events.envelope import Envelope, derived_id, header_map, header_value, unwrap, wrap
from tsop_events.epoch import EpochWatcher
from tsop_events.metrics import CONSUMED, CONSUMER_LAG, CONSUMER_RESTARTS, DEAD_LETTERED
from tsop_events.personal import error_text
from tsop_events.schemas import DeadLettered, WireEvent
from tsop_events.settings import ServiceSettings
from tsop_events.stacks import dump_stacks
from tsop_events.store import EventStoreApp, IntegrityError, Tracking
from tsop_events.topics import Topic
from tsop_events.wake import Waiter

log = logging.getLogger(__name__)

QUIET_SECONDS = 1.0  # a consumer without records this long pauses its fetches until news (if it has a news waiter)
RESUMED_SECONDS = 0.25  # how long a consumer woken without records fetches before pausing again
BACK_OFF_SECONDS = 0.2  # the pause before a batch that failed transiently is fetched again
METADATA_REFRESH_SECONDS = 10.0  # the longest an epoch change waits for a consumer's metadata refresh
# A fetch asks for at most ~1 s of waiting, but aiokafka waits for a group's new assignment without any timeout of its
# own. A rejoin's every request is bounded by the request timeout (40 s: a JoinGroup a broker holds and never
# answers), the broker holds a join for at most the rebalance timeout (10 s), and each failure is retried: a fetch
# not back after this long, while the group's coordinator is known, is wedged and the consumer restarts. While the
# coordinator is being looked for (the broker unreachable) it waits on: a fresh consumer could do no better.
STUCK_FETCH_SECONDS = 60.0
RESTART_PAUSE_SECONDS = 1.0  # between a stuck consumer's stop and its fresh start
SLOW_BATCH_SECONDS = 60.0  # a batch still being applied after this long has the process's stacks logged (once)
STOP_SECONDS = 10.0  # the longest a consumer's stop may take (a wedged one may never finish leaving its group)

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


class ConsumerStuck(RuntimeError):
    """A fetch that never returned, or a Kafka consumer whose own background work died: it is stopped and started
    again as a fresh Kafka consumer (``_restarting``)."""


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


Decoder = Callable[[Envelope], WireEvent]


class DecodedRecords:
    """The records this process decoded lately, for every sink that reads them (``DECODED``).

    Each sink of a process has its own Kafka consumer (unless ``TSOP_CONSUMER_SHARED``), and several follow the same
    topic: each used to parse every record's envelope and wire event itself. A record is kept under its topic,
    partition, offset, timestamp and the decoding that read it (a sink's own ``decode`` is kept apart from the
    catalogue's), and used only if its headers, body and key are the same bytes: after a broker reset the same position
    holds another record (a dead letter produced again in a new epoch was once served with its old body when the
    key had no timestamp).

    A record is kept until every other reader the process has for it (the consumer runners following its topic and
    type with the same decoding, ``readers_of``) has taken it: sinks of one process run at their own pace, 10,000
    records apart in feedback's notification bench, so a plain bound would drop most before their second reader
    came. At most ``size`` are kept all the same (a reader stopped or restarting would otherwise hold them), the
    oldest dropped first. Failures are not kept (each sink dead-letters its own). ``forget`` drops them all (an
    erasure: a sink's own decoding may open personal data), and a decode that straddles a ``forget`` is not kept.
    """

    def __init__(self, size: int = 20_000) -> None:
        self.size = size
        # key -> (headers, body, Kafka key, decoded, readers still to take it (None: not known, kept until dropped as
        # oldest))
        self._kept: dict[tuple[Any, ...], tuple[Any, Any, Any, Incoming, list[int] | None]] = {}
        self._runners: weakref.WeakSet[ConsumerRunner] = weakref.WeakSet()
        self._readers: dict[tuple[str, str | None, object], int] = {}
        self.erasures = 0
        self.parsed = 0  # decodes made (for tests and profiles)

    def join(self, runner: ConsumerRunner) -> None:
        """A consumer runner of this process: it reads the records of its sink's topics and types."""
        self._runners.add(runner)
        self._readers = {}

    def readers_of(self, topic: str, event_type: str | None, decoding: object) -> int:
        """How many runners of this process read records of ``topic`` and ``event_type`` with ``decoding``."""
        key = (topic, event_type, decoding)
        count = self._readers.get(key)
        if count is None:
            count = self._readers[key] = sum(
                1 for r in list(self._runners)
                if topic in r.topic_names and (r.sink.event_types is None or event_type in r.sink.event_types)
                and r.decoding(event_type) == decoding)
        return count

    def get(self, record: Any, decode: Decoder, decoding: object, event_type: str | None = None) -> Incoming:
        """The record decoded by ``decode``, parsed once per process for every decode of the same ``decoding`` (the
        function a sink's class decodes with: a sink's ``decode`` reads the envelope alone, as the catalogue's)."""
        key = (record.topic, record.partition, record.offset, getattr(record, "timestamp", None),
               getattr(record, "timestamp_type", None), decoding)
        kept = self._kept
        known = kept.get(key)
        headers, value, record_key = record.headers, record.value, record.key
        if known is not None and known[0] == headers and known[1] == value and known[2] == record_key:
            left = known[4]
            if left is not None:
                left[0] -= 1
                if left[0] <= 0:
                    kept.pop(key, None)  # every reader took it
            return known[3]
        erasures = self.erasures
        self.parsed += 1
        incoming = _incoming(record, decode)
        readers = self.readers_of(record.topic, event_type, decoding)
        if self.erasures == erasures and readers != 1:  # 0: read by a runner this process does not know of
            kept.pop(key, None)
            kept[key] = (headers, value, record_key, incoming, [readers - 1] if readers > 1 else None)
            while len(kept) > self.size:
                try:
                    del kept[next(iter(kept))]
                except (StopIteration, KeyError, RuntimeError):  # emptied by ``forget`` meanwhile
                    break
        return incoming

    def took(self, record: Any, decoding: object) -> None:
        """A reader took the record decoded with ``decoding`` elsewhere (a ``ConsumerGroup``'s ``shared`` decodes):
        one reader fewer to keep it for; nothing is decoded."""
        key = (record.topic, record.partition, record.offset, getattr(record, "timestamp", None),
               getattr(record, "timestamp_type", None), decoding)
        known = self._kept.get(key)
        if known is not None and known[4] is not None:
            known[4][0] -= 1
            if known[4][0] <= 0:
                self._kept.pop(key, None)

    def forget(self) -> None:
        """Drop every decoded record (called on an erasure, from any thread)."""
        self.erasures += 1
        self._kept = {}


DECODED = DecodedRecords()


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

    # event types this sink reads with a wire model of its own (a type the catalogue does not hold yet, or read more
    # tolerantly); every other type is read with the catalogue's, decoded once per process for every sink reading it
    own_models: ClassVar[Mapping[str, type[WireEvent]]] = {}

    def decode(self, envelope: Envelope) -> WireEvent:
        """The event a record carries: ``own_models``' model for its type, else the catalogue's. A sink overriding
        this has every record it reads decoded for it alone (kept apart in ``DECODED``); ``own_models`` does not."""
        model = self.own_models.get(envelope.type)
        return envelope.event() if model is None else model.model_validate_json(envelope.data)

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
    # a fetch's partitions applied in one transaction (process_partitions); False: one transaction per partition,
    # for a sink whose transactions must stay short (another task takes table locks with a short lock_timeout)
    batch_partitions: ClassVar[bool] = True

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


    async def process_partitions(
        self, epoch: str, batches: Sequence[tuple[str, int, Sequence[Incoming], int]]
    ) -> None:
        """``process`` for several partitions (topic, partition, records, last offset) in one transaction: their
        positions created and locked with one statement, advanced with another. Same guarantees as ``process``
        (a partition whose position is past its batch applies nothing); rows locked in (topic, partition) order."""
        order = sorted(batches, key=lambda b: (b[0], b[1]))
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "INSERT INTO tsop_consumer_offsets AS o "
                "SELECT $1, $2, u.t, u.p, 0 FROM unnest($3::text[], $4::int[]) AS u(t, p) ORDER BY u.t, u.p "
                "ON CONFLICT (consumer, epoch, topic, partition) DO UPDATE SET next_offset = o.next_offset "
                "RETURNING o.topic, o.partition, o.next_offset",
                self.name,
                epoch,
                [b[0] for b in order],
                [b[1] for b in order],
            )
            done = {(r["topic"], r["partition"]): int(r["next_offset"]) for r in rows}
            todo = [b for b in order if done[(b[0], b[1])] <= b[3]]
            if not todo:
                return
            for topic, partition, records, _ in todo:
                first = done[(topic, partition)]
                for rec in records:
                    if rec.offset >= first:
                        await self.apply(conn, rec)
            await conn.execute(
                "UPDATE tsop_consumer_offsets AS o SET next_offset = u.n "
                "FROM unnest($3::text[], $4::int[], $5::bigint[]) AS u(t, p, n) "
                "WHERE o.consumer = $1 AND o.epoch = $2 AND o.topic = u.t AND o.partition = u.p",
                self.name,
                epoch,
                [b[0] for b in todo],
                [b[1] for b in todo],
                [b[3] + 1 for b in todo],
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
        if self.runner.news is not None:
            self.runner.news.ring()  # see _GroupRebalance


class ConsumerRunner:
    def __init__(
        self,
        sink: Sink,
        settings: ServiceSettings,
        epoch: EpochWatcher,
        producer: AIOKafkaProducer,
        on_stored: Callable[[], None] | None = None,
        own_consumer: bool = True,
    ) -> None:
        self.sink = sink
        self.on_stored = on_stored  # told after each batch that stored something (wakes loops waiting for it)
        # told the topic of each dead letter it published (the runtime announces it, as relays announce theirs)
        self.on_published: Callable[[set[str]], None] | None = None
        # rung when a relay announced a publish to one of this sink's topics; with it, a consumer without records
        # for QUIET_SECONDS pauses its partitions (no fetches) until news or the safety net (see tsop_events.wake)
        self.news: Waiter | None = None
        self.settings = settings
        self.epoch_watcher = epoch
        self.producer = producer
        self.consumer: AIOKafkaConsumer | None = None
        self.running = False
        # set while a consumer found stuck was restarted and has no fetch back yet (see _restarting): /readyz degraded
        self.restarted: str | None = None
        # the sink's tables exist: set by the runtime, which ran every sink's setup under the schema lock. A setup
        # run here as well would race another instance's start (two ``CREATE OR REPLACE FUNCTION`` at once fail
        # with "tuple concurrently updated")
        self.set_up = False
        # the next offset to apply per partition, as stored when the partition was assigned (or the epoch
        # changed) and as advanced by this runner since: no read of the stored position per batch
        self._next: dict[tuple[str, TopicPartition], int | None] = {}
        self._dead_unsaved: set[TopicPartition] = set()  # partitions with a dead letter whose position is not kept yet
        # seeks to the stored positions so far per partition (an assignment's, an epoch change's): a batch's retry
        # seek of a partition is left out if one came after its fetch (see _handle), or it would undo it
        self.sought: dict[TopicPartition, int] = {}
        if own_consumer:  # in a ConsumerGroup, the group seeks on an epoch change
            self.epoch_watcher.subscribe(self._on_epoch)
        DECODED.join(self)

    def decoding(self, event_type: str | None) -> object:
        """How this runner's sink decodes records of ``event_type``: the key its decoded records are shared under."""
        decoder: object = type(self.sink).decode
        own = self.sink.own_models
        if own and decoder is Sink.decode:  # decoded as the catalogue does, but for its own types
            decoder = own.get(event_type or "", Sink.decode)
        return decoder

    async def _on_epoch(self, epoch: str) -> None:
        if self.consumer is not None:
            await refresh_metadata(self.consumer)
            await self.seek_stored(list(self.consumer.assignment()))
            if self.news is not None:
                self.news.ring()  # moved back in the new incarnation: read it now, paused or not

    def forget(self, partitions: list[TopicPartition]) -> None:
        """Drop what this runner knows of the partitions' positions (revoked, or a batch not applied)."""
        gone = set(partitions)
        for known in [k for k in self._next if k[1] in gone]:
            del self._next[known]

    @property
    def topic_names(self) -> frozenset[str]:
        """The qualified names of the topics this runner's sink follows."""
        return frozenset(t.qualified(self.settings.topic_prefix) for t in self.sink.topics)

    async def stored_positions(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int | None]:
        """The sink's stored next offset of each partition (None: from the beginning), now also this runner's."""
        epoch = await self.epoch_watcher.wait_known()
        out: dict[TopicPartition, int | None] = {}
        for tp in partitions:
            pos = await self.sink.position(epoch, tp.topic, tp.partition)
            self._next[(epoch, tp)] = pos
            out[tp] = pos
        return out

    async def seek_stored(self, partitions: list[TopicPartition]) -> None:
        assert self.consumer is not None
        while True:
            epoch = await self.epoch_watcher.wait_known()
            positions = await self.stored_positions(partitions)
            if self.epoch_watcher.epoch == epoch:
                break  # else the epoch changed while they were read: read the new epoch's
        _count(self.sought, positions)
        await _seek(self.consumer, positions, lambda: self.epoch_watcher.epoch == epoch)

    async def run(self) -> None:
        if not self.set_up:
            await self.sink.setup()
            self.set_up = True
        await _restarting(self.sink.name, [self], self._run_consumer)

    async def _run_consumer(self) -> None:
        await self.epoch_watcher.wait_known()
        group_id = f"{self.settings.topic_prefix}{self.sink.name}" if self.sink.grouped else None
        self.consumer = _consumer(self.settings, group_id)
        self.consumer.subscribe(sorted(self.topic_names), listener=_Rebalance(self))
        try:
            await self.consumer.start()  # (a start that fails is stopped and dropped too)
            self.running = True
            await _poll(self.consumer, self.settings, self.news, self._handle_batch, self.fetched)
        finally:
            self.running = False
            consumer, self.consumer = self.consumer, None  # an epoch change meanwhile skips a stopped client
            await _stop(consumer)

    def fetched(self) -> None:
        """A fetch is back: the consumer flows (after a restart: recovered, see _restarting)."""
        if self.restarted is not None:
            self.restarted = None
            log.warning("consumer %s flows again after its restart", self.sink.name)

    def _handle_batch(self, batch: dict[TopicPartition, list[Any]]) -> Awaitable[None]:
        return self._handle_all(batch, dict(self.sought))  # as the batch is handed over, right after its fetch

    async def _handle_all(self, batch: dict[TopicPartition, list[Any]], sought: dict[TopicPartition, int]) -> None:
        for tp, records in batch.items():
            await self._handle(tp, records, sought)

    def _decode(self, record: Any, shared: dict[int, Incoming | Exception] | None = None) -> Incoming:
        """The record as the sink reads it. ``shared``: the records of this partition already decoded (by offset)
        for the other sinks of a ``ConsumerGroup``; a sink that reads with the catalogue's own decoding (wire
        models are frozen) takes the same ``Incoming``, so a record is parsed once per process, not once per sink."""
        event_type = header_value(record.headers, "ce_type")
        decoder = self.decoding(event_type)
        if shared is None or decoder is not Sink.decode:
            # parsed once per process (``DecodedRecords``)
            return DECODED.get(record, self.sink.decode, decoder, event_type)
        known = shared.get(record.offset)
        if known is None:
            try:
                known = DECODED.get(record, Envelope.event, decoder, event_type)
            except (ValueError, ValidationError) as exc:
                known = exc
            shared[record.offset] = known
        elif isinstance(known, Incoming):
            DECODED.took(record, decoder)  # a sibling's decode: this reader took it too (else kept for it)
        if isinstance(known, Exception):
            raise known
        return known

    async def _handle(
        self, tp: TopicPartition, records: list[Any], sought: dict[TopicPartition, int] | None = None
    ) -> None:
        """Apply a partition's batch; after a transient failure fetch it again, unless the partition was sought to
        its stored position since the fetch (``sought``: the count then): an epoch change's seek to the new epoch's
        position comes before records fetched at the old one, and must not be undone."""
        sought = dict(self.sought) if sought is None else sought
        retry_at = await self._apply(tp, records)
        if retry_at is not None:
            assert self.consumer is not None
            if self.sought.get(tp) == sought.get(tp):
                self.consumer.seek(tp, retry_at)
            await asyncio.sleep(BACK_OFF_SECONDS)

    async def _apply(
        self, tp: TopicPartition, records: list[Any], shared: dict[int, Incoming | Exception] | None = None
    ) -> int | None:
        """Apply a fetched batch of one partition; the offset to fetch again from after a transient failure (the
        caller seeks there and backs off), or None."""
        epoch = self.epoch_watcher.epoch
        assert epoch is not None
        prepared = await self._prepare(epoch, tp, records, shared)
        if prepared is None:
            return None
        return await self._process_partition(epoch, tp, *prepared)

    async def _apply_partitions(
        self, batch: dict[TopicPartition, list[Any]], shared: dict[TopicPartition, dict[int, Incoming | Exception]]
    ) -> dict[TopicPartition, int]:
        """Apply a fetched batch of several partitions; the partitions to fetch again after a transient failure.

        A projection sink applies them all in one transaction (``ProjectionSink.process_partitions``: its positions
        locked and advanced with one statement each, not four round trips per partition); should that fail other
        than transiently, each partition is applied on its own as ``_apply`` does."""
        epoch = self.epoch_watcher.epoch
        assert epoch is not None
        work: list[tuple[TopicPartition, list[Any], list[Incoming]]] = []
        for tp, records in batch.items():
            if tp.topic in self.topic_names:
                prepared = await self._prepare(epoch, tp, records, shared[tp])
                if prepared is not None:
                    work.append((tp, *prepared))
        sink = self.sink
        # a sink that overrides process (a BatchedSink: a batch handed at its last record) keeps it, per partition
        if (not isinstance(sink, ProjectionSink) or type(sink).process is not ProjectionSink.process or len(work) < 2
                or not sink.batch_partitions):
            retry: dict[TopicPartition, int] = {}
            for tp, records, decoded in work:
                at = await self._process_partition(epoch, tp, records, decoded)
                if at is not None:
                    retry[tp] = at
            return retry
        try:
            await sink.process_partitions(
                epoch, [(tp.topic, tp.partition, decoded, records[-1].offset) for tp, records, decoded in work]
            )
            CONSUMED.labels(sink.name, "applied").inc(sum(len(decoded) for _, _, decoded in work))
        except RETRYABLE as exc:
            return {tp: self._back_off(tp, records[0].offset, exc) for tp, records, _ in work}
        except Exception:  # noqa: BLE001 - one bad record: each partition on its own (one by one where it fails)
            retry = {}
            for tp, records, decoded in work:
                at = await self._process_partition(epoch, tp, records, decoded)
                if at is not None:
                    retry[tp] = at
            return retry
        for tp, records, decoded in work:
            self._applied(epoch, tp, decoded, records[-1].offset)
        return {}

    async def _prepare(
        self, epoch: str, tp: TopicPartition, records: list[Any], shared: dict[int, Incoming | Exception] | None
    ) -> tuple[list[Any], list[Incoming]] | None:
        """The records not yet applied (None if none) and those of them the sink reads, decoded; the undecodable
        ones dead-lettered."""
        wanted = self.sink.event_types
        if (epoch, tp) in self._next:
            done = self._next[(epoch, tp)]
        else:
            done = self._next[(epoch, tp)] = await self.sink.position(epoch, tp.topic, tp.partition)
        if done is not None:
            # a rebalance may seek back over records already applied: skip them (and their dead letters)
            records = [r for r in records if r.offset >= done]
            if not records:
                return None
        decoded: list[Incoming] = []
        for r in records:
            if wanted is not None and header_value(r.headers, "ce_type") not in wanted:
                CONSUMED.labels(self.sink.name, "ignored").inc()
                continue
            try:
                decoded.append(self._decode(r, shared))
            except (ValueError, ValidationError) as exc:
                await self._dead_letter(r, exc)
                self._dead_unsaved.add(tp)  # its position is kept at once once the batch is applied
        return records, decoded

    async def _process_partition(
        self, epoch: str, tp: TopicPartition, records: list[Any], decoded: list[Incoming]
    ) -> int | None:
        last = records[-1].offset
        try:
            await self.sink.process(epoch, tp.topic, tp.partition, decoded, last)
            CONSUMED.labels(self.sink.name, "applied").inc(len(decoded))
        except RETRYABLE as exc:
            return self._back_off(tp, records[0].offset, exc)
        except Exception:  # noqa: BLE001 - one bad record must not block its partition
            retry_at = await self._one_by_one(epoch, tp, decoded, last)
            if retry_at is not None:
                return retry_at
        if tp in self._dead_unsaved:
            await self.sink.keep_position(epoch, tp.topic, tp.partition, last)
        self._applied(epoch, tp, decoded, last)
        return None

    def _applied(self, epoch: str, tp: TopicPartition, decoded: list[Incoming], last: int) -> None:
        assert self.consumer is not None
        self._dead_unsaved.discard(tp)
        self._next[(epoch, tp)] = last + 1
        if decoded and self.on_stored is not None:
            self.on_stored()
        # (a partition revoked meanwhile has no highwater: asking would fail an assertion)
        highwater = self.consumer.highwater(tp) if tp in self.consumer.assignment() else None
        if highwater is not None:
            CONSUMER_LAG.labels(self.sink.name, tp.topic, str(tp.partition)).set(max(0, highwater - last - 1))

    async def _one_by_one(self, epoch: str, tp: TopicPartition, decoded: list[Incoming], last: int) -> int | None:
        for rec in decoded:
            try:
                await self.sink.process(epoch, tp.topic, tp.partition, [rec], rec.offset)
            except RETRYABLE as exc:
                return self._back_off(tp, rec.offset, exc)
            except Exception as exc:
                log.exception("consumer %s: record %s:%s:%s failed", self.sink.name, tp.topic, tp.partition, rec.offset)
                await self._dead_letter(rec, exc)
                await self.sink.keep_position(epoch, tp.topic, tp.partition, rec.offset)
        await self.sink.process(epoch, tp.topic, tp.partition, [], last)
        return None

    def _back_off(self, tp: TopicPartition, offset: int, exc: BaseException) -> int:
        self.forget([tp])  # read the stored position again before the next batch
        log.warning("consumer %s: %s; retrying from %s:%s:%s", self.sink.name, exc, tp.topic, tp.partition, offset)
        return offset

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
        if self.on_published is not None:
            self.on_published({Topic.deadletter.qualified(self.settings.topic_prefix)})
        log.error("consumer %s: dead-lettered %s:%s:%s: %s", self.sink.name, topic, partition, offset, error_text(exc))


def _consumer(settings: ServiceSettings, group_id: str | None) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=settings.consumer_batch,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        session_timeout_ms=10000,
        heartbeat_interval_ms=3000,
        # how often aiokafka's fetch loop wakes without cause (it wakes at once on a resume, a seek or a response):
        # at its default 200 ms a paused consumer still woke its process 5 times a second
        consumer_timeout_ms=1000,
    )


async def refresh_metadata(consumer: AIOKafkaConsumer) -> None:
    """Ask the broker again which partitions the consumer's topics have (at most METADATA_REFRESH_SECONDS).

    Called when the broker epoch changed. A broker that came back empty has its topics created again, and not
    always as before: Tansu creates a topic that a client merely asks about (any metadata request of aiokafka
    allows it) with 4 partitions, before the epoch watcher's ``ensure_topics`` would create it with the configured
    count. A consumer learns of that only from a metadata refresh, and a paused one, whose partitions raised no
    fetch error, would keep the old incarnation's partitions until its periodic refresh (``metadata_max_age_ms``,
    5 minutes), leaving the records on a new partition unread meanwhile. Refreshed, a changed partition count
    makes aiokafka rebalance the group, whose new assignment seeks the stored positions of the new epoch."""
    try:
        async with asyncio.timeout(METADATA_REFRESH_SECONDS):
            await consumer._client.force_metadata_update()  # no public call refreshes a consumer's own metadata
    except TimeoutError:
        log.warning("consumer metadata not refreshed within %s s after an epoch change", METADATA_REFRESH_SECONDS)


def _count(sought: dict[TopicPartition, int], positions: dict[TopicPartition, int | None]) -> None:
    for tp in positions:
        sought[tp] = sought.get(tp, 0) + 1


async def _seek(
    consumer: AIOKafkaConsumer, positions: dict[TopicPartition, int | None], current: Callable[[], bool]
) -> None:
    """Seek to ``positions`` while they are ``current`` (the epoch they were read for is still the epoch: once it
    changed, its listener seeks the assigned partitions to the new epoch's, and a seek of ours would undo it)."""
    for tp, pos in positions.items():
        if not current():
            return
        if tp not in consumer.assignment():
            continue  # revoked meanwhile (a rebalance): the next assignment seeks its own stored positions
        try:
            if pos is None:
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, pos)
        except IllegalStateError:
            continue  # revoked during the seek


def _incoming(record: Any, decode: Callable[[Envelope], WireEvent]) -> Incoming:
    env = unwrap(record.headers, record.value)
    return Incoming(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key.decode() if record.key is not None else None,
        envelope=env,
        event=decode(env),
    )


async def _poll(
    consumer: AIOKafkaConsumer,
    settings: ServiceSettings,
    news: Waiter | None,
    handle: Callable[[dict[TopicPartition, list[Any]]], Awaitable[None]],
    fetched: Callable[[], None] | None = None,
) -> None:
    """Fetch and hand each batch to ``handle``; without records for QUIET_SECONDS and with a news waiter, pause.

    Woken by news, a paused consumer fetches for RESUMED_SECONDS; woken by the safety net only (nothing announced),
    it looks once (one fetch wait) and pauses again at once if nothing came: an idle consumer costs the broker about
    one fetch per safety net, not one per fetch wait. ``fetched`` is told each time a fetch is back (records or
    not): the consumer flows."""
    loop = asyncio.get_running_loop()
    quiet_since = loop.time()
    wait_ms = 200
    _abort_fetch_if_client_dies(consumer)
    while True:
        batch = await _fetch(consumer, wait_ms, settings.consumer_batch)
        if fetched is not None:
            fetched()
        wait_ms = 200
        if batch:
            await _watched(handle(batch), consumer)
            quiet_since = loop.time()
        elif news is not None and loop.time() - quiet_since >= QUIET_SECONDS:
            if await _pause_until_news(consumer, news, settings.consumer_safety_net_seconds):
                quiet_since = loop.time() - QUIET_SECONDS + RESUMED_SECONDS
            else:
                quiet_since = loop.time() - QUIET_SECONDS  # pause again after one look
                wait_ms = settings.fetch_max_wait_ms + 50


async def _fetch(consumer: AIOKafkaConsumer, wait_ms: int, max_records: int) -> dict[TopicPartition, list[Any]]:
    """One fetch, watched: ConsumerStuck if the consumer's client lost its background work (it would wait for ever)
    or if the fetch is not back after STUCK_FETCH_SECONDS while its group's coordinator is known."""
    loop = asyncio.get_running_loop()
    while True:
        if dead := _dead_work(consumer):
            raise ConsumerStuck(f"consumer {sorted(consumer.subscription())}: {dead}")
        # the stacks are logged while the fetch still hangs (they show what it awaits), then it is given up
        watch = loop.call_later(STUCK_FETCH_SECONDS, _log_stacks_if_stuck, consumer)
        try:
            async with asyncio.timeout(STUCK_FETCH_SECONDS + 0.1):
                batch: dict[TopicPartition, list[Any]] = await consumer.getmany(
                    timeout_ms=wait_ms, max_records=max_records
                )
                return batch
        except TimeoutError:
            if _finding_coordinator(consumer):
                log.warning("consumer %s: a fetch waiting %g s for its group's coordinator (the broker unreachable); "
                            "waiting on", sorted(consumer.subscription()), STUCK_FETCH_SECONDS)
                continue
            raise ConsumerStuck(_stuck(consumer)) from None
        finally:
            watch.cancel()


def _finding_coordinator(consumer: AIOKafkaConsumer) -> bool:
    """The consumer's group coordinator is being looked for: a legitimate wait (no broker answers), which a fresh
    consumer would only begin again. Private attribute (tests/unit/test_consumer_stop.py checks aiokafka has it)."""
    coordinator = getattr(consumer, "_coordinator", None)
    return coordinator is not None and hasattr(coordinator, "coordinator_id") and coordinator.coordinator_id is None


def _log_stacks_if_stuck(consumer: AIOKafkaConsumer) -> None:
    if not _finding_coordinator(consumer):
        dump_stacks(_stuck(consumer))


def _dead_work(consumer: AIOKafkaConsumer) -> str | None:
    """What of the consumer's own background work ended by an error, if any: aiokafka reports the end of its group
    coordination routine to ``getmany`` itself, not that of its client's metadata synchronizer, without which every
    wait for metadata (a refresh, the group leader's assignment) waits for ever. Private attributes
    (tests/unit/test_consumer_stop.py checks aiokafka still has them)."""
    task = getattr(getattr(consumer, "_client", None), "_sync_task", None)
    if task is None or not task.done() or task.cancelled() or task.exception() is None:
        return None
    exc = task.exception()
    return f"its client's metadata synchronizer died ({type(exc).__name__}: {exc})"


def _abort_fetch_if_client_dies(consumer: AIOKafkaConsumer) -> None:
    """A fetch waiting when the client's metadata synchronizer dies raises ConsumerStuck at once, as aiokafka makes
    it raise when its coordination routine dies (``abort_waiters``), instead of waiting for STUCK_FETCH_SECONDS."""
    task = getattr(getattr(consumer, "_client", None), "_sync_task", None)
    subscription = getattr(consumer, "_subscription", None)
    if task is None or subscription is None:
        return

    def ended(_: asyncio.Future[Any]) -> None:
        if dead := _dead_work(consumer):
            subscription.abort_waiters(ConsumerStuck(f"consumer {sorted(consumer.subscription())}: {dead}"))

    task.add_done_callback(ended)


def _stuck(consumer: AIOKafkaConsumer) -> str:
    return f"consumer {sorted(consumer.subscription())}: a fetch not back after {STUCK_FETCH_SECONDS:g} s"


async def _restarting(
    name: str, runners: Sequence[ConsumerRunner], run_consumer: Callable[[], Awaitable[None]]
) -> None:
    """Run a Kafka consumer (``run_consumer``: start, poll, stop) and, when it is found stuck, start a fresh one.

    A restart is an operator's concern but not a failure of the service: it is logged (ERROR, after the stacks of
    where it hung), counted in ``tsop_consumer_restarts_total``, and named in ``/readyz`` under
    ``degraded.consumers_restarted`` only until the fresh consumer's first fetch is back (``ConsumerRunner.fetched``):
    a consumer that flows again leaves its service ready and not degraded. Any other error is raised (the runtime's
    supervision restarts it and reports it as failing)."""
    while True:
        try:
            await run_consumer()
            return
        except ConsumerStuck as exc:
            CONSUMER_RESTARTS.labels(name).inc()
            for runner in runners:
                runner.restarted = f"{exc}; restarted, its first fetch not back yet"
            log.error("%s; restarting it as a fresh Kafka consumer", exc)
            await asyncio.sleep(RESTART_PAUSE_SECONDS)


async def _watched(work: Awaitable[None], consumer: AIOKafkaConsumer) -> None:
    """Apply a batch; if it is still running after SLOW_BATCH_SECONDS, log the process's stacks once (what it waits
    for: a lock, a worker thread, the broker). Not cancelled: a worker thread in a transaction cannot be."""
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait({task}, timeout=SLOW_BATCH_SECONDS)
        if not done:
            topics = sorted(consumer.subscription())
            dump_stacks(f"consumer {topics}: a batch still applying after {SLOW_BATCH_SECONDS:g} s")
        await task
    except asyncio.CancelledError:
        task.cancel()
        await asyncio.wait({task})  # its clean-up (a transaction rolled back) before the consumer stops
        raise


async def _stop(consumer: AIOKafkaConsumer) -> None:
    if dead := _dead_work(consumer):
        # its stop would wait for its coordination task, itself waiting for metadata that can no longer come
        log.warning("consumer %s: %s; its tasks cancelled", sorted(consumer.subscription()), dead)
        await _abandon(consumer)
        return
    try:
        async with asyncio.timeout(STOP_SECONDS):
            await consumer.stop()
    except TimeoutError:
        log.warning("consumer %s not stopped within %s s; its tasks cancelled", sorted(consumer.subscription()),
                    STOP_SECONDS)
        await _abandon(consumer)


async def _abandon(consumer: AIOKafkaConsumer) -> None:
    """What a stop cut short left running. aiokafka's stop waits for the group coordinator's coordination task (a
    wedged consumer's may wait long for a join or a coordinator) before it stops the heartbeats and the fetches and
    closes the connections: a member still heartbeating would hold up its group's next rebalance, so the join of the
    consumer started in its place, until its rebalance timeout (5 minutes), and its fetches would go on; the
    coordination task itself would wait on for ever. Private attributes (tests/unit/test_consumer_stop.py checks
    aiokafka still has them)."""
    coordinator = getattr(consumer, "_coordinator", None)
    fetcher = getattr(consumer, "_fetcher", None)
    for task in (
        getattr(coordinator, "_heartbeat_task", None),
        getattr(coordinator, "_commit_refresh_task", None),
        getattr(coordinator, "_coordination_task", None),
        getattr(fetcher, "_fetch_task", None),
    ):
        if task is not None and not task.done():
            task.cancel()
    sync = getattr(consumer._client, "_sync_task", None)
    if sync is not None and sync.done():
        consumer._client._sync_task = None  # died: the client's close would raise its error before closing anything
    try:
        async with asyncio.timeout(1.0):
            await consumer._client.close()
    except Exception as exc:  # noqa: BLE001 - best effort: the consumer is gone either way
        log.warning("consumer %s: connections not closed: %s", sorted(consumer.subscription()), exc)


async def _pause_until_news(consumer: AIOKafkaConsumer, news: Waiter, safety_net: float) -> bool:
    """Stop fetching (Tansu answers a waiting fetch only when its wait expires: an idle consumer would fetch
    20 times a second) until a relay announces a record for us (True), or the safety net passes (False: records no
    relay announces, e.g. another producer's). Positions are kept; nothing is skipped or read twice."""
    paused = consumer.assignment()
    if not paused:
        return False
    consumer.pause(*paused)
    try:
        return await news.wait(safety_net)
    finally:
        assigned = consumer.assignment()
        consumer.resume(*[tp for tp in paused if tp in assigned])


class _GroupRebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, group: ConsumerGroup) -> None:
        self.group = group

    async def on_partitions_revoked(self, revoked: Any) -> None:
        for runner in self.group.runners:
            runner.forget(list(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.group.seek_stored(list(assigned))
        if self.group.news is not None:
            # a paused consumer looks at once: partitions taken over (from a member gone) may hold records announced
            # while another member had them, which would otherwise wait for the safety net
            self.group.news.ring()


class ConsumerGroup:
    """One Kafka consumer for all the grouped sinks of a process: each record is fetched and decoded once per
    process, not once per sink, and an idle process has one consumer to pause and one heartbeat to send.

    Each sink still applies its records and stores its own position in its own transaction (``Sink.process``), so
    exactly-once holds per sink as with a consumer each: the group seeks a partition to the lowest position any of
    its sinks stored, and each runner skips what its sink already applied. A sink that fails transiently has the
    partition fetched again from its position; the others skip what they applied meanwhile. The consumer group's id
    names the sinks, so instances of one service (same sinks) share the partitions between them.
    """

    def __init__(self, runners: Sequence[ConsumerRunner], settings: ServiceSettings, epoch: EpochWatcher) -> None:
        assert runners and all(r.sink.grouped for r in runners)
        self.runners = list(runners)
        self.settings = settings
        self.epoch_watcher = epoch
        self.news: Waiter | None = None  # as ConsumerRunner.news, for the whole group (rung for any of its topics)
        self.consumer: AIOKafkaConsumer | None = None
        self.group_id = settings.topic_prefix + "+".join(sorted(r.sink.name for r in self.runners))
        self.sought: dict[TopicPartition, int] = {}  # as ConsumerRunner.sought
        epoch.subscribe(self._on_epoch)

    @property
    def topic_names(self) -> frozenset[str]:
        return frozenset().union(*(r.topic_names for r in self.runners))

    async def _on_epoch(self, epoch: str) -> None:
        if self.consumer is not None:
            await refresh_metadata(self.consumer)
            await self.seek_stored(list(self.consumer.assignment()))
            if self.news is not None:
                self.news.ring()  # moved back in the new incarnation: read it now, paused or not

    async def seek_stored(self, partitions: list[TopicPartition]) -> None:
        """Seek each partition to the lowest position stored by the sinks that follow its topic."""
        assert self.consumer is not None
        while True:
            epoch = await self.epoch_watcher.wait_known()
            lowest: dict[TopicPartition, int | None] = {}
            for runner in self.runners:
                mine = runner.topic_names
                stored = await runner.stored_positions([tp for tp in partitions if tp.topic in mine])
                for tp, pos in stored.items():
                    if tp not in lowest:
                        lowest[tp] = pos
                    else:
                        known = lowest[tp]
                        lowest[tp] = None if known is None or pos is None else min(known, pos)
            if self.epoch_watcher.epoch == epoch:
                break  # else the epoch changed while they were read: read the new epoch's
        _count(self.sought, lowest)
        await _seek(self.consumer, lowest, lambda: self.epoch_watcher.epoch == epoch)

    async def run(self) -> None:
        for runner in self.runners:
            if not runner.set_up:
                await runner.sink.setup()
                runner.set_up = True
        await _restarting(self.group_id, self.runners, self._run_consumer)

    def _fetched(self) -> None:
        for runner in self.runners:
            runner.fetched()

    async def _run_consumer(self) -> None:
        await self.epoch_watcher.wait_known()
        self.consumer = consumer = _consumer(self.settings, self.group_id)
        for runner in self.runners:
            runner.consumer = consumer
        consumer.subscribe(sorted(self.topic_names), listener=_GroupRebalance(self))
        try:
            await consumer.start()  # (a start that fails is stopped and dropped too)
            for runner in self.runners:
                runner.running = True
            await _poll(consumer, self.settings, self.news, self._handle_batch, self._fetched)
        finally:
            self.consumer = None  # an epoch change meanwhile skips a stopped client
            for runner in self.runners:
                runner.running = False
                runner.consumer = None
            await _stop(consumer)

    def _handle_batch(self, batch: dict[TopicPartition, list[Any]]) -> Awaitable[None]:
        return self._apply_batch(batch, dict(self.sought))  # as the batch is handed over, right after its fetch

    async def _apply_batch(self, batch: dict[TopicPartition, list[Any]], sought: dict[TopicPartition, int]) -> None:
        """Every sink applies the batch (concurrently, as separate consumers did); then the partitions a sink could
        not apply are fetched again from the lowest such position, after a back-off (unless sought to their stored
        positions since the fetch, see ``ConsumerRunner._handle``)."""
        assert self.consumer is not None
        decoded: dict[TopicPartition, dict[int, Incoming | Exception]] = {tp: {} for tp in batch}

        results = await asyncio.gather(
            *(r._apply_partitions(batch, decoded) for r in self.runners), return_exceptions=True
        )
        again: dict[TopicPartition, int] = {}
        for result in results:
            if isinstance(result, BaseException):
                continue
            for tp, at in result.items():
                again[tp] = min(at, again.get(tp, at))
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            # as a runner's own loop would: the group restarts (supervised) and every sink reads its positions again
            raise failed[0]
        assigned = self.consumer.assignment()
        for tp, at in again.items():
            # revoked meanwhile: its next owner reads the stored position; sought to it since the fetch: read from there
            if tp in assigned and self.sought.get(tp) == sought.get(tp):
                self.consumer.seek(tp, at)
        if again:
            await asyncio.sleep(BACK_OFF_SECONDS)
