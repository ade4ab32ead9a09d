"""A consumer that hangs says where and recovers (tsop_events.consumer's watch on its fetches and batches)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from prometheus_client import REGISTRY

from tsop_events import consumer as consumer_mod
from tsop_events.consumer import ConsumerRunner, ConsumerStuck, Incoming, Sink, _poll
from tsop_events.faults import Faults
from tsop_events.runtime import Runtime
from tsop_events.settings import ServiceSettings
from tsop_events.stacks import dump_stacks


class WedgedConsumer:
    """A Kafka consumer whose fetch never returns, as aiokafka's does while it waits for a group assignment that
    never comes (it waits for one without any timeout)."""

    def __init__(self, batches: list[dict[TopicPartition, list[Any]]] | None = None) -> None:
        self.batches = list(batches or [])

    def subscription(self) -> set[str]:
        return {"tsop.tickets"}

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, list[Any]]:
        if self.batches:
            return self.batches.pop(0)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def _ignore(_: dict[TopicPartition, list[Any]]) -> None:
    return None


async def test_a_fetch_that_never_returns_restarts_the_consumer_and_logs_where_it_hung(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(consumer_mod, "STUCK_FETCH_SECONDS", 0.3)
    caplog.set_level(logging.WARNING)
    with pytest.raises(ConsumerStuck):
        # without the watch, the poll loop waits for ever (a consumer silent while its topic fills up)
        await asyncio.wait_for(_poll(WedgedConsumer(), ServiceSettings(), None, _ignore), 5.0)
    logged = caplog.text
    assert "a fetch not back after 0.3 s" in logged and "tsop.tickets" in logged
    assert "getmany" in logged  # the stacks name what the consumer awaited


async def test_a_batch_that_takes_long_has_the_stacks_logged_and_still_completes(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(consumer_mod, "STUCK_FETCH_SECONDS", 0.3)
    monkeypatch.setattr(consumer_mod, "SLOW_BATCH_SECONDS", 0.1)
    caplog.set_level(logging.WARNING)
    applied: list[int] = []

    async def slow_apply_of_a_batch(batch: dict[TopicPartition, list[Any]]) -> None:
        await asyncio.sleep(0.4)
        applied.append(len(batch))

    tp = TopicPartition("tsop.tickets", 0)
    with pytest.raises(ConsumerStuck):
        await asyncio.wait_for(
            _poll(WedgedConsumer([{tp: [object()]}]), ServiceSettings(), None, slow_apply_of_a_batch),
            5.0,
        )
    assert applied == [1]  # watched, not cancelled
    assert "a batch still applying after 0.1 s" in caplog.text
    assert "slow_apply_of_a_batch" in caplog.text


async def test_the_stacks_follow_a_task_down_to_what_it_awaits(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)

    async def innermost_wait() -> None:
        await asyncio.Event().wait()

    async def outer_step() -> None:
        await innermost_wait()

    task = asyncio.create_task(outer_step(), name="the-hung-loop")
    await asyncio.sleep(0.01)
    dump_stacks("test")
    task.cancel()
    text = caplog.text
    assert "--- task the-hung-loop" in text
    hung = text.split("--- task the-hung-loop", 1)[1]
    assert hung.index("outer_step") < hung.index("innermost_wait")  # the whole chain, not the outermost frame
    assert "--- thread MainThread" in text


async def test_a_watched_batch_cancelled_finishes_its_clean_up_first() -> None:
    steps: list[str] = []

    async def apply_in_a_transaction(_: dict[TopicPartition, list[Any]]) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.05)  # a rollback's round trip
            steps.append("rolled back")

    tp = TopicPartition("tsop.tickets", 0)
    loop_task = asyncio.create_task(
        _poll(WedgedConsumer([{tp: [object()]}]), ServiceSettings(), None, apply_in_a_transaction)
    )
    await asyncio.sleep(0.05)
    loop_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop_task
    assert steps == ["rolled back"]


class Coordinator:
    def __init__(self, coordinator_id: int | None) -> None:
        self.coordinator_id = coordinator_id


class LookingForItsCoordinator(WedgedConsumer):
    """A grouped consumer whose broker is unreachable: aiokafka looks for the group's coordinator, and its fetch
    waits for an assignment meanwhile (legitimately: a fresh consumer would only begin looking again)."""

    def __init__(self, found_after: float, batch: dict[TopicPartition, list[Any]]) -> None:
        super().__init__()
        self._coordinator = Coordinator(None)
        self.found_after = found_after
        self.batch = batch
        self.began = asyncio.get_running_loop().time()

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, list[Any]]:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, self.began + self.found_after - loop.time()))
        self._coordinator.coordinator_id = 1
        batch, self.batch = self.batch, {}
        if not batch:
            await asyncio.Event().wait()
        return batch


async def test_a_fetch_waiting_for_its_groups_coordinator_is_not_stuck(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(consumer_mod, "STUCK_FETCH_SECONDS", 0.2)
    caplog.set_level(logging.WARNING)
    tp = TopicPartition("tsop.tickets", 0)
    applied: list[int] = []

    async def apply(batch: dict[TopicPartition, list[Any]]) -> None:
        applied.append(len(batch[tp]))

    consumer = LookingForItsCoordinator(0.7, {tp: [object(), object()]})  # three watch periods and more
    # once found, its fetch is back and applied; the next one (never back, coordinator known) is stuck
    with pytest.raises(ConsumerStuck):
        await asyncio.wait_for(_poll(consumer, ServiceSettings(), None, apply), 5.0)
    assert applied == [2]
    assert "waiting 0.2 s for its group's coordinator" in caplog.text


class Subscription:
    """aiokafka's subscription state as a fetch sees it: ``abort_waiters`` fails what a fetch waits for."""

    def __init__(self) -> None:
        self.waiters: list[asyncio.Future[None]] = []

    def abort_waiters(self, exc: BaseException) -> None:
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_exception(exc)


class Client:
    def __init__(self) -> None:
        self.dies = asyncio.Event()

        async def metadata_synchronizer() -> None:
            await self.dies.wait()
            # what uvloop raised from a write on a connection the broker reset (tests/unit/test_kafka_connection.py)
            raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")

        self._sync_task = asyncio.ensure_future(metadata_synchronizer())


class ItsMetadataSynchronizerDies(WedgedConsumer):
    """A consumer waiting for its group's assignment, whose leader waits for metadata its client will never fetch."""

    def __init__(self) -> None:
        super().__init__()
        self._client = Client()
        self._subscription = Subscription()
        self._coordinator = Coordinator(1)

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, list[Any]]:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._subscription.waiters.append(waiter)  # aiokafka's wait for the next assignment
        await waiter
        raise AssertionError("unreachable")


async def test_a_consumer_whose_clients_metadata_synchronizer_died_is_stuck_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(consumer_mod, "STUCK_FETCH_SECONDS", 60.0)
    consumer = ItsMetadataSynchronizerDies()
    poll = asyncio.ensure_future(_poll(consumer, ServiceSettings(), None, _ignore))
    await asyncio.sleep(0.05)
    assert not poll.done()
    consumer._client.dies.set()  # while its fetch waits
    with pytest.raises(ConsumerStuck, match=r"metadata synchronizer died \(RuntimeError"):
        await asyncio.wait_for(poll, 2.0)  # not after STUCK_FETCH_SECONDS
    # and a fetch begun after it died does not wait at all
    consumer._subscription.waiters.clear()
    with pytest.raises(ConsumerStuck, match="metadata synchronizer died"):
        await asyncio.wait_for(_poll(consumer, ServiceSettings(), None, _ignore), 2.0)


class Positions(Sink):
    name = "work-orders"

    async def position(self, epoch: str, topic: str, partition: int) -> int | None:
        return None

    async def process(
        self, epoch: str, topic: str, partition: int, records: Sequence[Incoming], last_offset: int
    ) -> None:
        return None


def _restarts(name: str) -> float:
    return REGISTRY.get_sample_value("tsop_consumer_restarts_total", {"consumer": name}) or 0.0


async def test_a_restarted_consumer_is_named_in_readiness_until_its_first_fetch_is_back(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(consumer_mod, "RESTART_PAUSE_SECONDS", 0.01)
    caplog.set_level(logging.WARNING)
    runner = ConsumerRunner(Positions(), ServiceSettings(), None, None, own_consumer=False)  # type: ignore[arg-type]
    runtime = SimpleNamespace(faults=Faults("dispatch"), relay=None, runners=[runner])
    starts: list[int] = []
    flowing, go_on = asyncio.Event(), asyncio.Event()

    async def run_consumer() -> None:
        starts.append(len(starts))
        if len(starts) == 1:
            raise ConsumerStuck("consumer ['tsop.tickets']: a fetch not back after 60 s")
        await go_on.wait()  # the fresh consumer joins its group: no fetch back yet
        runner.fetched()  # its first fetch is back
        flowing.set()
        await asyncio.Event().wait()

    before = _restarts("work-orders")
    task = asyncio.create_task(consumer_mod._restarting("work-orders", [runner], run_consumer))
    for _ in range(100):
        if len(starts) == 2:
            break
        await asyncio.sleep(0.01)
    assert starts == [0, 1]  # started again, by the consumer itself (not a failure of the service)
    degraded = Runtime.degraded(runtime)  # type: ignore[arg-type]
    assert degraded == {"consumers_restarted": {
        "work-orders": "consumer ['tsop.tickets']: a fetch not back after 60 s; restarted, its first fetch not back yet"
    }}
    assert _restarts("work-orders") == before + 1  # what an operator sees afterwards, with the log
    assert "restarting it as a fresh Kafka consumer" in caplog.text
    go_on.set()
    await asyncio.wait_for(flowing.wait(), 2.0)
    assert Runtime.degraded(runtime) == {}  # type: ignore[arg-type]  # it flows: ready, nothing to report
    assert "work-orders flows again after its restart" in caplog.text
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_any_other_error_of_a_consumer_is_left_to_the_runtimes_supervision() -> None:
    runner = ConsumerRunner(Positions(), ServiceSettings(), None, None, own_consumer=False)  # type: ignore[arg-type]

    async def run_consumer() -> None:
        raise OSError("PostgreSQL is down")

    with pytest.raises(OSError, match="PostgreSQL is down"):
        await consumer_mod._restarting("work-orders", [runner], run_consumer)
    assert runner.restarted is None
