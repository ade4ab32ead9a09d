"""Dispatch driven by hand, synchronously: for tests of one or two instances without HTTP or a broker.

``SyncDispatch(app).drain_queue()`` runs ``views.drain_queue(svc)`` to the end on a
fresh event loop (so it may be called from any thread); ``.accept(...)`` runs
``commands.accept(svc, ...)``, and so on for every command and timer. Everything
else (``load``, ``save``, ``board``, ``mapper``…) is the ``DispatchApp``'s own.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from tsop_dispatch import commands, views
from tsop_dispatch.commands import DispatchApp
from tsop_dispatch.domain import Decision, WorkOrder
from tsop_events.commands import Commands
from tsop_events.runtime import Service
from tsop_events.settings import ServiceSettings


def service(app: DispatchApp) -> Service[DispatchApp]:
    """A service around ``app`` with its commands, not started (no database pool, broker or tasks)."""
    svc: Service[DispatchApp] = Service(ServiceSettings(service_name="dispatch"))
    svc.app = app
    svc.commands = Commands(app)
    return svc


class SyncDispatch:
    def __init__(self, app: DispatchApp) -> None:
        self.app = app
        self.svc = service(app)

    def __getattr__(self, name: str) -> Any:
        if not hasattr(self.app, name):
            for module in (commands, views):
                fn = getattr(module, name, None)
                if inspect.iscoroutinefunction(fn):
                    return self._sync(fn)
        return getattr(self.app, name)

    def _sync(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            return asyncio.run(fn(self.svc, *args, **kwargs))

        return call

    def open_work_order(self, *args: Any) -> WorkOrder:
        return commands.open_work_order(self.app, *args)

    def decide(self, wo: WorkOrder) -> Decision:
        return commands.decide(self.app, wo)
