"""A quiet consumer stops fetching and loses nothing: a relay's announcement or the safety net wakes it.

Tansu answers a waiting fetch only when its wait expires, so an idle consumer fetching with a 50 ms wait sends
20 fetches a second. A consumer without records for a second pauses its partitions; it resumes when a relay
announces a publish to one of its topics (NOTIFY on the shared ``postgres`` database) and, for records no relay
announces (a lost announcement, a tool publishing directly), once per safety net (TSOP_CONSUMER_SAFETY_NET_SECONDS,
10 s: every publisher of the platform announces).
"""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.conftest import eventually
from tests.integration.test_bus_contract import Recorder, count_applied, publish, rejected
from tsop_events.runtime import Runtime, announce
from tsop_events.settings import ServiceSettings
from tsop_events.topics import Topic

pytestmark = pytest.mark.parametrize("bus", ["tansu"], indirect=True)


async def test_a_quiet_consumer_pauses_and_still_applies_announced_and_unannounced_records(
    settings: ServiceSettings,
) -> None:
    Recorder.fail_once_at = set()
    settings = settings.model_copy(update={"consumer_safety_net_seconds": 4.0})
    runtime = Runtime(settings, sinks=[lambda rt: Recorder(rt.pool)])
    await runtime.start()
    try:
        runner = runtime.runners[0]

        async def paused() -> bool:
            return runner.consumer is not None and bool(runner.consumer.assignment()) and bool(
                runner.consumer.paused())

        await eventually(paused, 30, "the quiet consumer paused its partitions")
        # a record nobody announces: the safety net finds it, not within a second (the net was 1 s) but within it
        await publish(settings, [("u1", rejected(1))], announced=False)
        await asyncio.sleep(1.5)
        assert not await _applied(runtime, {"u1"}), "a quiet consumer sleeps the whole safety net"
        await eventually(lambda: _applied(runtime, {"u1"}), 15, "the unannounced record applied")
        await eventually(paused, 30, "paused again")
        # an announced record: the consumer resumes on the news
        await publish(settings, [("a1", rejected(2))], announced=False)
        await announce(settings, {Topic.tickets.qualified(settings.topic_prefix)})  # as a tool publishing directly
        await eventually(lambda: _applied(runtime, {"u1", "a1"}), 15, "the announced record applied")
        await asyncio.sleep(1.0)
        assert sorted(await count_applied(runtime)) == ["a1", "u1"], "each once"
    finally:
        await runtime.stop()


async def _applied(runtime: Runtime, want: set[str]) -> bool:
    return set(await count_applied(runtime)) >= want
