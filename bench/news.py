"""Benches that publish to the broker directly announce what the broker acknowledged, as relays do.

A quiet consumer pauses its fetches until a relay announces a record for it (``tsop_events.news``), or until its
safety net (``TSOP_CONSUMER_SAFETY_NET_SECONDS``, 10 s) for records nobody announced. A bench standing in for a
service's relay must announce as that relay would, or it would measure the safety net instead of the platform.

``News`` mirrors ``Runtime._publish_news``: ``published(topic)`` is called as each send is acknowledged (a done
callback of the send's future), and one connection to the ``postgres`` database sends the topics acknowledged
meanwhile, coalesced, on ``tsop_published``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg

from tsop_events.news import NEWS_CHANNEL


class News:
    def __init__(self, dsn: str) -> None:
        """``dsn``: the stack's ``postgres`` database (where every service listens)."""
        self.dsn = dsn
        self._topics: set[str] = set()
        self._sending: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None
        self.announced = 0

    async def start(self) -> None:
        self._conn = await asyncpg.connect(self.dsn)
        self._task = asyncio.create_task(self._run())

    def published(self, topic: str) -> None:
        self._topics.add(topic)
        self._wake.set()

    def on_ack(self, topic: str) -> Any:
        """A done callback for a send's future: announces ``topic`` once the broker acknowledged the record."""

        def acked(fut: asyncio.Future[Any]) -> None:
            if not fut.cancelled() and fut.exception() is None:
                self.published(topic)

        return acked

    async def _run(self) -> None:
        assert self._conn is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._sending, self._topics = self._topics, set()
            if self._sending:
                await self._conn.execute("SELECT pg_notify($1, $2)", NEWS_CHANNEL, ",".join(sorted(self._sending)))
                self.announced += 1
            self._sending = set()

    async def stop(self) -> None:
        """Send what is left (acknowledged and not yet announced), then close."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            if left := self._topics | self._sending:
                await self._conn.execute("SELECT pg_notify($1, $2)", NEWS_CHANNEL, ",".join(sorted(left)))
            await self._conn.close()
