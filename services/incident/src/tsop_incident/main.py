"""Wiring: settings → service (its consumer of the ticket stream) → HTTP app."""

from __future__ import annotations

from fastapi import FastAPI

from tsop_events.http import create_app, serve
from tsop_events.runtime import Service
from tsop_events.settings import ServiceSettings
from tsop_events.store import EventStoreApp
from tsop_incident.api import router
from tsop_incident.projection import OpenTickets


class IncidentSettings(ServiceSettings):
    service_name: str = "incident"
    """Names the service in events and its database."""
    http_port: int = 8004
    """Incident's HTTP port."""


IncidentService = Service[EventStoreApp, IncidentSettings]


def open_tickets(svc: IncidentService) -> OpenTickets:
    return OpenTickets(svc.pool)


def bootstrap(settings: IncidentSettings | None = None) -> IncidentService:
    """The incident service: no event store of its own yet, one SQL read model of the ticket stream."""
    return Service(settings or IncidentSettings(), sinks=[open_tickets])


def build(settings: IncidentSettings | None = None) -> FastAPI:
    return create_app(bootstrap(settings), "TSOP incident", [router])


def main() -> None:
    s = IncidentSettings()
    serve(build(s), s.http_host, s.http_port, s.log_level)


if __name__ == "__main__":
    main()
