"""Intake on real PostgreSQL: what survives a restart and what several instances agree on.

Channels and their credentials, open requests (duplicates), the completion
deadline timer and idempotent replays all live in the event store; a new
process (or a second instance) rebuilds them by following the log.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest

from tsop_events.auth import Principal, Role, hash_token
from tsop_events.clock import ManualClock
from tsop_events.commands import Commands
from tsop_events.settings import ServiceSettings
from tsop_events.store import GroupCommit, ensure_database
from tsop_intake import commands as service
from tsop_intake.commands import IntakeApp
from tsop_intake.projection import RequestStatusProjection
from tsop_intake.views import expire_pending

NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
ADMIN = Principal("ops", frozenset({Role.admin}))


@pytest.fixture
async def db(pg: tuple[str, int]) -> AsyncIterator[tuple[ServiceSettings, asyncpg.Pool]]:
    settings = ServiceSettings(service_name=f"intake_it_{uuid.uuid4().hex[:8]}", pg_host=pg[0], pg_port=pg[1])
    await ensure_database(settings, RequestStatusProjection.ddl)
    pool = await asyncpg.create_pool(settings.pg_dsn(), min_size=1, max_size=2)
    try:
        yield settings, pool
    finally:
        await pool.close()


class Instance:
    """One intake process: its own app, index and clock over the shared database."""

    def __init__(self, settings: ServiceSettings, pool: asyncpg.Pool, now: datetime) -> None:
        self.clock = ManualClock(now)
        self.app = IntakeApp(settings, clock=self.clock)
        committer = GroupCommit(self.app)
        self.runtime: Any = SimpleNamespace(app=self.app, committer=committer, commands=Commands(self.app, committer),
                                            pool=pool, settings=None)

    async def start(self) -> Instance:
        await asyncio.to_thread(self.app.index.refresh)
        return self

    def close(self) -> None:
        self.app.close()


def fields(**kw: Any) -> dict[str, Any]:
    f: dict[str, Any] = dict(customer_id="c1", region="north", service_type="broadband.fault_repair",
                             description="No internet since the storm", location={"address": "1 Main Street"})
    f.update(kw)
    return f


async def test_a_restarted_instance_knows_channels_duplicates_deadlines_and_replays(
    db: tuple[ServiceSettings, asyncpg.Pool],
) -> None:
    settings, pool = db
    first = await Instance(settings, pool, NOW).start()
    _, _, token = await service.register_channel(first.runtime, "portal", "web", None, None, ADMIN)
    web = first.app.index.principal(hash_token(token))
    assert web is not None
    accepted, _ = await service.submit(first.runtime, fields(), web, "key-1")
    pending, _ = await service.submit(first.runtime, fields(customer_id="c2", location=None), web, None)
    assert (accepted.status, pending.status) == ("accepted", "pending_information")
    first.close()

    later = NOW + timedelta(hours=73)
    second = await Instance(settings, pool, later).start()
    again = second.app.index.principal(hash_token(token))
    assert again is not None and again.channel_id == web.channel_id
    replay, new = await service.submit(second.runtime, fields(), again, "key-1")
    assert not new and replay.id == accepted.id
    twin, _ = await service.submit(second.runtime, fields(), again, None)
    assert twin.status == "linked" and twin.duplicate_of == str(accepted.id)

    # two instances run the completion timer at once: the application is cancelled exactly once
    third = await Instance(settings, pool, later).start()
    counts = await asyncio.gather(expire_pending(second.runtime), expire_pending(third.runtime))
    assert sum(counts) == 1
    gone = await asyncio.to_thread(third.app.get_request, pending.id)
    assert gone is not None and gone.status == "cancelled"
    assert gone.cancellation is not None and gone.cancellation["reason_code"] == "information_deadline_passed"
    notes = await asyncio.to_thread(third.app.recorder.select_notifications, 1, 1000)
    cancelled = [n for n in notes if n.topic.endswith("Cancelled")]
    assert len(cancelled) == 1
    second.close()
    third.close()


async def test_a_revocation_in_one_instance_reaches_the_others(db: tuple[ServiceSettings, asyncpg.Pool]) -> None:
    settings, pool = db
    a = await Instance(settings, pool, NOW).start()
    b = await Instance(settings, pool, NOW).start()
    ch, cred, token = await service.register_channel(a.runtime, "hotline desk", "hotline", None, None, ADMIN)
    await asyncio.to_thread(b.app.index.refresh)
    assert b.app.index.principal(hash_token(token)) is not None
    await service.revoke_credential(a.runtime, ch.id, cred, ADMIN)
    await asyncio.to_thread(b.app.index.refresh)
    assert b.app.index.principal(hash_token(token)) is None
    a.close()
    b.close()


async def test_a_duplicate_closed_downstream_no_longer_links(db: tuple[ServiceSettings, asyncpg.Pool]) -> None:
    settings, pool = db
    inst = await Instance(settings, pool, NOW).start()
    _, _, token = await service.register_channel(inst.runtime, "app", "app", None, None, ADMIN)
    ch = inst.app.index.principal(hash_token(token))
    assert ch is not None
    first, _ = await service.submit(inst.runtime, fields(customer_id="c7"), ch, None)
    await pool.execute("INSERT INTO request_status VALUES ($1, 'closed', 11, now())", first.id)
    second, _ = await service.submit(inst.runtime, fields(customer_id="c7"), ch, None)
    assert second.status == "accepted"
    inst.close()


async def test_a_replay_another_instance_saved_first_leaves_the_index_right(
    db: tuple[ServiceSettings, asyncpg.Pool],
) -> None:
    settings, pool = db
    a = await Instance(settings, pool, NOW).start()
    b = await Instance(settings, pool, NOW).start()
    _, _, token = await service.register_channel(a.runtime, "app", "app", None, None, ADMIN)
    ch = a.app.index.principal(hash_token(token))
    assert ch is not None
    await asyncio.to_thread(b.app.index.refresh)  # b knows the channel, not what a does next
    first, _ = await service.submit(a.runtime, fields(customer_id="c8"), ch, "retry-1")
    # b's refresh runs past a's save while b's own attempt with the same key is noted: that
    # save fails, and b's index must still hold the original
    saving = b.runtime.committer.save

    async def refresh_then_save(*aggregates: Any) -> None:
        await asyncio.to_thread(b.app.index.refresh)
        await saving(*aggregates)

    b.runtime.committer.save = refresh_then_save
    again, new = await service.submit(b.runtime, fields(customer_id="c8"), ch, "retry-1")
    assert not new and again.id == first.id
    b.runtime.committer.save = saving
    twin, _ = await service.submit(b.runtime, fields(customer_id="c8"), ch, None)
    assert twin.status == "linked" and twin.duplicate_of == str(first.id)
    a.close()
    b.close()
