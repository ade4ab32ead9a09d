"""CloudEvents 1.0, Kafka binary binding.

Attributes travel as ``ce_*`` headers and the body is the event's JSON. The id
is stable for a domain event (derived from the aggregate id and version), so a
re-published event is recognisably the same event. Correlation and causation
ids are CloudEvents extension attributes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from tsop_events.schemas import WireEvent, parse_event

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/json"
_NAMESPACE = uuid.UUID("6f1c2a0e-5d1b-4c51-9f39-2b7f1f0c7a11")

Headers = list[tuple[str, bytes]]


def stable_event_id(aggregate_id: uuid.UUID | str, version: int) -> str:
    """The ``ce_id`` of the wire event made from one domain event."""
    return str(uuid.uuid5(_NAMESPACE, f"{aggregate_id}:{version}"))


def derived_id(*parts: object) -> uuid.UUID:
    """A deterministic id for an entity that exists because of another one."""
    return uuid.uuid5(_NAMESPACE, ":".join(str(p) for p in parts))


class MalformedEnvelope(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Envelope:
    id: str
    type: str
    source: str
    time: datetime
    subject: str | None
    correlation_id: str | None
    causation_id: str | None
    data: bytes

    def headers(self) -> Headers:
        h: Headers = [
            ("ce_specversion", SPEC_VERSION.encode()),
            ("ce_id", self.id.encode()),
            ("ce_type", self.type.encode()),
            ("ce_source", self.source.encode()),
            ("ce_time", self.time.isoformat().encode()),
            ("content-type", CONTENT_TYPE.encode()),
        ]
        if self.subject is not None:
            h.append(("ce_subject", self.subject.encode()))
        if self.correlation_id is not None:
            h.append(("ce_correlationid", self.correlation_id.encode()))
        if self.causation_id is not None:
            h.append(("ce_causationid", self.causation_id.encode()))
        return h

    def event(self) -> WireEvent:
        return parse_event(self.type, self.data)


def wrap(
    event: WireEvent,
    *,
    event_id: str,
    source: str,
    time: datetime | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
) -> Envelope:
    return Envelope(
        id=event_id,
        type=event.event_type,
        source=source,
        time=time or datetime.now(UTC),
        subject=event.key(),
        correlation_id=correlation_id or event.key(),
        causation_id=causation_id,
        data=event.model_dump_json().encode(),
    )


def header_map(headers: Headers | None) -> dict[str, str]:
    return {k: v.decode("utf-8", "replace") for k, v in (headers or [])}


def header_value(headers: Headers | None, name: str) -> str | None:
    """One header, read without decoding the rest (consumers filter on ce_type)."""
    for k, v in headers or ():
        if k == name:
            return v.decode("utf-8", "replace")
    return None


def unwrap(headers: Headers | None, value: bytes | None) -> Envelope:
    """Read an envelope off a Kafka record; raise MalformedEnvelope if it is not one."""
    h = header_map(headers)
    missing = [n for n in ("ce_specversion", "ce_id", "ce_type", "ce_source", "ce_time") if n not in h]
    if missing:
        raise MalformedEnvelope(f"missing CloudEvents headers: {', '.join(missing)}")
    if h["ce_specversion"] != SPEC_VERSION:
        raise MalformedEnvelope(f"unsupported ce_specversion {h['ce_specversion']!r}")
    if value is None:
        raise MalformedEnvelope("record has no body")
    try:
        time = datetime.fromisoformat(h["ce_time"])
    except ValueError as exc:
        raise MalformedEnvelope(f"bad ce_time: {exc}") from None
    return Envelope(
        id=h["ce_id"],
        type=h["ce_type"],
        source=h["ce_source"],
        time=time,
        subject=h.get("ce_subject"),
        correlation_id=h.get("ce_correlationid"),
        causation_id=h.get("ce_causationid"),
        data=value,
    )
