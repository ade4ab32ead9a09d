"""PROVISIONAL (replaced by the intake service interface on merge): the commands TMF routes call."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from tsop_events.auth import Principal
from tsop_events.runtime import Runtime
from tsop_intake.application import IntakeApp
from tsop_intake.domain import ServiceRequest


async def submit(
    runtime: Runtime, fields: dict[str, Any], caller: Principal, idempotency_key: str | None
) -> tuple[ServiceRequest, bool]:
    app = runtime.app
    assert isinstance(app, IntakeApp)
    fields = dict(fields)
    fields.pop("location", None)
    fields.pop("attributes", None)
    fields["channel"] = "web"
    fields["callback_url"] = None
    created = app.new_request(fields, idempotency_key)
    await runtime.committer.save(created)
    return created, True


async def update(runtime: Runtime, ticket_id: UUID, changes: dict[str, Any], caller: Principal) -> ServiceRequest:
    raise NotImplementedError


async def cancel(runtime: Runtime, ticket_id: UUID, reason_code: str, reason: str, caller: Principal) -> ServiceRequest:
    raise NotImplementedError
