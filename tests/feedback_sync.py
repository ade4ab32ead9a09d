"""Feedback driven by hand, synchronously: its commands on an in-memory store, without HTTP or a broker.

``SyncFeedback(app).rate(ticket, 4, None)`` runs ``commands.rate(svc, ...)`` to the end
on a fresh event loop; so for every command. Everything else (``load``, ``save``,
``follow_ups``, ``clock``…) is the ``FeedbackApp``'s own.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from tsop_events.commands import Commands
from tsop_events.runtime import Service
from tsop_events.settings import ServiceSettings
from tsop_feedback import commands
from tsop_feedback.commands import FeedbackApp


def service(app: FeedbackApp) -> Service[FeedbackApp]:
    """A service around ``app`` with its commands, not started (no database pool, broker or tasks)."""
    svc: Service[FeedbackApp] = Service(ServiceSettings(service_name="feedback"))
    svc.app = app
    svc.commands = Commands(app)
    return svc


class SyncFeedback:
    def __init__(self, app: FeedbackApp) -> None:
        self.app = app
        self.svc = service(app)

    def __getattr__(self, name: str) -> Any:
        fn = getattr(commands, name, None)
        if inspect.iscoroutinefunction(fn):
            return self._sync(fn)
        return getattr(self.app, name)

    def _sync(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            return asyncio.run(fn(self.svc, *args, **kwargs))

        return call
