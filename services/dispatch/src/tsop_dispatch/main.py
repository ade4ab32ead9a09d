"""Wiring: settings → service (event store, relay, consumer, timers, credentials) → HTTP app."""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI

from tsop_dispatch.api import router
from tsop_dispatch.commands import DispatchApp
from tsop_dispatch.policies import IncidentHolds, OpenWorkOrders
from tsop_dispatch.sla import Policy
from tsop_dispatch.views import follow_board, timers
from tsop_dispatch.wire import WIRE
from tsop_events.auth import Principal, Role, TokenResolver, followed_resolver
from tsop_events.http import create_app, serve
from tsop_events.runtime import Service
from tsop_events.service_types import complaint_types, service_type_names
from tsop_events.settings import ServiceSettings

log = logging.getLogger(__name__)


class DispatchSettings(ServiceSettings):
    service_name: str = "dispatch"
    """Names the service in events and its database."""
    http_port: int = 8002
    """Dispatch's HTTP port."""
    timer_seconds: float = 0.5
    """Shortest pause between two rounds of the timers (queue drain, acceptance time-outs, SLA thresholds, peak
    mode); a round runs when any instance saved, and at least once a second for the due times."""
    accept_within_seconds: float = 15 * 60
    """How long a technician has to accept an assignment before it times out and goes to someone else."""
    peak_backlog: int = 1000
    """Waiting work orders that turn peak mode on by themselves (it goes off below half of it)."""
    sla_policy_file: Path | None = None
    """The SLA policy (targets, calendars, peak norm) used until one is adopted over HTTP; default: the built-in."""
    service_types_file: Path | None = None
    """The operator's service-type catalogue, the same file intake reads (default: the built-in one);
    qualifications for a type it does not list are refused."""
    shard_index: int = 0
    """This instance's share of the queue and of the technicians (0 to shard_count - 1)."""
    shard_count: int = 1
    """How many dispatch instances share the queue (each first takes its own share)."""


DispatchService = Service[DispatchApp, DispatchSettings]


def technician_credentials(svc: Service[DispatchApp]) -> TokenResolver:
    """Technicians authenticate with the credential dispatch issued them; the subject is their id."""
    board = svc.app.board

    def lookup(token_hash: str) -> Principal | None:
        tech = board.technician_of(token_hash)
        return None if tech is None else Principal(str(tech), frozenset({Role.technician}))

    return followed_resolver(lookup, board.refresh)


def bootstrap(settings: DispatchSettings | None = None) -> DispatchService:
    """The dispatch service: checks its configuration files now (a bad one stops the start with the reason)."""
    s = settings or DispatchSettings()
    policy = Policy.load(s.sla_policy_file)
    service_types = service_type_names(s.service_types_file)
    for name in sorted(service_types):
        policy.targets_for(name, 3, False)  # a policy without targets for an offered type stops the start too

    def make_app(st: DispatchSettings) -> DispatchApp:
        return DispatchApp(
            st,
            policy=policy,
            accept_within=timedelta(seconds=st.accept_within_seconds),
            peak_backlog=st.peak_backlog,
            shard=(st.shard_index, max(1, st.shard_count)),
            service_types=service_types,
            complaint_types=complaint_types(s.service_types_file),
        )

    async def dispatch_timers(svc: DispatchService) -> None:
        await timers(svc, s.timer_seconds)

    return Service(
        s,
        app_factory=make_app,
        mapper=WIRE,
        sinks=[OpenWorkOrders.of, IncidentHolds.of],
        tasks=[dispatch_timers],
        followers=[follow_board],  # the board the routes read, technicians' credentials included
        token_resolvers=[technician_credentials],
    )


def build(settings: DispatchSettings | None = None) -> FastAPI:
    return create_app(bootstrap(settings), "TSOP dispatch", [router])


def main() -> None:
    s = DispatchSettings()
    serve(build(s), s.http_host, s.http_port, s.log_level)


if __name__ == "__main__":
    main()
