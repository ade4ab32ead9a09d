"""The archive-as-evidence timers: the chainer (links new records, signs checkpoints) and retention.

Both are durable by construction: they keep nothing in memory that a restart would need (the chainer remembers
the head it last read only to count less). The chainer resumes from the last stored link; retention finds what
is past its period from the store and the recorded expiries each round.
"""

from __future__ import annotations

import asyncio
import logging

from tsop_archive.commands import ArchiveApp
from tsop_archive.records.commands import HeadSeen, chain_and_checkpoint, expire_due, signer_for
from tsop_archive.records.main import RecordsSettings
from tsop_events.runtime import Service

log = logging.getLogger(__name__)


async def keep_chain(svc: Service[ArchiveApp, RecordsSettings]) -> None:
    """Link what the store received into the whole-archive chain, and sign checkpoints."""
    s = svc.settings
    signer = signer_for(svc)  # the key retention signs its announcements with
    wake = svc.waiter(saved=False, stored=True, pace=s.archive_chain_seconds)
    seen = HeadSeen()  # each round counts the chain's records from the head the round before read
    while True:
        # a round every interval, however much arrived: its instant lock on the store then costs the consumers
        # at most one of their own transactions' time per interval, and the links are computed in batches
        await chain_and_checkpoint(
            svc.pool, signer, svc.app.clock.now(), s.archive_checkpoint_every, s.archive_checkpoint_seconds, seen
        )
        await wake.wait()  # until the consumers stored something (a due checkpoint: the safety net)


async def keep_retention(svc: Service[ArchiveApp, RecordsSettings]) -> None:
    """Expire what is past its retention period and under no legal hold (each an event; never a delete)."""
    while True:
        done = await expire_due(svc)
        if done.records:
            log.info("retention: %d record(s) of %d matter(s) expired", done.records, done.matters)
        if not done.matters:
            await asyncio.sleep(svc.settings.archive_retention_seconds)
