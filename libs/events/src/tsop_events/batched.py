"""Projections that write a batch at once: fewer PostgreSQL round trips than a statement per record.

``ProjectionSink.process`` applies a batch's records one by one in one transaction with the consumer's position,
skipping those applied before. A ``BatchedSink`` receives, instead, the records it has to apply, in order, in one
call at the last of them (``apply_batch``), inside that same transaction: the position handling is
``ProjectionSink``'s, unchanged (the records applied are always a suffix of the batch, so its last record is the
last one applied). A record handed to ``apply`` outside ``process`` (a test, a caller of its own) is a batch of one.
A consumer therefore applies a ``BatchedSink``'s fetched partitions each in its own ``process`` (own transaction,
one ``apply_batch`` per partition), never through ``ProjectionSink.process_partitions``: that one calls ``apply``
record by record outside ``process`` and would make every record a batch of one (``ConsumerRunner._apply_partitions``
leaves out any sink that overrides ``process``).

``Statements`` runs a batch's statements in order, each consecutive run of one SQL text as one pipelined
``executemany`` / ``fetchmany``: each row is still its own statement (same effect, same order, each sees the ones
before), only the round trips go.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import Any

import asyncpg

from tsop_events.consumer import Incoming, ProjectionSink


class BatchedSink(ProjectionSink):
    """A projection applied a batch at a time (see the module's doc)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        super().__init__(pool)
        self._last: Incoming | None = None  # the batch's last record: the held ones are applied at it
        self._held: list[Incoming] = []

    async def process(
        self, epoch: str, topic: str, partition: int, records: Sequence[Incoming], last_offset: int
    ) -> None:
        self._last, self._held = (records[-1] if records else None), []
        try:
            await super().process(epoch, topic, partition, records, last_offset)
        finally:
            self._last, self._held = None, []

    async def apply(self, conn: asyncpg.Connection, incoming: Incoming) -> None:
        if self._last is None:
            await self.apply_batch(conn, [incoming])
            return
        self._held.append(incoming)
        if incoming is self._last:
            held, self._held = self._held, []
            await self.apply_batch(conn, held)

    @abstractmethod
    async def apply_batch(self, conn: asyncpg.Connection, records: Sequence[Incoming]) -> None:
        """Apply these records (in order, none applied before) inside the batch's transaction."""


class Statements:
    """A batch's statements, kept in order and run as pipelined runs of one SQL text each."""

    def __init__(self) -> None:
        self._runs: list[tuple[str, bool, list[tuple[Any, ...]]]] = []
        self._count = 0  # statements kept so far

    def add(self, sql: str, *args: Any, fetch: bool = False) -> int:
        """Keep one statement; with ``fetch``, ``run`` returns its first row (or None) at the index returned."""
        if self._runs and self._runs[-1][0] == sql and self._runs[-1][1] == fetch:
            self._runs[-1][2].append(args)
        else:
            self._runs.append((sql, fetch, [args]))
        self._count += 1
        return self._count - 1

    async def run(self, conn: asyncpg.Connection) -> list[asyncpg.Record | None]:
        """Run every statement in order; the first row each returned (None: none, or not fetched)."""
        out: list[asyncpg.Record | None] = []
        for sql, fetch, rows in self._runs:
            if fetch:
                got = await conn.fetchmany(sql, rows)
                if len(got) != len(rows):  # fetchmany flattens: each statement must return at most one row
                    raise AssertionError(f"{len(got)} rows for {len(rows)} statements; give each a row")
                out.extend(got)
            else:
                await conn.executemany(sql, rows)
                out.extend([None] * len(rows))
        self._runs = []
        return out
