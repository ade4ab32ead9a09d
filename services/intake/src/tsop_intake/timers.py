"""Intake's background work: following its own log, the completion-deadline timer, channel tokens."""

from __future__ import annotations

import asyncio

from tsop_events.auth import TokenResolver, followed_resolver
from tsop_events.runtime import Runtime
from tsop_intake.application import IntakeApp
from tsop_intake.projection import RequestStatusProjection

REFRESH_SECONDS = 0.5


def _intake(runtime: Runtime) -> IntakeApp:
    app = runtime.app
    assert isinstance(app, IntakeApp)
    return app


async def follow_log(runtime: Runtime) -> None:
    """Keep the index current with what other instances wrote (revocations included)."""
    app = _intake(runtime)
    while True:
        await asyncio.to_thread(app.index.refresh)
        await asyncio.sleep(REFRESH_SECONDS)


async def completion_deadlines(runtime: Runtime) -> None:
    """The durable timer: pending applications past their completion deadline are cancelled with the reason."""
    app = _intake(runtime)
    while True:
        await asyncio.to_thread(app.expire_pending)
        await asyncio.sleep(1.0)


def channel_tokens(runtime: Runtime) -> TokenResolver:
    """Registered channel systems' credentials (only their hashes are stored; revocable)."""
    index = _intake(runtime).index
    return followed_resolver(index.principal, index.refresh)


def status_projection(runtime: Runtime) -> RequestStatusProjection:
    """Where each request stands; a request finished downstream leaves the open-request index."""
    return RequestStatusProjection(runtime.pool, on_finished=_intake(runtime).index.drop_closed)
