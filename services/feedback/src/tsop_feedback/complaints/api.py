"""Complaints' HTTP routes: complaints, improvement actions, the internal assessment and quality scores."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Query, Response
from pydantic import BaseModel, Field, Strict

from tsop_events.auth import Principal, Role, requires
from tsop_events.errors import Forbidden, Invalid, NotFound, NotYet
from tsop_events.http import service_dependency
from tsop_events.inbound import Bool, Inbound, Moment, TextCheck
from tsop_events.runtime import Service
from tsop_feedback.commands import FeedbackApp
from tsop_feedback.complaints import commands, projection, views
from tsop_feedback.complaints.domain import Assessment, Complaint, ImprovementAction

router = APIRouter(prefix="/v1")
Svc = Annotated[Service[FeedbackApp], Depends(service_dependency(FeedbackApp))]
# a channel files and follows its own customers' complaints and gives the customer's answer to a reply
Filer = Annotated[Principal, Depends(requires(Role.channel, Role.agent, Role.supervisor))]
Reader = Annotated[Principal, Depends(requires(Role.channel, Role.agent, Role.supervisor, Role.auditor))]
Handler = Annotated[Principal, Depends(requires(Role.agent, Role.supervisor))]
Supervisor = Annotated[Principal, Depends(requires(Role.supervisor))]
Overseer = Annotated[Principal, Depends(requires(Role.agent, Role.supervisor, Role.auditor))]
Key = Annotated[str | None, Header(min_length=1, max_length=200, description="Makes the create safe to retry")]

Short = Annotated[str, Strict(), Field(min_length=1, max_length=200), TextCheck]
Long = Annotated[str, Strict(), Field(min_length=1, max_length=4000), TextCheck]
TypeCode = Annotated[str, Strict(), Field(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_]*$")]
TicketId = UUID

REPLAYED = {200: {"description": "Replay of an earlier create with the same Idempotency-Key"}}


# ---------------------------------------------------------------- bodies


class FileComplaint(Inbound):
    customer_id: Short
    complaint_type: TypeCode = Field(description="One of the operator's complaint types (GET /v1/complaint-types)")
    description: Long
    ticket_ids: Annotated[list[TicketId], Field(max_length=20)] = []


class Categorise(Inbound):
    complaint_type: TypeCode


class LinkTicket(Inbound):
    ticket_id: TicketId


class Note(Inbound):
    note: Long


class Answer(Inbound):
    answer: Long


class Refusal(Inbound):
    reason: Long


class Closure(Inbound):
    basis: Literal["supervisor", "withdrawn"]
    note: Long | None = None


class OpenAction(Inbound):
    title: Short
    kind: Literal["corrective", "preventive"]
    owner: Short
    due: Moment
    complaint_id: UUID | None = None


class Reassign(Inbound):
    owner: Short | None = None
    due: Moment | None = None


class Verify(Inbound):
    effective: Bool
    note: Long


class CloseAction(Inbound):
    note: Long | None = None


class Assess(Inbound):
    checks: Annotated[dict[Annotated[str, Field(max_length=64)], Bool], Field(min_length=1, max_length=50)]
    note: Long | None = None


# ---------------------------------------------------------------- answers


class Escalation(BaseModel):
    reason: str
    level: int
    deadline: str | None
    by: str
    at: str


class NoteView(BaseModel):
    note: str
    by: str
    at: str


class AnswerView(BaseModel):
    answer: str
    by: str
    at: str


class ClosureView(BaseModel):
    basis: str
    note: str | None
    by: str
    at: str


class ComplaintView(BaseModel):
    """A complaint, its deadlines, its investigation and its outcome."""

    id: str
    customer_id: str
    channel_id: str | None
    source: str = Field(description="channel, agent, rating (a low score called solved) or ticket (TMF621 ticketType)")
    complaint_type: str
    description: str
    ticket_ids: list[str]
    status: str = Field(description="received, acknowledged, investigating, answered or closed")
    received_at: str
    acknowledge_by: str
    answer_by: str
    acknowledged_at: str | None
    overdue: bool
    repeat: bool
    repeat_of: list[str]
    rating_score: int | None
    escalation_level: int
    escalations: list[Escalation]
    notes: list[NoteView]
    answer: AnswerView | None
    closed: ClosureView | None


class ComplaintSummaryView(BaseModel):
    id: str
    customer_id: str
    complaint_type: str
    source: str
    status: str
    received_at: str
    acknowledge_by: str
    answer_by: str
    overdue: bool
    repeat: bool
    escalation_level: int
    ticket_ids: list[str]


class ComplaintList(BaseModel):
    complaints: list[ComplaintSummaryView]


class ComplaintTypeView(BaseModel):
    code: str
    name: str
    acknowledge_hours: float
    answer_hours: float
    ticket_types: list[str]


class ComplaintTypes(BaseModel):
    complaint_types: list[ComplaintTypeView]
    repeat_within_days: float
    low_score: int


class ActionView(BaseModel):
    id: str
    title: str
    kind: str
    origin: str = Field(description="complaint, low_score_pattern, incident_review or manual")
    origin_id: str
    owner: str
    due: str
    status: str = Field(description="open, verified (effective) or closed")
    opened_by: str
    opened_at: str
    verification: dict[str, Any] | None = None
    closed: dict[str, Any] | None = None
    overdue: bool = Field(default=False, description="Still open past its due date")
    escalation_level: int = Field(default=0, description="How often the timer escalated it (once per due date)")
    escalations: list[dict[str, Any]] = Field(default_factory=list, description="due, level, by, at")


class ActionList(BaseModel):
    actions: list[ActionView]


class AssessmentView(BaseModel):
    ticket_id: str
    checks: dict[str, bool]
    score: float = Field(description="0 to 100: the checklist's weighted share of items passed")
    note: str | None
    assessed_by: str
    assessed_at: str


class Checklist(BaseModel):
    checklist: dict[str, float] = Field(description="item → weight")
    sample_share: float


class SampleItem(BaseModel):
    ticket_id: str
    service_type: str | None
    technician_id: str | None
    team: str | None
    resolved_at: str
    score: int | None


class Sample(BaseModel):
    tickets: list[SampleItem]


class QualityItem(BaseModel):
    subject: str | None
    period: str | None = Field(description="Start of the period (ISO 8601); null for bucket=all")
    tickets: int
    rated: int
    average_rating: float | None
    assessed: int
    average_internal: float | None
    combined: float | None = Field(description="0 to 100: customer rating and internal score, weighted per ticket")


class Quality(BaseModel):
    by: str
    bucket: str
    weights: dict[str, float]
    since: str
    until: str
    rows: list[QualityItem]


def _iso(d: datetime | None) -> str | None:
    return d.isoformat() if d else None


def complaint_view(c: Complaint, now: datetime) -> ComplaintView:
    overdue = c.status != "closed" and (
        (c.status == "received" and now > c.acknowledge_by) or (c.status != "answered" and now > c.answer_by))
    return ComplaintView(
        id=str(c.id), customer_id=c.customer_id, channel_id=c.channel_id, source=c.source,
        complaint_type=c.complaint_type, description=c.description, ticket_ids=c.ticket_ids, status=c.status,
        received_at=c.received_at.isoformat(), acknowledge_by=c.acknowledge_by.isoformat(),
        answer_by=c.answer_by.isoformat(), acknowledged_at=_iso(c.acknowledged_at), overdue=overdue,
        repeat=c.repeat, repeat_of=c.repeat_of, rating_score=c.rating_score, escalation_level=c.escalation_level,
        escalations=[Escalation(**e) for e in c.escalations], notes=[NoteView(**n) for n in c.notes],
        answer=AnswerView(**c.answer) if c.answer else None, closed=ClosureView(**c.closed) if c.closed else None,
    )


def summary_view(c: views.ComplaintSummary, now: datetime) -> ComplaintSummaryView:
    return ComplaintSummaryView(
        id=str(c.id), customer_id=c.customer_id, complaint_type=c.complaint_type, source=c.source, status=c.status,
        received_at=c.received_at.isoformat(), acknowledge_by=c.acknowledge_by.isoformat(),
        answer_by=c.answer_by.isoformat(), overdue=c.overdue(now), repeat=c.repeat,
        escalation_level=c.escalation_level, ticket_ids=list(c.ticket_ids))


def action_view(a: ImprovementAction, now: datetime) -> ActionView:
    return ActionView(
        id=str(a.id), title=a.title, kind=a.kind, origin=a.origin, origin_id=a.origin_id, owner=a.owner,
        due=a.due.isoformat(), status=a.status, opened_by=a.opened_by, opened_at=a.opened_at.isoformat(),
        verification=a.verification, closed=a.closed, overdue=a.overdue(now), escalation_level=a.escalation_level,
        escalations=list(a.escalations))


def assessment_view(a: Assessment) -> AssessmentView:
    return AssessmentView(ticket_id=a.ticket_id, checks=a.checks, score=a.score, note=a.note,
                          assessed_by=a.assessed_by, assessed_at=a.assessed_at.isoformat())


def _created(response: Response, replayed: bool, location: str) -> None:
    response.headers["Location"] = location
    if replayed:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"


# ---------------------------------------------------------------- complaints


@router.get("/complaint-types", tags=["complaints"], response_model=ComplaintTypes)
async def complaint_types(svc: Svc, caller: Reader) -> ComplaintTypes:
    """The operator's complaint types with their deadlines, and how repeats and low ratings are judged."""
    policy = commands.desk(svc).policy
    return ComplaintTypes(
        complaint_types=[ComplaintTypeView(code=code, name=t.name, acknowledge_hours=t.acknowledge_hours,
                                           answer_hours=t.answer_hours, ticket_types=list(t.ticket_types))
                         for code, t in sorted(policy.complaint_types.items())],
        repeat_within_days=policy.repeat_within_days, low_score=policy.low_score)


@router.post("/complaints", status_code=201, tags=["complaints"], response_model=ComplaintView,
             responses={200: {**REPLAYED[200], "model": ComplaintView}})
async def file_complaint(body: FileComplaint, svc: Svc, caller: Filer, response: Response,
                         idempotency_key: Key = None) -> ComplaintView:
    """File a complaint (a channel for its own customer, or an agent); 201 with Location. It must be
    acknowledged and answered within its type's deadlines, or it escalates by itself."""
    c, replayed = await commands.receive(
        svc, caller, customer_id=body.customer_id, complaint_type=body.complaint_type, description=body.description,
        ticket_ids=[str(t) for t in body.ticket_ids], idempotency_key=idempotency_key,
        body=body.model_dump(mode="json"))
    _created(response, replayed, f"/v1/complaints/{c.id}")
    return complaint_view(c, svc.app.clock.now())


@router.get("/complaints", tags=["complaints"], response_model=ComplaintList)
async def list_complaints(
    svc: Svc, caller: Reader,
    status: Literal["received", "acknowledged", "investigating", "answered", "closed"] | None = None,
    customer_id: Annotated[str | None, Query(max_length=200)] = None,
    complaint_type: Annotated[str | None, Query(max_length=64)] = None,
    overdue: bool | None = None, repeat: bool | None = None, escalated: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ComplaintList:
    """Complaints, latest first (a channel sees its own): filter by status, customer, type, overdue, repeat."""
    found = await commands.complaints(svc, caller, status=status, customer_id=customer_id,
                                      complaint_type=complaint_type, overdue=overdue, repeat=repeat,
                                      escalated=escalated, limit=limit)
    now = svc.app.clock.now()
    return ComplaintList(complaints=[summary_view(c, now) for c in found])


@router.get("/complaints/{complaint_id}", tags=["complaints"], response_model=ComplaintView)
async def get_complaint(complaint_id: UUID, svc: Svc, caller: Reader) -> ComplaintView:
    return complaint_view(await commands.complaint(svc, complaint_id, caller), svc.app.clock.now())


async def _act(svc: Service[FeedbackApp], cid: UUID, caller: Principal, act: str, **args: Any) -> ComplaintView:
    return complaint_view(await commands.change(svc, cid, caller, act, **args), svc.app.clock.now())


@router.post("/complaints/{complaint_id}/acknowledge", tags=["complaints"], response_model=ComplaintView)
async def acknowledge(complaint_id: UUID, svc: Svc, caller: Handler) -> ComplaintView:
    """Acknowledge the complaint to the customer (409 if it already was, or it is closed)."""
    return await _act(svc, complaint_id, caller, "acknowledge")


@router.post("/complaints/{complaint_id}/categorise", tags=["complaints"], response_model=ComplaintView)
async def categorise(complaint_id: UUID, body: Categorise, svc: Svc, caller: Handler) -> ComplaintView:
    return await _act(svc, complaint_id, caller, "categorise", complaint_type=body.complaint_type)


@router.post("/complaints/{complaint_id}/tickets", tags=["complaints"], response_model=ComplaintView)
async def link_ticket(complaint_id: UUID, body: LinkTicket, svc: Svc, caller: Handler) -> ComplaintView:
    """Link a ticket to the complaint (linking it again changes nothing)."""
    return await _act(svc, complaint_id, caller, "link", ticket_id=str(body.ticket_id))


@router.post("/complaints/{complaint_id}/notes", tags=["complaints"], response_model=ComplaintView)
async def add_note(complaint_id: UUID, body: Note, svc: Svc, caller: Handler) -> ComplaintView:
    """Note a step of the investigation (after the acknowledgement)."""
    return await _act(svc, complaint_id, caller, "note", note=body.note)


@router.post("/complaints/{complaint_id}/answer", tags=["complaints"], response_model=ComplaintView)
async def answer(complaint_id: UUID, body: Answer, svc: Svc, caller: Handler) -> ComplaintView:
    """Give the customer the answer (after the acknowledgement; 409 while an answer awaits the customer)."""
    return await _act(svc, complaint_id, caller, "answer", answer=body.answer)


@router.post("/complaints/{complaint_id}/accept", tags=["complaints"], response_model=ComplaintView)
async def accept(complaint_id: UUID, svc: Svc, caller: Filer) -> ComplaintView:
    """The customer accepts the answer: the complaint is closed (basis ``accepted``)."""
    return await _act(svc, complaint_id, caller, "accept")


@router.post("/complaints/{complaint_id}/reject", tags=["complaints"], response_model=ComplaintView)
async def reject(complaint_id: UUID, body: Refusal, svc: Svc, caller: Filer) -> ComplaintView:
    """The customer does not accept the answer: escalated, and a new answer is due."""
    return await _act(svc, complaint_id, caller, "reject", reason=body.reason)


@router.post("/complaints/{complaint_id}/escalate", tags=["complaints"], response_model=ComplaintView)
async def escalate(complaint_id: UUID, body: Refusal, svc: Svc, caller: Supervisor) -> ComplaintView:
    return await _act(svc, complaint_id, caller, "escalate", reason=body.reason)


@router.post("/complaints/{complaint_id}/close", tags=["complaints"], response_model=ComplaintView)
async def close(complaint_id: UUID, body: Closure, svc: Svc, caller: Filer) -> ComplaintView:
    """Close without the customer's acceptance: ``withdrawn`` (the customer, through their channel or an agent)
    or ``supervisor`` (a supervisor's decision)."""
    if body.basis == "supervisor" and not caller.has(Role.supervisor):
        raise Forbidden("only a supervisor closes a complaint on the basis 'supervisor'", "basis")
    return await _act(svc, complaint_id, caller, "close", basis=body.basis, note=body.note)


# ---------------------------------------------------------------- improvement actions


@router.post("/improvement-actions", status_code=201, tags=["improvement"], response_model=ActionView,
             responses={200: {**REPLAYED[200], "model": ActionView}})
async def open_action(body: OpenAction, svc: Svc, caller: Supervisor, response: Response,
                      idempotency_key: Key = None) -> ActionView:
    """Open a corrective or preventive action, from a complaint (``complaint_id``) or on its own."""
    a, replayed = await commands.open_action(
        svc, caller, title=body.title, kind=body.kind, complaint_id=body.complaint_id, owner=body.owner, due=body.due,
        idempotency_key=idempotency_key, body=body.model_dump(mode="json"))
    _created(response, replayed, f"/v1/improvement-actions/{a.id}")
    return action_view(a, svc.app.clock.now())


@router.get("/improvement-actions", tags=["improvement"], response_model=ActionList)
async def list_actions(
    svc: Svc, caller: Overseer, status: Literal["open", "verified", "closed"] | None = None,
    origin: Literal["complaint", "low_score_pattern", "incident_review", "manual"] | None = None,
    overdue: bool | None = None,
) -> ActionList:
    """Improvement actions by due date (filter: status, origin, overdue)."""
    found = await commands.actions(svc, status, origin, overdue)
    now = svc.app.clock.now()
    return ActionList(actions=[action_view(await commands.action(svc, a.id), now) for a in found])


@router.get("/improvement-actions/{action_id}", tags=["improvement"], response_model=ActionView)
async def get_action(action_id: UUID, svc: Svc, caller: Overseer) -> ActionView:
    return action_view(await commands.action(svc, action_id), svc.app.clock.now())


@router.post("/improvement-actions/{action_id}/reassign", tags=["improvement"], response_model=ActionView)
async def reassign(action_id: UUID, body: Reassign, svc: Svc, caller: Supervisor) -> ActionView:
    if body.owner is None and body.due is None:
        raise Invalid("name a new owner, a new due date, or both", "owner")
    return action_view(await commands.change_action(svc, action_id, caller, "reassign", owner=body.owner,
                                                    due=body.due), svc.app.clock.now())


@router.post("/improvement-actions/{action_id}/verify", tags=["improvement"], response_model=ActionView)
async def verify(action_id: UUID, body: Verify, svc: Svc, caller: Supervisor) -> ActionView:
    """Record whether the action worked; an ineffective one stays open."""
    return action_view(await commands.change_action(svc, action_id, caller, "verify", effective=body.effective,
                                                    note=body.note), svc.app.clock.now())


@router.post("/improvement-actions/{action_id}/close", tags=["improvement"], response_model=ActionView)
async def close_action(action_id: UUID, body: CloseAction, svc: Svc, caller: Supervisor) -> ActionView:
    """Close a verified action (409 before it is verified effective)."""
    return action_view(await commands.change_action(svc, action_id, caller, "close", note=body.note),
                       svc.app.clock.now())


# ---------------------------------------------------------------- internal assessment and quality


@router.get("/assessments/checklist", tags=["quality"], response_model=Checklist)
async def checklist(svc: Svc, caller: Overseer) -> Checklist:
    policy = commands.desk(svc).policy
    return Checklist(checklist=policy.checklist, sample_share=policy.assessment_share)


@router.get("/assessments/sample", tags=["quality"], response_model=Sample)
async def assessment_sample(svc: Svc, caller: Supervisor,
                            limit: Annotated[int, Query(ge=1, le=500)] = 20) -> Sample:
    """Resolved tickets in the sample that no supervisor has assessed yet."""
    rows = await projection.sample(svc.pool, limit)
    return Sample(tickets=[SampleItem(**{**r, "resolved_at": r["resolved_at"].isoformat()}) for r in rows])


@router.post("/tickets/{ticket_id}/assessment", status_code=201, tags=["quality"], response_model=AssessmentView)
async def assess(ticket_id: UUID, body: Assess, svc: Svc, caller: Supervisor, response: Response) -> AssessmentView:
    """Assess a resolved ticket against the checklist (every item answered); once per ticket."""
    commands.desk(svc).policy.score_checks(body.checks)  # a wrong checklist is a 422 before anything else
    fact = await projection.ticket_fact(svc.pool, str(ticket_id))
    if fact is None:
        raise NotFound(f"feedback has not heard of ticket {ticket_id}", "ticket_id")
    if fact["resolved_at"] is None:
        raise NotYet(f"ticket {ticket_id} is not resolved (yet)", "ticket_id", retry_after=5)
    a = await commands.assess(svc, str(ticket_id), body.checks, body.note, caller)
    response.headers["Location"] = f"/v1/tickets/{ticket_id}/assessment"
    return assessment_view(a)


@router.get("/tickets/{ticket_id}/assessment", tags=["quality"], response_model=AssessmentView)
async def get_assessment(ticket_id: UUID, svc: Svc, caller: Overseer) -> AssessmentView:
    return assessment_view(await commands.assessment(svc, str(ticket_id)))


@router.get("/quality", tags=["quality"], response_model=Quality)
async def quality(
    svc: Svc, caller: Overseer,
    by: Literal["ticket", "technician", "team", "service_type"] = "technician",
    bucket: Literal["day", "week", "month", "all"] = "all",
    since: Annotated[datetime | None, Query(description="From (ISO 8601 with offset); default 30 days ago")] = None,
    until: Annotated[datetime | None, Query(description="Until (exclusive); default now")] = None,
    subject: Annotated[str | None, Query(max_length=200, description="Only this ticket, technician, team "
                                                                      "or service type")] = None,
) -> Quality:
    """The combined quality score (customer rating and internal assessment, weighted as the policy says) per
    ticket, technician, team or service type, over the tickets resolved in the period, per day, week or month."""
    now = svc.app.clock.now()
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.utcoffset() is None:
            raise Invalid("needs a time zone offset", name)
    end = until or now
    start = since or end - timedelta(days=30)
    if start >= end:
        raise Invalid("must be before until", "since")
    weights = commands.desk(svc).policy.quality_weights.as_dict()
    rows = await projection.quality(svc.pool, by, bucket, weights, start, end, subject)
    return Quality(by=by, bucket=bucket, weights=weights, since=start.astimezone(UTC).isoformat(),
                   until=end.astimezone(UTC).isoformat(),
                   rows=[QualityItem(subject=r.subject, period=_iso(r.period), tickets=r.tickets, rated=r.rated,
                                     average_rating=r.average_rating, assessed=r.assessed,
                                     average_internal=r.average_internal, combined=r.combined) for r in rows])
