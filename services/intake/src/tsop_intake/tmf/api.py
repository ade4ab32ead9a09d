"""The TMF621 Trouble Ticket API (v5) facade: the same tickets as ``/v1/requests``, in TM Forum's terms.

Reads come from the TMF read model (projection.py), which follows the ticket's
whole lifecycle across services; a ticket just created, not yet read back from
the bus, is rendered from intake's own events so a client can read its write.
Writes go through intake's commands (commands.py), exactly like native ones.
Errors are TMF ``Error`` bodies (see ``tmf_error``; ``create_app`` renders every
``tsop_events.errors`` refusal with it under this prefix).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from importlib import resources
from typing import Annotated, Any
from uuid import UUID, uuid4

import orjson
from fastapi import APIRouter, Body, Depends, Header, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from tsop_events import outbound
from tsop_events.auth import Principal, Role, requires
from tsop_events.errors import Forbidden, NotFound
from tsop_events.http import Problem, service_dependency
from tsop_events.runtime import Service
from tsop_intake import commands
from tsop_intake.commands import IntakeApp
from tsop_intake.tmf import hub, inbound, model
from tsop_intake.wire import WIRE

BASE = "/tmf-api/troubleTicket/v5"
TICKETS = f"{BASE}/troubleTicket"
READERS = (Role.channel, Role.agent, Role.supervisor, Role.auditor)
Caller = Annotated[Principal, Depends(requires(*READERS))]
Writer = Annotated[Principal, Depends(requires(Role.channel, Role.agent))]
Admin = Annotated[Principal, Depends(requires(Role.admin))]
Svc = Annotated[Service[IntakeApp], Depends(service_dependency(IntakeApp))]
MERGE_PATCH = ("application/merge-patch+json", "application/json")

router = APIRouter(prefix=BASE, tags=["TMF621 trouble ticket"])


@lru_cache(maxsize=1)
def facade_document() -> bytes:
    """The facade's own OpenAPI document: TMF621 v5.0.1 trimmed to what is implemented (see its info)."""
    return resources.files("tsop_intake").joinpath("tmf/openapi/tmf621-facade.json").read_bytes()


@router.get("/openapi.json", include_in_schema=False)
async def openapi_document() -> Response:
    return Response(facade_document(), media_type="application/json")


def tmf_error(
    status: int, title: str, detail: str, headers: dict[str, str] | None, extra: dict[str, Any]
) -> Response:
    """A TMF ``Error`` body; a validation failure is a 400 with every field and reason in the message."""
    status = 400 if status == 422 else status
    errors = extra.get("errors") or []
    message = detail or title
    if errors and not detail:
        message = "; ".join(f"{e['field']}: {e['reason']}" for e in errors)
    body: dict[str, Any] = {
        "@type": "Error",
        "code": f"ERR{status}",
        "reason": title,
        "message": message,
        "status": str(status),
    }
    if field := extra.get("field"):
        body["referenceError"] = f"#/{field}"
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


class TroubleTicket(BaseModel):
    """A TMF621 ``TroubleTicket`` as the facade renders it (``fields=`` selects attributes: only those appear)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    type_: str | None = Field(default=None, alias="@type")
    id: str | None = None
    href: str | None = None
    name: str | None = None
    description: str | None = None
    severity: str | None = None
    ticketType: str | None = None
    priority: str | None = None
    status: str | None = None
    statusChangeDate: str | None = None
    statusChangeReason: str | None = None
    creationDate: str | None = None
    lastUpdate: str | None = None
    requestedResolutionDate: str | None = None
    expectedResolutionDate: str | None = None
    resolutionDate: str | None = None
    channel: dict[str, Any] | None = None
    relatedParty: list[dict[str, Any]] | None = None
    troubleTicketRelationship: list[dict[str, Any]] | None = None
    statusChangeHistory: list[dict[str, Any]] | None = None
    note: list[dict[str, Any]] | None = None
    externalIdentifier: list[dict[str, Any]] | None = None
    troubleTicketCharacteristic: list[dict[str, Any]] | None = None


class Hub(BaseModel):
    """A TMF621 notification listener."""

    model_config = ConfigDict(populate_by_name=True)
    type_: str = Field(default="Hub", alias="@type")
    id: str
    href: str
    callback: str
    query: str | None = None


def _sees(caller: Principal, ticket: dict[str, Any]) -> bool:
    return caller.channel_id is None or caller.channel_id == ticket["channel_id"]


async def _seer(db: Any, caller: Principal, docs: list[dict[str, Any]]) -> Callable[[str], bool]:
    """Which other tickets named by these (a duplicate's original) the caller may know of: a channel its own."""
    if caller.channel_id is None:
        return lambda _: True
    named = {UUID(d["duplicateOf"]) for d in docs if d.get("duplicateOf")}
    if not named:
        return lambda _: False
    rows = await db.fetch(
        "SELECT ticket_id FROM tmf_ticket WHERE ticket_id = ANY($1) AND channel_id = $2", list(named),
        caller.channel_id,
    )
    own = {str(r["ticket_id"]) for r in rows}
    return lambda ticket_id: ticket_id in own


async def _view(svc: Service[IntakeApp], caller: Principal, state: dict[str, Any], history: list[dict[str, Any]],
                fields: str | None) -> dict[str, Any]:
    sees = await _seer(svc.pool, caller, [state["doc"]])
    return model.select(model.render(state, history, TICKETS, sees), _fields(fields))


async def _stored(svc: Service[IntakeApp], ticket_id: UUID) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """The ticket as the read model has it; else as intake's own events say (just created)."""
    pool = svc.pool
    row = await pool.fetchrow("SELECT * FROM tmf_ticket WHERE ticket_id = $1", ticket_id)
    if row is not None:
        history = await pool.fetch(
            "SELECT status, reason, at FROM tmf_status_change WHERE ticket_id = $1 ORDER BY seq", ticket_id
        )
        state = dict(row)
        state["doc"] = json.loads(state["doc"])
        return state, [dict(h) for h in history]
    events = await asyncio.to_thread(_own_events, svc.app, ticket_id)
    folded, folded_history = model.fold(events)
    return (folded, folded_history) if folded is not None else None


def _own_events(app: IntakeApp, ticket_id: UUID) -> list[tuple[Any, datetime]]:
    found = []
    for domain_event in app.repository.event_store.get(ticket_id):
        outgoing = WIRE(domain_event)  # the one mapping from domain to wire events
        if outgoing is not None:
            found.append((outgoing.event, domain_event.timestamp))  # type: ignore[attr-defined]
    return found


def _uuid(value: str) -> UUID | None:
    try:
        return UUID(value)
    except ValueError:
        return None


async def _ticket(svc: Service[IntakeApp], ticket_id: str, caller: Principal
                  ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    tid = _uuid(ticket_id)
    if tid is None:
        raise NotFound(f"no trouble ticket {ticket_id!r}")
    found = await _stored(svc, tid)
    if found is None or found[0]["deleted"]:
        raise NotFound(f"no trouble ticket {ticket_id}")
    if not _sees(caller, found[0]):
        raise Forbidden(f"trouble ticket {ticket_id} belongs to another channel")
    return found


def _fields(value: str | None) -> frozenset[str] | None:
    return frozenset(f.strip() for f in value.split(",") if f.strip()) if value else None


@router.get("/troubleTicket", summary="List or find TroubleTicket objects", response_model=list[TroubleTicket],
            response_model_exclude_unset=True)
async def list_tickets(request: Request, response: Response, svc: Svc, caller: Caller) -> list[dict[str, Any]]:
    query = model.parse_list_query(request.query_params.multi_items())
    scope = (("channel_id", "IN", [caller.channel_id]),) if caller.channel_id is not None else ()
    condition, order, args, countable = query.sql(scope)
    pool = svc.pool
    # one snapshot: the total, the page and the histories agree even while the read model moves
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        if countable:  # categorical filters only: the per-combination counts (of live tickets) answer at once
            total = await conn.fetchval(f"SELECT coalesce(sum(n), 0) FROM tmf_ticket_counts WHERE {condition}", *args)
        else:
            total = await conn.fetchval(f"SELECT count(*) FROM tmf_ticket WHERE NOT deleted AND {condition}", *args)
        rows = await conn.fetch(
            f"SELECT * FROM tmf_ticket WHERE NOT deleted AND {condition} ORDER BY {order} "
            f"OFFSET {query.offset} LIMIT {query.limit}",
            *args,
        )
        wants_history = query.fields is None or "statusChangeHistory" in query.fields
        histories: dict[UUID, list[dict[str, Any]]] = {r["ticket_id"]: [] for r in rows}
        if wants_history and rows:
            for h in await conn.fetch(
                "SELECT ticket_id, status, reason, at FROM tmf_status_change WHERE ticket_id = ANY($1) "
                "ORDER BY ticket_id, seq",
                list(histories),
            ):
                histories[h["ticket_id"]].append(dict(h))
        states = []
        for r in rows:
            state = dict(r)
            state["doc"] = json.loads(state["doc"])
            states.append(state)
        sees = await _seer(conn, caller, [st["doc"] for st in states])
    items = [
        model.select(model.render(st, histories[st["ticket_id"]], TICKETS, sees), query.fields) for st in states
    ]
    response.headers["X-Total-Count"] = str(total)
    response.headers["X-Result-Count"] = str(len(items))
    return items


@router.get("/troubleTicket/{id}", summary="Retrieve a TroubleTicket by ID", response_model=TroubleTicket,
            response_model_exclude_unset=True)
async def get_ticket(id: str, svc: Svc, caller: Caller, fields: str | None = None) -> dict[str, Any]:  # noqa: A002
    state, history = await _ticket(svc, id, caller)
    return await _view(svc, caller, state, history, fields)


@router.post("/troubleTicket", status_code=201, summary="Create a TroubleTicket", response_model=TroubleTicket,
             response_model_exclude_unset=True)
async def create_ticket(
    svc: Svc,
    response: Response,
    caller: Annotated[Principal, Depends(requires(Role.channel))],
    body: Annotated[dict[str, Any], Body()],
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    fields: str | None = None,
) -> dict[str, Any]:
    if caller.channel_id is None:
        raise Forbidden("trouble tickets are created by registered channel systems")
    catalogue = svc.app.catalogue
    native = inbound.parse_create(
        body,
        service_types=catalogue.types.keys(),
        service_type_for=catalogue.service_type_for,
        channel_id=caller.channel_id,
        author=caller.subject,
        now=datetime.now(UTC),
    )
    created, new = await commands.submit(svc, native, caller, idempotency_key)
    state, history = await _ticket(svc, str(created.id), caller)
    response.headers["Location"] = f"{TICKETS}/{created.id}"
    if not new:
        response.status_code = 200
    return await _view(svc, caller, state, history, fields)


@router.patch(
    "/troubleTicket/{id}",
    summary="Update a TroubleTicket with a JSON merge patch",
    openapi_extra={"requestBody": {"content": {t: {"schema": {"type": "object"}} for t in MERGE_PATCH}}},
    response_model=TroubleTicket,
    response_model_exclude_unset=True,
)
async def patch_ticket(
    id: str, request: Request, svc: Svc, caller: Writer, fields: str | None = None  # noqa: A002
) -> dict[str, Any]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not content_type and not await request.body():
        raise Problem(400, "Invalid request", "body: a merge patch (application/merge-patch+json) is required")
    if content_type not in MERGE_PATCH:
        raise Problem(415, "Unsupported media type", "PATCH takes application/merge-patch+json")
    state, history = await _ticket(svc, id, caller)
    body = inbound.merge_patch(await request.body())
    tid = UUID(id)
    before = await commands.get(svc, tid, caller)
    kept = before.attributes
    changes, status = inbound.parse_patch(body, kept=kept, author=caller.subject, now=datetime.now(UTC))
    current = state["status"]
    if status == "closed" and current == "closed" and not changes:
        return await _view(svc, caller, state, history, fields)  # the customer's confirmation again: a retry
    if current in model.TERMINAL:
        raise Problem(409, "Conflict", f"the ticket is {current}; it can no longer be changed", field="status")
    if status is not None and status != current:
        if status == "closed":
            if current != "resolved":
                raise Problem(
                    409, "Invalid status transition",
                    f"status: {current} → closed: a client closes a ticket only once it is resolved, with the "
                    "customer's confirmation that the problem is solved",
                    field="status",
                )
        elif status != "cancelled":
            raise Problem(
                409, "Invalid status transition",
                f"status: {current} → {status} is not a client's to make; a client may only cancel, or close a "
                "resolved ticket on its customer's confirmation (the platform moves the ticket through its "
                "lifecycle)",
                field="status",
            )
        elif not model.can_move(current, "cancelled"):
            raise Problem(409, "Invalid status transition", f"status: {current} → cancelled", field="status")
    after = before
    if changes:
        after = await commands.update(svc, tid, changes, caller)
    if status == "cancelled" and status != current:
        reason = body.get("statusChangeReason") or "cancelled by the channel"
        after = await commands.cancel(svc, tid, "withdrawn_by_channel", str(reason)[:500], caller)
    if status == "closed" and status != current:
        # the customer's confirmation (§2.4): intake records it, feedback closes the ticket on it (basis
        # confirmed); the answer shows the ticket closed once the read model has heard of it
        note = body.get("statusChangeReason")
        await commands.confirm_resolution(svc, tid, None if note is None else str(note), caller)
        state, history = await _wait_until(svc, tid, caller, lambda st: st["status"] == "closed")
        return await _view(svc, caller, state, history, fields)
    # read-your-write: the view once the read model holds intake's last event of this ticket
    state, history = await _wait_until(svc, tid, caller, _applied(after.modified_on))
    return await _view(svc, caller, state, history, fields)


async def _wait_until(
    svc: Service[IntakeApp], tid: UUID, caller: Principal, done: Callable[[dict[str, Any]], bool],
    timeout: float = 5.0,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ticket once its read model state is ``done`` (or as it stands after ``timeout``: the change is recorded
    either way, and the read model follows)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        state, history = await _ticket(svc, str(tid), caller)
        if done(state) or loop.time() > deadline:
            return state, history
        await asyncio.sleep(0.02)


def _applied(until: datetime) -> Callable[[dict[str, Any]], bool]:
    """The read model has applied what happened up to ``until``: its ``last_update`` is the time of the last
    event it applied, and an event's time is its domain timestamp, so ``until`` is intake's own ``modified_on``."""
    return lambda state: bool(state["last_update"] >= until)


@router.delete("/troubleTicket/{id}", status_code=204, summary="Delete a TroubleTicket (admin)")
async def delete_ticket(id: str, svc: Svc, caller: Admin) -> Response:  # noqa: A002
    state, _ = await _ticket(svc, id, caller)
    if state["status"] in model.TERMINAL or state["status"] in ("resolved",):
        raise Problem(
            409, "Conflict",
            f"the ticket is {state['status']}; its record is kept (§7.2) and only open tickets can be deleted",
        )
    await commands.cancel(svc, UUID(id), model.DELETED, "deleted by an administrator", caller)
    return Response(status_code=204)


# --- /hub: notification listeners ------------------------------------------------------------------

URL = re.compile(r"^https?://[^\s/$.?#][^\s]*$", re.IGNORECASE)
Subscriber = Annotated[Principal, Depends(requires(Role.channel, Role.supervisor, Role.auditor))]


def hub_view(row: Any) -> dict[str, Any]:
    out = {"@type": "Hub", "id": str(row["id"]), "href": f"{BASE}/hub/{row['id']}", "callback": row["callback"]}
    if row["query"]:
        out["query"] = row["query"]
    return out


@router.post("/hub", status_code=201, summary="Register a listener", response_model=Hub,
             response_model_exclude_unset=True,
             responses={200: {"description": "The same listener (owner, callback and query) was registered before: "
                              "that registration", "model": Hub}})
async def register_hub(
    svc: Svc, response: Response, caller: Subscriber, body: Annotated[dict[str, Any], Body()]
) -> dict[str, Any]:
    unknown = sorted(set(body) - {"callback", "query", "@type", "@baseType", "@schemaLocation"})
    if unknown:
        raise hub.InvalidSubscription(unknown[0], "is not a Hub attribute")
    callback = body.get("callback")
    if not isinstance(callback, str) or not URL.match(callback) or len(callback) > 2000:
        raise hub.InvalidSubscription("callback", "must be an absolute http(s) URL")
    await hub.check_callback(outbound.guard_for(svc.settings), callback)
    query = body.get("query")
    if query is not None and not isinstance(query, str):
        raise hub.InvalidSubscription("query", "must be a string")
    event_types = hub.parse_query(query)
    # the same listener registered again (a retry after a lost answer) is the one registered first: two would
    # hear every event twice
    async with svc.pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                           f"tmf-hub\x1f{caller.subject}\x1f{callback}\x1f{query}")
        row = await conn.fetchrow(
            "SELECT * FROM tmf_hub WHERE owner = $1 AND callback = $2 AND query IS NOT DISTINCT FROM $3 LIMIT 1",
            caller.subject, callback, query,
        )
        if row is not None:
            response.status_code = 200
        else:
            row = await conn.fetchrow(
                "INSERT INTO tmf_hub VALUES ($1, $2, $3, $4, $5, $6, now()) RETURNING *",
                uuid4(), callback, query, event_types, caller.subject, caller.channel_id,
            )
    response.headers["Location"] = f"{BASE}/hub/{row['id']}"
    return hub_view(row)


async def _hub(svc: Service[IntakeApp], hub_id: str, caller: Principal) -> Any:
    hid = _uuid(hub_id)
    if hid is None:
        raise NotFound(f"no listener {hub_id!r}")
    row = await svc.pool.fetchrow("SELECT * FROM tmf_hub WHERE id = $1", hid)
    if row is None:
        raise NotFound(f"no listener {hub_id}")
    if row["owner"] != caller.subject and not caller.has(Role.admin):
        raise Forbidden(f"listener {hub_id} was registered by someone else")
    return row


@router.get("/hub/{id}", summary="Retrieve a listener", response_model=Hub, response_model_exclude_unset=True)
async def get_hub(id: str, svc: Svc, caller: Subscriber) -> dict[str, Any]:  # noqa: A002
    return hub_view(await _hub(svc, id, caller))


@router.delete("/hub/{id}", status_code=204, summary="Unregister a listener")
async def delete_hub(id: str, svc: Svc, caller: Subscriber) -> Response:  # noqa: A002
    row = await _hub(svc, id, caller)
    async with svc.pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM tmf_hub_delivery WHERE hub_id = $1 AND delivered_at IS NULL", row["id"])
        await conn.execute("DELETE FROM tmf_hub WHERE id = $1", row["id"])
    return Response(status_code=204)
