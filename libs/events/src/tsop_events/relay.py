"""The outbox relay: the event store's notification log, published to Kafka.

Reads notifications in order after the recorded position, maps each domain
event to at most one wire event (the service's mapper, in one place), publishes
the batch, waits for the broker's acknowledgement and then records how far it
got. Delivery is at-least-once; ``ce_id`` is stable so consumers can tell a
re-published event from a new one. When the broker epoch changes, the relay
starts again from the beginning of the log.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from tsop_events.envelope import stable_event_id, wrap
from tsop_events.epoch import EpochWatcher
from tsop_events.metrics import RELAY_BACKLOG, RELAY_PUBLISHED
from tsop_events.schemas import WireEvent
from tsop_events.settings import ServiceSettings
from tsop_events.store import EventStoreApp

log = logging.getLogger(__name__)

RELAY_DDL = """
CREATE TABLE IF NOT EXISTS tsop_relay (
    name text PRIMARY KEY,
    epoch text NOT NULL,
    position bigint NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class Outgoing:
    event: WireEvent
    causation_id: str | None = None
    correlation_id: str | None = None


Mapper = Callable[[Any], Outgoing | None]


class Relay:
    def __init__(
        self,
        name: str,
        app: EventStoreApp,
        mapper: Mapper,
        producer: AIOKafkaProducer,
        pool: asyncpg.Pool,
        settings: ServiceSettings,
        epoch: EpochWatcher,
    ) -> None:
        self.name = name
        self.app = app
        self.mapper = mapper
        self.producer = producer
        self.pool = pool
        self.settings = settings
        self.epoch_watcher = epoch
        self.position = 0
        self.epoch: str | None = None
        self.running = False
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Called after a local save so the relay need not wait for its next poll."""
        self._wake.set()

    async def _load(self) -> None:
        row = await self.pool.fetchrow("SELECT epoch, position FROM tsop_relay WHERE name = $1", self.name)
        if row is not None:
            self.epoch, self.position = row["epoch"], row["position"]

    async def _store(self) -> None:
        await self.pool.execute(
            "INSERT INTO tsop_relay (name, epoch, position) VALUES ($1, $2, $3) "
            "ON CONFLICT (name) DO UPDATE SET epoch = EXCLUDED.epoch, position = EXCLUDED.position",
            self.name,
            self.epoch,
            self.position,
        )

    async def run(self) -> None:
        await self._load()
        self.running = True
        backoff = 0.1
        while True:
            try:
                published = await self.publish_once()
                backoff = 0.1
                if not published:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), self.settings.relay_idle_seconds)
                    except TimeoutError:
                        pass
            except (KafkaError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("relay %s: %s; retrying in %.1fs", self.name, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def publish_once(self) -> int:
        """Publish the next batch; return how many notifications it covered."""
        current = await self.epoch_watcher.wait_known()
        if current != self.epoch:
            log.info("relay %s: broker epoch %s, publishing from the start", self.name, current)
            self.epoch, self.position = current, 0
            await self._store()
        notifications = await asyncio.to_thread(
            self.app.recorder.select_notifications, self.position + 1, self.settings.relay_batch
        )
        if not notifications:
            RELAY_BACKLOG.labels(self.name).set(0)
            return 0
        futures = []
        for n in notifications:
            domain_event: Any = self.app.mapper.to_domain_event(n)
            out = self.mapper(domain_event)
            if out is None:
                continue
            env = wrap(
                out.event,
                event_id=stable_event_id(n.originator_id, n.originator_version),
                source=self.settings.service_name,
                time=domain_event.timestamp,
                correlation_id=out.correlation_id,
                causation_id=out.causation_id,
            )
            fut = await self.producer.send(
                out.event.topic.qualified(self.settings.topic_prefix),
                value=env.data,
                key=out.event.key().encode(),
                headers=env.headers(),
            )
            futures.append(fut)
        if futures:
            await asyncio.gather(*futures)
        if self.epoch_watcher.epoch != self.epoch:
            return len(notifications)  # published into a new incarnation: start over
        self.position = notifications[-1].id
        await self._store()
        RELAY_PUBLISHED.labels(self.name).inc(len(futures))
        return len(notifications)
