"""Dispatch driven by hand, synchronously: for tests of one or two instances without HTTP or a broker.

``SyncDispatch(app).drain_queue()`` runs ``views.drain_queue(svc)`` to the end on a
fresh event loop (so it may be called from any thread); ``.accept(...)`` runs
``commands.accept(svc, ...)``, and so on for every command and timer (see ``tests.sync``).
"""

from __future__ import annotations

from tests.sync import SyncService
from tsop_dispatch import commands, views
from tsop_dispatch.commands import DispatchApp
from tsop_dispatch.domain import Decision, WorkOrder

__all__ = ["SyncDispatch"]


class SyncDispatch(SyncService[DispatchApp]):
    def __init__(self, app: DispatchApp) -> None:
        super().__init__(app, "dispatch", commands, views)

    def open_work_order(self, *args: object) -> WorkOrder:
        return commands.open_work_order(self.app, *args)  # type: ignore[arg-type]

    def decide(self, wo: WorkOrder) -> Decision:
        return commands.decide(self.app, wo)
