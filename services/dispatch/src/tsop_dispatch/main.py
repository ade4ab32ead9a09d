"""Wiring: settings → runtime → HTTP app."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI

from tsop_dispatch.api import router
from tsop_dispatch.application import DispatchApp, to_wire
from tsop_dispatch.policies import OpenWorkOrders
from tsop_dispatch.sla import Policy
from tsop_events.auth import Principal, Role, TokenResolver, followed_resolver
from tsop_events.http import create_app, serve
from tsop_events.runtime import Runtime
from tsop_events.service_types import service_type_names
from tsop_events.settings import ServiceSettings

log = logging.getLogger(__name__)


class DispatchSettings(ServiceSettings):
    service_name: str = "dispatch"
    http_port: int = 8002
    timer_seconds: float = 0.5
    accept_within_seconds: float = 15 * 60
    peak_backlog: int = 1000
    sla_policy_file: Path | None = None
    service_types_file: Path | None = None
    """The operator's service-type catalogue, the same file intake reads (default: the built-in one);
    qualifications for a type it does not list are refused."""
    shard_index: int = 0  # this instance's share of the queue (with shard_count instances)
    shard_count: int = 1


async def timers(runtime: Runtime) -> None:
    """The durable timers: queue drain, acceptance time-outs, SLA thresholds, automatic peak mode.

    Their state is the event store (accept_by, the clocks' facts), so a restarted
    or second instance picks up where another left off, and records each effect once.
    """
    assert isinstance(runtime.app, DispatchApp)
    assert isinstance(runtime.settings, DispatchSettings)
    while True:
        await asyncio.to_thread(runtime.app.tick)
        await asyncio.sleep(runtime.settings.timer_seconds)


def technician_credentials(runtime: Runtime) -> TokenResolver:
    """Technicians authenticate with the credential dispatch issued them; the subject is their id."""
    app = runtime.app
    assert isinstance(app, DispatchApp)

    def lookup(token_hash: str) -> Principal | None:
        tech = app.board.technician_of(token_hash)
        return None if tech is None else Principal(str(tech), frozenset({Role.technician}))

    return followed_resolver(lookup, app.board.refresh)


def build(settings: DispatchSettings | None = None) -> FastAPI:
    s = settings or DispatchSettings()
    policy = Policy.load(s.sla_policy_file)
    service_types = service_type_names(s.service_types_file)  # a bad file stops the start with the reason
    for name in sorted(service_types):
        policy.targets_for(name, 3, False)  # a policy without targets for an offered type stops the start too

    def make_app(st: ServiceSettings) -> DispatchApp:
        return DispatchApp(
            st,
            policy=policy,
            accept_within=timedelta(seconds=s.accept_within_seconds),
            peak_backlog=s.peak_backlog,
            shard=(s.shard_index, max(1, s.shard_count)),
            service_types=service_types,
        )

    def sink(rt: Runtime) -> OpenWorkOrders:
        assert isinstance(rt.app, DispatchApp)
        return OpenWorkOrders(rt.app)

    runtime = Runtime(
        s, app_factory=make_app, mapper=to_wire, sinks=[sink], tasks=[timers], token_resolvers=[technician_credentials]
    )
    return create_app(runtime, "TSOP dispatch", [router])


def main() -> None:
    s = DispatchSettings()
    serve(build(s), s.http_host, s.http_port, s.log_level)


if __name__ == "__main__":
    main()
