"""What a TMF621 client sends, checked and turned into intake's own terms. No I/O.

Every refusal names the attribute and the reason (``BadAttribute``), so the API
can answer with a TMF error body a client developer can act on.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from datetime import datetime
from typing import Any
from uuid import uuid4

import orjson

from tsop_events.errors import Invalid
from tsop_intake.tmf import model

KNOWN = frozenset(
    {
        "@type", "@baseType", "@schemaLocation", "name", "description", "severity", "ticketType", "channel",
        "requestedResolutionDate", "externalIdentifier", "note", "relatedParty", "troubleTicketCharacteristic",
        "status", "statusChangeReason",
    }
) | model.SERVER_OWNED | model.UNSUPPORTED
TIERS = ("standard", "gold", "vip", "enterprise")
DETAIL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# relatedParty may be patched once, to complete a ticket created without a customer (review then refuses a change)
FIXED_AFTER_CREATION = frozenset({"ticketType", "channel", "@type"})


class BadAttribute(Invalid):
    """An attribute of a TMF body the facade refuses (a TMF ``Error`` with ``referenceError``)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason, field)
        self.extra["field"] = field


def _text(body: dict[str, Any], name: str, *, max_length: int = 4000, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise BadAttribute(name, "is mandatory")
        return None
    if not isinstance(value, str):
        raise BadAttribute(name, f"must be a string, not {type(value).__name__}")
    if required and not value.strip():
        raise BadAttribute(name, "must not be empty")
    if len(value) > max_length:
        raise BadAttribute(name, f"is longer than {max_length} characters")
    return value


def _date(body: dict[str, Any], name: str) -> str | None:
    value = _text(body, name, max_length=64)
    if value is None:
        return None
    try:
        return model.parse_datetime(value).isoformat()
    except ValueError as exc:
        raise BadAttribute(name, str(exc)) from None


def _severity(body: dict[str, Any], required: bool) -> str | None:
    value = _text(body, "severity", max_length=32, required=required)
    if value is None:
        return None
    if value.lower() not in model.SEVERITIES:
        names = ", ".join(s.capitalize() for s in model.SEVERITIES)
        raise BadAttribute("severity", f"{value!r} is not one of {names} (in any case)")
    return value  # kept and echoed as sent; lists match it without regard to case


def _objects(body: dict[str, Any], name: str) -> list[dict[str, Any]]:
    value = body.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise BadAttribute(name, "must be an array of objects")
    return value


def _characteristics(body: dict[str, Any]) -> dict[str, str]:
    found: dict[str, str] = {}
    for i, item in enumerate(_objects(body, "troubleTicketCharacteristic")):
        where = f"troubleTicketCharacteristic[{i}]"
        name, value = item.get("name"), item.get("value")
        detail = isinstance(name, str) and name.startswith(model.DETAIL) and DETAIL_NAME.match(name[len(model.DETAIL):])
        if name not in model.CHARACTERISTICS and not detail:
            known = ", ".join([*model.CHARACTERISTICS, model.DETAIL + "<name>"])
            raise BadAttribute(f"{where}.name", f"{name!r} is not one of {known}")
        if not isinstance(value, str) or not value.strip() or len(value) > 1000:
            raise BadAttribute(f"{where}.value", "must be a non-empty string of at most 1000 characters")
        if name == "customerTier" and value not in TIERS:
            raise BadAttribute(f"{where}.value", f"customerTier {value!r} is not one of {', '.join(TIERS)}")
        found[str(name)] = value
    return found


def _notes(body: dict[str, Any], author: str, now: datetime) -> list[dict[str, Any]]:
    notes = []
    for i, item in enumerate(_objects(body, "note")):
        text = item.get("text")
        if not isinstance(text, str) or not text.strip() or len(text) > 4000:
            raise BadAttribute(f"note[{i}].text", "must be a non-empty string of at most 4000 characters")
        notes.append({"@type": "Note", "id": str(uuid4()), "author": author, "date": model.iso(now), "text": text})
    return notes


def _external_ref(body: dict[str, Any]) -> str | None:
    ids = _objects(body, "externalIdentifier")
    if not ids:
        return None
    ref = ids[0].get("id")
    if not isinstance(ref, str) or not ref or len(ref) > 128:
        raise BadAttribute("externalIdentifier[0].id", "must be a non-empty string of at most 128 characters")
    return ref


def _refuse(body: dict[str, Any], names: Collection[str], reason: str) -> None:
    for name in sorted(names):
        if name in body:
            raise BadAttribute(name, reason)


def _common(body: dict[str, Any]) -> None:
    unknown = sorted(set(body) - KNOWN)
    if unknown:
        raise BadAttribute(unknown[0], "is not a TroubleTicket attribute")
    _refuse(body, model.SERVER_OWNED, "is set by the server")
    _refuse(body, model.UNSUPPORTED, "is not supported by this API; put the information in description or note")


def customer_of(body: dict[str, Any]) -> str | None:
    """The id of the one ``relatedParty`` with role customer; None when there is none (completed later)."""
    customers = [
        p for p in _objects(body, "relatedParty") if str(p.get("role", "")).lower() == "customer"
    ]
    if not customers:
        return None
    party = customers[0].get("partyOrPartyRole") if len(customers) == 1 else None
    customer_id = party.get("id") if isinstance(party, dict) else None
    if not isinstance(customer_id, str) or not customer_id.strip() or len(customer_id) > 128:
        raise BadAttribute("relatedParty", "at most one party with role 'customer', with a partyOrPartyRole.id "
                                           "of at most 128 characters")
    return customer_id


def service_type_of(ticket_type: str, service_type_for: Callable[[str], str | None], known: Collection[str]) -> str:
    """The catalogue service type a ``ticketType`` names (itself, or the operator's name for one)."""
    found = service_type_for(ticket_type)
    if found is None:
        raise BadAttribute("ticketType", f"{ticket_type!r} is not offered; one of {', '.join(sorted(known))}")
    return found


def parse_create(
    body: dict[str, Any],
    *,
    service_types: Collection[str],
    channel_id: str | None,
    author: str,
    now: datetime,
    service_type_for: Callable[[str], str | None] | None = None,
) -> dict[str, Any]:
    """A ``TroubleTicket_FVO`` → the fields of a native submission (``attributes`` carries the TMF-only ones).

    Only what TMF621 makes mandatory is required (``@type``, ``description``, ``severity``, ``ticketType``):
    a ticket without a customer or a region is taken, and review asks for them (pending information).
    ``service_type_for`` resolves an operator's ``ticketType`` names (default: catalogue names only).
    """
    _common(body)
    if body.get("@type") != "TroubleTicket":
        raise BadAttribute("@type", "is mandatory and must be 'TroubleTicket'")
    _refuse(body, {"status", "statusChangeReason"}, "is set by the server's lifecycle")
    description = _text(body, "description", required=True)
    severity = _severity(body, required=True)
    ticket_type = _text(body, "ticketType", max_length=64, required=True)
    assert ticket_type is not None
    resolve = service_type_for or (lambda name: name if name in service_types else None)
    service_type = service_type_of(ticket_type, resolve, service_types)
    channel = body.get("channel")
    if channel is not None and (not isinstance(channel, dict) or channel.get("id") != channel_id):
        raise BadAttribute("channel", "must be omitted or name the channel these credentials belong to")
    customer_id = customer_of(body) or ""
    chars = _characteristics(body)
    deadline = _date(body, "requestedResolutionDate")
    attributes: dict[str, Any] = {"severity": severity}
    if ticket_type != service_type:
        attributes["ticketType"] = ticket_type  # the operator's name, shown and filtered as sent
    if (name := _text(body, "name", max_length=200)) is not None:
        attributes["name"] = name
    if notes := _notes(body, author, now):
        attributes["note"] = notes
    for poly in ("@baseType", "@schemaLocation"):
        if (value := _text(body, poly, max_length=500)) is not None:
            attributes[poly] = value
    fields: dict[str, Any] = {
        "channel_request_ref": _external_ref(body),
        "customer_id": customer_id,
        "customer_tier": chars.get("customerTier", "standard"),
        "service_type": service_type,
        "region": "",
        "description": description,
        "time_requirement": {"deadline": deadline, "window_start": None, "window_end": None},
        "special_needs": chars.get("specialNeeds"),
        "attributes": attributes,
        **_native_characteristics(chars),
    }
    return fields


def _native_characteristics(chars: dict[str, str]) -> dict[str, Any]:
    native: dict[str, Any] = {}
    if "region" in chars:
        native["region"] = chars["region"]
    if "customerTier" in chars:
        native["customer_tier"] = chars["customerTier"]
    if "specialNeeds" in chars:
        native["special_needs"] = chars["specialNeeds"]
    location = {part: chars[name] for name, part in model.LOCATION_PARTS.items() if name in chars}
    if location:
        native["location"] = location
    details = {k[len(model.DETAIL):]: v for k, v in chars.items() if k.startswith(model.DETAIL)}
    if details:
        native["details"] = details
    return native


class MalformedJson(Invalid):
    title = "Malformed JSON"


def merge_patch(raw: bytes) -> dict[str, Any]:
    """The body of a PATCH: a JSON object (a merge patch)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MalformedJson("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise BadAttribute("body", "a merge patch is a JSON object")
    return body


def parse_patch(
    body: dict[str, Any], *, kept: dict[str, Any], author: str, now: datetime
) -> tuple[dict[str, Any], str | None]:
    """A merge patch → (native changes, requested status); refuses what a client may not change.

    ``kept`` is the request's current ``attributes``: the change carries the whole new set (notes appended).
    """
    _common(body)
    _refuse(body, FIXED_AFTER_CREATION, "cannot be changed after the ticket is created")
    if not body:
        raise BadAttribute("body", "the patch changes nothing")
    changes: dict[str, Any] = {}
    attributes: dict[str, Any] = {}
    if "description" in body:
        changes["description"] = _text(body, "description", required=True)
    if "severity" in body:
        attributes["severity"] = _severity(body, required=True)
    if "name" in body:
        attributes["name"] = _text(body, "name", max_length=200)
    if "note" in body:
        if not (notes := _notes(body, author, now)):
            raise BadAttribute("note", "notes are kept; a patch may only add some")
        attributes["note"] = [*kept.get("note", []), *notes]
    if "requestedResolutionDate" in body:
        changes["time_requirement"] = {
            "deadline": _date(body, "requestedResolutionDate"), "window_start": None, "window_end": None
        }
    if "externalIdentifier" in body:
        changes["channel_request_ref"] = _external_ref(body)
    if "relatedParty" in body:
        if (customer := customer_of(body)) is None:
            raise BadAttribute("relatedParty", "names no party with role 'customer'")
        changes["customer_id"] = customer
    changes.update(_native_characteristics(_characteristics(body)))
    if attributes:
        changes["attributes"] = {k: v for k, v in {**kept, **attributes}.items() if v is not None}
    status = None
    if "status" in body:
        status = body["status"]
        if status not in model.STATUSES:
            raise BadAttribute("status", f"{status!r} is not one of {', '.join(model.STATUSES)}")
    if "statusChangeReason" in body:
        if status is None:
            raise BadAttribute("statusChangeReason", "only goes with a status change")
        _text(body, "statusChangeReason", max_length=500)
    return changes, status
