"""Real PostgreSQL and a real broker: the embedded Tansu and a 3-broker Apache Kafka."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import pytest

from tests import infra
from tsop_events.settings import ServiceSettings


@dataclass(frozen=True)
class Bus:
    kind: str
    bootstrap: str
    replication: int


@pytest.fixture(scope="session")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    with infra.postgres(tmp_path_factory.mktemp("pg")) as hp:
        yield hp


@pytest.fixture(scope="session", params=["tansu", "kafka3"])
def bus(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bus]:
    tmp = tmp_path_factory.mktemp(request.param)
    if request.param == "tansu":
        with infra.tansu(tmp) as broker:
            yield Bus("tansu", broker.bootstrap, 1)
    else:
        with infra.apache_kafka(tmp, brokers=3) as bootstrap:
            yield Bus("kafka3", bootstrap, 3)


@pytest.fixture
def settings(pg: tuple[str, int], bus: Bus) -> ServiceSettings:
    run = uuid.uuid4().hex[:10]
    return ServiceSettings(
        service_name=f"it_{run}",
        pg_host=pg[0],
        pg_port=pg[1],
        kafka_bootstrap=bus.bootstrap,
        kafka_idempotence=bus.kind != "tansu",
        topic_prefix=f"it{run}.",
        topic_partitions=3,
        topic_replication=bus.replication,
        epoch_check_seconds=0.5,
    )


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)
