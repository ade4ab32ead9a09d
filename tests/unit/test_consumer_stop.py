"""A consumer's stop is bounded; one that did not finish leaves nothing of the consumer running.

aiokafka's ``stop`` closes the group coordinator first, waiting for its coordination task (a wedged consumer's may
wait for a join or a coordinator for long), and only then stops the heartbeats and the fetches and closes the
connections. Cut short, it left those running: a member still heartbeating holds up its group's next rebalance, so
the join of the consumer started in its place, until its rebalance timeout (5 minutes), and its fetches go on."""

from __future__ import annotations

import asyncio
import inspect

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.client import AIOKafkaClient
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.consumer.subscription_state import SubscriptionState

from tsop_events import consumer as consumer_mod
from tsop_events.consumer import _stop


async def forever() -> None:
    await asyncio.Event().wait()


class Coordinator:
    def __init__(self) -> None:
        self._heartbeat_task = asyncio.ensure_future(forever())
        self._commit_refresh_task = None
        self._coordination_task = asyncio.ensure_future(forever())  # waiting for a join, or for metadata


class FetcherLike:
    def __init__(self) -> None:
        self._fetch_task = asyncio.ensure_future(forever())


class Client:
    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class WedgedConsumer:
    """Shaped as an AIOKafkaConsumer whose stop never finishes (its coordinator waits for its coordination task)."""

    def __init__(self) -> None:
        self._coordinator = Coordinator()
        self._fetcher = FetcherLike()
        self._client = Client()

    def subscription(self) -> set[str]:
        return {"tsop.tickets"}

    async def stop(self) -> None:
        await forever()


async def test_a_stop_cut_short_stops_the_heartbeats_and_fetches_and_closes_the_connections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(consumer_mod, "STOP_SECONDS", 0.1)
    consumer = WedgedConsumer()
    await asyncio.wait_for(_stop(consumer), 5.0)  # type: ignore[arg-type]
    await asyncio.sleep(0)  # the cancellations delivered
    assert consumer._coordinator._heartbeat_task.cancelled(), "still a member of its group, heartbeating"
    assert consumer._fetcher._fetch_task.cancelled(), "still fetching"
    assert consumer._coordinator._coordination_task.cancelled(), "left waiting for ever"
    assert consumer._client.closed


class DeadClient(Client):
    """aiokafka's client whose metadata synchronizer died: its close re-raises that error before closing anything."""

    def __init__(self) -> None:
        super().__init__()

        async def died() -> None:
            raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")

        self._sync_task: asyncio.Future[None] | None = asyncio.ensure_future(died())

    async def close(self) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
            await self._sync_task
        self.closed = True


async def test_a_consumer_whose_client_died_is_stopped_at_once_and_its_connections_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(consumer_mod, "STOP_SECONDS", 30.0)
    consumer = WedgedConsumer()
    consumer._client = DeadClient()
    await asyncio.sleep(0)  # the synchronizer dies
    await asyncio.wait_for(_stop(consumer), 2.0)  # type: ignore[arg-type]  # not after STOP_SECONDS
    await asyncio.sleep(0)
    assert consumer._coordinator._heartbeat_task.cancelled()
    assert consumer._fetcher._fetch_task.cancelled()
    assert consumer._client.closed, "its connections left open"


def test_aiokafka_keeps_those_tasks_where_the_stop_looks_for_them() -> None:
    # private attributes: a newer aiokafka that renames them must fail here, not leave zombies unnoticed
    assert "self._heartbeat_task = " in inspect.getsource(GroupCoordinator)
    assert "self._commit_refresh_task = " in inspect.getsource(GroupCoordinator)
    assert "self._coordination_task = " in inspect.getsource(GroupCoordinator)
    assert "self._fetch_task = " in inspect.getsource(Fetcher)


def test_aiokafka_keeps_what_the_consumer_watch_looks_at() -> None:
    # tsop_events.consumer._dead_work, _abort_fetch_if_client_dies and _finding_coordinator: private as well
    assert "self._sync_task = " in inspect.getsource(AIOKafkaClient)
    assert "def abort_waiters(self, exc)" in inspect.getsource(SubscriptionState)
    assert "self.coordinator_id = None" in inspect.getsource(GroupCoordinator)
    consumer_source = inspect.getsource(AIOKafkaConsumer)
    assert "self._client = " in consumer_source and "self._subscription = " in consumer_source
