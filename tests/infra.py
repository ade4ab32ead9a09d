"""Real servers for the tests: embedded PostgreSQL, Tansu, Apache Kafka, or containers.

``TSOP_TEST_INFRA=containers`` uses testcontainers (PostgreSQL and Kafka
images) where a Docker engine exists; the default needs no Docker.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from tsop_devstack.ports import free_port, free_port_block
from tsop_devstack.postgres import EmbeddedPostgres
from tsop_devstack.tansu import EmbeddedBroker

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
USE_CONTAINERS = os.environ.get("TSOP_TEST_INFRA") == "containers"


def unavailable(why: str) -> None:
    """A tier that cannot run: a failure in CI, a skip on a laptop."""
    if CI:
        pytest.fail(f"CI=true and a required server is unavailable: {why}", pytrace=False)
    pytest.skip(why)


@contextmanager
def postgres(tmp: Path) -> Iterator[tuple[str, int]]:
    if USE_CONTAINERS:
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:17", username="postgres", password="postgres") as pgc:
            yield pgc.get_container_host_ip(), int(pgc.get_exposed_port(5432))
        return
    pg = EmbeddedPostgres(tmp / "pg" / "data", port=free_port())
    try:
        pg.start()
    except Exception as exc:  # noqa: BLE001
        unavailable(f"embedded PostgreSQL did not start: {exc}")
    try:
        yield pg.host, pg.port
    finally:
        pg.stop()


@contextmanager
def tansu(tmp: Path) -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker(free_port(), tmp / "tansu.log")
    try:
        broker.start()
    except Exception as exc:  # noqa: BLE001
        unavailable(f"embedded broker did not start: {exc}")
    try:
        yield broker
    finally:
        broker.stop()


@contextmanager
def apache_kafka(tmp: Path, brokers: int = 3) -> Iterator[str]:
    if USE_CONTAINERS:
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("confluentinc/cp-kafka:7.6.0").with_kraft() as kc:
            yield kc.get_bootstrap_server()
        return
    if shutil.which("java") is None or shutil.which("mvn") is None:
        unavailable("Apache Kafka needs java and mvn on PATH")
    from tsop_devstack.apache_kafka import KafkaCluster

    cluster = KafkaCluster(tmp / "kafka", brokers=brokers, base_port=free_port_block(brokers))
    try:
        cluster.start()
    except Exception as exc:  # noqa: BLE001
        cluster.stop()
        unavailable(f"Apache Kafka did not start: {exc}")
    try:
        yield cluster.bootstrap
    finally:
        cluster.stop()


