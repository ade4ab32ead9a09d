"""Loops woken by the news that gives them work, with a slow safety net, instead of polling.

A ``Bell`` is one kind of news in a process: *the event store saved* (this process's saves, and
every other instance's through PostgreSQL's NOTIFY on the events table, see ``runtime``) or *a
consumer stored a batch* (a projection sink's rows). A loop takes a ``Waiter`` on the bells that
concern it and, when a round found nothing to do, ``await waiter.wait(timeout)``: it returns as soon
as one of its bells rang since the previous wait, or after ``timeout`` (the safety net: a lost
notification, a due time passing). ``pace`` bounds how often news can wake a loop under load. A ring
while the loop is busy is kept, so the next wait returns at once: no news is missed between rounds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

SAFETY_NET_SECONDS = 1.0  # the longest a woken loop sleeps without news: a missed wake costs at most this


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait for ``event`` at most ``timeout`` seconds; True if it was set.

    Not ``asyncio.wait_for``: on Python 3.11 it can swallow the caller's cancellation when the event is
    set at the same moment, and a loop that never sees its cancellation never stops (a service's stop
    then hangs). ``asyncio.timeout`` tells its own timeout from an outer cancellation.
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
        return True
    except TimeoutError:
        return False


class Bell:
    """One kind of news, fanned out to every waiter on it (same event loop)."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Event] = set()

    def ring(self) -> None:
        for event in self._waiters:
            event.set()

    def waiter(self) -> Waiter:
        return Waiter([self])


class Waiter:
    """A loop's view of its bells: ``wait`` returns when any rang since the last ``wait``, or at the timeout."""

    def __init__(self, bells: Iterable[Bell], pace: float = 0.0) -> None:
        self.pace = pace  # the shortest time between two rounds: under load a loop runs at most 1/pace times a second
        self._last = 0.0
        self._event = asyncio.Event()
        self._event.set()  # the first round runs at once
        for bell in bells:
            bell._waiters.add(self._event)

    def ring(self) -> None:
        """Wake this waiter alone (e.g. a worker whose own delivery just finished)."""
        self._event.set()

    async def wait(self, timeout: float = SAFETY_NET_SECONDS) -> bool:
        """True when woken by news, False at the timeout. Rings during the caller's round wake the next wait."""
        woken = False
        loop = asyncio.get_running_loop()
        gap = self._last + self.pace - loop.time()
        if gap > 0:
            await asyncio.sleep(min(gap, timeout))
            timeout -= gap
        if timeout > 0:
            woken = await wait_event(self._event, timeout)
        else:
            woken = self._event.is_set()
        self._event.clear()
        self._last = loop.time()
        return woken
