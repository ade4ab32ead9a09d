"""Service requests as submitted and their automatic review (§2.1, §2.2). No I/O."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

TIER_BOOST = {"standard": 0, "gold": 1, "vip": 2, "enterprise": 2}
MIN_DESCRIPTION = 10


@dataclass(frozen=True)
class ServiceType:
    name: str
    default_priority: int
    resolve_hours: int
    regions: tuple[str, ...]

    def offered_in(self, region: str) -> bool:
        return "*" in self.regions or region in self.regions


class Catalogue:
    """Which service types exist and their rules; data, not code."""

    def __init__(self, types: dict[str, ServiceType]) -> None:
        self.types = types

    @classmethod
    def load(cls, path: Path | None = None) -> Catalogue:
        raw = (
            path.read_text()
            if path
            else resources.files("tsop_intake").joinpath("service_types.json").read_text()
        )
        data: dict[str, dict[str, Any]] = json.loads(raw)
        return cls(
            {
                name: ServiceType(name, int(v["default_priority"]), int(v["resolve_hours"]), tuple(v["regions"]))
                for name, v in data.items()
            }
        )

    def get(self, name: str) -> ServiceType | None:
        return self.types.get(name)


@dataclass(frozen=True)
class Decision:
    accepted: bool
    reason_code: str
    reason: str
    priority: int = 0
    resolve_by: datetime | None = None


def review(
    catalogue: Catalogue,
    *,
    service_type: str,
    region: str,
    customer_tier: str,
    description: str,
    deadline: datetime | None,
    window_end: datetime | None,
    now: datetime,
) -> Decision:
    """The automatic review: accept with a priority, or reject with a reason."""
    st = catalogue.get(service_type)
    if st is None:
        return Decision(False, "unknown_service_type", f"service type {service_type!r} is not offered")
    if not st.offered_in(region):
        return Decision(False, "not_offered_in_region", f"{service_type} is not offered in region {region!r}")
    if len(description.strip()) < MIN_DESCRIPTION:
        return Decision(
            False, "insufficient_description", f"the description needs at least {MIN_DESCRIPTION} characters"
        )
    latest = min((t for t in (deadline, window_end) if t is not None), default=None)
    if latest is not None and latest <= now:
        return Decision(False, "infeasible_time", "the time requirement is already in the past")
    urgent = 1 if latest is not None and latest - now <= timedelta(hours=4) else 0
    priority = max(1, min(5, st.default_priority - TIER_BOOST.get(customer_tier, 0) - urgent))
    resolve_by = now + timedelta(hours=st.resolve_hours)
    if latest is not None:
        resolve_by = min(resolve_by, latest)
    return Decision(True, "rules_passed", "all review rules passed", priority, resolve_by)


class ServiceRequest(Aggregate):

    @event("Submitted")
    def __init__(
        self,
        id: UUID,  # noqa: A002 - the ticket id, chosen by the application
        channel: str,
        channel_request_ref: str | None,
        customer_id: str,
        customer_tier: str,
        region: str,
        service_type: str,
        description: str,
        time_requirement: dict[str, str | None],
        special_needs: str | None,
        callback_url: str | None,
        submitted_at: datetime,
    ) -> None:
        self.channel = channel
        self.channel_request_ref = channel_request_ref
        self.customer_id = customer_id
        self.customer_tier = customer_tier
        self.region = region
        self.service_type = service_type
        self.description = description
        self.time_requirement = time_requirement
        self.special_needs = special_needs
        self.callback_url = callback_url
        self.submitted_at = submitted_at
        self.status = "submitted"
        self.decision: dict[str, Any] | None = None

    def apply_decision(self, decision: Decision, at: datetime) -> None:
        if self.decision is not None:
            raise ValueError("the request was already reviewed")
        if decision.accepted:
            assert decision.resolve_by is not None
            self._accept(
                priority=decision.priority,
                resolve_by=decision.resolve_by,
                accepted_at=at,
                service_type=self.service_type,
                region=self.region,
                customer_tier=self.customer_tier,
            )
        else:
            self._reject(reason_code=decision.reason_code, reason=decision.reason, rejected_at=at)

    @event("Accepted")
    def _accept(
        self,
        priority: int,
        resolve_by: datetime,
        accepted_at: datetime,
        service_type: str,
        region: str,
        customer_tier: str,
    ) -> None:
        self.status = "accepted"
        self.decision = {"decision": "accepted", "priority": priority, "resolve_by": resolve_by.isoformat()}

    @event("Rejected")
    def _reject(self, reason_code: str, reason: str, rejected_at: datetime) -> None:
        self.status = "rejected"
        self.decision = {"decision": "rejected", "reason_code": reason_code, "reason": reason}

# The event classes the @event decorators made, named for the code that maps them (and for mypy).
ServiceRequestSubmitted: type[Any] = ServiceRequest.__dict__["Submitted"]
ServiceRequestAccepted: type[Any] = ServiceRequest.__dict__["Accepted"]
ServiceRequestRejected: type[Any] = ServiceRequest.__dict__["Rejected"]
