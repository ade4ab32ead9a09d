"""Loops woken by news (tsop_events.wake): no ring is missed, the safety net fires, the pace holds under load."""

from __future__ import annotations

import asyncio

from tsop_events.wake import Bell, Waiter


async def test_the_first_wait_returns_at_once_so_the_first_round_runs() -> None:
    waiter = Bell().waiter()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await waiter.wait(5.0) is True
    assert loop.time() - t0 < 0.5


async def test_without_news_the_wait_ends_at_the_safety_net() -> None:
    waiter = Bell().waiter()
    await waiter.wait(0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await waiter.wait(0.2) is False
    assert 0.15 <= loop.time() - t0 < 1.0


async def test_a_ring_wakes_every_waiter_of_the_bell_and_only_those() -> None:
    saved, stored = Bell(), Bell()
    a, b, c = Waiter([saved]), Waiter([saved, stored]), Waiter([stored])
    for w in (a, b, c):
        await w.wait(0)
    saved.ring()
    got = await asyncio.gather(a.wait(0.2), b.wait(0.2), c.wait(0.2))
    assert got == [True, True, False]


async def test_a_ring_during_a_round_wakes_the_next_wait_at_once() -> None:
    bell = Bell()
    waiter = bell.waiter()
    await waiter.wait(0)
    bell.ring()  # while the loop was busy with its round
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await waiter.wait(5.0) is True
    assert loop.time() - t0 < 0.5
    assert await waiter.wait(0.05) is False, "one ring wakes once"


async def test_a_ring_wakes_a_waiting_loop_before_its_timeout() -> None:
    bell = Bell()
    waiter = bell.waiter()
    await waiter.wait(0)
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, bell.ring)
    t0 = loop.time()
    assert await waiter.wait(5.0) is True
    assert loop.time() - t0 < 1.0


async def test_the_pace_bounds_how_often_news_wakes_a_loop() -> None:
    bell = Bell()
    waiter = Waiter([bell], pace=0.2)
    await waiter.wait(0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    rounds = 0
    while loop.time() - t0 < 0.7:
        bell.ring()  # news all the time, as under load
        await waiter.wait(5.0)
        rounds += 1
    assert 3 <= rounds <= 5


async def test_a_loop_waiting_for_news_stops_when_cancelled_even_as_the_news_arrives() -> None:
    """The race that hung a service's stop: the event set in the same moment the waiting loop is cancelled."""
    from tsop_events.wake import wait_event

    for _ in range(50):
        event = asyncio.Event()

        async def loop(event: asyncio.Event) -> None:
            while True:
                await wait_event(event, 5.0)
                event.clear()

        task = asyncio.create_task(loop(event))
        await asyncio.sleep(0)  # the loop waits
        event.set()
        task.cancel()  # in the same moment: the loop must still end
        done, _ = await asyncio.wait({task}, timeout=2.0)
        assert task in done and task.cancelled(), "the loop swallowed its cancellation"
