"""A service's commands driven by hand, synchronously: for tests without HTTP or a broker.

``SyncService(app, "dispatch", commands, views).accept(...)`` runs
``commands.accept(svc, ...)`` to the end on a fresh event loop (so it may be called from
any thread); so for every async command or timer of the modules given, looked up in
order. Everything else (``load``, ``save``, ``board``, ``clock``…) is the app's own.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from types import ModuleType
from typing import Any, Generic, TypeVar

from tsop_events.commands import Commands
from tsop_events.runtime import Service
from tsop_events.settings import ServiceSettings
from tsop_events.store import EventStoreApp

A = TypeVar("A", bound=EventStoreApp)


def service(app: A, name: str) -> Service[A]:
    """A service around ``app`` with its commands, not started (no database pool, broker or tasks)."""
    svc: Service[A] = Service(ServiceSettings(service_name=name))
    svc.app = app
    svc.commands = Commands(app)
    return svc


class SyncService(Generic[A]):
    def __init__(self, app: A, name: str, *modules: ModuleType) -> None:
        self.app = app
        self.svc = service(app, name)
        self._modules = modules

    def __getattr__(self, name: str) -> Any:
        if not hasattr(self.app, name):
            for module in self._modules:
                fn = getattr(module, name, None)
                if inspect.iscoroutinefunction(fn):
                    return self._sync(fn)
        return getattr(self.app, name)

    def _sync(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            return asyncio.run(fn(self.svc, *args, **kwargs))

        return call
