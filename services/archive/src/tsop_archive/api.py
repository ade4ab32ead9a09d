"""Archive's HTTP routes: the dossier of a ticket, with its seal verified and what is missing named."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from fastapi import APIRouter, Depends, Request
from pydantic import Field

from tsop_archive.application import AlreadySealed, ArchiveApp, dossier_id
from tsop_archive.domain import Dossier, DossierError, causal_order, chain_hash, dossier_status, open_gaps
from tsop_archive.store import FINAL, SELECT_GAPS, SELECT_TICKET, row_to_event, row_to_gap
from tsop_events.auth import Principal, Role, requires
from tsop_events.http import Problem, app_of, runtime_of
from tsop_events.inbound import Inbound, Text
from tsop_events.topics import Topic

router = APIRouter(prefix="/v1/tickets", tags=["archive"])


Reader = Annotated[Principal, Depends(requires(Role.auditor, Role.supervisor))]
Decider = Annotated[Principal, Depends(requires(Role.auditor, Role.supervisor))]


class SealDecision(Inbound):
    reason: Annotated[Text, Field(min_length=3, max_length=2000)]


async def dossier_view(request: Request, ticket_id: UUID) -> dict[str, Any]:
    runtime = runtime_of(request)
    app = app_of(request, ArchiveApp)
    rows = await runtime.pool.fetch(SELECT_TICKET, str(ticket_id), runtime.settings.topic(Topic.tickets.value))
    gaps = [row_to_gap(r) for r in await runtime.pool.fetch(SELECT_GAPS, str(ticket_id))]
    if not rows and not gaps:
        raise Problem(404, "Not found", f"the archive holds nothing of ticket {ticket_id}")
    events = causal_order([row_to_event(r) for r in rows])
    final_held = any(e.type in FINAL for e in events)
    seal: dict[str, Any] | None = None
    try:
        d: Dossier = await asyncio.to_thread(app.load, dossier_id(str(ticket_id)))
        by_id = {e.id: e for e in events}
        sealed = [by_id[i] for i in d.event_ids if i in by_id]
        seal = {
            "dossier_hash": d.dossier_hash,
            "event_count": len(d.event_ids),
            "sealed_at": d.sealed_at.isoformat(),
            "verified": len(sealed) == len(d.event_ids) and chain_hash(sealed) == d.dossier_hash,
            "complete": d.complete,
            "missing": d.missing,
            "decided_by": d.decided_by,
            "reason": d.reason,
        }
    except AggregateNotFoundError:
        pass
    missing = open_gaps(gaps)
    return {
        "ticket_id": str(ticket_id),
        "status": dossier_status(final_held or seal is not None, gaps, None if seal is None else seal["complete"]),
        "complete": not missing and (seal is None or seal["complete"]),
        "missing": [g.view() for g in missing],
        "gaps": [g.view() for g in gaps],
        "events": [
            {
                "id": e.id,
                "type": e.type,
                "source": e.source,
                "time": e.time.isoformat(),
                "causation_id": e.causation_id,
                "data": e.data,
                **({"recovered_from": e.recovered_from} if e.recovered_from else {}),
            }
            for e in events
        ],
        "seal": seal,
    }


@router.get("/{ticket_id}/dossier")
async def dossier(ticket_id: UUID, request: Request, caller: Reader) -> dict[str, Any]:
    """The ticket's events in causal order, its seal verified, and any dead-lettered event still missing."""
    return await dossier_view(request, ticket_id)


@router.post("/{ticket_id}/dossier/seal", status_code=201)
async def seal_incomplete(ticket_id: UUID, body: SealDecision, request: Request, caller: Decider) -> dict[str, Any]:
    """Seal a dossier although events are missing: a recorded decision, with its reason (Archived says
    ``complete: false`` and names the missing events)."""
    app = app_of(request, ArchiveApp)
    try:
        await asyncio.to_thread(app.seal_incomplete, str(ticket_id), caller.subject, body.reason)
    except AlreadySealed as exc:
        raise Problem(409, "Already sealed", str(exc)) from None
    except DossierError as exc:
        raise Problem(409, "Nothing to decide", str(exc)) from None
    return await dossier_view(request, ticket_id)
