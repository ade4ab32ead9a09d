"""Two instances of one service starting together on a fresh database both come up.

``CREATE TABLE IF NOT EXISTS`` is not safe against itself: two sessions creating the same missing table at
once both pass the check and one fails on ``pg_type``'s unique index. The start-up DDL (the service's tables,
the event store's, the consumer sinks') runs under a per-database advisory lock (``tsop_events.store.
schema_lock``), so the second instance waits for the first instead of crashing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import pytest

from tests.integration.conftest import eventually
from tsop_archive.main import ArchiveSettings
from tsop_archive.main import bootstrap as archive_bootstrap
from tsop_events.runtime import Runtime
from tsop_events.settings import ServiceSettings
from tsop_events.store import schema_lock
from tsop_intake.main import IntakeSettings
from tsop_intake.main import bootstrap as intake_bootstrap

pytestmark = pytest.mark.parametrize("bus", ["tansu"], indirect=True)

SERVICES: dict[str, Callable[[ServiceSettings], Runtime]] = {
    "archive": lambda s: archive_bootstrap(ArchiveSettings(**s.model_dump())),
    "intake": lambda s: intake_bootstrap(IntakeSettings(**s.model_dump())),
}


@pytest.mark.parametrize("service", sorted(SERVICES))
async def test_two_instances_started_together_both_come_up(settings: ServiceSettings, service: str) -> None:
    fresh = settings.model_copy(update={"service_name": f"{settings.service_name}_{service}"})
    admin = await asyncpg.connect(fresh.pg_dsn("postgres"))
    try:
        assert not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", fresh.database)
    finally:
        await admin.close()
    instances = [SERVICES[service](fresh) for _ in range(2)]
    started = await asyncio.gather(*(rt.start() for rt in instances), return_exceptions=True)
    try:
        assert [r for r in started if isinstance(r, BaseException)] == [], "both instances start"

        async def ready() -> bool:
            return all(all(rt.readiness().values()) for rt in instances)

        await eventually(ready, 60, "both instances ready")
        # every table each instance needs is there once, and the lock is free again
        async with schema_lock(fresh):
            conn = await asyncpg.connect(fresh.pg_dsn())
            try:
                tables = await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            finally:
                await conn.close()
        assert tables >= 4
    finally:
        await asyncio.gather(*(rt.stop() for rt in instances if not isinstance(started[instances.index(rt)],
                                                                              BaseException)), return_exceptions=True)


async def test_the_schema_lock_lets_one_holder_in_at_a_time(settings: ServiceSettings) -> None:
    order: list[str] = []

    async def hold(name: str) -> None:
        async with schema_lock(settings):
            order.append(f"{name} in")
            await asyncio.sleep(0.3)
            order.append(f"{name} out")

    await asyncio.gather(hold("a"), hold("b"))
    assert order in (["a in", "a out", "b in", "b out"], ["b in", "b out", "a in", "a out"])


async def test_many_instances_running_their_ddl_at_once_never_race(settings: ServiceSettings) -> None:
    from tsop_archive.projection import DDL as ARCHIVE_DDL
    from tsop_archive.records.projection import DDL as RECORDS_DDL
    from tsop_events.consumer import OFFSETS_DDL
    from tsop_events.relay import RELAY_DDL, SET_ASIDE_DDL
    from tsop_events.store import ensure_database

    ddl = [RELAY_DDL, SET_ASIDE_DDL, OFFSETS_DDL, *ARCHIVE_DDL, *RECORDS_DDL]
    for round_ in range(3):
        fresh = settings.model_copy(update={"service_name": f"{settings.service_name}_ddl{round_}"})
        results = await asyncio.gather(*(ensure_database(fresh, ddl) for _ in range(8)), return_exceptions=True)
        assert [r for r in results if isinstance(r, BaseException)] == []
