"""One Kafka consumer per process for all its grouped sinks (``tsop_events.consumer.ConsumerGroup``).

Each record is fetched and decoded once per process, yet every sink applies it exactly once, in its own
transaction with its own position: a sink that fails transiently has the partition fetched again without the
others applying anything twice, and a sink that joins later (no position yet) reads from the beginning while
the others skip what they already applied. A projection sink applies a fetch's partitions in one transaction.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from typing import ClassVar

import asyncpg
import pytest

from tests.integration.conftest import eventually
from tests.integration.test_bus_contract import publish, rejected
from tsop_events.consumer import Incoming, ProjectionSink
from tsop_events.runtime import Runtime
from tsop_events.settings import ServiceSettings

pytestmark = pytest.mark.parametrize("bus", ["tansu"], indirect=True)

seen: list[tuple[str, int]] = []  # (sink, partitions) of each batch applied in one transaction across partitions


class Ledger(ProjectionSink):
    """Appends one row per applied record to its own table; fails once, transiently, when told to."""

    name: ClassVar[str] = "ledger-a"
    table: ClassVar[str] = "ledger_a"
    fail_once_at: ClassVar[set[str]] = set()

    async def setup(self) -> None:
        await super().setup()
        await self.pool.execute(f"CREATE TABLE IF NOT EXISTS {self.table} (ce_id text)")

    async def process_partitions(self, epoch: str, batches: Sequence[tuple[str, int, Sequence[Incoming], int]]) -> None:
        seen.append((self.name, len(batches)))
        await super().process_partitions(epoch, batches)

    async def apply(self, conn: asyncpg.Connection, incoming: Incoming) -> None:
        await conn.execute(f"INSERT INTO {self.table} VALUES ($1)", incoming.envelope.id)
        if incoming.envelope.id in self.fail_once_at:
            self.fail_once_at.discard(incoming.envelope.id)
            raise OSError("simulated connection loss after part of the batch was written")


class OtherLedger(Ledger):
    name: ClassVar[str] = "ledger-b"
    table: ClassVar[str] = "ledger_b"
    fail_once_at: ClassVar[set[str]] = set()


async def applied(runtime: Runtime, table: str) -> list[str]:
    return [r["ce_id"] for r in await runtime.pool.fetch(f"SELECT ce_id FROM {table}")]


async def test_sinks_sharing_one_consumer_each_apply_every_record_once(settings: ServiceSettings) -> None:
    events = [(f"e{i}", rejected(i)) for i in range(120)]
    Ledger.fail_once_at = {"e30"}
    OtherLedger.fail_once_at = {"e75"}
    # a process with sink A only applies the first 40
    alone = Runtime(settings, sinks=[lambda rt: Ledger(rt.pool)])
    await alone.start()
    try:
        await publish(settings, events[:40])
        await eventually(lambda: _has(alone, "ledger_a", 40), 60, "A applied the first 40")
    finally:
        await alone.stop()
    # then a process with A and B: one Kafka consumer; B starts from the beginning, A where it stopped
    shared = settings.model_copy(update={"consumer_shared": True})  # TSOP_CONSUMER_SHARED
    both = Runtime(shared, sinks=[lambda rt: Ledger(rt.pool), lambda rt: OtherLedger(rt.pool)])
    await both.start()
    try:
        runners = [r for r in both.runners if r.sink.grouped]
        await eventually(lambda: _consuming(runners), 60, "the group's consumer started")
        assert len({id(r.consumer) for r in runners}) == 1, "both sinks read through one Kafka consumer"
        await publish(settings, events[40:])
        await eventually(lambda: _has(both, "ledger_a", 120), 60, "A applied all")
        await eventually(lambda: _has(both, "ledger_b", 120), 60, "B applied all")
        await asyncio.sleep(1.0)
        a, b = await applied(both, "ledger_a"), await applied(both, "ledger_b")
    finally:
        await both.stop()
    want = Counter(f"e{i}" for i in range(120))
    assert not Ledger.fail_once_at and not OtherLedger.fail_once_at, "each sink failed once, transiently"
    assert Counter(a) == want, "A: every record once, across its failure, B's failure and the restart"
    assert Counter(b) == want, "B: every record once, from the beginning, across both failures"
    assert any(n > 1 for _, n in seen), "several partitions' records were applied in one transaction"


async def _has(runtime: Runtime, table: str, n: int) -> bool:
    return len(await applied(runtime, table)) >= n


async def _consuming(runners: list[object]) -> bool:
    return all(getattr(r, "running", False) for r in runners)


async def test_by_default_each_sink_has_a_consumer_of_its_own(settings: ServiceSettings) -> None:
    """Unshared (the default): a sink that lags or keeps failing holds back no sibling."""
    rt = Runtime(settings, sinks=[lambda rt: Ledger(rt.pool), lambda rt: OtherLedger(rt.pool)])
    await rt.start()
    try:
        runners = [r for r in rt.runners if r.sink.grouped]
        await eventually(lambda: _consuming(runners), 60, "the consumers started")
        assert len({id(r.consumer) for r in runners}) == 2
    finally:
        await rt.stop()
