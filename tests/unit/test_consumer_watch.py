"""A consumer that hangs says where and recovers (tsop_events.consumer's watch on its fetches and batches)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiokafka import TopicPartition

from tsop_events import consumer as consumer_mod
from tsop_events.consumer import ConsumerStuck, _poll
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
