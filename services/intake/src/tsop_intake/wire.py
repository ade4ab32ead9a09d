"""Intake's domain events on the wire: one row per event that leaves the service.

A wire field takes the domain event's attribute of the same name; only the real
differences are written out. The channel registry's registrations and
credentials go to the ``channels`` topic (only a credential's SHA-256, never the
token), so other services (feedback) know a channel's caller; its settings stay
inside intake.
"""

from __future__ import annotations

from tsop_events import schemas as wire
from tsop_events.wiremap import Source, WireMap
from tsop_intake.domain import ChannelSystem, CustomerErasure, ErasureRefusal, Json, ServiceRequest


def _ticket(e: ServiceRequest.Event | ChannelSystem.Event) -> str:
    return str(e.originator_id)


def _location(e: ServiceRequest.Submitted) -> wire.Location | None:
    return wire.Location.model_validate(e.location) if e.location else None


def _attributes(e: ServiceRequest.Submitted) -> dict[str, Json]:
    return e.attributes or {}  # the oldest stored submissions carry none


TICKET: dict[str, Source] = {"ticket_id": _ticket}
CHANNEL: dict[str, Source] = {"channel_id": _ticket}

WIRE = (
    WireMap()
    .add(ServiceRequest.Submitted, wire.RequestSubmitted,
         fields={**TICKET, "location": _location, "attributes": _attributes})
    .add(ServiceRequest.Accepted, wire.RequestAccepted, fields=TICKET)
    .add(ServiceRequest.Rejected, wire.RequestRejected, fields=TICKET)
    .add(ServiceRequest.PendingInformation, wire.RequestPendingInformation, fields=TICKET)
    .add(ServiceRequest.Queued, wire.RequestQueuedForReview, fields=TICKET)
    .add(ServiceRequest.Linked, wire.RequestLinked, fields=TICKET)
    .add(ServiceRequest.Updated, wire.RequestUpdated, fields=TICKET)
    .add(ServiceRequest.Cancelled, wire.RequestCancelled, fields=TICKET)
    .add(ServiceRequest.ResolutionConfirmed, wire.ResolutionConfirmed, fields=TICKET)
    .add(ChannelSystem.Registered, wire.ChannelRegistered, fields=CHANNEL)
    .add(ChannelSystem.CredentialIssued, wire.ChannelCredentialIssued,
         fields={**CHANNEL, "token_sha256": "token_hash"})
    .add(ChannelSystem.CredentialRevoked, wire.ChannelCredentialRevoked,
         fields={**CHANNEL, "token_sha256": "token_hash"})
    .add(CustomerErasure.Requested, wire.CustomerDataErased, fields={"erased_at": "requested_at"})
    .add(ErasureRefusal.Recorded, wire.CustomerErasureRefused, fields={"refusal_id": _ticket})
)
