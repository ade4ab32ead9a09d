"""What a service's background work fails with now: timers, sweeps, inboxes.

A background step (a timer round's escalation, a sweep, a queued entry) that fails must neither stop the others
nor go unseen. ``Faults`` isolates each step (``step``), logs a lasting fault once (when it appears or changes,
and when it clears, not on every round), shows what fails now in ``/readyz`` under ``degraded.failing`` (the
instance stays in service: the other steps work) and in the metric ``tsop_background_failing``. Every runtime
has one (``Runtime.faults``); the services' loops report through it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from prometheus_client import Gauge

from tsop_events.personal import error_text

FAILING = Gauge("tsop_background_failing", "1 while a background step fails (see /readyz degraded.failing)",
                ["service", "step"])
T = TypeVar("T")


class Faults:
    """The background steps failing now, by name (``current``: step → its error, type and message)."""

    def __init__(self, service: str = "", log: logging.Logger | None = None) -> None:
        self.service = service
        self.log = log or logging.getLogger(__name__)
        self.current: dict[str, str] = {}

    def failed(self, step: str, exc: BaseException | str) -> None:
        # /readyz is unauthenticated: the error's text without the input values a validation error would quote
        text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {error_text(exc)}"
        if self.current.get(step) == text:
            return
        self.current[step] = text
        FAILING.labels(self.service, step).set(1)
        if isinstance(exc, BaseException):
            self.log.error("%s: %s failed (logged once until it changes): %s", self.service, step, text,
                           exc_info=exc)
        else:
            self.log.warning("%s: %s: %s (logged once until it changes)", self.service, step, text)

    def ok(self, step: str) -> None:
        if self.current.pop(step, None) is not None:
            FAILING.remove(self.service, step)  # no series left behind per step that once failed
            self.log.info("%s: %s works again", self.service, step)

    def only(self, prefix: str, current: set[str]) -> None:
        """Forget the faults of steps named ``prefix…`` that are not among ``current``: work another instance did
        meanwhile (a shared inbox's entry, an incident's resolution) no longer fails here."""
        for step in [s for s in self.current if s.startswith(prefix) and s not in current]:
            self.ok(step)

    async def step(self, name: str, run: Callable[[], Awaitable[T]]) -> T | None:
        """Run one step, isolated: a failure is reported (once while it lasts) and None returned, so the next
        step still runs; a success clears what the step failed with before."""
        try:
            out = await run()
        except Exception as exc:  # noqa: BLE001 - one failing step never stops the others
            self.failed(name, exc)
            return None
        self.ok(name)
        return out
