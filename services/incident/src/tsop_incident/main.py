"""Wiring: settings → runtime → HTTP app."""

from __future__ import annotations

from fastapi import FastAPI

from tsop_events.http import create_app, serve
from tsop_events.runtime import Runtime
from tsop_events.settings import ServiceSettings
from tsop_incident.api import router
from tsop_incident.projection import OpenTickets


class IncidentSettings(ServiceSettings):
    service_name: str = "incident"
    http_port: int = 8004


def build(settings: IncidentSettings | None = None) -> FastAPI:
    s = settings or IncidentSettings()
    runtime = Runtime(s, sinks=[lambda rt: OpenTickets(rt.pool)])
    return create_app(runtime, "TSOP incident", [router])


def main() -> None:
    s = IncidentSettings()
    serve(build(s), s.http_host, s.http_port, s.log_level)


if __name__ == "__main__":
    main()
