"""Archive's HTTP routes: the dossier of a ticket, with its seal verified and what is missing named."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field, JsonValue

from tsop_archive import commands
from tsop_archive.commands import ArchiveApp, sealed_dossier, tickets_topic
from tsop_archive.domain import (
    ArchivedEvent,
    Dossier,
    DossierStatus,
    Gap,
    GapView,
    dossier_status,
    has_ended,
    open_gaps,
)
from tsop_archive.projection import ticket_record
from tsop_archive.records.projection import witnesses
from tsop_events.auth import Principal, Role, requires
from tsop_events.errors import NotFound
from tsop_events.http import service_dependency
from tsop_events.inbound import Inbound, Text
from tsop_events.runtime import Service

router = APIRouter(prefix="/v1/tickets", tags=["archive"])

Svc = Annotated[Service[ArchiveApp], Depends(service_dependency(ArchiveApp))]
Witnesses = dict[str, tuple[str, str]]
Reader = Annotated[Principal, Depends(requires(Role.auditor, Role.supervisor))]
Decider = Annotated[Principal, Depends(requires(Role.auditor, Role.supervisor))]


class SealDecision(Inbound):
    reason: Annotated[Text, Field(min_length=3, max_length=2000)]


class GapAnswer(BaseModel):
    """A dead-lettered event of the ticket: which consumer (or relay) failed on it, and why."""

    event_id: str
    event_type: str | None
    consumer: str
    error: str
    source: str = Field(description="topic:partition:offset of the record that failed (or the relay's position)")
    failed_at: str | None = Field(description="ISO 8601")
    open: bool = Field(description="Still missing: the event has not arrived again since the failure was noted")

    @classmethod
    def of(cls, view: GapView) -> GapAnswer:
        return cls.model_validate(view)


class EventAnswer(BaseModel):
    id: str
    type: str
    source: str
    time: str = Field(description="ISO 8601")
    causation_id: str | None
    data: JsonValue
    recovered_from: str | None = Field(
        default=None, description="Present only when the event was taken back from the archive's own dead letter"
    )

    @classmethod
    def of(cls, e: ArchivedEvent) -> EventAnswer:
        answer = cls(id=e.id, type=e.type, source=e.source, time=e.time.isoformat(), causation_id=e.causation_id,
                     data=e.data)
        if e.recovered_from:
            answer.recovered_from = e.recovered_from
        return answer


class SealAnswer(BaseModel):
    dossier_hash: str
    event_count: int
    sealed_at: str = Field(description="ISO 8601")
    verified: bool = Field(description="The events held still hash to the seal")
    complete: bool
    missing: list[GapAnswer] = Field(description="The gaps the dossier was sealed with (by a decision)")
    decided_by: str | None
    reason: str | None

    @classmethod
    def of(cls, d: Dossier, events: Sequence[ArchivedEvent], witnesses: Witnesses) -> SealAnswer:
        return cls(
            dossier_hash=d.dossier_hash, event_count=len(d.event_ids), sealed_at=d.sealed_at.isoformat(),
            verified=d.verified(events, witnesses), complete=d.complete, missing=[GapAnswer.of(m) for m in d.missing],
            decided_by=d.decided_by, reason=d.reason,
        )


class DossierAnswer(BaseModel):
    ticket_id: str
    status: DossierStatus
    complete: bool
    missing: list[GapAnswer] = Field(description="The dead-lettered events still missing")
    gaps: list[GapAnswer] = Field(description="Every dead-lettered event of the ticket, open or closed")
    events: list[EventAnswer] = Field(description="In causal order")
    seal: SealAnswer | None

    @classmethod
    def of(
        cls, ticket_id: str, events: list[ArchivedEvent], gaps: list[Gap], d: Dossier | None,
        witnesses: Witnesses | None = None,
    ) -> DossierAnswer:
        seal = None if d is None else SealAnswer.of(d, events, witnesses or {})
        missing = open_gaps(gaps)
        final_held = has_ended(e.type for e in events)
        return cls(
            ticket_id=ticket_id,
            status=dossier_status(final_held or seal is not None, gaps, None if seal is None else seal.complete),
            complete=not missing and (seal is None or seal.complete),
            missing=[GapAnswer.of(g.view()) for g in missing],
            gaps=[GapAnswer.of(g.view()) for g in gaps],
            events=[EventAnswer.of(e) for e in events],
            seal=seal,
        )


async def dossier_answer(svc: Service[ArchiveApp], ticket_id: UUID) -> DossierAnswer:
    events, gaps = await ticket_record(svc.pool, tickets_topic(svc), str(ticket_id))
    if not events and not gaps:
        raise NotFound(f"the archive holds nothing of ticket {ticket_id}")
    d = await sealed_dossier(svc, str(ticket_id))
    # an event retention expired since the seal is checked by its witness (see ``Dossier.verified``)
    known = await witnesses(svc.pool, d.event_ids) if d is not None else {}
    return DossierAnswer.of(str(ticket_id), events, gaps, d, known)


# an event's recovered_from is left out unless it was recovered (the answers set every other field)
@router.get("/{ticket_id}/dossier", response_model=DossierAnswer, response_model_exclude_unset=True)
async def dossier(ticket_id: UUID, svc: Svc, caller: Reader) -> DossierAnswer:
    """The ticket's events in causal order, its seal verified, and any dead-lettered event still missing."""
    return await dossier_answer(svc, ticket_id)


@router.post(
    "/{ticket_id}/dossier/seal", status_code=201, response_model=DossierAnswer, response_model_exclude_unset=True
)
async def seal_incomplete(ticket_id: UUID, body: SealDecision, svc: Svc, caller: Decider) -> DossierAnswer:
    """Seal a dossier although events are missing: a recorded decision, with its reason (Archived says
    ``complete: false`` and names the missing events)."""
    await commands.seal_incomplete(svc, str(ticket_id), body.reason, caller)
    return await dossier_answer(svc, ticket_id)
