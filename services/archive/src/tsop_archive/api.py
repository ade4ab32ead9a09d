"""Archive's HTTP routes: the dossier of a ticket, with its seal verified."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError
from fastapi import APIRouter, Depends, Request

from tsop_archive.application import ArchiveApp, dossier_id
from tsop_archive.domain import Dossier, causal_order, chain_hash
from tsop_archive.store import SELECT_TICKET, row_to_event
from tsop_events.auth import Principal, Role, requires
from tsop_events.http import Problem, app_of, runtime_of
from tsop_events.topics import Topic

router = APIRouter(prefix="/v1/tickets", tags=["archive"])


Reader = Annotated[Principal, Depends(requires(Role.auditor, Role.supervisor))]


@router.get("/{ticket_id}/dossier")
async def dossier(ticket_id: UUID, request: Request, caller: Reader) -> dict[str, Any]:
    runtime = runtime_of(request)
    app = app_of(request, ArchiveApp)
    rows = await runtime.pool.fetch(SELECT_TICKET, str(ticket_id), runtime.settings.topic(Topic.tickets.value))
    if not rows:
        raise Problem(404, "Not found", f"the archive holds nothing of ticket {ticket_id}")
    events = causal_order([row_to_event(r) for r in rows])
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
        }
    except AggregateNotFoundError:
        pass
    return {
        "ticket_id": str(ticket_id),
        "events": [
            {
                "id": e.id,
                "type": e.type,
                "source": e.source,
                "time": e.time.isoformat(),
                "causation_id": e.causation_id,
                "data": e.data,
            }
            for e in events
        ],
        "seal": seal,
    }
