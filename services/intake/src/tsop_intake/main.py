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


class IntakeSettings(ServiceSettings):
    service_name: str = "intake"
    http_port: int = 8001
    service_types_file: Path | None = None
    commit_writers: int = 2  # one batch of submissions is encoded while the previous one is in PostgreSQL


def build(settings: IntakeSettings | None = None) -> FastAPI:
    s = settings or IntakeSettings()
    catalogue = Catalogue.load(s.service_types_file)  # a bad file stops the start with the reason
    runtime = Runtime(
        s,
        app_factory=lambda st: IntakeApp(st, catalogue=catalogue),
        mapper=to_wire,
        sinks=[status_projection],
        tasks=[follow_log, completion_deadlines],
        token_resolvers=[channel_tokens],
        commit_writers=s.commit_writers,
    )
    return create_app(runtime, "TSOP intake", [router])


def main() -> None:
    s = IntakeSettings()
    serve(build(s), s.http_host, s.http_port, s.log_level)


if __name__ == "__main__":
    main()
