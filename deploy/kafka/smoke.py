"""Smoke test of the Apache Kafka launcher against a real cluster, with aiokafka.

For each cluster size asked for (default: 1 then 3 nodes), in a fresh data dir:
start the cluster (timed, from ``start()`` to ready), create a topic (3 partitions,
replication min(3, nodes), ``retention.ms=-1``), produce with ``acks=all`` and
idempotence, read everything back with a consumer group and commit, then stop,
start again on the same data dir and check that the records and the group's
committed offsets survived. Peak RSS (VmHWM) of every broker JVM is reported.

Run from the repo root (needs aiokafka; nothing else from the project)::

    python deploy/kafka/smoke.py                  # 1 and 3 nodes
    python deploy/kafka/smoke.py --brokers 3 --keep /tmp/kafka-smoke

Exits non-zero on any failure; always stops the brokers it started.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "libs" / "events" / "src"))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError
from tsop_devstack.apache_kafka import (
    KAFKA_VERSION,
    KafkaCluster,
    default_cache_dir,
    jars_cached,
)

TOPIC = "tsop.smoke"
GROUP = "tsop-smoke"
MESSAGES = 300


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def create_topic(bootstrap: str, nodes: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        resp = await admin.create_topics(
            [
                NewTopic(
                    TOPIC,
                    num_partitions=3,
                    replication_factor=min(3, nodes),
                    topic_configs={"retention.ms": "-1"},
                )
            ]
        )
        errors = [e for e in resp.topic_errors if e[1] != 0]
        assert not errors, errors
        # CreateTopics answers once the controller has committed the topic; the
        # broker that answers Metadata may learn of it a moment later.
        for _ in range(100):
            described = await admin.describe_topics([TOPIC])
            if described[0]["error_code"] == 0:
                break
            await asyncio.sleep(0.1)
        parts = described[0]["partitions"]
        assert len(parts) == 3, described
        for p in parts:
            assert len(p["replicas"]) == min(3, nodes), p
        configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, TOPIC)])
        entries = {c[0]: c[1] for c in configs[0].resources[0][4]}
        assert entries["retention.ms"] == "-1", entries["retention.ms"]
    finally:
        await admin.close()


async def produce(bootstrap: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        futures = [
            await producer.send(TOPIC, key=f"k{i % 17}".encode(), value=f"v{i}".encode()) for i in range(MESSAGES)
        ]
        await producer.flush()
        for fut in futures:
            await fut
    finally:
        await producer.stop()


async def consume(bootstrap: str, group: str, expect: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        TOPIC,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    got: list[bytes] = []
    try:
        deadline = time.monotonic() + 60
        while len(got) < expect and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                got.extend(r.value for r in records if r.value is not None)
        await consumer.commit()
    finally:
        await consumer.stop()
    return got


async def committed(bootstrap: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP)
    await consumer.start()
    try:
        total = 0
        for p in range(3):
            off = await consumer.committed(TopicPartition(TOPIC, p))
            total += off or 0
        return total
    finally:
        await consumer.stop()


def run(nodes: int, data_dir: Path, base_port: int) -> dict[str, float]:
    timings: dict[str, float] = {}
    cold = not jars_cached()
    cluster = KafkaCluster(data_dir, nodes, base_port)
    t0 = time.monotonic()
    cluster.start()
    timings["start_cold_s" if cold else "start_s"] = time.monotonic() - t0
    try:
        print(f"[{nodes} node] ready in {time.monotonic() - t0:.1f}s at {cluster.bootstrap}")
        t1 = time.monotonic()
        asyncio.run(create_topic(cluster.bootstrap, nodes))
        asyncio.run(produce(cluster.bootstrap))
        got = asyncio.run(consume(cluster.bootstrap, GROUP, MESSAGES))
        timings["roundtrip_s"] = time.monotonic() - t1
        want = {f"v{i}".encode() for i in range(MESSAGES)}
        assert len(got) == MESSAGES and set(got) == want, (len(got), len(set(got)))
        print(f"[{nodes} node] topic, produce, consume {MESSAGES}: ok")
        for i, pid in enumerate(cluster.pids):
            timings[f"peak_rss_mib_node{i}"] = peak_rss_mib(pid)
    finally:
        t2 = time.monotonic()
        cluster.stop()
        timings["stop_s"] = time.monotonic() - t2

    # Restart on the same data dir: no re-format, data and offsets kept.
    cluster = KafkaCluster(data_dir, nodes, base_port)
    t3 = time.monotonic()
    cluster.start()
    timings["restart_s"] = time.monotonic() - t3
    try:
        again = asyncio.run(consume(cluster.bootstrap, GROUP + "-after-restart", MESSAGES))
        assert len(again) == MESSAGES, len(again)
        assert asyncio.run(committed(cluster.bootstrap)) == MESSAGES
        print(f"[{nodes} node] restart kept {MESSAGES} records and committed offsets: ok")
    finally:
        cluster.stop()
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", type=int, action="append", choices=(1, 3))
    parser.add_argument("--base-port", type=int, default=19092)
    parser.add_argument("--keep", type=Path, help="keep data dirs under this directory")
    args = parser.parse_args()
    sizes = args.brokers or [1, 3]
    root = args.keep or Path(tempfile.mkdtemp(prefix="tsop-kafka-smoke-"))
    print(f"kafka {KAFKA_VERSION}, jars in {default_cache_dir()}, data under {root}")
    ok = True
    try:
        for n in sizes:
            data = root / f"{n}-node"
            if data.exists():
                shutil.rmtree(data)
            try:
                timings = run(n, data, args.base_port)
            except (AssertionError, KafkaError, OSError, RuntimeError) as exc:
                ok = False
                print(f"[{n} node] FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            shown = ", ".join(f"{k}={v:.1f}" for k, v in timings.items())
            print(f"[{n} node] {shown}")
    finally:
        if args.keep is None and os.environ.get("TSOP_SMOKE_KEEP") != "1":
            shutil.rmtree(root, ignore_errors=True)
    print("smoke: ok" if ok else "smoke: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
