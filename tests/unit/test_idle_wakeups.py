"""What an idle service still wakes for: uvicorn's tick (once a second, not ten times) and its quiet consumers'
safety net (short only for topics published to without an announcement)."""

from __future__ import annotations

import asyncio
import signal

import uvicorn
from fastapi import FastAPI

from tsop_events.consumer import safety_net
from tsop_events.http import Server
from tsop_events.settings import ServiceSettings
from tsop_events.topics import Topic


class Counting(Server):
    ticks = 0

    async def on_tick(self, counter: int) -> bool:
        self.ticks += 1
        assert counter % 10 == 0, "every tick refreshes the Date header (uvicorn does it when counter % 10 == 0)"
        return await super().on_tick(counter)


async def test_the_server_ticks_once_a_second_and_exits_at_once_on_a_signal() -> None:
    server = Counting(uvicorn.Config(FastAPI()))
    server.server_state.default_headers = []
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(server.main_loop())
    await asyncio.sleep(2.5)
    assert 2 <= server.ticks <= 4, f"{server.ticks} ticks in 2.5 s (uvicorn's own loop: 25)"
    assert any(name == b"date" for name, _ in server.server_state.default_headers)
    started = loop.time()
    server.handle_exit(signal.SIGTERM, None)
    await asyncio.wait_for(task, 2)
    assert loop.time() - started < 0.5, "an exit signal does not wait for the next tick"


def test_only_consumers_of_unannounced_topics_keep_the_short_safety_net() -> None:
    settings = ServiceSettings(consumer_safety_net_seconds=1.0, consumer_announced_safety_net_seconds=10.0)
    assert safety_net(settings, [Topic.tickets, Topic.customers]) == 10.0
    assert safety_net(settings, [Topic.tickets, Topic.deadletter]) == 1.0
