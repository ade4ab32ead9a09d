"""A member of a consumer group gone without leaving (SIGKILL): the survivor takes its partitions over.

The broker drops the member after its session timeout (10 s) and the group rebalances. Meanwhile a fetch of the
survivor's waits for the group's new assignment, which aiokafka waits for without any timeout of its own: the watch on
fetches (``tsop_events.consumer``) must not take that legitimate wait for a wedged consumer (no restart, nothing
degraded). And a survivor that was quiet (its partitions paused until news, ``tsop_events.wake``) must read the
partitions it took over at once: their records were announced while the other member had them, and would otherwise
wait for the safety net.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from prometheus_client import REGISTRY

from tests.integration.conftest import eventually
from tests.integration.test_bus_contract import Recorder, count_applied, publish, rejected
from tsop_events import consumer as consumer_mod
from tsop_events.runtime import Runtime
from tsop_events.settings import ServiceSettings

pytestmark = pytest.mark.parametrize("bus", ["tansu"], indirect=True)

SAFETY_NET = 60.0  # long: a takeover that waited for it would be plain


async def test_a_rejoin_while_fetching_is_a_wait_not_a_stuck_consumer(settings: ServiceSettings) -> None:
    took, fetches = await _takeover(settings, trickle=True)
    assert max(fetches) > 1.0, fetches  # a fetch was in flight during the rebalance and waited for it
    assert max(fetches) < consumer_mod.STUCK_FETCH_SECONDS, fetches
    assert took < consumer_mod.STUCK_FETCH_SECONDS, f"the takeover took {took:.1f} s"


async def test_partitions_taken_over_by_a_quiet_consumer_are_read_at_once(settings: ServiceSettings) -> None:
    took, _ = await _takeover(settings, trickle=False)
    # the session timeout (10 s), the rebalance, then at once: not after the safety net
    assert took < SAFETY_NET - 15, f"the takeover took {took:.1f} s"


async def _takeover(settings: ServiceSettings, trickle: bool) -> tuple[float, list[float]]:
    """Two instances share the group; the second dies without leaving it; records for every partition are published
    (and, with ``trickle``, more keep coming so that the survivor keeps fetching). Returns how long until the
    survivor applied them all, and how long each of its fetches took meanwhile."""
    Recorder.fail_once_at = set()
    settings = settings.model_copy(update={"consumer_safety_net_seconds": SAFETY_NET})
    one = Runtime(settings, sinks=[lambda rt: Recorder(rt.pool)])
    two = Runtime(settings, sinks=[lambda rt: Recorder(rt.pool)])
    await one.start()
    await two.start()
    stopped_two = False
    try:
        c1, c2 = one.runners[0], two.runners[0]

        async def shared() -> bool:  # the group formed with both: each holds some of the partitions
            return all(r.consumer is not None and r.consumer.assignment() for r in (c1, c2))

        await eventually(shared, 60, "both instances assigned partitions")
        await publish(settings, [(f"a{i}", rejected(i)) for i in range(12)])
        await eventually(lambda: _count(one, 12), 30, "the first records applied")
        restarts = _restarts()
        fetches = _time_fetches(c1.consumer)

        # two dies without leaving its group (as a SIGKILLed process: no LeaveGroup; its session just ends)
        assert c2.consumer is not None
        c2.consumer._coordinator._maybe_leave_group = _nothing
        await two.stop()
        stopped_two = True
        began = time.monotonic()
        await publish(settings, [(f"b{i}", rejected(100 + i)) for i in range(12)])  # over every partition
        more = asyncio.create_task(_trickle(settings)) if trickle else None
        try:
            await eventually(lambda: _count(one, 24), 120, "the survivor applied every partition's records")
        finally:
            if more is not None:
                more.cancel()
        took = time.monotonic() - began
        assert c1.consumer is not None and len(c1.consumer.assignment()) == settings.topic_partitions
        assert _restarts() == restarts, "a rejoin taken for a stuck consumer"
        assert one.degraded() == {}
        applied = await count_applied(one)
        assert len(applied) == len(set(applied)), "each once"
        assert {f"a{i}" for i in range(12)} | {f"b{i}" for i in range(12)} <= set(applied)
        return took, fetches
    finally:
        await one.stop()
        if not stopped_two:
            await two.stop()


def _restarts() -> float:
    return REGISTRY.get_sample_value("tsop_consumer_restarts_total", {"consumer": "recorder"}) or 0.0


async def _nothing() -> None:
    return None


def _time_fetches(consumer: Any) -> list[float]:
    """How long each fetch of ``consumer`` takes from now on (its getmany wrapped)."""
    took: list[float] = [0.0]
    getmany = consumer.getmany

    async def timed(*args: Any, **kw: Any) -> Any:
        began = time.monotonic()
        try:
            return await getmany(*args, **kw)
        finally:
            took.append(time.monotonic() - began)

    consumer.getmany = timed
    return took


async def _count(runtime: Runtime, n: int) -> bool:
    applied = set(await count_applied(runtime))
    return len({c for c in applied if c[0] in "ab"}) >= n


async def _trickle(settings: ServiceSettings) -> None:
    for i in range(1000):
        await publish(settings, [(f"c{i}", rejected(1000 + i))])
        await asyncio.sleep(0.3)
