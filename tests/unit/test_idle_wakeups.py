"""What an idle service wakes for: uvicorn's tick, once a second (not ten times), and an exit signal; its quiet
consumers are woken by announcements, dead letters included, so their safety net can be long."""

from __future__ import annotations

import asyncio
import signal

import uvicorn
from fastapi import FastAPI

from tests.unit.test_consumer_partitions import Conn, Epoch, Plain, record
from tsop_events.consumer import ConsumerRunner
from tsop_events.http import Server
from tsop_events.settings import ServiceSettings


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



class Producer:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send_and_wait(self, topic: str, **_: object) -> None:
        self.sent.append(topic)


async def test_a_consumer_s_dead_letter_is_announced_so_its_readers_need_no_short_safety_net() -> None:
    producer = Producer()
    runner = ConsumerRunner(Plain(Conn()), ServiceSettings(topic_prefix="t."), Epoch(), producer,  # type: ignore[arg-type]
                            own_consumer=False)
    heard: list[set[str]] = []
    runner.on_published = heard.append
    await runner._dead_letter(record(0, 7), ValueError("not for this sink"))
    assert producer.sent == ["t.deadletter"] and heard == [{"t.deadletter"}]
