"""A service process: its database, event store, relay, consumers and timers.

Every service's ``bootstrap()`` builds one ``Service[App, Settings]`` and hands
it to ``http.create_app``; the plumbing here is the same for all five. The two
type parameters make ``svc.app``, ``svc.settings`` and ``svc.commands`` typed
for the service's own code: no service locator, no ``isinstance`` checks.

Process roles (``TSOP_ROLE``, ``Parts``): one process may do everything (``all``), only serve the routes
(``api``) or only do the background work (``worker``). The service declares its parts once (sinks, tasks,
followers, token resolvers); which of them a process starts is decided here, for all five services alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from typing_extensions import TypeVar

from tsop_events.auth import Principal, TokenResolver, load_token_table
from tsop_events.commands import Commands
from tsop_events.consumer import DECODED, OFFSETS_DDL, ConsumerGroup, ConsumerRunner, Incoming, Sink
from tsop_events.epoch import EpochWatcher
from tsop_events.faults import Faults
from tsop_events.news import NEWS_CHANNEL as NEWS_CHANNEL  # re-exported
from tsop_events.news import announce as announce  # re-exported: tests and tools publishing directly
from tsop_events.personal import PostgresKeyring, keyring_of
from tsop_events.relay import RELAY_DDL, SET_ASIDE_DDL, Mapper, Relay
from tsop_events.schemas import CustomerDataErased
from tsop_events.settings import ProcessRole, ServiceSettings
from tsop_events.stacks import dump_stacks
from tsop_events.store import EventStoreApp, GroupCommit, ensure_database, schema_lock
from tsop_events.topics import Topic
from tsop_events.wake import SAFETY_NET_SECONDS, Bell, Waiter, wait_event

log = logging.getLogger(__name__)

HEALTHY_SECONDS = 10.0  # a restarted background loop that ran this long without raising has recovered

@dataclass(frozen=True, slots=True)
class Parts:
    """What a process of a given role starts (``Parts.of(role)``).

    Every role opens the database and the event store (routes and consumers both save through it), listens for
    the saves of the service's other processes, creates the sinks' tables (an ``api`` process's routes read the
    projections, whether or not a worker has started yet) and runs the erasure listener (a broadcast: *every*
    process must forget an erased customer's opened data, docs/erasure.md).
    """

    routes: bool  # the service's HTTP routes, the token resolvers and the followers (views the routes read)
    work: bool  # the relay, the consumers (sinks) and the tasks (timers, delivery workers)

    @staticmethod
    def of(role: ProcessRole) -> Parts:
        return Parts(routes=role != "worker", work=role != "api")


A = TypeVar("A", bound=EventStoreApp, default=EventStoreApp, covariant=True)
S = TypeVar("S", bound=ServiceSettings, default=ServiceSettings, covariant=True)


@dataclass
class Runtime(Generic[A, S]):
    settings: S
    app_factory: Callable[[S], A] | None = None
    mapper: Mapper | None = None
    sinks: list[Callable[[Runtime[A, S]], Sink]] = field(default_factory=list)
    tasks: list[Callable[[Runtime[A, S]], Awaitable[None]]] = field(default_factory=list)
    # loops that keep the in-memory views the routes read current (credentials revoked by another instance):
    # run by every process that serves the routes (``all``, ``api``), not by a ``worker``
    followers: list[Callable[[Runtime[A, S]], Awaitable[None]]] = field(default_factory=list)
    ddl: list[str] = field(default_factory=list)
    token_resolvers: list[Callable[[Runtime[A, S]], TokenResolver]] = field(default_factory=list)
    commit_writers: int = 1  # group-commit batches written at once (see store.GroupCommit)

    pool: asyncpg.Pool = field(init=False)
    app: A = field(init=False)
    committer: GroupCommit = field(init=False)
    commands: Commands[A] = field(init=False)
    producer: AIOKafkaProducer = field(init=False)
    epoch: EpochWatcher = field(init=False)
    relay: Relay | None = field(init=False, default=None)
    runners: list[ConsumerRunner] = field(init=False, default_factory=list)
    extras: dict[str, Any] = field(init=False, default_factory=dict)
    # news that gives the service's loops work (see tsop_events.wake): any instance saved to the event
    # store, a consumer of this process stored a batch
    saved: Bell = field(init=False, default_factory=Bell)
    stored: Bell = field(init=False, default_factory=Bell)
    _tasks: list[asyncio.Task[None]] = field(init=False, default_factory=list)
    _announced: set[str] = field(init=False, default_factory=set)
    _announcing: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    _resolvers: list[TokenResolver] = field(init=False, default_factory=list)
    # the connection that hears other processes' saves: None where nothing is to be heard (no event store, or one
    # that cannot NOTIFY), else whether it is open now (an ``api`` process's readiness)
    saves_heard: bool | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        # what the service's background steps fail with now (timers, sweeps): /readyz degraded.failing
        self.faults = Faults(self.settings.service_name, logging.getLogger(f"tsop.{self.settings.service_name}"))
        # a malformed token table stops the service at start, not at the first request
        self.staff = load_token_table(self.settings.auth_tokens, self.settings.auth_tokens_file)
        self.parts = Parts.of(self.settings.role)

    @property
    def role(self) -> ProcessRole:
        return self.settings.role

    async def authenticate(self, token_hash: str) -> Principal | None:
        """The principal a token (by its SHA-256 hex) belongs to: configured staff, then the service's own."""
        found = self.staff.get(token_hash)
        for resolve in self._resolvers:
            if found is not None:
                break
            found = await resolve(token_hash)
        return found

    def waiter(self, saved: bool = True, stored: bool = False, pace: float = 0.05) -> Waiter:
        """A loop's wake-up call: when the event store saved (any instance) and/or a consumer here stored a batch;
        at most one round per ``pace`` seconds under load (see tsop_events.wake)."""
        return Waiter([b for b, wanted in ((self.saved, saved), (self.stored, stored)) if wanted], pace)

    async def start(self) -> None:
        s = self.settings
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not on this platform or thread
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump_stacks)
        await _retry(lambda: ensure_database(s, [RELAY_DDL, SET_ASIDE_DDL, OFFSETS_DDL, *self.ddl]), "PostgreSQL")
        self.pool = await create_pool(s.pg_dsn(), max_size=s.pg_pool_size)
        if self.app_factory is not None:
            factory = self.app_factory
            async with schema_lock(s):  # the event store creates its tables: one instance at a time
                self.app = await asyncio.to_thread(factory, s)
            self.committer = GroupCommit(self.app, writers=self.commit_writers)
            self.commands = Commands(self.app, self.committer)
        self.producer = AIOKafkaProducer(
            bootstrap_servers=s.kafka_bootstrap,
            acks="all",
            enable_idempotence=s.kafka_idempotence,
            linger_ms=5,
            max_batch_size=256 * 1024,
            request_timeout_ms=15000,
        )
        await _retry(self.producer.start, "Kafka")
        self.epoch = EpochWatcher(s, self.producer)
        self._spawn("epoch", lambda: self.epoch.run())
        if self.app_factory is not None and self.mapper is not None and self.parts.work:
            relay = Relay(s.service_name, self.app, self.mapper, self.producer, self.pool, s, self.epoch)
            self.relay = relay
            self.epoch.subscribe(relay.on_epoch)  # a new epoch: republish from the start at once
            loop = asyncio.get_running_loop()

            def wake_relay() -> None:
                loop.call_soon_threadsafe(relay.wake)

            self.app.on_saved(wake_relay)
            relay.on_published = self._announce
            self._spawn("relay", relay.run)
        if self.app_factory is not None:
            loop = asyncio.get_running_loop()

            def ring_saved() -> None:
                loop.call_soon_threadsafe(self.saved.ring)

            self.app.on_saved(ring_saved)
            self.saves_heard = False
            self._spawn("saves listener", self._listen_for_saves)
        if self.parts.routes:
            self._resolvers = [make(self) for make in self.token_resolvers]
        sinks = [make_sink(self) for make_sink in self.sinks]
        async with schema_lock(s):  # the sinks' tables, one instance at a time (their runners skip their setup)
            for sink in sinks:
                await sink.setup()
        if not self.parts.work:
            sinks = []  # an api process reads the sinks' tables; a worker fills them
        sinks.append(erasure_listener(self))  # every process forgets erased customers' keys and opened data
        # the grouped sinks share one Kafka consumer (see ConsumerGroup); broadcasts (no group) keep one each
        grouped: list[ConsumerRunner] = []
        for sink in sinks:
            runner = ConsumerRunner(
                sink, s, self.epoch, self.producer, on_stored=self.stored.ring, own_consumer=not sink.grouped
            )
            runner.set_up = True
            runner.on_published = self._announce  # its dead letters
            self.runners.append(runner)
            if sink.grouped:
                grouped.append(runner)
            else:
                runner.news = Waiter([])
                self._spawn(f"consumer {runner.sink.name}", runner.run)
        # one group for all (TSOP_CONSUMER_SHARED: fetched once, but the sinks move together), or one per sink (its
        # own consumer and pace: a lagging or failing sink holds back no other; its group id as before)
        for members in ([grouped] if s.consumer_shared else [[r] for r in grouped]) if grouped else []:
            group = ConsumerGroup(members, s, self.epoch)
            group.news = Waiter([])
            for runner in members:
                runner.news = group.news  # rung by _heard for any of the group's topics
            self._spawn(f"consumer {group.group_id}", group.run)
        self._spawn("publish news", self._publish_news)
        background = [*(self.followers if self.parts.routes else []), *(self.tasks if self.parts.work else [])]
        for task in background:
            self._spawn(getattr(task, "__name__", "task"), lambda t=task: t(self))  # type: ignore[misc]
        log.info("%s: role %s (routes %s, relay/consumers/tasks %s)", s.service_name, s.role,
                 "yes" if self.parts.routes else "no", "yes" if self.parts.work else "no")

    def _spawn(self, name: str, make: Callable[[], Awaitable[None]]) -> None:
        """Run a background loop for the process's life: one that raises is restarted a second later, and what it
        raised is reported through ``faults`` (logged once while it repeats, in /readyz ``degraded.failing``)
        until it has run ``HEALTHY_SECONDS`` without raising again."""

        async def supervised() -> None:
            step = f"task {name}"
            while True:
                task = asyncio.ensure_future(make())
                try:
                    done, _ = await asyncio.wait({task}, timeout=HEALTHY_SECONDS)
                    if not done:
                        self.faults.ok(step)  # running again, and for a while: what it failed with has passed
                    await task
                    self.faults.ok(step)  # it ended as it should (it may have failed before)
                    return
                except asyncio.CancelledError:
                    task.cancel()  # stopping: the loop's own clean-up finishes before the runtime closes its pools
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
                    raise
                except Exception as exc:  # noqa: BLE001 - a loop that fails is restarted, never given up
                    self.faults.failed(step, exc)
                    await asyncio.sleep(1.0)

        self._tasks.append(asyncio.create_task(supervised(), name=name))

    async def _listen_for_saves(self) -> None:
        """Ring ``saved`` on every save of any instance: the event store NOTIFYs its table's channel on insert.

        One connection per process, LISTENing; checked with a ``SELECT 1`` every five safety-net intervals and
        opened again if it dropped or did not answer, with a ring then, as saves may have been missed meanwhile.
        """
        channel = getattr(self.app.recorder, "channel_name", None)
        if not channel:  # a store that cannot NOTIFY: the loops' safety net is their only wake-up
            self.saves_heard = None
            return
        while True:
            try:
                conn = await asyncpg.connect(self.settings.pg_dsn())
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("saves listener: %s; retrying", exc)
                await asyncio.sleep(SAFETY_NET_SECONDS)
                continue
            try:
                await conn.add_listener(channel, lambda *_: self.saved.ring())
                self.saves_heard = True
                self.saved.ring()
                while not conn.is_closed():
                    await asyncio.sleep(SAFETY_NET_SECONDS * 5)
                    # one round trip: a server gone silently (no reset) leaves the connection looking open, and an
                    # api process's readiness is this listener
                    await asyncio.wait_for(conn.execute("SELECT 1"), SAFETY_NET_SECONDS)
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("saves listener: %s; listening again", exc)
            finally:
                self.saves_heard = False
                with contextlib.suppress(Exception):
                    await conn.close()

    def _announce(self, topics: set[str]) -> None:
        """After the broker acknowledged a batch: tell every consumer of the platform, coalesced (see _publish_news)."""
        self._announced |= topics
        self._announcing.set()

    def _heard(self, payload: str) -> None:
        topics = set(payload.split(","))
        prefix = self.settings.topic_prefix
        for runner in self.runners:
            if runner.news is not None and topics & {t.qualified(prefix) for t in runner.sink.topics}:
                runner.news.ring()

    async def _publish_news(self) -> None:
        """Relays announce what they published and consumers listen, on ``NEWS_CHANNEL`` of the ``postgres``
        database that every service's PostgreSQL user reaches (NOTIFY does not cross databases). One connection per
        process; announcements made while one is sent go out together. A lost announcement costs a paused consumer
        at most the safety net; when the connection drops every consumer is woken."""
        while True:
            try:
                conn = await asyncpg.connect(self.settings.pg_dsn("postgres"))
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("publish news: %s; retrying", exc)
                await asyncio.sleep(SAFETY_NET_SECONDS)
                continue
            topics: set[str] = set()
            try:
                await conn.add_listener(NEWS_CHANNEL, lambda *args: self._heard(args[-1]))
                conn.add_termination_listener(lambda *_: self._announcing.set())  # a lost connection: at once
                self._ring_all()  # what was announced while no one of us listened: read now
                while not conn.is_closed():
                    await wait_event(self._announcing, SAFETY_NET_SECONDS * 5)
                    self._announcing.clear()
                    topics, self._announced = self._announced, set()
                    if topics:
                        await conn.execute("SELECT pg_notify($1, $2)", NEWS_CHANNEL, ",".join(sorted(topics)))
                        topics = set()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("publish news: %s; listening again", exc)
            finally:
                if topics:  # not sent: sent on the next connection
                    self._announced |= topics
                    self._announcing.set()
                self._ring_all()
                with contextlib.suppress(Exception):
                    await conn.close()

    def _ring_all(self) -> None:
        for runner in self.runners:
            if runner.news is not None:
                runner.news.ring()

    def readiness(self) -> dict[str, bool]:
        """What must work for this process to do its part. An ``api`` process needs its database (the connection
        that hears the other processes' saves is open), not the broker: what it accepts is kept in the event store
        and published by a worker's relay, so a broker outage takes no api process out of service. The others
        need the broker's epoch, the relay and every consumer."""
        if not self.parts.work:
            return {} if self.saves_heard is None else {"database": self.saves_heard}
        checks = {"broker_epoch": self.epoch.epoch is not None}
        if self.relay is not None:
            checks["relay"] = self.relay.running
        for r in self.runners:
            if not isinstance(r.sink, ErasureListener):  # it only hastens what the key cache bounds (docs/erasure.md)
                checks[f"consumer:{r.sink.name}"] = r.running
        return checks

    def degraded(self) -> dict[str, Any]:
        """What works but needs an operator, without taking the instance out of service.

        A notification the relay set aside is one bad record: every other event still flows, so
        ``/readyz`` stays 200 (a 503 would take every instance out of the load balancer for it)
        and names the count here; ``python -m tsop_events.relay list`` shows them.
        """
        out: dict[str, Any] = {}
        if self.faults.current:
            out["failing"] = dict(self.faults.current)  # background steps; the others go on (tsop_events.faults)
        # a consumer found stuck and started again, until its first fetch is back: once it flows, nothing here
        # (the restart stays in the log and in tsop_consumer_restarts_total; see tsop_events.consumer._restarting)
        if restarted := {r.sink.name: r.restarted for r in self.runners if r.restarted is not None}:
            out["consumers_restarted"] = restarted
        if self.relay is not None and self.relay.set_aside:
            out["relay_set_aside"] = {
                "count": self.relay.set_aside,
                "see": "python -m tsop_events.relay list; republish after a fix",
            }
        return out

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.epoch.close()
        await self.producer.stop()
        await self.pool.close()
        if self.app_factory is not None:
            self.app.close()


Service = Runtime
"""The name a service's code uses: ``Service[IntakeApp, IntakeSettings]``."""

Task = Callable[[Runtime[A, S]], Awaitable[None]]


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to reset: the platform keeps no session state on pooled connections."""


async def create_pool(dsn: str, max_size: int) -> asyncpg.Pool:
    """An asyncpg pool whose connections go back without asyncpg's default reset.

    That reset (``RESET ALL``, ``UNLISTEN *``, ``CLOSE ALL``, unlocking advisory locks) is a round trip on every
    release, i.e. on every request and consumer batch. Pooled connections never hold session state here:
    settings are ``SET LOCAL``, locks are transaction-scoped, and LISTEN and the relay's advisory lock use
    connections of their own. asyncpg still rolls back a transaction left open before a connection is reused.
    """
    return await asyncpg.create_pool(dsn, min_size=1, max_size=max_size, reset=_keep_session)


async def _retry(start: Callable[[], Awaitable[None]], what: str, timeout: float = 120.0) -> None:
    """Wait for a dependency at start-up instead of dying when it is a bit late."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            await start()
            return
        except (OSError, KafkaError, asyncpg.PostgresError) as exc:
            if loop.time() > deadline:
                raise
            log.warning("waiting for %s: %s", what, exc)
            await asyncio.sleep(1.0)


class ErasureListener(Sink):
    """Hears ``CustomerDataErased`` (docs/erasure.md): the process forgets the data keys it cached, the aggregates it
    holds opened in memory and what its views derived from the erased customers' personal fields
    (``EventStoreApp.forget_erased``, called with their ids), so an erased customer's data stops opening here at once
    rather than when the key cache expires. Other records on the topic (the archive's legal holds) pass it by.

    A broadcast, not a consumer group: *every* process of the service must forget (a group would hand each erasure
    to one instance only). So each process reads the ``customers`` topic from its start (erasures are rare) with no
    group, and keeps its positions in memory only: nothing is stored, no row is left behind per process, and a
    process started later, or whose listener restarted, reads every erasure again (forgetting is idempotent)."""

    topics: ClassVar[tuple[Topic, ...]] = (Topic.customers,)
    event_types: ClassVar[frozenset[str] | None] = frozenset({CustomerDataErased.event_type})
    grouped: ClassVar[bool] = False

    def __init__(self, forget: Callable[[set[str]], None]) -> None:
        self.forget = forget  # called with the erased customers' ids
        self._positions: dict[tuple[str, str, int], int] = {}  # (epoch, topic, partition) -> next offset

    async def position(self, epoch: str, topic: str, partition: int) -> int | None:
        return self._positions.get((epoch, topic, partition))

    async def process(
        self, epoch: str, topic: str, partition: int, records: Sequence[Incoming], last_offset: int
    ) -> None:
        done = self._positions.get((epoch, topic, partition))
        erased = {
            r.event.customer_id for r in records
            if (done is None or r.offset >= done) and isinstance(r.event, CustomerDataErased)
        }
        if erased:
            await asyncio.to_thread(self.forget, erased)
        self._positions[(epoch, topic, partition)] = max(done or 0, last_offset + 1)


def erasure_listener(runtime: Runtime[Any, Any]) -> ErasureListener:
    """The process's listener (a broadcast: every process of the service hears every erasure)."""
    settings, app = runtime.settings, (runtime.app if runtime.app_factory is not None else None)

    def forget(customers: set[str]) -> None:
        try:
            keyring = keyring_of(settings)
            if isinstance(keyring, PostgresKeyring):
                keyring.forget()
            if app is not None:
                app.forget_erased(customers)
        finally:
            # last: records decoded for the consumers (a sink's own decoding may open personal data). This runs in
            # a thread while the consumers decode: emptied first, a record decoded before the keys above were
            # dropped (with a key the erasure destroys) would stay kept
            DECODED.forget()

    cls = type("ErasureListener", (ErasureListener,), {"name": f"{settings.service_name}-erasure"})
    listener: ErasureListener = cls(forget)
    return listener

