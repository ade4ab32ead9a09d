"""Dispatch's HTTP routes: the workforce, resources, work orders and their clocks.

Supervisors (and admins) manage the workforce, resources, peak mode and manual
reassignment. A technician authenticates with the credential dispatch issued at
registration, and acts only on their own work orders.
"""

from __future__ import annotations

import asyncio
import math
from datetime import date, datetime
from typing import Annotated, Any, Literal
from uuid import UUID, uuid4

from fastapi import APIRouter, Depends, Header, Response
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    Field,
    PlainValidator,
    Strict,
    model_validator,
)

from tsop_dispatch import commands
from tsop_dispatch.commands import DispatchApp, work_order_id
from tsop_dispatch.domain import NotYours, Technician, WorkOrder
from tsop_dispatch.views import Waiting
from tsop_events.auth import Principal, Role, requires
from tsop_events.commands import Idempotency
from tsop_events.errors import Forbidden
from tsop_events.http import service_dependency
from tsop_events.inbound import INT64_MAX, INT64_MIN, Bool, Inbound, Int, Number, clean_text
from tsop_events.inbound import Text as FreeText
from tsop_events.runtime import Service

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

Svc = Annotated[Service[DispatchApp], Depends(service_dependency(DispatchApp))]
Manager = Annotated[Principal, Depends(requires(Role.supervisor))]  # admin holds every role
Reader = Annotated[Principal, Depends(requires(Role.supervisor, Role.agent, Role.auditor, Role.technician))]
Staff = Annotated[Principal, Depends(requires(Role.supervisor, Role.agent, Role.auditor))]
Admin = Annotated[Principal, Depends(requires(Role.admin))]
Tech = Annotated[Principal, Depends(requires(Role.technician))]


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


# --- the answers ---------------------------------------------------------------------------------------


class Answer(BaseModel):
    """A success body, as the OpenAPI document shows it."""


class QualificationOut(Answer):
    service_type: str
    certificate: str
    level: int
    valid_from: str
    valid_until: str | None


class PeriodOut(Answer):
    start: str
    end: str


class LeaveOut(PeriodOut):
    reason: str


class TechnicianOut(Answer):
    id: str
    name: str
    service_types: list[str]
    qualifications: list[QualificationOut]
    regions: list[str]
    capacity: int
    shifts: list[PeriodOut]
    leave: list[LeaveOut]
    active_work_orders: list[str]


class TechnicianWithToken(TechnicianOut):
    token: str | None = Field(
        default=None, description="The technician's credential, shown this once: absent from a replayed answer."
    )


class ResourceOut(Answer):
    id: str
    kind: str
    name: str
    region: str
    reserved_by: str | None


class PeakModeOut(Answer):
    on: bool
    backlog: int
    auto_threshold: int


class CalendarOut(Answer):
    name: str | None
    always: bool
    days: list[int]
    start: str
    end: str
    holidays: list[str]


class TargetOut(Answer):
    respond_hours: float
    resolve_hours: float


class SlaPolicyOut(Answer):
    version: str
    norm_resolve_hours: float
    peak_resolve_hours: float
    calendars: dict[str, CalendarOut]
    type_calendars: dict[str, str]
    targets: dict[str, dict[str, TargetOut]]
    resources: dict[str, list[str]]


class PolicyAdopted(Answer):
    version: str
    work_orders_recalculated: int


class WaitingOut(Answer):
    work_order_id: str
    priority: int
    deadline: str
    opened_at: str
    service_type: str
    region: str
    needs: list[str]
    declined_by: list[str]


class QueueOut(Answer):
    waiting: int
    items: list[WaitingOut]


class LogEntryOut(Answer):
    technician_id: str
    action: str
    mode: str
    notes: str | None
    equipment: list[str]
    measurements: dict[str, int | float | str]
    at: str


class WorkOrderOut(Answer):
    id: str
    ticket_id: str
    service_type: str
    region: str
    priority: int
    status: str
    technician_id: str | None
    accept_by: str | None
    resources: list[str]
    declined_by: list[str]
    previous_technicians: list[str]
    operation_log: list[LogEntryOut]
    held_by_incident: str | None = Field(
        default=None, description="The incident holding it (§5.3): its SLA clocks paused, nobody sent to it alone.")


class SlaOut(Answer):
    ticket_id: str
    work_order_id: str
    status: str
    priority: int
    now: str
    thresholds_recorded: list[str]
    clocks: dict[str, Any] = Field(description="Per clock: segments (running, paused and why), deadlines, remaining.")


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def technician_view(t: Technician) -> dict[str, Any]:
    return {
        "id": str(t.id),
        "name": t.name,
        "service_types": sorted(t.qualifications),
        "qualifications": [
            {
                **q,
                "valid_from": _iso(q["valid_from"]),  # always set (``domain.registered``)
                "valid_until": _iso(q["valid_until"]),
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
        "held_by_incident": wo.held_by,
    }


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


def _may_read(principal: Principal, wo: WorkOrder) -> None:
    """Staff read any work order; a technician only their own."""
    if principal.has(Role.supervisor, Role.agent, Role.auditor):
        return
    if principal.subject != wo.technician_id:
        raise NotYours(f"work order {wo.id} is not assigned to {principal.subject}")


def _peak(app: DispatchApp) -> dict[str, Any]:
    return {"on": app.board.peak, "backlog": len(app.board.waiting), "auto_threshold": app.peak_backlog}


# --- the workforce ---------------------------------------------------------------------------------


IdempotencyKey = Annotated[str | None, Header(min_length=1, max_length=200)]


def _once(scope: str, who: Principal, key: str | None, body: BaseModel) -> Idempotency | None:
    return Idempotency.of(f"{scope}:{who.subject}", key, body.model_dump(mode="json")) if key else None


@router.post("/technicians", status_code=201, response_model=TechnicianWithToken, response_model_exclude_unset=True,
             responses={200: {"description": "Replay of an earlier registration with the same Idempotency-Key: "
                              "the credential is not shown again", "model": TechnicianOut}})
async def register(body: RegisterTechnician, svc: Svc, who: Manager, response: Response,
                   idempotency_key: IdempotencyKey = None) -> dict[str, Any]:
    """Register a technician; the answer carries their credential, shown this once. Send an
    ``Idempotency-Key`` so that a retry after a lost answer does not register a second technician."""
    quals = [q.model_dump() for q in body.qualifications]
    tech, token = await commands.register_technician(
        svc, body.id or uuid4(), body.name, body.service_types, body.regions, body.capacity, quals,
        _once("register-technician", who, idempotency_key, body),
    )
    if token is None:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
        return technician_view(tech)
    return {**technician_view(tech), "token": token}


@router.get("/technicians/{technician_id}", response_model=TechnicianOut)
async def get_technician(technician_id: UUID, svc: Svc, who: Reader) -> dict[str, Any]:
    if not who.has(Role.supervisor, Role.agent, Role.auditor) and who.subject != str(technician_id):
        raise Forbidden("a technician sees only their own record")
    return technician_view(await commands.load(svc, Technician, technician_id, "technician"))


@router.post("/technicians/{technician_id}/qualifications", status_code=201, response_model=TechnicianOut)
async def grant_qualification(technician_id: UUID, body: QualificationIn, svc: Svc, who: Manager) -> dict[str, Any]:
    """A training record grants or renews a qualification (§6)."""
    tech = await commands.grant_qualification(
        svc,
        technician_id,
        body.service_type,
        body.certificate,
        body.level,
        body.valid_from,
        body.valid_until,
        f"training record by {who.subject}",
    )
    return technician_view(tech)


@router.post("/technicians/{technician_id}/shifts", status_code=201, response_model=TechnicianOut)
async def schedule_shift(technician_id: UUID, body: Period, svc: Svc, who: Manager) -> dict[str, Any]:
    return technician_view(await commands.schedule(svc, technician_id, "shift", body.start, body.end))


@router.post("/technicians/{technician_id}/leave", status_code=201, response_model=TechnicianOut)
async def schedule_leave(technician_id: UUID, body: Period, svc: Svc, who: Manager) -> dict[str, Any]:
    return technician_view(await commands.schedule(svc, technician_id, "leave", body.start, body.end, body.reason))


@router.post("/technicians/{technician_id}/credential", status_code=201, response_model=TechnicianWithToken)
async def rotate_credential(technician_id: UUID, svc: Svc, who: Manager) -> dict[str, Any]:
    """A new credential for the technician, shown this once; the previous one stops working."""
    tech, token = await commands.rotate_credential(svc, technician_id)
    return {**technician_view(tech), "token": token}


@router.put("/technicians/{technician_id}/capacity", response_model=TechnicianOut)
async def change_capacity(technician_id: UUID, body: Capacity, svc: Svc, who: Manager) -> dict[str, Any]:
    return technician_view(await commands.change_capacity(svc, technician_id, body.capacity))


@router.post("/resources", status_code=201, response_model=ResourceOut,
             responses={200: {"description": "Replay of an earlier registration with the same Idempotency-Key",
                              "model": ResourceOut}})
async def register_resource(body: RegisterResource, svc: Svc, who: Manager, response: Response,
                            idempotency_key: IdempotencyKey = None) -> dict[str, Any]:
    """Equipment or a venue slot, reserved with the work orders whose service type needs that kind."""
    r, replayed = await commands.register_resource(
        svc, body.id or uuid4(), body.kind, body.name, body.region,
        _once("register-resource", who, idempotency_key, body),
    )
    if replayed:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return {"id": str(r.id), "kind": r.kind, "name": r.name, "region": r.region, "reserved_by": r.reserved_by}


@router.get("/peak-mode", response_model=PeakModeOut)
async def get_peak_mode(svc: Svc, who: Reader) -> dict[str, Any]:
    await asyncio.to_thread(svc.app.board.refresh)
    return _peak(svc.app)


@router.put("/peak-mode", response_model=PeakModeOut)
async def set_peak_mode(body: PeakModeIn, svc: Svc, who: Manager) -> dict[str, Any]:
    """Declare peak (the 48-hour norm for work opened from now on) or end it."""
    peak = await commands.set_peak(svc, body.on, who.subject, body.reason)
    return {**_peak(svc.app), "on": peak.on}


@router.get("/sla-policy", response_model=SlaPolicyOut)
async def get_sla_policy(svc: Svc, who: Reader) -> dict[str, Any]:
    """The service-level policy in force: targets per service type and priority, calendars, peak norm."""
    await asyncio.to_thread(svc.app.board.refresh)
    p = svc.app.policy
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


@router.put("/sla-policy", response_model=PolicyAdopted)
async def adopt_sla_policy(body: SlaPolicyIn, svc: Svc, who: Admin) -> dict[str, Any]:
    """Adopt a new policy (same shape as GET): recorded, and every open work order's targets are recalculated."""
    changed = await commands.adopt_policy(svc, body.model_dump(mode="json", exclude_none=True), who.subject)
    return {"version": svc.app.policy.version, "work_orders_recalculated": changed}


@router.get("/queue", response_model=QueueOut)
async def get_queue(svc: Svc, who: Staff, limit: Annotated[int, Field(ge=1, le=10000)] = 100) -> dict[str, Any]:
    """Work orders nobody could take yet, in the order they will be served."""
    board = svc.app.board
    await asyncio.to_thread(board.refresh)
    items = board.queue(limit)
    return {"waiting": len(board.waiting), "items": [_waiting_view(i, w) for i, w in items]}


# --- work orders -----------------------------------------------------------------------------------


@router.get("/work-orders/{wo_id}", response_model=WorkOrderOut)
async def get_work_order(wo_id: UUID, svc: Svc, who: Reader) -> dict[str, Any]:
    wo = await commands.load(svc, WorkOrder, wo_id, "work order")
    _may_read(who, wo)
    return work_order_view(wo)


@router.get("/tickets/{ticket_id}/work-order", response_model=WorkOrderOut)
async def get_ticket_work_order(ticket_id: UUID, svc: Svc, who: Reader) -> dict[str, Any]:
    return await get_work_order(work_order_id(str(ticket_id)), svc, who)


@router.get("/tickets/{ticket_id}/sla", response_model=SlaOut)
async def get_ticket_sla(ticket_id: UUID, svc: Svc, who: Reader) -> dict[str, Any]:
    """The ticket's service-level clocks: segments (running, paused and why), deadlines, remaining or overrun."""
    wo = await commands.load(svc, WorkOrder, work_order_id(str(ticket_id)), "work order for ticket")
    _may_read(who, wo)
    return {
        "ticket_id": wo.ticket_id,
        "work_order_id": str(wo.id),
        "status": wo.status,
        "priority": wo.priority,
        "now": svc.app.clock.now().isoformat(),
        "thresholds_recorded": sorted(f"{c}:{lvl}" for c, lvl in wo.crossed),
        "clocks": svc.app.explain_clocks(wo),
    }


@router.post("/work-orders/{wo_id}/accept", response_model=WorkOrderOut)
async def accept(wo_id: UUID, svc: Svc, who: Tech) -> dict[str, Any]:
    return work_order_view(await commands.accept(svc, wo_id, who.subject))


@router.post("/work-orders/{wo_id}/decline", response_model=WorkOrderOut)
async def decline(wo_id: UUID, body: Decline, svc: Svc, who: Tech) -> dict[str, Any]:
    """Say no, with a reason: the work order goes to someone else (never back to you)."""
    return work_order_view(await commands.decline(svc, wo_id, who.subject, body.reason))


@router.post("/work-orders/{wo_id}/start", response_model=WorkOrderOut)
async def start(wo_id: UUID, body: Start, svc: Svc, who: Tech) -> dict[str, Any]:
    return work_order_view(await commands.start(svc, wo_id, who.subject, body.mode))


@router.post("/work-orders/{wo_id}/log", status_code=201, response_model=WorkOrderOut,
             responses={200: {"description": "Replay of an earlier entry with the same Idempotency-Key",
                              "model": WorkOrderOut}})
async def log_work(
    wo_id: UUID,
    body: LogWork,
    svc: Svc,
    who: Tech,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    """Log a step; send an ``Idempotency-Key`` so that a retry after a lost answer is not logged twice."""
    wo, replayed = await commands.log_work(
        svc, wo_id, who.subject, body.action, body.mode, body.notes, body.equipment, body.measurements,
        idempotency_key,
    )
    if replayed:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return work_order_view(wo)


@router.post("/work-orders/{wo_id}/pause", response_model=WorkOrderOut)
async def pause(wo_id: UUID, body: Pause, svc: Svc, who: Tech) -> dict[str, Any]:
    """Pending (waiting for the customer) or held (parts, an incident): the SLA clocks stop."""
    return work_order_view(await commands.pause(svc, wo_id, who.subject, body.kind, body.reason))


@router.post("/work-orders/{wo_id}/resume", response_model=WorkOrderOut)
async def resume(wo_id: UUID, svc: Svc, who: Tech) -> dict[str, Any]:
    return work_order_view(await commands.resume(svc, wo_id, who.subject))


@router.post("/work-orders/{wo_id}/resolve", response_model=WorkOrderOut)
async def resolve(wo_id: UUID, body: Resolve, svc: Svc, who: Tech) -> dict[str, Any]:
    wo = await commands.resolve(svc, wo_id, who.subject, body.resolution_code, body.summary, body.advice)
    return work_order_view(wo)


@router.post("/work-orders/{wo_id}/reassign", response_model=WorkOrderOut)
async def reassign(wo_id: UUID, body: Reassign, svc: Svc, who: Manager) -> dict[str, Any]:
    """A supervisor moves the work, with a reason; the SLA clocks continue."""
    return work_order_view(await commands.reassign(svc, wo_id, body.technician_id, body.reason, who.subject))


@router.put("/work-orders/{wo_id}/priority", response_model=WorkOrderOut)
async def change_priority(wo_id: UUID, body: Priority, svc: Svc, who: Manager) -> dict[str, Any]:
    """A new priority: the targets are recalculated, the time already elapsed stays."""
    return work_order_view(await commands.change_priority(svc, wo_id, body.priority, who.subject, body.reason))
