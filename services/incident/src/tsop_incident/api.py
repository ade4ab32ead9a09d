"""Incident's HTTP routes: declaration, scope, linked tickets, the plan, restoration, the review, the TMF656 view."""

from __future__ import annotations

import html
from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Path, Query, Response
from fastapi.responses import HTMLResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, Strict

from tsop_events.auth import Principal, Role, requires
from tsop_events.errors import Forbidden
from tsop_events.http import service_dependency
from tsop_events.inbound import Inbound, Int, TextCheck
from tsop_events.runtime import Service
from tsop_incident import commands
from tsop_incident.commands import Declaration, IncidentApp
from tsop_incident.domain import SEVERITIES, ImprovementActionRecord, Incident
from tsop_incident.projection import open_ticket_groups

router = APIRouter(prefix="/v1", tags=["incident"])
tmf = APIRouter(prefix="/tmf-api/serviceProblemManagement/v4", tags=["TMF656"])
Svc = Annotated[Service[IncidentApp], Depends(service_dependency(IncidentApp))]
Manager = Annotated[Principal, Depends(requires(Role.incident_manager))]
Watcher = Annotated[Principal, Depends(requires(Role.incident_manager, Role.supervisor))]
# the plan's steps are owned by several roles; whoever holds the step's role (or manages the incident) finishes it
StepOwner = Annotated[Principal, Depends(requires(Role.incident_manager, Role.supervisor, Role.agent, Role.technician))]

Name = Annotated[str, Strict(), Field(min_length=1, max_length=64), TextCheck]
Line = Annotated[str, Strict(), Field(min_length=1, max_length=200), TextCheck]
Para = Annotated[str, Strict(), Field(min_length=1, max_length=4000), TextCheck]
SeverityIn = Literal["I", "II", "III", "IV"]


# --- bodies -----------------------------------------------------------------------------------------


class Declare(Inbound):
    title: Line
    severity: SeverityIn
    scenario: Name = "outage"
    affected_services: Annotated[list[Name], Field(min_length=1, max_length=50)]
    regions: Annotated[list[Name], Field(min_length=1, max_length=50)]
    estimated_customers: Annotated[Int, Field(ge=0, le=1_000_000_000)]
    ticket_ids: Annotated[list[UUID], Field(max_length=1000)] = Field(
        default_factory=list, description="Tickets to link at once (open tickets in scope are linked anyway).")


class Change(Inbound):
    severity: SeverityIn | None = None
    affected_services: Annotated[list[Name], Field(min_length=1, max_length=50)] | None = None
    regions: Annotated[list[Name], Field(min_length=1, max_length=50)] | None = None
    estimated_customers: Annotated[Int, Field(ge=0, le=1_000_000_000)] | None = None
    reason: Para


class Link(Inbound):
    ticket_ids: Annotated[list[UUID], Field(min_length=1, max_length=1000)]


class Unlink(Inbound):
    reason: Para


class Note(Inbound):
    note: Para


class Resolve(Inbound):
    resolution_code: Name
    summary: Para
    advice: Para | None = None


class Action(Inbound):
    title: Line
    kind: Literal["corrective", "preventive"]
    owner: Name
    due: date


class CompleteReview(Inbound):
    root_cause: Para
    improvement_actions: Annotated[list[Action], Field(max_length=100)]


# --- answers ----------------------------------------------------------------------------------------


class OpenGroup(BaseModel):
    region: str
    service_type: str | None
    open: int


class OpenTicketSummary(BaseModel):
    groups: list[OpenGroup]
    total: int


class StepOut(BaseModel):
    key: str
    title: str
    role: str
    notify: list[str]
    limit_seconds: float
    started_at: datetime
    due_at: datetime
    finished_at: datetime | None
    state: Literal["running", "finished", "overdue", "escalated"]


class IncidentOut(BaseModel):
    id: str
    title: str
    status: str
    severity: str
    severity_criteria: str
    scenario: str
    affected_services: list[str]
    regions: list[str]
    estimated_customers: int
    declared_by: str
    rule: str | None
    detected_at: datetime
    declared_at: datetime
    acknowledged_at: datetime | None
    restored_at: datetime | None
    verified_at: datetime | None
    resolved_at: datetime | None
    resolution: dict[str, str | None] | None
    plan: str | None
    steps: list[StepOut]
    linked_tickets: int
    ticket_ids: list[str] = Field(description="The linked tickets (the first 1,000)")
    unlinked_tickets: list[str]
    review_published: bool


class LinkOut(BaseModel):
    incident: IncidentOut
    newly_linked: int


class OpenIncident(BaseModel):
    id: str
    regions: list[str]
    affected_services: list[str]


class Severity(BaseModel):
    level: str
    criteria: str


class ReviewOut(BaseModel):
    incident_id: str
    published: bool
    review: dict[str, Any]


def incident_view(inc: Incident, now: datetime) -> IncidentOut:
    steps = []
    for key, s in inc.steps.items():
        done = inc.finished.get(key)
        state: Literal["running", "finished", "overdue", "escalated"] = (
            "finished" if done else "escalated" if key in inc.escalated else "overdue" if s["due_at"] <= now
            else "running"
        )
        steps.append(StepOut(
            key=key, title=s["title"], role=s["role"], notify=s["notify"], limit_seconds=s["limit_seconds"],
            started_at=s["due_at"] - timedelta(seconds=s["limit_seconds"]),
            due_at=s["due_at"], finished_at=done, state=state,
        ))
    return IncidentOut(
        id=str(inc.id), title=inc.title, status=inc.status, severity=inc.severity,
        severity_criteria=SEVERITIES[inc.severity], scenario=inc.scenario,
        affected_services=inc.affected_services, regions=inc.regions, estimated_customers=inc.estimated_customers,
        declared_by=inc.declared_by, rule=inc.rule, detected_at=inc.detected_at, declared_at=inc.declared_at,
        acknowledged_at=inc.acknowledged_at, restored_at=inc.restored_at, verified_at=inc.verified_at,
        resolved_at=inc.resolved_at, resolution=inc.resolution, plan=inc.plan, steps=steps,
        linked_tickets=len(inc.linked), ticket_ids=sorted(inc.linked)[:1000], unlinked_tickets=sorted(inc.unlinked),
        review_published=inc.review is not None,
    )


# --- routes -----------------------------------------------------------------------------------------


@router.get("/open-tickets/summary", response_model=OpenTicketSummary)
async def open_ticket_summary(
    svc: Svc,
    caller: Watcher,
    region: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
) -> OpenTicketSummary:
    """Open (accepted, not yet resolved) tickets counted by region and service type."""
    rows = await open_ticket_groups(svc.pool, region)
    return OpenTicketSummary(
        groups=[OpenGroup(region=r["region"], service_type=r["service_type"], open=r["open"]) for r in rows],
        total=sum(r["open"] for r in rows),
    )


@router.get("/incidents/severities", response_model=list[Severity])
async def severities(caller: Watcher) -> list[Severity]:
    """The severity levels I to IV and their criteria (§5.1)."""
    return [Severity(level=k, criteria=v) for k, v in SEVERITIES.items()]


@router.post("/incidents", status_code=201, response_model=IncidentOut,
             responses={200: {"description": "Replay of an earlier declaration with the same Idempotency-Key",
                              "model": IncidentOut}})
async def declare(
    body: Declare,
    svc: Svc,
    who: Manager,
    response: Response,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
) -> IncidentOut:
    """Declare an incident by hand; its emergency plan starts now and the open tickets in scope are linked."""
    d = Declaration(
        title=body.title, severity=body.severity, scenario=body.scenario,
        affected_services=list(body.affected_services), regions=list(body.regions),
        estimated_customers=body.estimated_customers, ticket_ids=[str(t) for t in body.ticket_ids],
    )
    inc, replayed = await commands.declare(svc, d, who.subject, idempotency_key)
    response.headers["Location"] = f"/v1/incidents/{inc.id}"
    if replayed:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    inc = await commands.get(svc, inc.id)
    return incident_view(inc, svc.app.clock.now())


@router.get("/incidents", response_model=list[OpenIncident])
async def open_incidents(svc: Svc, who: Watcher) -> list[OpenIncident]:
    """The open incidents and their scope."""
    return [OpenIncident(id=str(i), regions=r, affected_services=s) for i, r, s in await commands.open_incidents(svc)]


@router.get("/tickets/{ticket_id}/incident", response_model=IncidentOut)
async def incident_of_ticket(ticket_id: UUID, svc: Svc, who: Watcher) -> IncidentOut:
    """The incident a ticket is linked to (404 when none)."""
    return incident_view(await commands.incident_of_ticket(svc, str(ticket_id)), svc.app.clock.now())


@router.get("/incidents/{incident_id}", response_model=IncidentOut)
async def get_incident(incident_id: UUID, svc: Svc, who: Watcher) -> IncidentOut:
    return incident_view(await commands.get(svc, incident_id), svc.app.clock.now())


@router.patch("/incidents/{incident_id}", response_model=IncidentOut)
async def change(incident_id: UUID, body: Change, svc: Svc, who: Manager) -> IncidentOut:
    """A new severity (its plan is activated), scope or estimate, with the reason."""
    inc = await commands.change(
        svc, incident_id, body.severity, body.affected_services, body.regions, body.estimated_customers, body.reason,
        who.subject,
    )
    return incident_view(inc, svc.app.clock.now())


@router.post("/incidents/{incident_id}/acknowledge", response_model=IncidentOut)
async def acknowledge(incident_id: UUID, svc: Svc, who: Manager) -> IncidentOut:
    return incident_view(await commands.acknowledge(svc, incident_id, who.subject), svc.app.clock.now())


@router.post("/incidents/{incident_id}/tickets", response_model=LinkOut)
async def link(incident_id: UUID, body: Link, svc: Svc, who: Manager) -> LinkOut:
    """Link tickets by hand (idempotent); a ticket linked to another open incident is refused (409)."""
    inc, n = await commands.link(svc, incident_id, [str(t) for t in body.ticket_ids], who.subject)
    return LinkOut(incident=incident_view(inc, svc.app.clock.now()), newly_linked=n)


@router.post("/incidents/{incident_id}/tickets/{ticket_id}/unlink", response_model=IncidentOut)
async def unlink(incident_id: UUID, ticket_id: UUID, body: Unlink, svc: Svc, who: Manager) -> IncidentOut:
    """The ticket proved unrelated: it goes back to normal dispatch, its SLA clocks running again."""
    inc = await commands.unlink(svc, incident_id, str(ticket_id), body.reason, who.subject)
    return incident_view(inc, svc.app.clock.now())


@router.post("/incidents/{incident_id}/steps/{step}/finish", response_model=IncidentOut)
async def finish_step(
    incident_id: UUID, step: Annotated[str, Path(min_length=1, max_length=64)], svc: Svc, who: StepOwner
) -> IncidentOut:
    """Record a plan step as finished (late when past its limit)."""
    inc = await commands.get(svc, incident_id)
    owner = inc.steps.get(step)
    if owner is not None and not who.has(Role.incident_manager) and owner["role"] not in {r.value for r in who.roles}:
        raise Forbidden(f"step {step} is owned by {owner['role']}")
    return incident_view(await commands.finish_step(svc, incident_id, step, who.subject), svc.app.clock.now())


@router.post("/incidents/{incident_id}/restore", response_model=IncidentOut)
async def restore(incident_id: UUID, body: Note, svc: Svc, who: Manager) -> IncidentOut:
    return incident_view(await commands.restore(svc, incident_id, body.note, who.subject), svc.app.clock.now())


@router.post("/incidents/{incident_id}/verify", response_model=IncidentOut)
async def verify(incident_id: UUID, body: Note, svc: Svc, who: Manager) -> IncidentOut:
    return incident_view(await commands.verify(svc, incident_id, body.note, who.subject), svc.app.clock.now())


@router.post("/incidents/{incident_id}/resolve", response_model=IncidentOut)
async def resolve(incident_id: UUID, body: Resolve, svc: Svc, who: Manager) -> IncidentOut:
    """Resolve once verified: every linked ticket is resolved with this resolution. Resolving again changes nothing."""
    inc = await commands.resolve(svc, incident_id, body.resolution_code, body.summary, body.advice, who.subject)
    return incident_view(inc, svc.app.clock.now())


# --- the review -------------------------------------------------------------------------------------


def _jsonable(v: Any) -> Any:
    if isinstance(v, datetime | date):
        return v.isoformat()
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    return v


@router.get("/incidents/{incident_id}/review", response_model=ReviewOut)
async def review(incident_id: UUID, svc: Svc, who: Watcher) -> ReviewOut:
    """The post-incident review: generated from the incident's log; published once completed."""
    inc, draft = await commands.review_draft(svc, incident_id)
    return ReviewOut(incident_id=str(inc.id), published=inc.review is not None, review=_jsonable(draft))


@router.post("/incidents/{incident_id}/review", response_model=ReviewOut)
async def complete_review(incident_id: UUID, body: CompleteReview, svc: Svc, who: Manager) -> ReviewOut:
    """Complete the review with the root cause and improvement actions, and publish it (once)."""
    actions: list[ImprovementActionRecord] = [
        {"title": a.title, "kind": a.kind, "owner": a.owner, "due": a.due.isoformat()} for a in body.improvement_actions
    ]
    inc = await commands.publish_review(svc, incident_id, body.root_cause, actions, who.subject)
    assert inc.review is not None
    return ReviewOut(incident_id=str(inc.id), published=True, review=_jsonable(inc.review))


def review_markdown(inc: Incident, r: dict[str, Any]) -> str:
    def t(v: Any) -> str:
        return "—" if v is None else v.isoformat() if isinstance(v, datetime | date) else str(v)

    def secs(v: float | None) -> str:
        return "—" if v is None else f"{v / 60:.1f} min"

    lines = [
        f"# Post-incident review: {r['title']}",
        "",
        f"Incident `{inc.id}`, severity {r['severity']}; services {', '.join(r['affected_services'])}; "
        f"regions {', '.join(r['regions'])}." + ("" if "root_cause" in r else " **Draft**: not yet completed."),
        "",
        "## Figures",
        "",
        "| measure | value |",
        "|---|---|",
        f"| detected | {t(r['detected_at'])} |",
        f"| declared | {t(r['declared_at'])} |",
        f"| time to detect | {secs(r['time_to_detect_seconds'])} |",
        f"| time to acknowledge | {secs(r['time_to_acknowledge_seconds'])} |",
        f"| time to restore | {secs(r['time_to_restore_seconds'])} |",
        f"| tickets affected | {r['tickets_affected']} |",
        f"| tickets unlinked (unrelated) | {r['tickets_unlinked']} |",
        f"| customers affected | {r['customers_affected']} |",
        f"| SLA clock held (ticket-hours) | {r['sla_paused_seconds'] / 3600:.2f} |",
        "",
        "## Plan steps late",
        "",
    ]
    late = r["late_steps"]
    lines += [f"- {s['step']} ({s['role']}, plan {s['plan']}): due {t(s['due_at'])}, "
              f"finished {t(s['finished_at'])}, {s['late_seconds'] / 60:.1f} min late" for s in late] or ["- none"]
    lines += ["", "## Timeline", ""]
    lines += [f"- {t(e['at'])}: {e['what']}" for e in r["timeline"]]
    if "root_cause" in r:
        lines += ["", "## Root cause", "", r["root_cause"], "", "## Improvement actions", ""]
        lines += [f"- [{a['kind']}] {a['title']} — owner {a['owner']}, due {t(a['due'])}"
                  for a in r["improvement_actions"]] or ["- none"]
    return "\n".join(lines) + "\n"


class MarkdownResponse(PlainTextResponse):
    media_type = "text/markdown"


@router.get("/incidents/{incident_id}/review.md", response_model=str, response_class=MarkdownResponse)
async def review_md(incident_id: UUID, svc: Svc, who: Watcher) -> MarkdownResponse:
    """The review as a Markdown document."""
    inc, draft = await commands.review_draft(svc, incident_id)
    return MarkdownResponse(review_markdown(inc, draft))


@router.get("/incidents/{incident_id}/review.html", response_model=str, response_class=HTMLResponse)
async def review_html(incident_id: UUID, svc: Svc, who: Watcher) -> HTMLResponse:
    """The review as an HTML document (the Markdown's content, escaped, in a page)."""
    inc, draft = await commands.review_draft(svc, incident_id)
    body: list[str] = []
    in_list = in_table = False
    for line in review_markdown(inc, draft).splitlines():
        esc = html.escape(line)
        if in_list and not line.startswith("- "):
            body.append("</ul>")
            in_list = False
        if in_table and not line.startswith("|"):
            body.append("</table>")
            in_table = False
        if line.startswith("# "):
            body.append(f"<h1>{esc[2:]}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{esc[3:]}</h2>")
        elif line.startswith("- "):
            if not in_list:
                body.append("<ul>")
                in_list = True
            body.append(f"<li>{esc[2:]}</li>")
        elif line.startswith("|---"):
            continue
        elif line.startswith("|"):
            if not in_table:
                body.append("<table>")
                in_table = True
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        elif line:
            body.append(f"<p>{esc}</p>")
    body.append("</ul>" if in_list else "")
    body.append("</table>" if in_table else "")
    title = html.escape(f"Post-incident review: {draft['title']}")
    head = f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head>"
    page = f"{head}<body>{''.join(body)}</body></html>"
    return HTMLResponse(page)


# --- TMF656: the incident as a service problem with its trouble tickets ---------------------------------------


class Ref(BaseModel):
    id: str
    href: str | None = None
    name: str | None = None
    model_config = ConfigDict(populate_by_name=True)

    referred_type: str = Field(alias="@referredType")


class Place(BaseModel):
    id: str
    model_config = ConfigDict(populate_by_name=True)

    name: str
    type_: str = Field(default="GeographicLocation", alias="@type")


class TrackingRecord(BaseModel):
    id: str
    description: str
    time: datetime
    user: str


class ServiceProblem(BaseModel):
    """An incident in the shape of TMF656's ServiceProblem (the fields that fit)."""

    model_config = ConfigDict(populate_by_name=True)

    id: str
    href: str
    name: str = Field(description="The incident's title (TMF656 calls it description; name is kept for display)")
    description: str
    category: str = Field(description="system.originated (automatic) or serviceProvider.declarer")
    priority: int = Field(description="1 (highest) to 10: severity I → 1, II → 2, III → 4, IV → 6")
    impactImportanceFactor: str
    originatingSystem: str
    status: str = Field(description="Submitted, Acknowledged, In Progress, Resolved, Closed")
    statusChangeDate: datetime
    timeRaised: datetime
    resolutionDate: datetime | None
    reason: str | None
    affectedNumberOfServices: int
    affectedService: list[Ref]
    affectedLocation: list[Place]
    associatedTroubleTicket: list[Ref]
    trackingRecord: list[TrackingRecord]
    type_: str = Field(default="ServiceProblem", alias="@type")


PRIORITY = {"I": 1, "II": 2, "III": 4, "IV": 6}
IMPACT = {"I": "100", "II": "70", "III": "40", "IV": "10"}
TMF_STATUS = {"declared": "Submitted", "acknowledged": "Acknowledged", "restored": "In Progress",
              "verified": "In Progress", "resolved": "Resolved"}


@tmf.get("/serviceProblem/{incident_id}", response_model=ServiceProblem, response_model_by_alias=True)
async def service_problem(incident_id: UUID, svc: Svc, who: Watcher) -> ServiceProblem:
    """The incident as a TMF656 ServiceProblem with its associated trouble tickets (TMF621 refs)."""
    inc = await commands.get(svc, incident_id)
    changed = inc.resolved_at or inc.verified_at or inc.restored_at or inc.acknowledged_at or inc.declared_at
    records = [TrackingRecord(id="declared", description="declare", time=inc.declared_at, user=inc.declared_by)]
    if inc.acknowledged_at:
        records.append(TrackingRecord(id="acknowledged", description="ack", time=inc.acknowledged_at,
                                      user="incident_manager"))
    if inc.resolved_at:
        records.append(TrackingRecord(id="resolved", description="clear", time=inc.resolved_at,
                                      user="incident_manager"))
    base = "/tmf-api/troubleTicket/v4/troubleTicket/"
    return ServiceProblem(
        id=str(inc.id),
        href=f"/tmf-api/serviceProblemManagement/v4/serviceProblem/{inc.id}",
        name=inc.title,
        description=inc.title,
        category="system.originated" if inc.declared_by == "auto" else "serviceProvider.declarer",
        priority=PRIORITY[inc.severity],
        impactImportanceFactor=IMPACT[inc.severity],
        originatingSystem="tsop-incident",
        status=TMF_STATUS.get(inc.status, "In Progress"),
        statusChangeDate=changed,
        timeRaised=inc.detected_at,
        resolutionDate=inc.resolved_at,
        reason=(inc.resolution or {}).get("summary"),
        affectedNumberOfServices=len(inc.affected_services),
        affectedService=[Ref.model_validate({"id": s, "name": s, "referred_type": "Service"})
                         for s in inc.affected_services],
        affectedLocation=[Place(id=r, name=r) for r in inc.regions],
        associatedTroubleTicket=[Ref.model_validate({"id": t, "href": base + t, "referred_type": "TroubleTicket"})
                                 for t in sorted(inc.linked)],
        trackingRecord=records,
    )
