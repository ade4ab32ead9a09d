"""Wiring: settings → service (event store, relay to `incidents`, correlation, read model, timers) → HTTP app."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import FastAPI

from tsop_events.http import create_app, serve
from tsop_events.runtime import Service
from tsop_events.settings import ServiceSettings
from tsop_incident.api import router, tmf
from tsop_incident.commands import IncidentApp
from tsop_incident.domain import Plans, Rules
from tsop_incident.policies import Correlate
from tsop_incident.projection import OpenTickets
from tsop_incident.views import incident_timers
from tsop_incident.wire import WIRE

HERE = Path(__file__).parent


class IncidentSettings(ServiceSettings):
    service_name: str = "incident"
    """Names the service in events and its database."""
    http_port: int = 8004
    """Incident's HTTP port."""
    correlation_rules_file: Path | None = None
    """The correlation rules (which fault tickets, how many within which window declare an incident, at what
    severity and scenario); default: the built-in `correlation_rules.json`."""
    emergency_plans_file: Path | None = None
    """The emergency plans per scenario and severity (steps, owning role, who is notified, time limits, whom an
    overdue step escalates to); default: the built-in `emergency_plans.json`."""
    plan_timer_seconds: float = 1.0
    """Pause between two rounds of the timers (overdue plan steps, linking open tickets in an incident's scope)."""


IncidentService = Service[IncidentApp, IncidentSettings]


def load_rules(path: Path | None) -> Rules:
    return Rules.from_dict(json.loads((path or HERE / "correlation_rules.json").read_text()))


def load_plans(path: Path | None) -> Plans:
    return Plans.from_dict(json.loads((path or HERE / "emergency_plans.json").read_text()))


def open_tickets(svc: IncidentService) -> OpenTickets:
    return OpenTickets(svc.pool)


def bootstrap(settings: IncidentSettings | None = None) -> IncidentService:
    """The incident service: checks its rules and plans now (a bad file stops the start with the reason)."""
    s = settings or IncidentSettings()
    rules, plans = load_rules(s.correlation_rules_file), load_plans(s.emergency_plans_file)
    for rule in rules.rules:
        if rule.scenario not in plans.plans:
            raise ValueError(f"correlation rule {rule.name}: no emergency plan for scenario {rule.scenario}")

    def make_app(st: IncidentSettings) -> IncidentApp:
        return IncidentApp(st, rules=rules, plans=plans)

    async def timers(svc: IncidentService) -> None:
        await incident_timers(svc, s.plan_timer_seconds)

    return Service(
        s,
        app_factory=make_app,
        mapper=WIRE,
        sinks=[open_tickets, Correlate.of],
        tasks=[timers],
    )


def build(settings: IncidentSettings | None = None) -> FastAPI:
    return create_app(bootstrap(settings), "TSOP incident", [router, tmf])


def main() -> None:
    s = IncidentSettings()
    serve(build(s), s.http_host, s.http_port, s.log_level)


if __name__ == "__main__":
    main()
