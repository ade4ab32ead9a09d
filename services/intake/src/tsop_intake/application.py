"""Intake commands, and the one place its domain events become wire events."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

from tsop_events import schemas as wire
from tsop_events.clock import Clock, SystemClock
from tsop_events.envelope import derived_id
from tsop_events.relay import Outgoing
from tsop_events.settings import ServiceSettings
from tsop_events.store import EventStoreApp, IntegrityError
from tsop_intake.domain import (
    Catalogue,
    ServiceRequest,
    ServiceRequestAccepted,
    ServiceRequestRejected,
    ServiceRequestSubmitted,
    review,
)


class IdempotencyConflict(Exception):
    """The same Idempotency-Key was used for a different request."""


class IntakeApp(EventStoreApp):
    def __init__(
        self,
        settings: ServiceSettings | None = None,
        env: dict[str, str] | None = None,
        catalogue: Catalogue | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(settings, env)
        self.catalogue = catalogue or Catalogue.load()
        self.clock = clock or SystemClock()

    def new_request(self, fields: dict[str, Any], idempotency_key: str | None = None) -> ServiceRequest:
        """Build and review a request (no I/O); saving it is the caller's step."""
        ticket_id: UUID = derived_id("request", fields["channel"], idempotency_key) if idempotency_key else uuid4()
        now = self.clock.now()
        request = ServiceRequest(id=ticket_id, submitted_at=now, **fields)
        tr = fields["time_requirement"]
        decision = review(
            self.catalogue,
            service_type=request.service_type,
            region=request.region,
            customer_tier=request.customer_tier,
            description=request.description,
            deadline=_dt(tr.get("deadline")),
            window_end=_dt(tr.get("window_end")),
            now=now,
        )
        request.apply_decision(decision, now)
        return request

    def submit(self, fields: dict[str, Any], idempotency_key: str | None = None) -> tuple[ServiceRequest, bool]:
        """Submit and review a request; return it and whether it is new."""
        request = self.new_request(fields, idempotency_key)
        try:
            self.save(request)
        except IntegrityError:
            if not idempotency_key:
                raise
            return self.replay(request.id, fields), False  # submitted before, with this key
        return request, True

    def replay(self, ticket_id: UUID, fields: dict[str, Any]) -> ServiceRequest:
        """The request an earlier submission with the same key created."""
        existing: ServiceRequest = self.load(ticket_id)
        if any(getattr(existing, k) != v for k, v in fields.items()):
            raise IdempotencyConflict(str(ticket_id))
        return existing

    def get_request(self, ticket_id: UUID) -> ServiceRequest | None:
        found: ServiceRequest | None = self.find(ticket_id)
        return found


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def to_wire(event: Any) -> Outgoing | None:
    ticket = str(event.originator_id)
    if isinstance(event, ServiceRequestSubmitted):
        return Outgoing(
            wire.RequestSubmitted(
                ticket_id=ticket,
                channel=wire.Channel(event.channel),
                channel_request_ref=event.channel_request_ref,
                customer_id=event.customer_id,
                customer_tier=wire.CustomerTier(event.customer_tier),
                region=event.region,
                service_type=event.service_type,
                description=event.description,
                time_requirement=wire.TimeRequirement.model_validate(event.time_requirement),
                special_needs=event.special_needs,
                callback_url=event.callback_url,
                submitted_at=event.submitted_at,
            )
        )
    if isinstance(event, ServiceRequestAccepted):
        return Outgoing(
            wire.RequestAccepted(
                ticket_id=ticket,
                service_type=event.service_type,
                region=event.region,
                priority=event.priority,
                customer_tier=wire.CustomerTier(event.customer_tier),
                resolve_by=event.resolve_by,
                accepted_at=event.accepted_at,
            )
        )
    if isinstance(event, ServiceRequestRejected):
        return Outgoing(
            wire.RequestRejected(
                ticket_id=ticket, reason_code=event.reason_code, reason=event.reason, rejected_at=event.rejected_at
            )
        )
    return None
