"""Wiring: settings → runtime → HTTP app."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

from tsop_archive.api import router
from tsop_archive.application import ArchiveApp, to_wire
from tsop_archive.store import DDL, ArchiveStore
from tsop_events.http import create_app, serve
from tsop_events.runtime import Runtime
from tsop_events.settings import ServiceSettings


class ArchiveSettings(ServiceSettings):
    service_name: str = "archive"
    http_port: int = 8005


async def seal_dossiers(runtime: Runtime) -> None:
    """Seal each finished ticket's dossier once the store holds it up to its final event."""
    assert isinstance(runtime.app, ArchiveApp)
    while True:
        if not await asyncio.to_thread(runtime.app.seal_pending):
            await asyncio.sleep(0.05)


def build(settings: ArchiveSettings | None = None) -> FastAPI:
    s = settings or ArchiveSettings()

    runtime = Runtime(
        s,
        app_factory=ArchiveApp,
        mapper=to_wire,
        sinks=[lambda rt: ArchiveStore(rt.pool)],
        tasks=[seal_dossiers],
        ddl=list(DDL),
    )
    return create_app(runtime, "TSOP archive", [router])


def main() -> None:
    s = ArchiveSettings()
    serve(build(s), s.http_host, s.http_port, s.log_level)


if __name__ == "__main__":
    main()
