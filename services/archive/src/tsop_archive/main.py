"""Wiring: settings → service → HTTP app."""

from __future__ import annotations

from fastapi import FastAPI

from tsop_archive.api import router
from tsop_archive.commands import ArchiveApp
from tsop_archive.projection import DDL, ArchiveStore
from tsop_archive.records import projection as records_projection
from tsop_archive.records.api import router as records_router
from tsop_archive.records.main import RecordsSettings
from tsop_archive.records.views import keep_chain, keep_retention
from tsop_archive.views import seal_dossiers
from tsop_archive.wire import WIRE
from tsop_events.http import create_app, serve
from tsop_events.runtime import Service


class ArchiveSettings(RecordsSettings):
    service_name: str = "archive"
    """The archive's name in events and its database (`tsop_archive`)."""
    http_port: int = 8005
    """The archive's HTTP port."""


ArchiveService = Service[ArchiveApp, ArchiveSettings]


def archive_store(svc: Service[ArchiveApp]) -> ArchiveStore:
    return ArchiveStore(svc.pool, svc.settings.topic_prefix)


def bootstrap(settings: ArchiveSettings) -> ArchiveService:
    """The archive: every event of every topic stored (``projection``), dossiers sealed (``views``) and
    announced as Archived (``wire``); the whole archive chained, signed, kept and expired (``records``)."""
    return ArchiveService(
        settings,
        app_factory=ArchiveApp,
        mapper=WIRE,
        sinks=[archive_store],
        tasks=[seal_dossiers, keep_chain, keep_retention],
        ddl=[*DDL, *records_projection.DDL],
    )


def build(settings: ArchiveSettings | None = None) -> FastAPI:
    return create_app(bootstrap(settings or ArchiveSettings()), "TSOP archive", [router, records_router])


def main() -> None:
    s = ArchiveSettings()
    serve(build(s), s.http_host, s.http_port, s.log_level)


if __name__ == "__main__":
    main()
