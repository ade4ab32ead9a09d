"""Intake's HTTP routes: thin, parse → command → answer."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Header, Request, Response
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, model_validator

from tsop_events.http import Problem, app_of, runtime_of
from tsop_events.schemas import Channel, CustomerTier
from tsop_events.store import IntegrityError
from tsop_intake.application import IdempotencyConflict, IntakeApp
from tsop_intake.domain import ServiceRequest

router = APIRouter(prefix="/v1/requests", tags=["requests"])


class Customer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Annotated[str, Field(min_length=1, max_length=128)]
    tier: CustomerTier = CustomerTier.standard


class TimeRequirementIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    deadline: datetime | None = None
    window_start: datetime | None = None
    window_end: datetime | None = None

    @model_validator(mode="after")
    def _window(self) -> TimeRequirementIn:
        for name in ("deadline", "window_start", "window_end"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"{name} needs a time zone offset")
        if (self.window_start is None) != (self.window_end is None):
            raise ValueError("an appointment window needs both window_start and window_end")
        if self.window_start and self.window_end and self.window_end <= self.window_start:
            raise ValueError("window_end must be after window_start")
        return self


class SubmitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channel: Channel
    channel_request_ref: Annotated[str, Field(max_length=128)] | None = None
    customer: Customer
    region: Annotated[str, Field(min_length=1, max_length=64)]
    service_type: Annotated[str, Field(min_length=1, max_length=64)]
    description: Annotated[str, Field(min_length=1, max_length=4000)]
    time_requirement: TimeRequirementIn = TimeRequirementIn()
    special_needs: Annotated[str, Field(max_length=1000)] | None = None
    callback_url: AnyHttpUrl | None = None


def request_view(r: ServiceRequest, history: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "id": str(r.id),
        "channel": r.channel,
        "channel_request_ref": r.channel_request_ref,
        "customer": {"id": r.customer_id, "tier": r.customer_tier},
        "region": r.region,
        "service_type": r.service_type,
        "description": r.description,
        "time_requirement": r.time_requirement,
        "special_needs": r.special_needs,
        "callback_url": r.callback_url,
        "submitted_at": r.submitted_at.isoformat(),
        "review": r.decision,
        "status": history[-1]["status"] if history else r.status,
        "status_history": history or [],
    }


def _app(request: Request) -> IntakeApp:
    return app_of(request, IntakeApp)


@router.post("", status_code=201, responses={200: {"description": "Replay of an earlier submission"}})
async def submit(
    body: SubmitRequest,
    request: Request,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> dict[str, Any]:
    app = _app(request)
    if app.catalogue.get(body.service_type) is None:
        raise Problem(
            422,
            "Unknown service type",
            f"service_type {body.service_type!r} is not in the catalogue",
            errors=[{"field": "service_type", "reason": "unknown service type"}],
            known=sorted(app.catalogue.types),
        )
    fields = body.model_dump(mode="json", exclude={"customer"})
    fields["customer_id"], fields["customer_tier"] = body.customer.id, body.customer.tier.value
    runtime = runtime_of(request)
    created, new = app.new_request(fields, idempotency_key), True
    try:
        await runtime.committer.save(created)
    except IntegrityError:
        if not idempotency_key:
            raise
        new = False  # a retry: answer with what the first submission created
        try:
            created = await asyncio.to_thread(app.replay, created.id, fields)
        except IdempotencyConflict:
            raise Problem(
                422, "Idempotency-Key reused", "this Idempotency-Key was used for a different request"
            ) from None
    response.headers["Location"] = f"/v1/requests/{created.id}"
    if not new:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return request_view(created)


@router.get("/{ticket_id}")
async def get_request(ticket_id: UUID, request: Request) -> dict[str, Any]:
    app = _app(request)
    found = await asyncio.to_thread(app.get_request, ticket_id)
    if found is None:
        raise Problem(404, "Not found", f"no request {ticket_id}")
    runtime = runtime_of(request)
    rows = await runtime.pool.fetch(
        "SELECT event_type, status, at FROM request_history WHERE ticket_id = $1 ORDER BY at", ticket_id
    )
    history = [{"status": r["status"], "event_type": r["event_type"], "at": r["at"].isoformat()} for r in rows]
    return request_view(found, history)
