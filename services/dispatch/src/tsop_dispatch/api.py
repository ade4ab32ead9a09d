"""Dispatch's HTTP routes: the workforce, resources, work orders and their clocks.

Supervisors (and admins) manage the workforce, resources, peak mode and manual
reassignment. A technician authenticates with the credential dispatch issued at
registration, and acts only on their own work orders.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from datetime import date, datetime
from typing import Annotated, Any, Literal
from uuid import UUID, uuid4

from eventsourcing.application import AggregateNotFoundError
from fastapi import APIRouter, Depends, Request
from pydantic import AfterValidator, AwareDatetime, BeforeValidator, Field, PlainValidator, Strict, model_validator

from tsop_dispatch.application import DispatchApp, Waiting, work_order_id
from tsop_dispatch.domain import DispatchError, Invalid, NotYours, Resource, Technician, WorkOrder
from tsop_events.auth import Principal, Role, requires
from tsop_events.http import Problem, app_of
from tsop_events.inbound import INT64_MAX, INT64_MIN, Bool, Inbound, Int, Number, clean_text
from tsop_events.inbound import Text as FreeText
from tsop_events.store import IntegrityError

router = APIRouter(prefix="/v1", tags=["dispatch"])

# Inbound models accept only what the wire events can carry and every projection can store
# (tsop_events.inbound): integers are integers, numbers are finite, text has no control characters,
# sizes are bounded, moments carry their offset and stay within centuries a database can hold.
EARLIEST_YEAR, LATEST_YEAR = 1900, 2999


def _moment_text(value: object) -> object:
    if isinstance(value, str | datetime):
        return value
    raise ValueError("must be an RFC 3339 date-time string with its offset")


def _moment_range(value: datetime) -> datetime:
    if not EARLIEST_YEAR <= value.year <= LATEST_YEAR:
        raise ValueError(f"must be between the years {EARLIEST_YEAR} and {LATEST_YEAR}")
    return value


def _date_text(value: object) -> object:
    if isinstance(value, str | date):
        return value
    raise ValueError("must be an ISO 8601 date string (YYYY-MM-DD)")


def _reading(value: object) -> float | str:
    """A measurement: a finite number or a short text (never a boolean, NaN or Infinity)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("must be a finite number or a text of at most 200 characters")
    if isinstance(value, str):
        if len(value) > 200:
            raise ValueError("must be a finite number or a text of at most 200 characters")
        return clean_text(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number (not NaN or Infinity)")
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        raise ValueError("must fit in 64 bits")
    return float(value)


Moment = Annotated[AwareDatetime, BeforeValidator(_moment_text), AfterValidator(_moment_range)]
Day = Annotated[date, BeforeValidator(_date_text), AfterValidator(_moment_range)]
ServiceTypeName = Annotated[str, Strict(), Field(pattern=r"^[a-z]+\.[a-z_]+$", max_length=64)]
TypePattern = Annotated[str, Strict(), Field(pattern=r"^[a-z*]+(\.[a-z_*]+)?$", max_length=64)]
Kind = Annotated[str, Strict(), Field(pattern=r"^[a-z_]+$", max_length=64)]
Label = Annotated[FreeText, Field(min_length=1, max_length=64)]
Name = Annotated[FreeText, Field(min_length=1, max_length=200)]
Text = Annotated[FreeText, Field(min_length=1, max_length=4000)]
Reason = Annotated[FreeText, Field(min_length=1, max_length=1000)]
Level = Annotated[Int, Field(ge=1, le=5)]
Places = Annotated[Int, Field(ge=1, le=100)]
Hours = Annotated[Number, Field(gt=0, le=100_000)]
Reading = Annotated[float | str, PlainValidator(_reading, json_schema_input_type=float | str)]

MANAGERS = requires(Role.supervisor)  # admin holds every role
READERS = requires(Role.supervisor, Role.agent, Role.auditor, Role.technician)
TECHNICIAN = requires(Role.technician)


class Body(Inbound):
    """Unknown fields refused, numbers finite (see tsop_events.inbound)."""


class QualificationIn(Body):
    service_type: ServiceTypeName = Field(description="A service type of the catalogue.")
    certificate: Name
    level: Level = 1
    valid_from: Moment | None = Field(default=None, description="Omitted: valid from the moment it is recorded.")
    valid_until: Moment | None = Field(default=None, description="Omitted: no expiry.")

    @model_validator(mode="after")
    def _ordered(self) -> QualificationIn:
        if self.valid_from and self.valid_until and self.valid_until <= self.valid_from:
            raise ValueError("valid_until must be after valid_from")
        return self


class RegisterTechnician(Body):
    id: UUID | None = None
    name: Name
    service_types: Annotated[list[ServiceTypeName], Field(max_length=100)] = Field(
        default_factory=list, description="Shorthand: level 1, valid from now, no expiry."
    )
    qualifications: Annotated[list[QualificationIn], Field(max_length=100)] = Field(default_factory=list)
    regions: Annotated[list[Label], Field(min_length=1, max_length=100)]
    capacity: Places = 5

    @model_validator(mode="after")
    def _qualified(self) -> RegisterTechnician:
        if not self.service_types and not self.qualifications:
            raise ValueError("a technician needs service_types or qualifications")
        return self


class Period(Body):
    start: Moment
    end: Moment
    reason: Annotated[FreeText, Field(max_length=1000)] = ""

    @model_validator(mode="after")
    def _ordered(self) -> Period:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        return self


class Capacity(Body):
    capacity: Places


class RegisterResource(Body):
    id: UUID | None = None
    kind: Kind
    name: Name
    region: Label


class PeakModeIn(Body):
    on: Bool
    reason: Reason


class Decline(Body):
    reason: Reason


class Start(Body):
    mode: Literal["on_site", "remote"]


class LogWork(Body):
    action: Text
    mode: Literal["on_site", "remote"]
    notes: Annotated[FreeText, Field(max_length=4000)] | None = None
    equipment: Annotated[list[Name], Field(max_length=50)] = Field(default_factory=list)
    measurements: Annotated[dict[Label, Reading], Field(max_length=50)] = Field(
        default_factory=dict, description="Readings by name: finite numbers or short texts."
    )


class Pause(Body):
    kind: Literal["pending", "held"]
    reason: Reason


class Resolve(Body):
    resolution_code: Annotated[FreeText, Field(min_length=1, max_length=64)]
    summary: Text
    advice: Annotated[FreeText, Field(max_length=4000)] | None = None


class Reassign(Body):
    technician_id: UUID | None = Field(default=None, description="None: the best other eligible technician.")
    reason: Reason


class Priority(Body):
    priority: Level
    reason: Reason


class CalendarIn(Body):
    name: Label | None = None
    always: Bool = False
    days: Annotated[list[Annotated[Int, Field(ge=0, le=6)]], Field(max_length=7)] = [0, 1, 2, 3, 4]
    start: Annotated[str, Strict(), Field(pattern=r"^[0-2][0-9]:[0-5][0-9]$")] = "08:00"
    end: Annotated[str, Strict(), Field(pattern=r"^[0-2][0-9]:[0-5][0-9]$")] = "18:00"
    holidays: Annotated[list[Day], Field(max_length=1000)] = Field(default_factory=list)


class TargetIn(Body):
    respond_hours: Hours
    resolve_hours: Hours


class SlaPolicyIn(Body):
    """An SLA policy, in the shape ``GET /v1/sla-policy`` shows."""

    version: Label = "1"
    norm_resolve_hours: Hours = 24.0
    peak_resolve_hours: Hours = 48.0
    calendars: Annotated[dict[Label, CalendarIn], Field(min_length=1, max_length=50)]
    type_calendars: Annotated[dict[TypePattern, Label], Field(max_length=200)]
    targets: Annotated[
        dict[TypePattern, Annotated[dict[Annotated[str, Field(pattern=r"^[1-5]$")], TargetIn], Field(min_length=1)]],
        Field(min_length=1, max_length=200),
    ]
    resources: Annotated[dict[ServiceTypeName, Annotated[list[Kind], Field(max_length=20)]], Field(max_length=200)] = (
        Field(default_factory=dict)
    )


def _app(request: Request) -> DispatchApp:
    return app_of(request, DispatchApp)


def technician_view(t: Technician) -> dict[str, Any]:
    return {
        "id": str(t.id),
        "name": t.name,
        "service_types": sorted(t.qualifications),
        "qualifications": [
            {
                **q,
                "valid_from": q["valid_from"].isoformat(),
                "valid_until": q["valid_until"] and q["valid_until"].isoformat(),
            }
            for q in t.qualifications.values()
        ],
        "regions": t.regions,
        "capacity": t.capacity,
        "shifts": [{"start": s.isoformat(), "end": e.isoformat()} for s, e in t.shifts],
        "leave": [{"start": s.isoformat(), "end": e.isoformat(), "reason": r} for s, e, r in t.leave],
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
        "accept_by": wo.accept_by.isoformat() if wo.accept_by else None,
        "resources": wo.resources,
        "declined_by": wo.excluded,
        "previous_technicians": wo.previous,
        "operation_log": wo.log,
    }


async def _load(app: DispatchApp, aggregate_id: UUID, kind: type, what: str) -> Any:
    try:
        found = await asyncio.to_thread(app.load, aggregate_id)
    except AggregateNotFoundError:
        found = None
    if not isinstance(found, kind):
        raise Problem(404, "Not found", f"no {what} {aggregate_id}")
    return found


async def _command(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return await asyncio.to_thread(fn, *args)
    except AggregateNotFoundError:
        raise Problem(404, "Not found", "no such work order, technician or resource") from None
    except NotYours as exc:
        raise Problem(403, "Not your work order", str(exc)) from None
    except Invalid as exc:
        raise Problem(422, "Invalid request", str(exc), errors=[{"field": exc.field, "reason": exc.reason}]) from None
    except DispatchError as exc:
        raise Problem(409, "Not allowed now", str(exc)) from None


def _may_read(principal: Principal, wo: WorkOrder) -> None:
    """Staff read any work order; a technician only their own."""
    if principal.has(Role.supervisor, Role.agent, Role.auditor):
        return
    if principal.subject != wo.technician_id:
        raise Problem(403, "Not your work order", f"work order {wo.id} is not assigned to {principal.subject}")


# --- the workforce ---------------------------------------------------------------------------------


@router.post("/technicians", status_code=201)
async def register(
    body: RegisterTechnician, request: Request, who: Annotated[Principal, Depends(MANAGERS)]
) -> dict[str, Any]:
    """Register a technician; the answer carries their credential, shown this once."""
    quals = [q.model_dump() for q in body.qualifications]
    try:
        tech, token = await _command(
            _app(request).register_technician,
            body.id or uuid4(),
            body.name,
            body.service_types,
            body.regions,
            body.capacity,
            quals,
        )
    except IntegrityError:
        raise Problem(409, "Already registered", f"technician {body.id} exists") from None
    return {**technician_view(tech), "token": token}


@router.get("/technicians/{technician_id}")
async def get_technician(
    technician_id: UUID, request: Request, who: Annotated[Principal, Depends(READERS)]
) -> dict[str, Any]:
    if not who.has(Role.supervisor, Role.agent, Role.auditor) and who.subject != str(technician_id):
        raise Problem(403, "Forbidden", "a technician sees only their own record")
    return technician_view(await _load(_app(request), technician_id, Technician, "technician"))


@router.post("/technicians/{technician_id}/qualifications", status_code=201)
async def grant_qualification(
    technician_id: UUID, body: QualificationIn, request: Request, who: Annotated[Principal, Depends(MANAGERS)]
) -> dict[str, Any]:
    """A training record grants or renews a qualification (§6)."""
    tech = await _command(
        _app(request).grant_qualification,
        technician_id,
        body.service_type,
        body.certificate,
        body.level,
        body.valid_from,
        body.valid_until,
        f"training record by {who.subject}",
    )
    return technician_view(tech)


@router.post("/technicians/{technician_id}/shifts", status_code=201)
async def schedule_shift(
    technician_id: UUID, body: Period, request: Request, who: Annotated[Principal, Depends(MANAGERS)]
) -> dict[str, Any]:
    return technician_view(await _command(_app(request).schedule, technician_id, "shift", body.start, body.end))


@router.post("/technicians/{technician_id}/leave", status_code=201)
async def schedule_leave(
    technician_id: UUID, body: Period, request: Request, who: Annotated[Principal, Depends(MANAGERS)]
) -> dict[str, Any]:
    app = _app(request)
    return technician_view(await _command(app.schedule, technician_id, "leave", body.start, body.end, body.reason))


@router.post("/technicians/{technician_id}/credential", status_code=201)
async def rotate_credential(
    technician_id: UUID, request: Request, who: Annotated[Principal, Depends(MANAGERS)]
) -> dict[str, Any]:
    """A new credential for the technician, shown this once; the previous one stops working."""
    await _load(_app(request), technician_id, Technician, "technician")
    tech, token = await _command(_app(request).rotate_credential, technician_id)
    return {**technician_view(tech), "token": token}


@router.put("/technicians/{technician_id}/capacity")
async def change_capacity(
    technician_id: UUID, body: Capacity, request: Request, who: Annotated[Principal, Depends(MANAGERS)]
) -> dict[str, Any]:
    return technician_view(await _command(_app(request).change_capacity, technician_id, body.capacity))


@router.post("/resources", status_code=201)
async def register_resource(
    body: RegisterResource, request: Request, who: Annotated[Principal, Depends(MANAGERS)]
) -> dict[str, Any]:
    """Equipment or a venue slot, reserved with the work orders whose service type needs that kind."""
    try:
        r: Resource = await asyncio.to_thread(
            _app(request).register_resource, body.id or uuid4(), body.kind, body.name, body.region
        )
    except IntegrityError:
        raise Problem(409, "Already registered", f"resource {body.id} exists") from None
    return {"id": str(r.id), "kind": r.kind, "name": r.name, "region": r.region, "reserved_by": r.reserved_by}


@router.get("/peak-mode")
async def get_peak_mode(request: Request, who: Annotated[Principal, Depends(READERS)]) -> dict[str, Any]:
    app = _app(request)
    await asyncio.to_thread(app.board.refresh)
    return {"on": app.board.peak, "backlog": len(app.board.waiting), "auto_threshold": app.peak_backlog}


@router.put("/peak-mode")
async def set_peak_mode(
    body: PeakModeIn, request: Request, who: Annotated[Principal, Depends(MANAGERS)]
) -> dict[str, Any]:
    """Declare peak (the 48-hour norm for work opened from now on) or end it."""
    app = _app(request)
    peak = await _command(app.set_peak, body.on, who.subject, body.reason)
    return {"on": peak.on, "backlog": len(app.board.waiting), "auto_threshold": app.peak_backlog}


@router.get("/sla-policy")
async def get_sla_policy(request: Request, who: Annotated[Principal, Depends(READERS)]) -> dict[str, Any]:
    """The service-level policy in force: targets per service type and priority, calendars, peak norm."""
    app = _app(request)
    await asyncio.to_thread(app.board.refresh)
    p = app.policy
    return {
        "version": p.version,
        "norm_resolve_hours": p.norm_resolve_hours,
        "peak_resolve_hours": p.peak_resolve_hours,
        "calendars": {name: c.spec() for name, c in p.calendars.items()},
        "type_calendars": dict(p.type_calendars),
        "targets": {
            pattern: {str(pr): {"respond_hours": r, "resolve_hours": h} for pr, (r, h) in rows.items()}
            for pattern, rows in p.targets
        },
        "resources": p.resources,
    }


@router.put("/sla-policy")
async def adopt_sla_policy(
    body: SlaPolicyIn, request: Request, who: Annotated[Principal, Depends(requires(Role.admin))]
) -> dict[str, Any]:
    """Adopt a new policy (same shape as GET): recorded, and every open work order's targets are recalculated."""
    app = _app(request)
    try:
        changed = await _command(app.adopt_policy, body.model_dump(mode="json", exclude_none=True), who.subject)
    except (KeyError, ValueError, TypeError) as exc:
        field = exc.args[0] if isinstance(exc, KeyError) else "body"
        reason = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        raise Problem(422, "Invalid policy", reason, errors=[{"field": str(field), "reason": reason}]) from None
    return {"version": app.policy.version, "work_orders_recalculated": changed}


def _waiting_view(wo_id: UUID, w: Waiting) -> dict[str, Any]:
    return {
        "work_order_id": str(wo_id),
        "priority": w.priority,
        "deadline": w.deadline.isoformat(),
        "opened_at": w.opened_at.isoformat(),
        "service_type": w.service_type,
        "region": w.region,
        "needs": w.needs,
        "declined_by": sorted(w.excluded),
    }


@router.get("/queue")
async def get_queue(
    request: Request,
    who: Annotated[Principal, Depends(requires(Role.supervisor, Role.agent, Role.auditor))],
    limit: Annotated[int, Field(ge=1, le=10000)] = 100,
) -> dict[str, Any]:
    """Work orders nobody could take yet, in the order they will be served."""
    app = _app(request)
    await asyncio.to_thread(app.board.refresh)
    items = app.board.queue(limit)
    return {"waiting": len(app.board.waiting), "items": [_waiting_view(i, w) for i, w in items]}


# --- work orders -----------------------------------------------------------------------------------


@router.get("/work-orders/{wo_id}")
async def get_work_order(wo_id: UUID, request: Request, who: Annotated[Principal, Depends(READERS)]) -> dict[str, Any]:
    wo = await _load(_app(request), wo_id, WorkOrder, "work order")
    _may_read(who, wo)
    return work_order_view(wo)


@router.get("/tickets/{ticket_id}/work-order")
async def get_ticket_work_order(
    ticket_id: UUID, request: Request, who: Annotated[Principal, Depends(READERS)]
) -> dict[str, Any]:
    return await get_work_order(work_order_id(str(ticket_id)), request, who)


@router.get("/tickets/{ticket_id}/sla")
async def get_ticket_sla(
    ticket_id: UUID, request: Request, who: Annotated[Principal, Depends(READERS)]
) -> dict[str, Any]:
    """The ticket's service-level clocks: segments (running, paused and why), deadlines, remaining or overrun."""
    app = _app(request)
    wo: WorkOrder = await _load(app, work_order_id(str(ticket_id)), WorkOrder, "work order for ticket")
    _may_read(who, wo)
    return {
        "ticket_id": wo.ticket_id,
        "work_order_id": str(wo.id),
        "status": wo.status,
        "priority": wo.priority,
        "now": app.clock.now().isoformat(),
        "thresholds_recorded": sorted(f"{c}:{lvl}" for c, lvl in wo.crossed),
        "clocks": app.explain_clocks(wo),
    }


def _own(who: Principal) -> str:
    return who.subject


@router.post("/work-orders/{wo_id}/accept")
async def accept(wo_id: UUID, request: Request, who: Annotated[Principal, Depends(TECHNICIAN)]) -> dict[str, Any]:
    return work_order_view(await _command(_app(request).accept, wo_id, _own(who)))


@router.post("/work-orders/{wo_id}/decline")
async def decline(
    wo_id: UUID, body: Decline, request: Request, who: Annotated[Principal, Depends(TECHNICIAN)]
) -> dict[str, Any]:
    """Say no, with a reason: the work order goes to someone else (never back to you)."""
    return work_order_view(await _command(_app(request).decline, wo_id, _own(who), body.reason))


@router.post("/work-orders/{wo_id}/start")
async def start(
    wo_id: UUID, body: Start, request: Request, who: Annotated[Principal, Depends(TECHNICIAN)]
) -> dict[str, Any]:
    return work_order_view(await _command(_app(request).start, wo_id, _own(who), body.mode))


@router.post("/work-orders/{wo_id}/log", status_code=201)
async def log_work(
    wo_id: UUID, body: LogWork, request: Request, who: Annotated[Principal, Depends(TECHNICIAN)]
) -> dict[str, Any]:
    app = _app(request)
    wo = await _command(
        app.log_work, wo_id, _own(who), body.action, body.mode, body.notes, body.equipment, body.measurements
    )
    return work_order_view(wo)


@router.post("/work-orders/{wo_id}/pause")
async def pause(
    wo_id: UUID, body: Pause, request: Request, who: Annotated[Principal, Depends(TECHNICIAN)]
) -> dict[str, Any]:
    """Pending (waiting for the customer) or held (parts, an incident): the SLA clocks stop."""
    return work_order_view(await _command(_app(request).pause, wo_id, _own(who), body.kind, body.reason))


@router.post("/work-orders/{wo_id}/resume")
async def resume(wo_id: UUID, request: Request, who: Annotated[Principal, Depends(TECHNICIAN)]) -> dict[str, Any]:
    return work_order_view(await _command(_app(request).resume, wo_id, _own(who)))


@router.post("/work-orders/{wo_id}/resolve")
async def resolve(
    wo_id: UUID, body: Resolve, request: Request, who: Annotated[Principal, Depends(TECHNICIAN)]
) -> dict[str, Any]:
    app = _app(request)
    wo = await _command(app.resolve, wo_id, _own(who), body.resolution_code, body.summary, body.advice)
    return work_order_view(wo)


@router.post("/work-orders/{wo_id}/reassign")
async def reassign(
    wo_id: UUID, body: Reassign, request: Request, who: Annotated[Principal, Depends(MANAGERS)]
) -> dict[str, Any]:
    """A supervisor moves the work, with a reason; the SLA clocks continue."""
    return work_order_view(await _command(_app(request).reassign, wo_id, body.technician_id, body.reason, who.subject))


@router.put("/work-orders/{wo_id}/priority")
async def change_priority(
    wo_id: UUID, body: Priority, request: Request, who: Annotated[Principal, Depends(MANAGERS)]
) -> dict[str, Any]:
    """A new priority: the targets are recalculated, the time already elapsed stays."""
    app = _app(request)
    return work_order_view(await _command(app.change_priority, wo_id, body.priority, who.subject, body.reason))
