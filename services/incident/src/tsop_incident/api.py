"""Incident's HTTP routes (the incident workflow itself is its own issue)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request

from tsop_events.auth import Principal, Role, requires
from tsop_events.http import runtime_of

router = APIRouter(prefix="/v1", tags=["incident"])


@router.get("/open-tickets/summary")
async def open_ticket_summary(
    request: Request,
    caller: Annotated[Principal, Depends(requires(Role.incident_manager, Role.supervisor))],
    region: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
) -> dict[str, Any]:
    """Open (not yet resolved) tickets counted by region and service type."""
    runtime = runtime_of(request)
    rows = await runtime.pool.fetch(
        """SELECT region, service_type, count(*) AS open FROM tickets
           WHERE stage < 4 AND region IS NOT NULL AND ($1::text IS NULL OR region = $1)
           GROUP BY region, service_type ORDER BY region, service_type""",
        region,
    )
    return {"groups": [dict(r) for r in rows], "total": sum(r["open"] for r in rows)}
