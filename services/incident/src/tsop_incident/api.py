"""Incident's HTTP routes (the incident workflow itself is its own issue)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel

from tsop_events.auth import Principal, Role, requires
from tsop_events.http import runtime_of
from tsop_events.runtime import Service
from tsop_incident.projection import open_ticket_groups

router = APIRouter(prefix="/v1", tags=["incident"])
Svc = Annotated[Service, Depends(runtime_of)]
Watcher = Annotated[Principal, Depends(requires(Role.incident_manager, Role.supervisor))]


class OpenGroup(BaseModel):
    region: str
    service_type: str | None
    open: int


class OpenTicketSummary(BaseModel):
    groups: list[OpenGroup]
    total: int


@router.get("/open-tickets/summary", response_model=OpenTicketSummary)
async def open_ticket_summary(
    svc: Svc,
    caller: Watcher,
    region: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
) -> OpenTicketSummary:
    """Open (not yet resolved) tickets counted by region and service type."""
    rows = await open_ticket_groups(svc.pool, region)
    return OpenTicketSummary(
        groups=[OpenGroup(region=r["region"], service_type=r["service_type"], open=r["open"]) for r in rows],
        total=sum(r["open"] for r in rows),
    )
