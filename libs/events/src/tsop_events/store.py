"""The write side: an eventsourcing application on PostgreSQL, with tracking.

Every service that emits domain events owns one ``EventStoreApp``. Its
notification log is the service's outbox (see ``relay``). Events saved in
reaction to a Kafka record are saved together with a tracking row naming that
record, in one transaction, which is what makes the reaction happen once.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import contextvars
import functools
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, ParamSpec, TypeVar
from uuid import UUID

import asyncpg
from eventsourcing.application import AggregateNotFoundError, Application, LRUCache, ProcessingEvent
from eventsourcing.domain import Aggregate, BaseAggregate, DomainEvent
from eventsourcing.persistence import IntegrityError, Mapper, ProcessRecorder, StoredEvent, Tracking
from eventsourcing.postgres import (
    PostgresAggregateRecorder,
    PostgresApplicationRecorder,
    PostgresDatastore,
    PostgresProcessRecorder,
)
from psycopg import Cursor
from psycopg.rows import DictRow
from psycopg.sql import SQL, Identifier

from tsop_events.personal import Keyring, PersonalFields, SealingMapper, keyring_of
from tsop_events.settings import ServiceSettings

__all__ = ["ArrayInsertRecorder", "EventStoreApp", "IntegrityError", "Tracking", "ensure_database", "schema_lock"]

# Set per HTTP request by the edge: a save made while serving it marks it, so that an error
# after a save is answered as "recorded" rather than "nothing was changed" (see http._unexpected).
_RECORDED: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar("tsop_recorded", default=None)


def watch_recording() -> list[bool]:
    """Start watching the current request for saves; the list is non-empty once one happened."""
    marks: list[bool] = []
    _RECORDED.set(marks)
    return marks


def note_recorded() -> None:
    marks = _RECORDED.get()
    if marks is not None and not marks:
        marks.append(True)


def recorded_in_this_request() -> bool:
    return bool(_RECORDED.get())


class _ArrayInsert(PostgresAggregateRecorder):
    """The stored events of a transaction inserted from four binary arrays, one per column.

    eventsourcing inserts them from one array of its composite type ``stored_event_uuid``, which psycopg can only
    send as text: every event's state escaped to hex and every row quoted, on the service's CPU (about a quarter of
    the client's CPU per inserted event: bench/RESULTS.md, "Notifications, round 3 again"). Only that statement
    changes: the table lock, the NOTIFY, the tracking row and the pipeline around it stay the library's
    (``PostgresApplicationRecorder.insert_events``), and
    the notification ids come back from ``RETURNING`` in the order of the events, as before.
    """

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        self.array_insert_statement = SQL(
            "INSERT INTO {schema}.{table} (originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest(%s::{id_type}[], %s::bigint[], %s::text[], %s::bytea[])"
        ).format(
            schema=Identifier(datastore.schema), table=Identifier(self.events_table_name),
            id_type=Identifier(datastore.originator_id_type),
        )
        if isinstance(self, PostgresApplicationRecorder):  # an application's log: the notification ids are returned
            self.array_insert_statement += SQL(" RETURNING notification_id")
        self._uuid_ids = datastore.originator_id_type == "uuid"

    def _insert_stored_events(self, curs: Cursor[DictRow], stored_events: Sequence[StoredEvent], **_: Any) -> None:
        ids = [e.originator_id for e in stored_events]
        if self._uuid_ids:
            ids = [i if type(i) is UUID else UUID(str(i)) for i in ids]
        curs.execute(
            self.array_insert_statement,
            (ids, [e.originator_version for e in stored_events], [e.topic for e in stored_events],
             [e.state for e in stored_events]),
            prepare=True,
            binary=True,
        )


class ArrayInsertRecorder(PostgresProcessRecorder, _ArrayInsert):
    """The services' process recorder (``ServiceSettings.eventsourcing_env`` names it): eventsourcing's, but each
    transaction's events are inserted from binary column arrays (``_ArrayInsert``)."""


class EventStoreApp(Application[UUID]):
    """An Application whose recorder also records tracking positions.

    ``personal`` names the domain events that carry a customer's personal data: the mapper seals those
    attributes under the customer's data keys before they are stored, and opens them when they are loaded
    (see ``tsop_events.personal``); ``sealed_event`` reads a stored event as stored, for the relay.
    """

    personal: ClassVar[Mapping[type, PersonalFields]] = {}

    def __init__(self, settings: ServiceSettings | None = None, env: dict[str, str] | None = None) -> None:
        merged: dict[str, str] = settings.eventsourcing_env() if settings else {}
        merged.update(env or {})
        self._save_listeners: list[Callable[[], None]] = []
        self.keyring: Keyring = keyring_of(settings if self.personal else None)
        super().__init__(env=merged)

    def construct_mapper(self) -> Mapper[UUID]:
        inner = super().construct_mapper()
        return SealingMapper(inner, self.keyring, self.personal) if self.personal else inner

    def _prepare_keys(self, events: Sequence[Any]) -> None:
        if isinstance(self.mapper, SealingMapper):
            self.mapper.prepare(events)

    def forget_opened(self) -> None:
        """Drop every aggregate cached in memory (they hold personal data opened before an erasure)."""
        cache = getattr(self.repository, "cache", None)
        if isinstance(cache, LRUCache):
            with cache.lock:
                cache.cache.clear()
                cache.clear()
                cache.full = False
        elif cache is not None:
            cache.cache.clear()
        shared: SharedLog | None = getattr(self, "_tsop_shared_log", None)
        if shared is not None:
            shared.forget()

    def forget_erased(self, customer_ids: Iterable[str]) -> None:
        """These customers' personal data was erased (``CustomerDataErased``): drop what this process holds opened or
        derived from it in memory. By default the cached aggregates; a service whose in-memory views derive keys
        from personal fields (intake's duplicate index) drops those entries too."""
        self.forget_opened()

    def sealed_event(self, stored: Any) -> Any:
        """A stored event as it is stored: personal attributes still sealed (what may leave the service)."""
        mapper = self.mapper
        if isinstance(mapper, SealingMapper):
            return mapper.to_sealed_domain_event(stored)
        return mapper.to_domain_event(stored)

    def on_saved(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (from the saving thread) after every save."""
        self._save_listeners.append(listener)

    def _notify(self, recordings: list[Any]) -> None:
        note_recorded()
        super()._notify(recordings)
        for listener in self._save_listeners:
            listener()

    def construct_recorder(self) -> ProcessRecorder:
        return self.factory.process_recorder()

    @property
    def process_recorder(self) -> ProcessRecorder:
        recorder = self.recorder
        assert isinstance(recorder, ProcessRecorder)
        return recorder

    def save_tracked(self, aggregates: Iterable[Aggregate], tracking: Tracking | None) -> None:
        """Save new events of ``aggregates`` and ``tracking`` in one transaction.

        Raises IntegrityError on a version conflict (another writer got there
        first) or when the tracking position was already recorded.
        """
        processing = ProcessingEvent[UUID](tracking=tracking)
        _collect(processing, aggregates)
        self._prepare_keys(processing.events)
        recordings = self._record(processing)
        self._notify(recordings)

    def save_collected(self, events: Sequence[Any], aggregates: Iterable[Aggregate] = ()) -> None:
        """Save events already collected from ``aggregates``, snapshotting those as the app's intervals say.

        ``GroupCommit`` collects events before the thread hop (so a failed batch can be written again one
        command at a time); naming the aggregates keeps their snapshots, which a plain save of events skips.
        """
        processing = ProcessingEvent[UUID]()
        _collect(processing, events)
        self._prepare_keys(processing.events)
        for aggregate in aggregates:
            processing.aggregates[aggregate.id] = aggregate
        recordings = self._record(processing)
        try:
            self._take_snapshots(processing)
        except Exception:  # noqa: BLE001 - a snapshot only speeds up loading: the events are saved, the command has succeeded
            logging.getLogger(__name__).warning("snapshot not taken (the events are saved)", exc_info=True)
        self._notify(recordings)

    def tracked_position(self, name: str) -> int | None:
        return self.process_recorder.max_tracking_id(name)

    def exists(self, aggregate_id: UUID) -> bool:
        return bool(self.recorder.select_events(aggregate_id, limit=1))

    def existing(self, aggregate_ids: Iterable[UUID]) -> set[UUID]:
        """Which of ``aggregate_ids`` were created: one query on PostgreSQL (one per id on other stores)."""
        ids = list(aggregate_ids)
        recorder = self.recorder
        if isinstance(recorder, PostgresAggregateRecorder) and ids:
            query = SQL("SELECT DISTINCT originator_id FROM {schema}.{table} WHERE originator_id = ANY(%s)").format(
                schema=Identifier(recorder.datastore.schema), table=Identifier(recorder.events_table_name))
            with recorder.datastore.transaction(commit=False) as curs:
                curs.execute(query, (ids,))
                return {UUID(str(row["originator_id"])) for row in curs.fetchall()}
        return {i for i in ids if self.exists(i)}

    def find_many(self, aggregate_ids: Iterable[UUID]) -> dict[UUID, Any]:
        """The aggregates of ``aggregate_ids`` that exist, by id: on PostgreSQL in one query (every event of them,
        replayed; snapshots are only a shortcut, so a full replay is always right), else one by one."""
        ids = list(dict.fromkeys(aggregate_ids))
        recorder = self.recorder
        if not isinstance(recorder, PostgresAggregateRecorder) or not ids:
            found = {i: self.find(i) for i in ids}
            return {i: a for i, a in found.items() if a is not None}
        query = SQL(
            "SELECT originator_id, originator_version, topic, state FROM {schema}.{table} "
            "WHERE originator_id = ANY(%s) ORDER BY originator_id, originator_version"
        ).format(schema=Identifier(recorder.datastore.schema), table=Identifier(recorder.events_table_name))
        with recorder.datastore.transaction(commit=False) as curs:
            curs.execute(query, (ids,))
            rows = curs.fetchall()
        out: dict[UUID, Any] = {}
        stored_events = [
            StoredEvent(originator_id=row["originator_id"], originator_version=row["originator_version"],
                        topic=row["topic"], state=bytes(row["state"]))
            for row in rows
        ]
        if isinstance(self.mapper, SealingMapper):
            self.mapper.prefetch(stored_events)  # the data keys of them all in one round trip, not one each
        for row, stored in zip(rows, stored_events, strict=True):
            e = self.mapper.to_domain_event(stored)
            oid = UUID(str(row["originator_id"]))
            out[oid] = e.mutate(out.get(oid))  # type: ignore[attr-defined]
        return out

    def load(self, aggregate_id: UUID) -> Any:
        return self.repository.get(aggregate_id)

    def find(self, aggregate_id: UUID) -> Any:
        """The aggregate, or None if it was never created (one query, not two)."""
        try:
            return self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            return None


def _collect(processing: ProcessingEvent[UUID], objs: Iterable[Any]) -> None:
    """``processing.collect_events(*objs)`` without its runtime-protocol checks for the library's own classes.

    eventsourcing asks of each object ``isinstance(obj, DomainEventProtocol)``, then ``CollectEventsProtocol``:
    checks against ``typing`` protocols, which look up every attribute of the protocol (a sink's batch of a few
    hundred events spent about as long in them as in the rest of collecting). Aggregates and events of the library's
    base classes are known to be what those checks would find; anything else is handed to the library as before."""
    events, aggregates = processing.events, processing.aggregates
    for obj in objs:
        if isinstance(obj, BaseAggregate):
            events.extend(obj.collect_events())
            aggregates[obj.id] = obj
        elif isinstance(obj, DomainEvent):
            events.append(obj)  # type: ignore[arg-type]
        else:
            processing.collect_events(obj)


async def ensure_database(settings: ServiceSettings, extra_sql: Sequence[str] = ()) -> None:
    """Create the service's own database if missing, then run its DDL, one instance at a time (``schema_lock``)."""
    admin = await asyncpg.connect(settings.pg_dsn("postgres"))
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", settings.database)
        if not exists:
            try:
                await admin.execute(f'CREATE DATABASE "{settings.database}"')
            except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                pass  # another instance created it meanwhile
    finally:
        await admin.close()
    if extra_sql:
        async with schema_lock(settings):
            conn = await asyncpg.connect(settings.pg_dsn())
            try:
                for stmt in extra_sql:
                    await conn.execute(stmt)
            finally:
                await conn.close()


@contextlib.asynccontextmanager
async def schema_lock(settings: ServiceSettings) -> AsyncIterator[None]:
    """Hold the service's schema lock: DDL at start runs in one instance at a time.

    ``CREATE TABLE IF NOT EXISTS`` is not safe against itself: two instances creating the same missing table at
    once both pass the check and one fails on ``pg_type``'s unique index. Every start-up DDL (``ensure_database``,
    the event store's tables, the consumer sinks' ``setup``) runs under this PostgreSQL advisory lock, per database;
    it is taken on a connection of its own to the ``postgres`` database (the service's may not exist yet) and
    released when that connection closes, so an instance that dies holding it never blocks the others.
    """
    conn = await asyncpg.connect(settings.pg_dsn("postgres"))
    try:
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", f"tsop-schema:{settings.database}")
        yield
    finally:
        await conn.close()


V = TypeVar("V")


class Read:
    """One notification of the log, as read once for every follower of the app: decoded when a follower first
    wants it (a follower may want only some topics), and again after ``forget`` (an erasure drops what was opened)."""

    __slots__ = ("event", "id", "stored", "topic")

    def __init__(self, stored: Any) -> None:
        self.id: int = stored.id
        self.topic: str = stored.topic
        self.stored = stored
        self.event: Any = None

    def decoded(self, mapper: Mapper[UUID], log: SharedLog) -> Any:
        event = self.event
        if event is None:
            erasures = log.erasures
            event = mapper.to_domain_event(self.stored)
            with log.lock:  # not kept if an erasure came meanwhile: it may hold data opened before the erasure
                if log.erasures == erasures:
                    self.event = event
        return event


class SharedLog:
    """The reader of an app's notification log that its log followers share (``LogFollower.refresh``).

    Every follower used to read and decode each new notification itself, one query per follower per refresh;
    a service with several followers read each event several times. Here each notification is read and decoded
    once, kept until every follower of the app has applied it (up to twice ``keep`` of them), and a refresh that
    waited for another's read uses it when that read began after the refresh was called: it then saw everything
    committed before the call, which is all a refresh promises. A follower that did not refresh for ``idle``
    seconds holds nothing back (one refreshed only on rare events), and at most twice ``keep`` are kept: a follower
    behind what is kept (it started late on a long log, or was idle meanwhile) reads the gap from the database
    itself, as before.
    """

    def __init__(self, app: EventStoreApp, keep: int = 10_000, idle: float = 10.0) -> None:
        self.app, self.keep, self.idle = app, keep, idle
        self.lock = threading.Lock()
        self.kept: list[Read] = []  # every notification with id above ``floor`` up to ``position``, in order
        self.floor = 0  # ids up to this one may have been dropped
        self.position = 0  # the last id read
        self.started = 0  # reads begun
        self.completed = 0  # the number of the last read that reached the end of the log
        self.followers: weakref.WeakSet[LogFollower] = weakref.WeakSet()
        self.queries = 0  # notification selects made (for tests and profiles)
        self.erasures = 0  # ``forget`` calls: a decode that straddles one keeps nothing

    @staticmethod
    def of(app: EventStoreApp) -> SharedLog:
        shared: SharedLog | None = getattr(app, "_tsop_shared_log", None)
        if shared is None:
            shared = SharedLog(app)
            app._tsop_shared_log = shared  # type: ignore[attr-defined]
        return shared

    def after(self, position: int, called: int) -> tuple[list[Read], bool] | None:
        """The notifications after ``position`` as of a refresh called when ``started`` was ``called``, and whether
        that is all of them (False: about ``keep`` were read, ask again); None when the caller is behind what is
        kept (it reads the gap itself)."""
        with self.lock:
            if position < self.floor:
                return None
            done = True
            if self.completed <= called:  # no read that began after the call has finished: read now
                self.started += 1
                number = self.started
                done = self._read()
                if done:
                    self.completed = number
            self._trim()
            if position < self.floor:
                return None
            start = bisect.bisect_right(self.kept, position, key=lambda r: r.id)
            return self.kept[start:], done

    def _read(self) -> bool:
        """Read what is new, one batch at least, stopping once ``keep`` are held; whether the end was reached."""
        recorder, mapper = self.app.recorder, self.app.mapper
        while True:
            self.queries += 1
            batch = recorder.select_notifications(self.position + 1, 1000)
            if not batch:
                return True
            if isinstance(mapper, SealingMapper):
                mapper.prefetch(batch)  # the batch's data keys in one round trip, not one each
            self.kept.extend(Read(n) for n in batch)
            self.position = batch[-1].id
            if len(self.kept) >= self.keep:
                return False

    def _trim(self) -> None:
        """Drop what every follower applied, and the oldest beyond ``keep``."""
        if not self.kept:
            return
        since = time.monotonic() - self.idle
        behind = min((f.position for f in list(self.followers) if f.refreshed > since), default=self.position)
        cut = bisect.bisect_right(self.kept, behind, key=lambda r: r.id)
        cut = max(cut, len(self.kept) - 2 * self.keep)  # a read stops at ``keep``: the reader keeps what it read
        if cut > 0:
            self.floor = max(self.floor, self.kept[cut - 1].id)
            del self.kept[:cut]

    def forget(self) -> None:
        """Drop every decoded event kept (they may hold opened personal data)."""
        with self.lock:
            self.erasures += 1
            for r in self.kept:
                r.event = None


class LogFollower:
    """An in-process view built by following the app's own notification log.

    Every instance of a service converges on the same view, because it reads
    the same log; ``refresh`` is cheap when nothing is new. The followers of one app share one reader of the
    log (``SharedLog``); ``topics`` (prefixes of stored topics) limits which events a follower decodes and applies.
    """

    topics: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, app: EventStoreApp) -> None:
        self.app = app
        self.lock = threading.RLock()
        self.position = 0
        self.refreshed = float("-inf")  # when it last refreshed (monotonic)
        self.shared = SharedLog.of(app)
        self.shared.followers.add(self)

    def apply(self, event: Any) -> None:
        raise NotImplementedError

    def refresh(self) -> None:
        called = self.shared.started  # a read begun after this (by any follower) sees all this refresh must see
        with self.lock:
            self.refreshed = time.monotonic()
            while True:
                found = self.shared.after(self.position, called)
                if found is None:
                    self._read_gap()
                    continue
                reads, done = found
                mapper, topics = self.app.mapper, self.topics
                for r in reads:
                    if topics is None or r.topic.startswith(topics):
                        self.apply(r.decoded(mapper, self.shared))
                    self.position = r.id
                if done:
                    return

    def _read_gap(self) -> None:
        """Read from the database, up to what the shared reader keeps (this follower is behind it)."""
        mapper, topics = self.app.mapper, self.topics
        while self.position < self.shared.floor:
            batch = self.app.recorder.select_notifications(self.position + 1, 1000, stop=self.shared.floor)
            if not batch:
                return
            if isinstance(mapper, SealingMapper):
                mapper.prefetch(batch)
            for n in batch:
                if topics is None or n.topic.startswith(topics):
                    self.apply(mapper.to_domain_event(n))
                self.position = n.id

    async def read(self, view: Callable[[], V], refresh: bool = True) -> V:
        """``view()`` under the lock (after a refresh), in a worker thread: the event loop never waits for the lock,
        which a refresh in another thread may hold for long (database reads, a replay of the log at start-up).

        The refresh runs before the lock is taken, not under it: a follower whose ``refresh`` takes a lock of its own
        before this one (intake's index reads the log outside ``lock``) would otherwise deadlock with a refresh
        called directly in another thread (each holding the lock the other waits for). The view sees at least what
        the refresh read."""

        def run() -> V:
            if refresh:
                self.refresh()
            with self.lock:
                return view()

        return await asyncio.to_thread(run)


P = ParamSpec("P")
R = TypeVar("R")


def retry_on_conflict(attempts: int = 5) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Run a load-decide-save command again when another writer saved first.

    The command must load what it changes inside itself, so each attempt
    decides on fresh state (optimistic concurrency, not locks).
    """

    def decorate(command: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(command)
        def attempt(*args: P.args, **kwargs: P.kwargs) -> R:
            for i in range(attempts):
                try:
                    return command(*args, **kwargs)
                except IntegrityError:
                    if i == attempts - 1:
                        raise
                    time.sleep(0.002 * 2**i)
            raise AssertionError("unreachable")

        return attempt

    return decorate


class GroupCommit:
    """Concurrent commands share one transaction: many requests, one commit.

    Each caller waits for the commit that carries its events. While one batch
    is being written the next one gathers, so under load batches grow by
    themselves and at rest a command is written at once. If a batch fails on
    a conflict, its commands are written one by one so that only the
    conflicting command sees the error.
    """

    def __init__(self, app: EventStoreApp, max_batch: int = 256, writers: int = 1) -> None:
        self.app, self.max_batch, self.writers = app, max_batch, writers
        self._pending: list[tuple[list[Any], list[Aggregate], asyncio.Future[None]]] = []
        self._flushers: set[asyncio.Task[None]] = set()

    async def save(self, *aggregates: Aggregate) -> None:
        events = [e for a in aggregates for e in a.collect_events()]
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((events, list(aggregates), future))
        if len(self._flushers) < self.writers:
            # with writers > 1 one batch is encoded while another waits for the database; a fresh
            # context, so that the batch's saves are noted by each waiter below, not by this caller
            self._flushers.add(asyncio.create_task(self._flush(), context=contextvars.Context()))
        await future
        note_recorded()

    async def _flush(self) -> None:
        try:
            await self._drain()
        finally:  # at once, not in a later callback: a save arriving next must find a free writer
            task = asyncio.current_task()
            if task is not None:
                self._flushers.discard(task)

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            outcomes: list[BaseException | None]
            try:
                await asyncio.to_thread(
                    self.app.save_collected,
                    [e for events, _, _ in batch for e in events],
                    [a for _, aggregates, _ in batch for a in aggregates],
                )
                outcomes = [None] * len(batch)
            except IntegrityError:
                outcomes = await asyncio.to_thread(self._one_by_one, [(events, aggs) for events, aggs, _ in batch])
            except Exception as exc:  # noqa: BLE001 - every waiter learns what happened
                outcomes = [exc] * len(batch)
            for (_, _, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if outcome is None:
                    future.set_result(None)
                else:
                    future.set_exception(outcome)

    def _one_by_one(self, batches: list[tuple[list[Any], list[Aggregate]]]) -> list[BaseException | None]:
        outcomes: list[BaseException | None] = []
        for events, aggregates in batches:
            try:
                self.app.save_collected(events, aggregates)
                outcomes.append(None)
            except Exception as exc:  # noqa: BLE001
                outcomes.append(exc)
        return outcomes
