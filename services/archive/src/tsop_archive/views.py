"""The archive's timer: the sealer, which seals each finished ticket's dossier once nothing can be missed.

The archive keeps no in-memory view: what it holds is in its SQL store (``projection``).
"""

from __future__ import annotations

import logging

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from tsop_archive.commands import ArchiveApp, seal_due
from tsop_archive.projection import ArchiveStore, any_due, arrival_mark
from tsop_events.consumer import ConsumerRunner
from tsop_events.runtime import Service
from tsop_events.topics import Topic

log = logging.getLogger(__name__)

BATCH = 200  # dossiers judged per round
IDLE_SECONDS = 0.05  # the shortest pause between two rounds that sealed nothing


async def dead_letters_read(svc: Service[ArchiveApp], runner: ConsumerRunner) -> bool:
    """Whether the archive has stored every dead letter published so far (in the current broker epoch)."""
    consumer, epoch = runner.consumer, svc.epoch.epoch
    if consumer is None or not runner.running or epoch is None:
        return False
    topic = Topic.deadletter.qualified(svc.settings.topic_prefix)
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        return False
    ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
    rows = await svc.pool.fetch(
        "SELECT partition, next_offset FROM tsop_consumer_offsets WHERE consumer = $1 AND epoch = $2 AND topic = $3",
        runner.sink.name, epoch, topic,
    )
    done = {r["partition"]: r["next_offset"] for r in rows}
    return all(done.get(tp.partition, 0) >= end for tp, end in ends.items())


async def seal_dossiers(svc: Service[ArchiveApp]) -> None:
    """Seal each finished ticket's dossier once the store holds it up to its final event.

    A ticket is judged only once every dead letter published after its final event
    was stored has been read too: a failure noted before the final event (the
    archive's own, or a relay's) then always blocks a complete seal.
    """
    runner = next(r for r in svc.runners if isinstance(r.sink, ArchiveStore))
    wake = svc.waiter(saved=True, stored=True, pace=IDLE_SECONDS)  # woken when the consumers stored something
    while True:
        sealed = 0
        if await any_due(svc.pool, svc.app.clock.now()):
            mark = await arrival_mark(svc.pool)
            try:
                settled = await dead_letters_read(svc, runner)
            except KafkaError as exc:
                log.warning("archive: dead-letter positions unknown (%s); sealing waits", exc)
                settled = False
            if settled:
                sealed = await seal_due(svc, BATCH, mark)
        if not sealed:
            await wake.wait()  # a reopen period ending is caught by the safety net
