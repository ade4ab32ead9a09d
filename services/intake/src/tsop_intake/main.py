"""Wiring: settings → runtime → HTTP app."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from tsop_events.http import create_app, serve
from tsop_events.runtime import Runtime
from tsop_events.settings import ServiceSettings
from tsop_intake.api import router
from tsop_intake.application import IntakeApp, to_wire
from tsop_intake.catalogue import Catalogue
from tsop_intake.timers import channel_tokens, completion_deadlines, follow_log, status_projection
from tsop_intake.tmf import hub
from tsop_intake.tmf.api import BASE as TMF_BASE
from tsop_intake.tmf.api import router as tmf_router
from tsop_intake.tmf.api import tmf_error
from tsop_intake.tmf.projection import TmfTicketProjection


class IntakeSettings(ServiceSettings):
    service_name: str = "intake"
    http_port: int = 8001
    service_types_file: Path | None = None
    commit_writers: int = 2  # one batch of submissions is encoded while the previous one is in PostgreSQL
    hub_delivery_timeout_seconds: float = 5.0


async def deliver_notifications(runtime: Runtime) -> None:
    """TMF621 hub listeners get their notifications, in order, retried a bounded number of times."""
    assert isinstance(runtime.settings, IntakeSettings)
    await hub.deliver(runtime, runtime.settings.hub_delivery_timeout_seconds)


def build(settings: IntakeSettings | None = None) -> FastAPI:
    s = settings or IntakeSettings()
    catalogue = Catalogue.load(s.service_types_file)  # a bad file stops the start with the reason
    runtime = Runtime(
        s,
        app_factory=lambda st: IntakeApp(st, catalogue=catalogue),
        mapper=to_wire,
        sinks=[status_projection, lambda rt: TmfTicketProjection(rt.pool, hub.Outbox())],
        tasks=[follow_log, completion_deadlines, deliver_notifications],
        token_resolvers=[channel_tokens],
        commit_writers=s.commit_writers,
        ddl=list(hub.DDL),
    )
    return create_app(runtime, "TSOP intake", [router, tmf_router], error_renderers=[(TMF_BASE, tmf_error)])


def main() -> None:
    s = IntakeSettings()
    serve(build(s), s.http_host, s.http_port, s.log_level)


if __name__ == "__main__":
    main()
