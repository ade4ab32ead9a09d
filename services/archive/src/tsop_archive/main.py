"""Wiring: settings → runtime → HTTP app."""

from __future__ import annotations

import asyncio
import logging

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from fastapi import FastAPI

from tsop_archive.api import router
from tsop_archive.application import ArchiveApp, to_wire
from tsop_archive.store import DDL, ArchiveStore
from tsop_events.consumer import ConsumerRunner
from tsop_events.http import create_app, serve
from tsop_events.runtime import Runtime
from tsop_events.settings import ServiceSettings
from tsop_events.topics import Topic

log = logging.getLogger(__name__)


class ArchiveSettings(ServiceSettings):
    service_name: str = "archive"
    http_port: int = 8005


async def dead_letters_read(runtime: Runtime, runner: ConsumerRunner) -> bool:
    """Whether the archive has stored every dead letter published so far (in the current broker epoch)."""
    consumer, epoch = runner.consumer, runtime.epoch.epoch
    if consumer is None or not runner.running or epoch is None:
        return False
    topic = Topic.deadletter.qualified(runtime.settings.topic_prefix)
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        return False
    ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
    rows = await runtime.pool.fetch(
        "SELECT partition, next_offset FROM tsop_consumer_offsets WHERE consumer = $1 AND epoch = $2 AND topic = $3",
        runner.sink.name, epoch, topic,
    )
    done = {r["partition"]: r["next_offset"] for r in rows}
    return all(done.get(tp.partition, 0) >= end for tp, end in ends.items())


async def seal_dossiers(runtime: Runtime) -> None:
    """Seal each finished ticket's dossier once the store holds it up to its final event.

    A ticket is judged only once every dead letter published after its final event
    was stored has been read too: a failure noted before the final event (the
    archive's own, or a relay's) then always blocks a complete seal.
    """
    app = runtime.app
    assert isinstance(app, ArchiveApp)
    runner = next(r for r in runtime.runners if isinstance(r.sink, ArchiveStore))
    while True:
        sealed = 0
        if await runtime.pool.fetchval("SELECT EXISTS (SELECT 1 FROM archive_to_seal WHERE NOT blocked)"):
            mark = await runtime.pool.fetchval("SELECT nextval('archive_arrival')")
            try:
                settled = await dead_letters_read(runtime, runner)
            except KafkaError as exc:
                log.warning("archive: dead-letter positions unknown (%s); sealing waits", exc)
                settled = False
            if settled:
                sealed = await asyncio.to_thread(app.seal_pending, 200, mark)
        if not sealed:
            await asyncio.sleep(0.05)


def build(settings: ArchiveSettings | None = None) -> FastAPI:
    s = settings or ArchiveSettings()

    runtime = Runtime(
        s,
        app_factory=ArchiveApp,
        mapper=to_wire,
        sinks=[lambda rt: ArchiveStore(rt.pool, rt.settings.topic_prefix)],
        tasks=[seal_dossiers],
        ddl=list(DDL),
    )
    return create_app(runtime, "TSOP archive", [router])


def main() -> None:
    s = ArchiveSettings()
    serve(build(s), s.http_host, s.http_port, s.log_level)


if __name__ == "__main__":
    main()
