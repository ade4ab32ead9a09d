"""What wakes an idle process at once rather than at its safety net (the idle/hot4 review's fixes):

- an epoch change moves a consumer back in the new broker incarnation and rings it, so a paused one reads at once;
- a stopped consumer client is dropped, so an epoch change leaves it alone;
- records republished from the set-aside table are announced, as the relay's own batches are;
- an operator's republish request maintains at once, and a lost leadership connection is checked at once;
- the news connection rings every consumer once it listens again, sends later what it could not send, and notices
  its loss at once;
- intake's completion timer waits at least its pace (a deadline it could not settle is not retried in a busy loop).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import pytest

from tests.dispatch_sync import SyncDispatch
from tests.unit.test_consumer_epoch_seeks import TOPIC, TP, Consumer, Epoch, Sink
from tsop_dispatch.commands import DispatchApp, work_order_id
from tsop_dispatch.wire import WIRE
from tsop_events import consumer as consumer_mod
from tsop_events import runtime as runtime_mod
from tsop_events.clock import ManualClock
from tsop_events.consumer import ConsumerGroup, ConsumerRunner
from tsop_events.relay import Relay, request_channel
from tsop_events.runtime import Runtime
from tsop_events.settings import ServiceSettings
from tsop_intake import views as intake_views

# --- consumers: an epoch change -------------------------------------------------------------------------


class News:
    """A consumer's news waiter: counts its rings."""

    def __init__(self) -> None:
        self.rings = 0

    def ring(self) -> None:
        self.rings += 1


async def test_an_epoch_change_rings_the_consumer_it_moved_back() -> None:
    epoch, sink, consumer = Epoch(), Sink(), Consumer()
    runner = ConsumerRunner(sink, ServiceSettings(), epoch, None)  # type: ignore[arg-type]
    runner.consumer = consumer  # type: ignore[assignment]
    runner.news = news = News()  # type: ignore[assignment]
    await epoch.change("new")
    assert consumer.at[TP] == 0  # moved back to the new incarnation's beginning
    assert news.rings == 1, "a paused consumer reads nothing of the new incarnation until its safety net"


async def test_an_epoch_change_rings_the_group_it_moved_back() -> None:
    epoch, sink, consumer = Epoch(), Sink(), Consumer()
    runner = ConsumerRunner(sink, ServiceSettings(), epoch, None, own_consumer=False)  # type: ignore[arg-type]
    group = ConsumerGroup([runner], ServiceSettings(), epoch)  # type: ignore[arg-type]
    group.consumer = runner.consumer = consumer  # type: ignore[assignment]
    group.news = news = News()  # type: ignore[assignment]
    await epoch.change("new")
    assert consumer.at[TP] == 0
    assert news.rings == 1, "a paused group reads nothing of the new incarnation until its safety net"


# --- consumers: a stopped client --------------------------------------------------------------------------


class Startable(Consumer):
    def __init__(self) -> None:
        super().__init__()
        self.stopped = False

    def subscribe(self, topics: list[str], listener: Any = None) -> None:
        assert topics == [TOPIC]

    async def start(self) -> None:
        pass


@pytest.fixture
def stopping(monkeypatch: pytest.MonkeyPatch) -> Startable:
    """The next consumer a runner or group starts: its poll ends at once (as a stuck or failed one does)."""
    client = Startable()

    async def poll(*_: object) -> None:
        raise RuntimeError("the poll failed")

    async def stop(consumer: Startable) -> None:
        consumer.stopped = True

    monkeypatch.setattr(consumer_mod, "_consumer", lambda settings, group_id: client)
    monkeypatch.setattr(consumer_mod, "_poll", poll)
    monkeypatch.setattr(consumer_mod, "_stop", stop)
    return client


async def test_an_epoch_change_after_a_runner_stopped_leaves_its_stopped_client_alone(stopping: Startable) -> None:
    epoch, sink = Epoch(), Sink()
    runner = ConsumerRunner(sink, ServiceSettings(), epoch, None)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        await runner._run_consumer()
    assert stopping.stopped
    await epoch.change("new")  # before the restart starts a new client
    assert stopping.at == {}, "the stopped client was sought (and its metadata refreshed)"
    assert runner.consumer is None


async def test_an_epoch_change_after_a_group_stopped_leaves_its_stopped_client_alone(stopping: Startable) -> None:
    epoch, sink = Epoch(), Sink()
    runner = ConsumerRunner(sink, ServiceSettings(), epoch, None, own_consumer=False)  # type: ignore[arg-type]
    group = ConsumerGroup([runner], ServiceSettings(), epoch)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError):
        await group._run_consumer()
    assert stopping.stopped
    await epoch.change("new")
    assert stopping.at == {}, "the stopped client was sought (and its metadata refreshed)"
    assert group.consumer is None and runner.consumer is None


NOW = datetime(2026, 6, 1, 9, tzinfo=UTC)


# --- the relay ----------------------------------------------------------------------------------------------


class Acked:
    """A producer whose every send the broker acknowledges."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, topic: str, **_: object) -> asyncio.Future[None]:
        self.sent.append(topic)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class SetAside:
    """The relay's pool: every notification of the store set aside and asked for again; the updates recorded."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids
        self.fetches = 0
        self.updates: list[tuple[Any, ...]] = []

    async def fetch(self, query: str, *args: Any) -> list[dict[str, Any]]:
        self.fetches += 1
        if "SELECT notification_id" in query:
            return [{"notification_id": i} for i in self.ids]
        return []  # maintain(): nothing set aside

    async def execute(self, query: str, *args: Any) -> None:
        self.updates.append(args)


class KnownEpoch:
    epoch = "e1"

    async def wait_known(self) -> str:
        return "e1"


def test_republished_records_are_announced_by_their_topics() -> None:
    # the store's app runs its commands with asyncio.run (tests.dispatch_sync): built outside a running loop
    app = SyncDispatch(DispatchApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=ManualClock(NOW)))
    app.register_technician(uuid4(), "T", ["broadband.fault_repair"], ["north"], 1)
    app.save(app.open_work_order(work_order_id("T-1"), "T-1", "broadband.fault_repair", "north", 2, None, "c"))
    ids = [n.id for n in app.recorder.select_notifications(1, 10)]
    producer, pool = Acked(), SetAside(ids)
    relay = Relay("dispatch", app.app, WIRE, producer, pool,  # type: ignore[arg-type]
                  ServiceSettings(service_name="dispatch", topic_prefix="p."), KnownEpoch())  # type: ignore[arg-type]
    heard: list[set[str]] = []
    relay.on_published = heard.append
    done, failed = asyncio.run(relay.republish())
    assert (done, failed) == (len(ids), 0) and "p.workforce" in producer.sent
    assert heard == [set(producer.sent)], "a paused consumer reads the republished records only at its safety net"


class Lock:
    """The relay's leadership connection: keeps its listeners, answers its checks."""

    def __init__(self) -> None:
        self.listeners: dict[str, Callable[..., None]] = {}
        self.terminated: list[Callable[..., None]] = []
        self.checks = 0

    async def add_listener(self, channel: str, callback: Callable[..., None]) -> None:
        self.listeners[channel] = callback

    def add_termination_listener(self, callback: Callable[..., None]) -> None:
        self.terminated.append(callback)

    async def fetchval(self, query: str) -> int:
        self.checks += 1
        return 1


def listening_relay(pool: SetAside) -> Relay:
    app = SimpleNamespace(recorder=SimpleNamespace(channel_name="tsop_events", max_notification_id=lambda: 0))
    return Relay("dispatch", app, WIRE, Acked(), pool,  # type: ignore[arg-type]
                 ServiceSettings(service_name="dispatch"), KnownEpoch())  # type: ignore[arg-type]


async def test_an_operator_s_republish_request_maintains_at_once_however_recent_the_last_round() -> None:
    pool, lock = SetAside([]), Lock()
    relay = listening_relay(pool)
    assert await relay._listen(lock)  # type: ignore[arg-type]
    await relay.maintain()
    await relay.maintain()  # within MAINTENANCE_SECONDS: skipped
    assert pool.fetches == 1
    relay._wake.clear()
    lock.listeners[request_channel("dispatch")](lock, 1, request_channel("dispatch"), "")
    assert relay._wake.is_set()
    await relay.maintain()
    assert pool.fetches == 2, "the request waits out the maintenance pace (and then the idle safety net)"


async def test_a_lost_leadership_connection_is_checked_at_once_however_recent_the_last_check() -> None:
    lock = Lock()
    relay = listening_relay(SetAside([]))
    assert await relay._listen(lock)  # type: ignore[arg-type]
    assert await relay._still_leading(lock)  # type: ignore[arg-type]
    assert await relay._still_leading(lock)  # type: ignore[arg-type]  # within LEADER_CHECK_SECONDS: not asked
    assert lock.checks == 1
    relay._wake.clear()
    (lost,) = lock.terminated
    lost(lock)
    assert relay._wake.is_set()
    await relay._still_leading(lock)  # type: ignore[arg-type]
    assert lock.checks == 2, "a lost lead is noticed only at the next leader check"


# --- the runtime's news connection ---------------------------------------------------------------------------


class NewsConn:
    """A connection to the ``postgres`` database: its NOTIFYs recorded, or failing (the connection lost)."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.closed = False
        self.listening = False
        self.notified: list[str] = []
        self.terminated: list[Callable[..., None]] = []

    async def add_listener(self, channel: str, callback: Callable[..., None]) -> None:
        self.listening = True

    def add_termination_listener(self, callback: Callable[..., None]) -> None:
        self.terminated.append(callback)

    def is_closed(self) -> bool:
        return self.closed

    async def execute(self, query: str, channel: str, payload: str) -> None:
        if self.fail:
            self.closed = True
            raise OSError("connection reset")
        self.notified.append(payload)

    def lose(self) -> None:
        self.closed = True
        for callback in self.terminated:
            callback(self)

    async def close(self) -> None:
        self.closed = True


class Connecting:
    """asyncpg.connect handing out the given connections in turn, then ones that stay open."""

    def __init__(self, *conns: NewsConn) -> None:
        self.conns = list(conns)
        self.made: list[NewsConn] = []

    async def __call__(self, dsn: str) -> NewsConn:
        conn = self.conns.pop(0) if self.conns else NewsConn()
        self.made.append(conn)
        return conn


class Listened:
    """A consumer's news waiter that notes whether the news connection listened when it was rung."""

    def __init__(self, connecting: Connecting) -> None:
        self.connecting = connecting
        self.rings: list[bool] = []

    def ring(self) -> None:
        self.rings.append(bool(self.connecting.made) and self.connecting.made[-1].listening
                          and not self.connecting.made[-1].closed)


@contextlib.asynccontextmanager
async def publishing(monkeypatch: pytest.MonkeyPatch, connecting: Connecting) -> Any:
    monkeypatch.setattr(runtime_mod.asyncpg, "connect", connecting)
    rt: Runtime[Any, Any] = Runtime(ServiceSettings(service_name="news"))
    task = asyncio.create_task(rt._publish_news())
    try:
        yield rt
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def settle(until: Callable[[], bool]) -> None:
    for _ in range(100):
        if until():
            return
        await asyncio.sleep(0.01)


async def test_the_news_connection_rings_every_consumer_once_it_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    connecting = Connecting()
    async with publishing(monkeypatch, connecting) as rt:
        news = Listened(connecting)
        rt.runners.append(SimpleNamespace(news=news))  # type: ignore[arg-type]
        await settle(lambda: bool(news.rings))
        # what was announced while no connection of this process listened is read now, not at the safety net
        assert news.rings, "not rung while the connection is open: a paused consumer waits for its safety net"
        assert news.rings[0], "rung before the connection listened: what is announced meanwhile is missed"


async def test_topics_the_news_connection_could_not_send_go_out_on_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    lost, after = NewsConn(fail=True), NewsConn()
    async with publishing(monkeypatch, Connecting(lost, after)) as rt:
        rt._announce({"t.tickets"})
        await settle(lambda: bool(after.notified))
        assert lost.closed and after.notified == ["t.tickets"], "an announcement lost with its connection"


async def test_a_lost_news_connection_is_noticed_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    first = NewsConn()
    connecting = Connecting(first)
    async with publishing(monkeypatch, connecting) as rt:
        news = Listened(connecting)
        rt.runners.append(SimpleNamespace(news=news))  # type: ignore[arg-type]
        await settle(lambda: first.listening)
        first.lose()
        await settle(lambda: len(connecting.made) > 1 and connecting.made[-1].listening)
        assert len(connecting.made) == 2, "no one listens (nor announces) until the safety net"


# --- intake's completion timer -------------------------------------------------------------------------------


async def test_the_completion_timer_waits_at_least_its_pace(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []

    class Wake:
        pace = 1.0

        async def wait(self, timeout: float) -> bool:
            waits.append(timeout)
            if len(waits) == 3:
                raise asyncio.CancelledError
            return False

    async def expire_pending(svc: object) -> int:
        return 0  # a deadline already past that the round could not settle

    monkeypatch.setattr(intake_views, "expire_pending", expire_pending)
    monkeypatch.setattr(intake_views, "until_next_deadline", lambda app: 0.0)
    svc = SimpleNamespace(app=None, waiter=lambda **_: Wake())
    with pytest.raises(asyncio.CancelledError):
        await intake_views.completion_deadlines(svc)  # type: ignore[arg-type]
    assert waits == [1.0, 1.0, 1.0], "a round as fast as the loop can go"
