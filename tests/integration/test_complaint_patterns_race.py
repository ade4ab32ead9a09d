"""A pattern of low scores rated in two partitions at once (real PostgreSQL): two instances of feedback apply the
tickets topic's partitions each in its own transaction, and each low score counts the subject's low scores the
table holds. Read while the other's transaction was still open, neither saw the other's score: the pattern (two
low scores for one technician, here) was never noted and its improvement action never opened. The pattern check is
now serialised (a transaction-scoped lock), so the later of the two sees both."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from tsop_events import schemas as wire
from tsop_events.consumer import OFFSETS_DDL, Incoming
from tsop_events.envelope import wrap
from tsop_events.settings import ServiceSettings
from tsop_events.store import ensure_database
from tsop_feedback.complaints import policies, projection
from tsop_feedback.complaints.domain import DEFAULT_POLICY, LowScorePattern

NOW = datetime(2026, 6, 1, 9, tzinfo=UTC)
TOPIC = "tsop.tickets"


def record(partition: int, offset: int, ev: wire.TicketEvent) -> Incoming:
    env = wrap(ev, event_id=str(uuid.uuid4()), source="test", time=NOW)
    return Incoming(TOPIC, partition, offset, ev.ticket_id, env, ev)


def worked(t: str) -> list[wire.TicketEvent]:
    return [
        wire.RequestSubmitted(
            ticket_id=t, channel=wire.Channel("web"), channel_id="portal", customer_id=f"c-{t}",
            customer_tier=wire.CustomerTier.gold, region="north", service_type="broadband.fault_repair",
            description="no line", time_requirement=wire.TimeRequirement(), submitted_at=NOW),
        wire.Resolved(ticket_id=t, work_order_id="wo", technician_id="tech-9", resolution_code="fixed",
                      summary="line up", resolved_at=NOW + timedelta(minutes=30)),
    ]


def low(t: str, minutes: int) -> wire.Rated:
    return wire.Rated(ticket_id=t, score=1, solved=False, tags=[], comment=None,
                      rated_at=NOW + timedelta(minutes=minutes))


async def test_two_low_scores_rated_at_once_in_two_partitions_make_the_pattern(pg: tuple[str, int],
                                                                              monkeypatch: Any) -> None:
    settings = ServiceSettings(service_name=f"fb_it_{uuid.uuid4().hex[:8]}", pg_host=pg[0], pg_port=pg[1])
    await ensure_database(settings, (OFFSETS_DDL, *projection.DDL))
    pool = await asyncpg.create_pool(settings.pg_dsn(), min_size=2, max_size=4)
    try:
        policy = DEFAULT_POLICY.model_copy(update={
            "low_score_pattern": LowScorePattern(count=2, within_days=30, by=("technician",))})
        sinks = [policies.QualitySignals(pool, policy) for _ in range(2)]  # two instances, one partition each
        t1, t2 = str(uuid.uuid4()), str(uuid.uuid4())
        await sinks[0].process("e", TOPIC, 0, [record(0, i, ev) for i, ev in enumerate(worked(t1))], 1)
        await sinks[1].process("e", TOPIC, 1, [record(1, i, ev) for i, ev in enumerate(worked(t2))], 1)

        # the first to count waits (at most 2 s) until the other has counted too: both transactions open at once
        counted = asyncio.Event()
        first = True
        low_score_times = projection.low_score_times

        async def racing(*args: Any) -> list[datetime]:
            nonlocal first
            if first:
                first = False
                try:
                    await asyncio.wait_for(counted.wait(), 2)
                except TimeoutError:
                    pass  # the other waits for this transaction (serialised): go on
                return await low_score_times(*args)
            times = await low_score_times(*args)
            counted.set()
            return times

        monkeypatch.setattr(projection, "low_score_times", racing)
        await asyncio.gather(
            sinks[0].process("e", TOPIC, 0, [record(0, 2, low(t1, 40))], 2),
            sinks[1].process("e", TOPIC, 1, [record(1, 2, low(t2, 41))], 2),
        )
        noted = await pool.fetch("SELECT key FROM complaint_inbox WHERE kind = 'pattern'")
        assert len(noted) == 1 and noted[0]["key"].startswith("pattern:technician:tech-9:")
    finally:
        await pool.close()


async def test_a_low_score_takes_the_pattern_lock_before_any_row_lock(pg: tuple[str, int]) -> None:
    """The pattern lock is the first lock a batch with a low score takes. Taken after the rating's row (as it was),
    a batch holding the ticket's row waited for the lock while the lock's holder waited for that row: the holder
    here stands for another partition's low score whose batch then waits on a row held by a third transaction (the
    complaints topic's TicketAssessed of a ticket of each partition) that waits on this batch's row. PostgreSQL
    broke the cycle by aborting one of them after its deadlock timeout."""
    settings = ServiceSettings(service_name=f"fb_it_{uuid.uuid4().hex[:8]}", pg_host=pg[0], pg_port=pg[1])
    await ensure_database(settings, (OFFSETS_DDL, *projection.DDL))
    pool = await asyncpg.create_pool(settings.pg_dsn(), min_size=2, max_size=4)
    holder = await asyncpg.connect(settings.pg_dsn())
    try:
        sink = policies.QualitySignals(pool, DEFAULT_POLICY)
        t1 = str(uuid.uuid4())
        await sink.process("e", TOPIC, 0, [record(0, i, ev) for i, ev in enumerate(worked(t1))], 1)
        async with holder.transaction():
            await holder.execute("SELECT pg_advisory_xact_lock(hashtext('tsop-feedback-low-score-pattern'))")
            batch = asyncio.create_task(sink.process("e", TOPIC, 0, [record(0, 2, low(t1, 40))], 2))
            for _ in range(500):  # until the batch waits for the lock
                if await pool.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"):
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the batch never waited for the pattern lock")
            await asyncio.wait_for(holder.execute(
                "UPDATE quality_tickets SET internal_score = 50 WHERE ticket_id = $1", t1), 10)
        await asyncio.wait_for(batch, 10)
        assert await pool.fetchval("SELECT score FROM quality_tickets WHERE ticket_id = $1", t1) == 1
    finally:
        await holder.close()
        await pool.close()
