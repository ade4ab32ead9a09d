"""Intake's native HTTP routes (``/v1``): thin, parse → command (``commands``) → answer.

The inbound bodies are the edge (strict ``tsop_events.inbound`` models); the
answers are declared (``response_model``), so the OpenAPI document shows them.
Refusals are ``tsop_events.errors`` raised by the commands; ``create_app``
renders them.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Path, Query, Response
from pydantic import AnyHttpUrl, BaseModel, Field, Strict

from tsop_events.auth import Principal, Role, requires
from tsop_events.http import PROBLEM, PROBLEM_SCHEMA, service_dependency
from tsop_events.inbound import Inbound, Int, TextCheck
from tsop_events.runtime import Service
from tsop_events.schemas import Channel, CustomerTier
from tsop_intake import commands
from tsop_intake.catalogue import ReasonCodes
from tsop_intake.commands import ApplicationBase, ChangesIn, CustomerId, FieldsIn, IntakeApp, Short
from tsop_intake.domain import CHANNEL_KINDS, ChannelSystem, ServiceRequest
from tsop_intake.projection import current_status

_PROBLEM: dict[str, Any] = {PROBLEM: {"schema": PROBLEM_SCHEMA}}
PROBLEMS: dict[int | str, dict[str, Any]] = {
    status: {"description": why, "content": _PROBLEM}
    for status, why in (
        (400, "Malformed JSON"),
        (401, "No or unknown credentials"),
        (403, "The wrong role, or another channel's request"),
        (404, "Not found"),
        (409, "Not allowed in the request's state"),
        (413, "Body too large"),
        (422, "Invalid input: each field with its reason"),
        (429, "The channel is over its per-minute limit; Retry-After says when to retry (nothing was recorded)"),
    )
}

router = APIRouter(prefix="/v1", tags=["intake"], responses=PROBLEMS)

ChannelCaller = Annotated[Principal, Depends(requires(Role.channel))]
Reader = Annotated[Principal, Depends(requires(Role.channel, Role.agent, Role.supervisor, Role.auditor))]
Agent = Annotated[Principal, Depends(requires(Role.agent))]
Admin = Annotated[Principal, Depends(requires(Role.admin))]
Overseer = Annotated[Principal, Depends(requires(Role.supervisor, Role.auditor))]
Anyone = Annotated[Principal, Depends(requires())]
Writer = Annotated[Principal, Depends(requires(Role.channel, Role.agent))]
Svc = Annotated[Service[IntakeApp], Depends(service_dependency(IntakeApp))]


Code = Annotated[str, Strict(), Field(min_length=1, max_length=64), TextCheck]
Reason = Annotated[str, Strict(), Field(max_length=1000), TextCheck]
RateLimit = Annotated[Int, Field(ge=1, le=1_000_000)]


class Customer(Inbound):
    id: CustomerId
    tier: CustomerTier = CustomerTier.standard


class SubmitRequest(ApplicationBase):
    customer: Customer


class CancelRequest(Inbound):
    reason_code: Code
    reason: Reason = ""


class ReviewDecision(Inbound):
    decision: Literal["accept", "reject"]
    reason_code: Code
    reason: Reason | None = None


class RegisterChannel(Inbound):
    name: Short
    kind: Channel = Field(description="web = self-service web, app = self-service app, hotline, onsite = on-site")
    callback_url: AnyHttpUrl | None = Field(default=None, description="Default callback URL of its requests.")
    rate_limit_per_minute: RateLimit | None = None


class ChangeChannel(Inbound):
    callback_url: AnyHttpUrl | None = None
    rate_limit_per_minute: RateLimit | None = None


# ---------------------------------------------------------------- answers


class Answer(BaseModel):
    """An answer body (documented in the OpenAPI document; free-form parts are the stored values)."""


class CustomerView(Answer):
    id: str
    tier: str


class StatusEntry(Answer):
    status: str
    event_type: str
    at: str


class RequestView(Answer):
    """A service request as its reader sees it: the application, the review, where it stands."""

    id: str
    channel: str
    channel_id: str | None
    channel_request_ref: str | None
    customer: CustomerView
    region: str
    service_type: str
    description: str
    time_requirement: dict[str, Any]
    special_needs: str | None
    callback_url: str | None
    location: dict[str, Any] | None
    details: dict[str, Any]
    submitted_at: str
    review: dict[str, Any] | None = Field(description="The last decision: accepted, rejected, pending, queued, linked.")
    pending_information: dict[str, Any] | None
    duplicate_of: str | None = Field(description="Only for those who may see the original ticket.")
    cancellation: dict[str, Any] | None
    status: str = Field(description="The furthest status the request reached, downstream included.")
    status_history: list[StatusEntry]


class QueuedView(Answer):
    id: str
    service_type: str
    region: str
    customer_tier: str
    queued_at: str | None
    reasons: list[str]


class ReviewQueue(Answer):
    total: int
    items: list[QueuedView]


class ServiceTypes(Answer):
    types: dict[str, dict[str, Any]]
    completion_hours: int | float


class ChannelShares(Answer):
    """Submissions by channel kind and review outcomes, counted from intake's own log."""

    submitted: int
    by_channel_kind: dict[str, int]
    self_service: int
    manual: int
    self_service_share: float | None
    manual_share: float | None
    review_outcomes: dict[str, int]
    expected_self_service_share: float


class CredentialView(Answer):
    id: str
    issued_at: str
    revoked_at: str | None


class ChannelView(Answer):
    id: str
    name: str
    kind: str
    kind_label: str
    self_service: bool
    callback_url: str | None
    rate_limit_per_minute: int | None
    registered_at: str
    credentials: list[CredentialView]


class IssuedCredential(Answer):
    id: str
    token: str | None = Field(description="Shown once; null when an Idempotency-Key replays the registration.")
    note: str


class ChannelWithCredential(ChannelView):
    """A channel with the credential just issued: its token is shown once, only its hash is kept."""

    credential: IssuedCredential


class ChannelEntry(Answer):
    id: str
    name: str
    kind: str
    kind_label: str
    callback_url: str | None
    rate_limit_per_minute: int | None
    live_credentials: list[str]


class ChannelList(Answer):
    total: int
    items: list[ChannelEntry]


LINKED_REASON = "the same customer, type and location is already open"


def request_view(
    r: ServiceRequest, history: list[dict[str, Any]] | None = None, *, names_duplicate: bool = False
) -> dict[str, Any]:
    """The request as its reader sees it; which ticket it duplicates only when ``names_duplicate``
    (staff, or the channel that owns that ticket too: see ``commands.sees_duplicate``)."""
    # the furthest status reached since the latest reopening (projection.current_status)
    downstream = current_status(history or [])
    status = downstream if downstream and downstream not in _INTAKE_STATES else r.status
    review = r.decision
    if r.duplicate_of is not None and not names_duplicate and review is not None:
        review = {**review, "duplicate_of": None, "reason": LINKED_REASON}
    return {
        "id": str(r.id),
        "channel": r.channel,
        "channel_id": r.channel_id,
        "channel_request_ref": r.channel_request_ref,
        "customer": {"id": r.customer_id, "tier": r.customer_tier},
        "region": r.region,
        "service_type": r.service_type,
        "description": r.description,
        "time_requirement": r.time_requirement,
        "special_needs": r.special_needs,
        "callback_url": r.callback_url,
        "location": r.location,
        "details": r.details,
        "submitted_at": r.submitted_at.isoformat(),
        "review": review,
        "pending_information": r.pending,
        "duplicate_of": r.duplicate_of if names_duplicate else None,
        "cancellation": r.cancellation,
        "status": status,
        "status_history": history or [],
    }


_INTAKE_STATES = frozenset(
    {"submitted", "pending_information", "queued_for_review", "accepted", "rejected", "linked", "cancelled"}
)


def channel_view(c: ChannelSystem, token: str | None = None, credential_id: str | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": str(c.id),
        "name": c.name,
        "kind": c.kind,
        "kind_label": CHANNEL_KINDS[c.kind],
        "self_service": c.self_service,
        "callback_url": c.callback_url,
        "rate_limit_per_minute": c.rate_limit_per_minute,
        "registered_at": c.registered_at.isoformat(),
        "credentials": [
            {"id": cr.id, "issued_at": cr.issued_at.isoformat(),
             "revoked_at": cr.revoked_at.isoformat() if cr.revoked_at else None}
            for cr in c.credentials.values()
        ],
    }
    if token is not None:
        view["credential"] = {"id": credential_id, "token": token, "note": "shown once; only its hash is kept"}
    elif credential_id is not None:
        view["credential"] = {
            "id": credential_id,
            "token": None,
            "note": "issued by the first answer to this Idempotency-Key and shown only there; "
            "if that answer was lost, issue a new credential and revoke this one",
        }
    return view


async def _view(
    svc: Service[IntakeApp], r: ServiceRequest, caller: Principal, history: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    names = await commands.sees_duplicate(svc, r, caller)
    return request_view(r, history, names_duplicate=names)


async def _answer(
    svc: Service[IntakeApp], response: Response, created: ServiceRequest, caller: Principal, new: bool = True
) -> dict[str, Any]:
    response.headers["Location"] = f"/v1/requests/{created.id}"
    if not new:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return await _view(svc, created, caller)


# ---------------------------------------------------------------- requests


@router.post("/requests", status_code=201, tags=["requests"], response_model=RequestView,
             responses={200: {"description": "Replay of an earlier submission with the same Idempotency-Key",
                              "model": RequestView}})
async def submit(
    body: SubmitRequest,
    svc: Svc,
    response: Response,
    caller: ChannelCaller,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> dict[str, Any]:
    fields = {name: getattr(body, name) for name in ApplicationBase.model_fields}
    # validated once, by this body model, whose parts are FieldsIn's own
    parsed = FieldsIn.model_construct(customer_id=body.customer.id, customer_tier=body.customer.tier, **fields)
    created, new = await commands.submit(svc, parsed, caller, idempotency_key)
    return await _answer(svc, response, created, caller, new)


@router.get("/requests/{ticket_id}", tags=["requests"], response_model=RequestView)
async def get_request(ticket_id: UUID, svc: Svc, caller: Reader) -> dict[str, Any]:
    found = await commands.get(svc, ticket_id, caller)
    rows = await svc.pool.fetch(
        "SELECT event_type, status, at FROM request_history WHERE ticket_id = $1 ORDER BY at", ticket_id
    )
    history = [{"status": r["status"], "event_type": r["event_type"], "at": r["at"].isoformat()} for r in rows]
    return await _view(svc, found, caller, history)


@router.patch("/requests/{ticket_id}", tags=["requests"], response_model=RequestView)
async def update_request(ticket_id: UUID, body: ChangesIn, svc: Svc, caller: Writer) -> dict[str, Any]:
    """Complete pending information or correct attributes (JSON merge: only the keys sent change)."""
    changes = body.model_dump(exclude_unset=True)
    updated = await commands.update(svc, ticket_id, changes, caller)
    return await _view(svc, updated, caller)


@router.post("/requests/{ticket_id}/cancel", tags=["requests"], response_model=RequestView)
async def cancel_request(ticket_id: UUID, body: CancelRequest, svc: Svc, caller: Writer) -> dict[str, Any]:
    cancelled = await commands.cancel(svc, ticket_id, body.reason_code, body.reason, caller)
    return await _view(svc, cancelled, caller)


# ---------------------------------------------------------------- review queue


@router.get("/review-queue", tags=["review"], response_model=ReviewQueue)
async def review_queue(
    svc: Svc, caller: Agent, limit: Annotated[int, Query(ge=1, le=500)] = 100
) -> dict[str, Any]:
    index = svc.app.index

    def view() -> dict[str, Any]:
        queued = sorted(index.queued.items(), key=lambda kv: (str(kv[1].since), str(kv[0])))
        items = [
            {"id": str(tid), "service_type": q.service_type, "region": q.region, "customer_tier": q.customer_tier,
             "queued_at": q.since.isoformat() if q.since else None, "reasons": q.reasons}
            for tid, q in queued[:limit]
        ]
        return {"total": len(queued), "items": items}

    return await index.read(view)


@router.post("/requests/{ticket_id}/review", tags=["review"], response_model=RequestView)
async def decide(ticket_id: UUID, body: ReviewDecision, svc: Svc, caller: Agent) -> dict[str, Any]:
    decided = await commands.decide(
        svc, ticket_id, body.decision == "accept", body.reason_code, body.reason, caller
    )
    return await _view(svc, decided, caller)


@router.get("/reason-codes", tags=["review"], response_model=ReasonCodes)
async def reason_codes(svc: Svc, caller: Anyone) -> ReasonCodes:
    return svc.app.catalogue.reason_codes


@router.get("/service-types", tags=["requests"], response_model=ServiceTypes)
async def service_types(svc: Svc, caller: Anyone) -> dict[str, Any]:
    cat = svc.app.catalogue
    return {
        "types": {name: t.model_dump(exclude={"name"}) for name, t in sorted(cat.types.items())},
        "completion_hours": cat.completion_hours,
    }


@router.get("/stats/channels", tags=["stats"], response_model=ChannelShares)
async def channel_stats(svc: Svc, caller: Overseer) -> dict[str, Any]:
    """Submissions by channel kind: the self-service against manual share (the standard expects ~70/30)."""
    index = svc.app.index
    await asyncio.to_thread(index.refresh)
    return {**index.shares(), "expected_self_service_share": 0.7}


# ---------------------------------------------------------------- channel registry


@router.post("/channels", status_code=201, tags=["channels"], response_model=ChannelWithCredential,
             responses={200: {"description": "Replay of an earlier registration with the same Idempotency-Key",
                              "model": ChannelWithCredential}})
async def register_channel(
    body: RegisterChannel,
    svc: Svc,
    response: Response,
    caller: Admin,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=200)] = None,
) -> dict[str, Any]:
    ch, cred, token = await commands.register_channel(
        svc, body.name, body.kind.value, str(body.callback_url) if body.callback_url else None,
        body.rate_limit_per_minute, caller, idempotency_key,
    )
    response.headers["Location"] = f"/v1/channels/{ch.id}"
    if token is None:
        response.status_code = 200
        response.headers["Idempotent-Replayed"] = "true"
    return channel_view(ch, token, cred)


@router.get("/channels", tags=["channels"], response_model=ChannelList)
async def list_channels(svc: Svc, caller: Admin) -> dict[str, Any]:
    index = svc.app.index
    items = await index.read(lambda: [
        {"id": c.id, "name": c.name, "kind": c.kind, "kind_label": CHANNEL_KINDS[c.kind],
         "callback_url": c.callback_url, "rate_limit_per_minute": c.rate_limit_per_minute,
         "live_credentials": sorted(c.credentials)}
        for c in index.channels.values()
    ])
    return {"total": len(items), "items": sorted(items, key=lambda c: c["name"])}


@router.get("/channels/{channel_id}", tags=["channels"], response_model=ChannelView)
async def get_channel(channel_id: UUID, svc: Svc, caller: Admin) -> dict[str, Any]:
    return channel_view(await commands.get_channel(svc, channel_id))


@router.patch("/channels/{channel_id}", tags=["channels"], response_model=ChannelView)
async def change_channel(channel_id: UUID, body: ChangeChannel, svc: Svc, caller: Admin) -> dict[str, Any]:
    changes = body.model_dump(mode="json", exclude_unset=True)
    return channel_view(await commands.change_channel(svc, channel_id, changes, caller))


@router.post("/channels/{channel_id}/credentials", status_code=201, tags=["channels"],
             response_model=ChannelWithCredential)
async def issue_credential(channel_id: UUID, svc: Svc, caller: Admin) -> dict[str, Any]:
    ch, cred, token = await commands.issue_credential(svc, channel_id, caller)
    return channel_view(ch, token, cred)


@router.delete("/channels/{channel_id}/credentials/{credential_id}", tags=["channels"], response_model=ChannelView)
async def revoke_credential(channel_id: UUID, credential_id: str, svc: Svc, caller: Admin) -> dict[str, Any]:
    return channel_view(await commands.revoke_credential(svc, channel_id, credential_id, caller))


# ---------------------------------------------------------------- lawful erasure (PIPL, §1.4, §7.4)

Dpo = Annotated[Principal, Depends(requires(Role.auditor))]


class ErasureIn(Inbound):
    legal_basis: Literal[
        "consent_withdrawn", "purpose_achieved", "service_ended", "unlawful_processing", "other_legal_ground"
    ] = Field(description="The ground of the erasure, recorded with it (PIPL art. 47).")
    reference: Annotated[str, Strict(), Field(max_length=200), TextCheck] = Field(
        default="", description="The request's own reference (a case or letter number).")


class ErasureView(Answer):
    customer_id: str
    legal_basis: str
    reference: str
    requested_by: str
    requested_at: str
    keys_destroyed: int = Field(description="Data keys destroyed by this call (0 when a repeat found none left).")


@router.post("/customers/{customer_id}/erasure", status_code=201, tags=["erasure"], response_model=ErasureView,
             responses={409: {"description": "A legal hold covers the customer: refused, naming each hold "
                                             "(`holds`); nothing was recorded or destroyed"},
                        200: {"description": "The customer's erasure was requested before: the first record "
                                             "(their keys are destroyed again, should any have been created since)",
                              "model": ErasureView}})
async def request_erasure(
    customer_id: Annotated[str, Path(min_length=1, max_length=128), TextCheck], body: ErasureIn, svc: Svc,
    response: Response, caller: Dpo,
) -> dict[str, Any]:
    """Erase a customer's personal data (crypto-shredding, docs/erasure.md): the request and its legal basis are
    recorded (`CustomerDataErased`), the customer's data keys are destroyed; the service record remains. 409 (naming
    each hold, nothing changed) while a legal hold covers the customer (`GET …/legal-holds`)."""
    erasure, created, destroyed = await commands.request_erasure(
        svc, customer_id, body.legal_basis, body.reference, caller)
    if not created:
        response.status_code = 200
    return {"customer_id": erasure.customer_id, "legal_basis": erasure.legal_basis, "reference": erasure.reference,
            "requested_by": erasure.requested_by, "requested_at": erasure.requested_at.isoformat(),
            "keys_destroyed": destroyed}


class HoldView(Answer):
    hold_id: str
    kind: Literal["ticket", "customer", "incident"]
    subject: str = Field(description="The ticket, customer or incident held.")
    reason: str
    placed_by: str
    placed_at: str
    ticket_id: str | None = Field(default=None, description="For a hold on an incident: the customer's ticket "
                                                             "linked to it.")


class CustomerHolds(Answer):
    customer_id: str
    holds: list[HoldView] = Field(description="The legal holds in force that cover the customer, as intake has "
                                              "heard of them from the archive: while any is listed, an erasure "
                                              "request is refused (409).")


@router.get("/customers/{customer_id}/legal-holds", tags=["erasure"], response_model=CustomerHolds,
            response_model_exclude_none=True)
async def customer_holds(
    customer_id: Annotated[str, Path(min_length=1, max_length=128), TextCheck], svc: Svc, caller: Dpo,
) -> dict[str, Any]:
    """The legal holds that cover the customer (on them, on one of their requests, or on an incident one of their
    requests was linked to), as intake knows them now: what an erasure request would be refused for."""
    return {"customer_id": customer_id, "holds": await commands.legal_holds(svc, customer_id)}
