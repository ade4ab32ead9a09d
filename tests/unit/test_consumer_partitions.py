"""A consumer's fetch of several partitions (``ConsumerRunner._apply_partitions``): a plain projection applies them
in one transaction (``ProjectionSink.process_partitions``), while a ``BatchedSink`` keeps its batch per partition,
handed at the partition's last record (its one statement per table), in the partition's own transaction."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from aiokafka import TopicPartition

from tsop_events import schemas as wire
from tsop_events.batched import BatchedSink
from tsop_events.consumer import ConsumerRunner, Incoming, ProjectionSink
from tsop_events.envelope import Headers, wrap
from tsop_events.settings import ServiceSettings

TOPIC = "tsop.tickets"


class Conn:
    """A connection that records its transactions and statements; every stored position is ``done``."""

    def __init__(self, done: int = 0) -> None:
        self.done = done
        self.transactions = 0
        self.calls: list[tuple[str, str]] = []

    async def fetchval(self, sql: str, *args: Any) -> int:
        self.calls.append(("fetchval", sql))
        return self.done

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        self.calls.append(("fetch", sql))
        _, _, topics, partitions = args
        return [{"topic": t, "partition": p, "next_offset": self.done} for t, p in zip(topics, partitions, strict=True)]

    async def execute(self, sql: str, *args: Any) -> None:
        self.calls.append(("execute", sql))

    async def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self.calls.append(("executemany", sql))

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        self.transactions += 1
        yield


class Pool:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    async def fetchval(self, sql: str, *args: Any) -> int:
        return await self.conn.fetchval(sql, *args)

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Conn]:
        yield self.conn


class Batched(BatchedSink):
    name: ClassVar[str] = "batched"

    def __init__(self, conn: Conn) -> None:
        super().__init__(Pool(conn))  # type: ignore[arg-type]
        self.batches: list[list[tuple[int, int]]] = []

    async def apply_batch(self, conn: Any, records: Sequence[Incoming]) -> None:
        self.batches.append([(r.partition, r.offset) for r in records])


class Plain(ProjectionSink):
    name: ClassVar[str] = "plain"

    def __init__(self, conn: Conn) -> None:
        super().__init__(Pool(conn))  # type: ignore[arg-type]
        self.applied: list[tuple[int, int]] = []

    async def apply(self, conn: Any, incoming: Incoming) -> None:
        self.applied.append((incoming.partition, incoming.offset))


@dataclass
class Record:  # what aiokafka's getmany hands over
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Headers


def record(partition: int, offset: int) -> Record:
    ev = wire.Rated(ticket_id=f"t{partition}", score=5, rated_at=datetime.now(UTC))
    env = wrap(ev, event_id=f"e{partition}-{offset}", source="test")
    return Record(TOPIC, partition, offset, f"t{partition}".encode(), env.data, env.headers())


class Epoch:
    epoch = "ep"


class Consumer:
    def __init__(self, tps: list[TopicPartition]) -> None:
        self.tps = set(tps)

    def assignment(self) -> set[TopicPartition]:
        return self.tps

    def highwater(self, tp: TopicPartition) -> int | None:
        return None


def runner(sink: ProjectionSink) -> tuple[ConsumerRunner, dict[TopicPartition, list[Any]]]:
    tps = [TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)]
    r = ConsumerRunner(sink, ServiceSettings(), Epoch(), None, own_consumer=False)  # type: ignore[arg-type]
    r.consumer = Consumer(tps)  # type: ignore[assignment]
    batch: dict[TopicPartition, list[Any]] = {tps[0]: [record(0, n) for n in range(3)], tps[1]: [record(1, 0),
                                                                                                record(1, 1)]}
    return r, batch


async def test_a_plain_projection_applies_a_fetch_of_two_partitions_in_one_transaction() -> None:
    conn = Conn()
    sink = Plain(conn)
    r, batch = runner(sink)
    again = await r._apply_partitions(batch, {tp: {} for tp in batch})
    assert again == {}
    assert conn.transactions == 1
    assert sink.applied == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    assert [kind for kind, _ in conn.calls] == ["fetchval", "fetchval", "fetch", "execute"]  # positions, then one tx


async def test_a_batched_sink_is_handed_each_partition_of_a_fetch_whole_in_its_own_transaction() -> None:
    conn = Conn()
    sink = Batched(conn)
    r, batch = runner(sink)
    again = await r._apply_partitions(batch, {tp: {} for tp in batch})
    assert again == {}
    # one apply_batch per partition, with all its records (through process_partitions it would get one at a time)
    assert sink.batches == [[(0, 0), (0, 1), (0, 2)], [(1, 0), (1, 1)]]
    assert conn.transactions == 2
    assert "fetch" not in [kind for kind, _ in conn.calls]  # no process_partitions statement
    assert r._next[("ep", TopicPartition(TOPIC, 0))] == 3 and r._next[("ep", TopicPartition(TOPIC, 1))] == 2
