"""Wiring: settings → service (event store, relay, read models, timers, credentials) → HTTP app."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from tsop_events.http import create_app, serve
from tsop_events.runtime import Service
from tsop_events.settings import ServiceSettings
from tsop_intake.api import router
from tsop_intake.catalogue import Catalogue
from tsop_intake.commands import IntakeApp
from tsop_intake.projection import LegalHoldProjection, RequestStatusProjection
from tsop_intake.tmf import hub
from tsop_intake.tmf.api import BASE as TMF_BASE
from tsop_intake.tmf.api import router as tmf_router
from tsop_intake.tmf.api import tmf_error
from tsop_intake.tmf.projection import TmfTicketProjection
from tsop_intake.views import channel_tokens, completion_deadlines, follow_log
from tsop_intake.wire import WIRE


class IntakeSettings(ServiceSettings):
    service_name: str = "intake"
    """Names the service in events and its database."""
    http_port: int = 8001
    """Intake's HTTP port (the native /v1 API and the TMF621 facade)."""
    service_types_file: Path | None = None
    """The operator's service-type catalogue (types, review rules, reason codes, limits); default: the built-in
    one. A bad file stops the start with the reason."""
    commit_writers: int = 2
    """Group-commit batches of submissions written at once: one is encoded while the previous one is in
    PostgreSQL."""
    hub_delivery_timeout_seconds: float = 5.0
    """How long one TMF621 hub notification may take to be delivered to a listener before the attempt fails."""


IntakeService = Service[IntakeApp, IntakeSettings]


def status_projection(svc: Service[IntakeApp]) -> RequestStatusProjection:
    """Where each request stands; a request finished downstream leaves the open-request index (and comes back
    to it when reopened)."""
    return RequestStatusProjection(
        svc.pool, on_finished=svc.app.index.drop_closed, on_reopened=svc.app.index.reopen_finished
    )


def tmf_projection(svc: Service[IntakeApp]) -> TmfTicketProjection:
    """The TMF621 read model; its changes queue hub notifications in the same transaction."""
    return TmfTicketProjection(svc.pool, hub.Outbox())


def hold_projection(svc: Service[IntakeApp]) -> LegalHoldProjection:
    """The legal holds the archive announced: an erasure they cover is refused (docs/erasure.md)."""
    return LegalHoldProjection(svc.pool)


def bootstrap(settings: IntakeSettings | None = None) -> IntakeService:
    """The intake service: checks the catalogue now (a bad file stops the start with the reason)."""
    s = settings or IntakeSettings()
    catalogue = Catalogue.load(s.service_types_file)

    def make_app(st: IntakeSettings) -> IntakeApp:
        return IntakeApp(st, catalogue=catalogue)

    async def deliver_notifications(svc: IntakeService) -> None:
        """TMF621 hub listeners get their notifications, in order, retried a bounded number of times."""
        await hub.deliver(svc, s.hub_delivery_timeout_seconds)

    return Service(
        s,
        app_factory=make_app,
        mapper=WIRE,
        sinks=[status_projection, tmf_projection, hold_projection],
        tasks=[completion_deadlines, deliver_notifications],
        followers=[follow_log],  # the index the routes read, channel credentials included
        token_resolvers=[channel_tokens],
        commit_writers=s.commit_writers,
        ddl=list(hub.DDL),
    )


def build(settings: IntakeSettings | None = None) -> FastAPI:
    return create_app(bootstrap(settings), "TSOP intake", [router, tmf_router], error_renderers=[(TMF_BASE, tmf_error)])


def main() -> None:
    s = IntakeSettings()
    serve(build(s), s.http_host, s.http_port, s.log_level)


if __name__ == "__main__":
    main()
