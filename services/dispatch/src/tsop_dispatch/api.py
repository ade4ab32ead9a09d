"""Dispatch's HTTP routes: technicians and their work."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal
from uuid import UUID, uuid4

from eventsourcing.application import AggregateNotFoundError
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from tsop_dispatch.application import DispatchApp, work_order_id
from tsop_dispatch.domain import DispatchError, Technician, WorkOrder
from tsop_events.http import Problem, app_of
from tsop_events.store import IntegrityError

router = APIRouter(prefix="/v1", tags=["dispatch"])

ServiceTypeName = Annotated[str, Field(pattern=r"^[a-z]+\.[a-z_]+$", max_length=64)]
Text = Annotated[str, Field(min_length=1, max_length=4000)]


class RegisterTechnician(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: UUID | None = None
    name: Annotated[str, Field(min_length=1, max_length=200)]
    service_types: Annotated[list[ServiceTypeName], Field(min_length=1)]
    regions: Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]], Field(min_length=1)]
    capacity: Annotated[int, Field(ge=1, le=100)] = 5


class LogWork(BaseModel):
    model_config = ConfigDict(extra="forbid")
    technician_id: UUID
    action: Text
    mode: Literal["on_site", "remote"]
    notes: Annotated[str, Field(max_length=4000)] | None = None


class Resolve(BaseModel):
    model_config = ConfigDict(extra="forbid")
    technician_id: UUID
    resolution_code: Annotated[str, Field(min_length=1, max_length=64)]
    summary: Text
    advice: Annotated[str, Field(max_length=4000)] | None = None


def _app(request: Request) -> DispatchApp:
    return app_of(request, DispatchApp)


def technician_view(t: Technician) -> dict[str, Any]:
    return {
        "id": str(t.id),
        "name": t.name,
        "service_types": t.service_types,
        "regions": t.regions,
        "capacity": t.capacity,
        "active_work_orders": t.active,
    }


def work_order_view(wo: WorkOrder) -> dict[str, Any]:
    return {
        "id": str(wo.id),
        "ticket_id": wo.ticket_id,
        "service_type": wo.service_type,
        "region": wo.region,
        "priority": wo.priority,
        "status": wo.status,
        "technician_id": wo.technician_id,
        "operation_log": wo.log,
    }


async def _load(app: DispatchApp, aggregate_id: UUID, what: str) -> Any:
    try:
        return await asyncio.to_thread(app.load, aggregate_id)
    except AggregateNotFoundError:
        raise Problem(404, "Not found", f"no {what} {aggregate_id}") from None


@router.post("/technicians", status_code=201)
async def register(body: RegisterTechnician, request: Request) -> dict[str, Any]:
    app = _app(request)
    try:
        tech = await asyncio.to_thread(
            app.register_technician, body.id or uuid4(), body.name, body.service_types, body.regions, body.capacity
        )
    except IntegrityError:
        raise Problem(409, "Already registered", f"technician {body.id} exists") from None
    return technician_view(tech)


@router.get("/technicians/{technician_id}")
async def get_technician(technician_id: UUID, request: Request) -> dict[str, Any]:
    tech = await _load(_app(request), technician_id, "technician")
    if not isinstance(tech, Technician):
        raise Problem(404, "Not found", f"no technician {technician_id}")
    return technician_view(tech)


@router.get("/work-orders/{wo_id}")
async def get_work_order(wo_id: UUID, request: Request) -> dict[str, Any]:
    wo = await _load(_app(request), wo_id, "work order")
    if not isinstance(wo, WorkOrder):
        raise Problem(404, "Not found", f"no work order {wo_id}")
    return work_order_view(wo)


@router.get("/tickets/{ticket_id}/work-order")
async def get_ticket_work_order(ticket_id: UUID, request: Request) -> dict[str, Any]:
    return await get_work_order(work_order_id(str(ticket_id)), request)


async def _command(request: Request, fn: Any, *args: Any) -> dict[str, Any]:
    try:
        wo = await asyncio.to_thread(fn, *args)
    except AggregateNotFoundError:
        raise Problem(404, "Not found", "no such work order or technician") from None
    except DispatchError as exc:
        raise Problem(409, "Not allowed now", str(exc)) from None
    except IntegrityError:
        raise Problem(409, "Concurrent change", "the work order changed meanwhile; retry") from None
    return work_order_view(wo)


@router.post("/work-orders/{wo_id}/log", status_code=201)
async def log_work(wo_id: UUID, body: LogWork, request: Request) -> dict[str, Any]:
    app = _app(request)
    return await _command(request, app.log_work, wo_id, str(body.technician_id), body.action, body.mode, body.notes)


@router.post("/work-orders/{wo_id}/resolve")
async def resolve(wo_id: UUID, body: Resolve, request: Request) -> dict[str, Any]:
    app = _app(request)
    return await _command(
        request, app.resolve, wo_id, str(body.technician_id), body.resolution_code, body.summary, body.advice
    )
