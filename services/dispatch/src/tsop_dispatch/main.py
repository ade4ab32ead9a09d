"""Wiring: settings → runtime → HTTP app."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

from tsop_dispatch.api import router
from tsop_dispatch.application import DispatchApp, to_wire
from tsop_dispatch.policies import OpenWorkOrders
from tsop_events.http import create_app, serve
from tsop_events.runtime import Runtime
from tsop_events.settings import ServiceSettings


class DispatchSettings(ServiceSettings):
    service_name: str = "dispatch"
    http_port: int = 8002
    queue_drain_seconds: float = 0.5


async def drain_queue(runtime: Runtime) -> None:
    """Waiting work orders get a technician as soon as one has room."""
    assert isinstance(runtime.app, DispatchApp)
    assert isinstance(runtime.settings, DispatchSettings)
    while True:
        await asyncio.to_thread(runtime.app.drain_queue)
        await asyncio.sleep(runtime.settings.queue_drain_seconds)


def build(settings: DispatchSettings | None = None) -> FastAPI:
    s = settings or DispatchSettings()

    def sink(rt: Runtime) -> OpenWorkOrders:
        assert isinstance(rt.app, DispatchApp)
        return OpenWorkOrders(rt.app)

    runtime = Runtime(s, app_factory=DispatchApp, mapper=to_wire, sinks=[sink], tasks=[drain_queue])
    return create_app(runtime, "TSOP dispatch", [router])


def main() -> None:
    s = DispatchSettings()
    serve(build(s), s.http_host, s.http_port, s.log_level)


if __name__ == "__main__":
    main()
