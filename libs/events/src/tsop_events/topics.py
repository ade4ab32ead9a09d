"""Topic names and their creation.

Every topic name carries a configurable prefix so that several platforms (or
test runs) can share one cluster. Domain topics keep their events forever.
"""

from __future__ import annotations

import asyncio
import logging
from enum import StrEnum

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from tsop_events import kafka_fixes  # noqa: F401 - aiokafka under uvloop put right (see it)

log = logging.getLogger(__name__)


class Topic(StrEnum):
    tickets = "tickets"
    incidents = "incidents"
    workforce = "workforce"
    complaints = "complaints"
    channels = "channels"
    customers = "customers"
    deadletter = "deadletter"
    epoch = "epoch"

    def qualified(self, prefix: str) -> str:
        return f"{prefix}{self.value}"


DOMAIN_TOPICS = (
    Topic.tickets, Topic.incidents, Topic.workforce, Topic.complaints, Topic.channels, Topic.customers
)


async def ensure_topics(
    bootstrap: str, prefix: str, partitions: int, replication: int, timeout: float = 60.0, min_insync: int = 0
) -> None:
    """Create the platform's topics if missing (idempotent, safe to race).

    ``min_insync`` > 0 sets each topic's ``min.insync.replicas`` (with ``acks=all``, a write
    succeeds only once that many replicas hold it); 0 leaves the broker's default.
    """
    configs = {"retention.ms": "-1", "retention.bytes": "-1"}
    if min_insync > 0:
        configs["min.insync.replicas"] = str(min_insync)
    wanted = [
        NewTopic(
            t.qualified(prefix),
            num_partitions=1 if t is Topic.epoch else partitions,
            replication_factor=replication,
            topic_configs=dict(configs),
        )
        for t in (*DOMAIN_TOPICS, Topic.deadletter, Topic.epoch)
    ]
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [t for t in wanted if t.name not in existing]
            if missing:
                try:
                    await admin.create_topics(missing)
                except TopicAlreadyExistsError:
                    pass
                log.info("created topics %s", [t.name for t in missing])
            return
        except KafkaError as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise
            log.warning("creating topics failed (%s); retrying", exc)
            await asyncio.sleep(0.5)
        finally:
            await admin.close()
