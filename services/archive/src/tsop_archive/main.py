"""Wiring: settings → runtime → HTTP app."""

from __future__ import annotations

from fastapi import FastAPI

from tsop_archive.api import router
from tsop_archive.application import ArchiveApp, SealDossiers, to_wire
from tsop_archive.store import DDL, ArchiveStore
from tsop_events.http import create_app, serve
from tsop_events.runtime import Runtime
from tsop_events.settings import ServiceSettings


class ArchiveSettings(ServiceSettings):
    service_name: str = "archive"
    http_port: int = 8005


def build(settings: ArchiveSettings | None = None) -> FastAPI:
    s = settings or ArchiveSettings()

    def sealer(rt: Runtime) -> SealDossiers:
        assert isinstance(rt.app, ArchiveApp)
        return SealDossiers(rt.app)

    runtime = Runtime(
        s,
        app_factory=ArchiveApp,
        mapper=to_wire,
        sinks=[lambda rt: ArchiveStore(rt.pool), sealer],
        ddl=list(DDL),
    )
    return create_app(runtime, "TSOP archive", [router])


def main() -> None:
    s = ArchiveSettings()
    serve(build(s), s.http_host, s.http_port, s.log_level)


if __name__ == "__main__":
    main()
