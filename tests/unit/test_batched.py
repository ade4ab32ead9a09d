"""Batched projections (tsop_events.batched): a batch's statements run in order, as pipelined runs of one SQL text,
and a ``BatchedSink`` is handed the records ``ProjectionSink.process`` applies (the position handling unchanged)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest

from tsop_events import schemas as wire
from tsop_events.batched import BatchedSink, Statements
from tsop_events.consumer import Incoming
from tsop_events.envelope import wrap


class Conn:
    """A connection that records what it is asked and answers the offsets row and fetched statements."""

    def __init__(self, done: int = 0) -> None:
        self.calls: list[tuple[str, str, list[tuple[Any, ...]]]] = []
        self.done = done

    async def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self.calls.append(("executemany", sql, list(rows)))

    async def fetchmany(self, sql: str, rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
        self.calls.append(("fetchmany", sql, list(rows)))
        return [{"echo": r[0]} for r in rows]

    async def fetchval(self, sql: str, *args: Any) -> int:
        return self.done  # the stored position (next offset to apply)

    async def execute(self, sql: str, *args: Any) -> None:
        self.calls.append(("execute", sql, [args]))

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        yield


class Pool:
    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Conn]:
        yield self.conn


async def test_statements_run_in_order_as_runs_of_one_text_and_answer_each_fetched_one() -> None:
    conn = Conn()
    st = Statements()
    assert [st.add("A", 1), st.add("A", 2), st.add("B", 3, fetch=True), st.add("B", 4, fetch=True),
            st.add("A", 5)] == [0, 1, 2, 3, 4]
    out = await st.run(conn)  # type: ignore[arg-type]
    assert [(kind, sql, rows) for kind, sql, rows in conn.calls] == [
        ("executemany", "A", [(1,), (2,)]), ("fetchmany", "B", [(3,), (4,)]), ("executemany", "A", [(5,)])]
    assert out == [None, None, {"echo": 3}, {"echo": 4}, None]
    assert await st.run(conn) == []  # run once: the statements are gone


async def test_a_fetched_statement_without_its_row_is_refused() -> None:
    class Short(Conn):
        async def fetchmany(self, sql: str, rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
            return []

    st = Statements()
    st.add("B", 1, fetch=True)
    with pytest.raises(AssertionError):
        await st.run(Short())  # type: ignore[arg-type]


class Recorder(BatchedSink):
    name: ClassVar[str] = "recorder"

    def __init__(self, conn: Conn) -> None:
        super().__init__(Pool(conn))  # type: ignore[arg-type]
        self.batches: list[list[int]] = []

    async def apply_batch(self, conn: Any, records: Sequence[Incoming]) -> None:
        self.batches.append([r.offset for r in records])


def rec(offset: int) -> Incoming:
    ev = wire.Rated(ticket_id="t", score=5, rated_at=datetime.now(UTC))
    return Incoming("tsop.tickets", 0, offset, "t", wrap(ev, event_id=f"e{offset}", source="test"), ev)


async def test_the_sink_gets_the_records_not_applied_before_in_one_call_at_the_last() -> None:
    sink = Recorder(Conn(done=12))  # offsets 10 and 11 were applied before (a redelivery after a rebalance)
    await sink.process("ep", "tsop.tickets", 0, [rec(10), rec(11), rec(12), rec(13), rec(14)], 14)
    assert sink.batches == [[12, 13, 14]]
    sink.batches.clear()
    await sink.process("ep", "tsop.tickets", 0, [rec(20)], 20)  # a batch of one (a record retried alone)
    await sink.process("ep", "tsop.tickets", 0, [], 21)  # nothing decoded: nothing applied, the position moves on
    assert sink.batches == [[20]]


async def test_a_batch_whose_records_were_all_applied_before_applies_nothing() -> None:
    sink = Recorder(Conn(done=15))
    await sink.process("ep", "tsop.tickets", 0, [rec(10), rec(11)], 14)
    assert sink.batches == []
