"""The TMF621 view of a ticket, decided from the platform's own events. No I/O.

A TMF621 trouble ticket and a native request are the same ticket: intake
keeps the request; this module says which TMF status each lifecycle event
means, which status changes are valid, and how a stored ticket renders as a
``TroubleTicket`` resource (with ``fields`` selection).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tsop_events import schemas as wire
from tsop_events.errors import Invalid

STATUSES = ("acknowledged", "rejected", "pending", "held", "inProgress", "cancelled", "closed", "resolved")
TERMINAL = frozenset({"rejected", "closed", "cancelled"})

# The TMF656 lifecycle, plus what intake's review adds before a ticket is acknowledged:
# a new ticket is acknowledged, rejected or pending (information required); an agent's
# review of an acknowledged-but-queued ticket may still reject it.
TRANSITIONS: dict[str | None, frozenset[str]] = {
    None: frozenset({"acknowledged", "rejected", "pending", "cancelled"}),
    "pending": frozenset({"acknowledged", "rejected", "cancelled", "inProgress", "held"}),
    # (closed straight from acknowledged: a complaint-type ticket, which the complaint desk works and closes)
    "acknowledged": frozenset({"inProgress", "pending", "held", "resolved", "cancelled", "rejected", "closed"}),
    "inProgress": frozenset({"pending", "held", "resolved", "cancelled"}),
    "held": frozenset({"inProgress", "pending", "resolved", "cancelled"}),
    "resolved": frozenset({"closed", "acknowledged"}),
}

SEVERITIES = ("critical", "major", "minor")
PRIORITY_NAMES = {1: "Critical", 2: "High", 3: "Medium", 4: "Low", 5: "Planning"}

# Attributes the server owns: a client may not set them on POST nor PATCH them.
SERVER_OWNED = frozenset(
    {
        "id", "href", "creationDate", "lastUpdate", "statusChangeDate", "statusChangeHistory",
        "expectedResolutionDate", "resolutionDate", "priority", "troubleTicketRelationship",
    }
)
# Attributes the facade does not carry (yet): refused with a clear reason rather than dropped.
UNSUPPORTED = frozenset({"attachment", "relatedEntity", "troubleTicketSpecification"})
# Characteristics that carry the native request's own fields; ``detail.<name>`` carries a type-specific detail.
LOCATION_PARTS = {"address": "address", "postcode": "postcode", "siteId": "site_id"}
CHARACTERISTICS = ("region", *LOCATION_PARTS, "customerTier", "specialNeeds")
DETAIL = "detail."
# TMF-only attributes a ticket keeps (in the request's ``attributes``); severity is also a column.
KEPT = ("name", "note", "@baseType", "@schemaLocation")
ALWAYS = ("id", "href", "@type")


# what review asks for, in the names a TMF621 client sends
TMF_NAMES = {
    "customer_id": "relatedParty (role customer)",
    "region": "troubleTicketCharacteristic region",
    "description": "description",
    "time_requirement.deadline": "requestedResolutionDate",
    "time_requirement": "requestedResolutionDate",
    "location.address": "troubleTicketCharacteristic address",
    "location.postcode": "troubleTicketCharacteristic postcode",
    "location.site_id": "troubleTicketCharacteristic siteId",
    "special_needs": "troubleTicketCharacteristic specialNeeds",
    "channel_request_ref": "externalIdentifier",
}
LINKED_REASON = "duplicate of an open ticket for the same customer, service type and location"
_OLD_LINKED = re.compile(r"duplicate of open ticket [0-9a-fA-F-]{36}")  # rows written before the id left the reason


def can_move(current: str | None, new: str) -> bool:
    return new in TRANSITIONS.get(current, frozenset())


@dataclass(frozen=True)
class StatusChange:
    status: str
    reason: str
    at: datetime


# The ticket events that can change the TMF view; the read model does not even decode the others.
RELEVANT: frozenset[str] = frozenset(
    cls.event_type
    for cls in (
        wire.RequestSubmitted, wire.RequestAccepted, wire.RequestRejected, wire.RequestPendingInformation,
        wire.RequestUpdated, wire.RequestQueuedForReview, wire.RequestLinked, wire.RequestCancelled,
        wire.AssignmentAccepted, wire.WorkStarted, wire.WorkLogged, wire.WorkPaused, wire.WorkResumed,
        wire.Resolved, wire.Reopened, wire.Closed,
    )
)


def status_change(event: wire.WireEvent, current: str | None) -> StatusChange | None:
    """The TMF status an event moves a ticket to, with the reason; None when it moves nothing."""
    new = _wanted(event, current)
    if isinstance(event, wire.Reopened):
        return new  # (from closed too: not a move TRANSITIONS allows otherwise)
    if new is None or new.status == current or not can_move(current, new.status):
        return None
    return new


def ready(state: dict[str, Any] | None, event: wire.WireEvent) -> bool:
    """Whether a step kept because it came before its turn (see projection.py) is applied now: its ticket was
    submitted, and the move it makes is valid from where the ticket is, or it makes none (or the ticket has ended:
    nothing would move it any more). Another service's step waits so for the ticket's own steps that came before
    it: dispatch's AssignmentAccepted for intake's RequestAccepted. A closure after a rating, a confirmation or a
    lapsed window (feedback's, whose relay may republish before dispatch's) follows the ticket's resolution: it
    waits for ``resolved``, though acknowledged → closed is a valid move (a complaint ticket's closure)."""
    if state is None:
        return False
    current = state["status"]
    if current in TERMINAL:
        return True
    if isinstance(event, wire.Reopened):
        return current in ("resolved", "closed")
    if isinstance(event, wire.Closed) and event.reason != "complaint_closed":
        return current in ("resolved", "closed")
    new = _wanted(event, current)
    return new is None or new.status == current or can_move(current, new.status)


def _wanted(event: wire.WireEvent, current: str | None) -> StatusChange | None:
    """The status an event asks for, valid from ``current`` or not."""
    new: tuple[str, str, datetime] | None = None
    match event:
        case wire.RequestAccepted():
            new = ("acknowledged", f"accepted ({event.reason_code}) by {event.decided_by}", event.accepted_at)
        case wire.RequestRejected():
            new = ("rejected", f"{event.reason_code}: {event.reason}", event.rejected_at)
        case wire.RequestPendingInformation():
            fields = ", ".join(TMF_NAMES.get(m.field, m.field) for m in event.missing)
            new = ("pending", f"information required: {fields}", event.pending_at)
        case wire.RequestQueuedForReview():
            new = ("acknowledged", "queued for agent review: " + "; ".join(event.reasons), event.queued_at)
        case wire.RequestLinked():  # which ticket: troubleTicketRelationship, shown to whoever may see it
            new = ("cancelled", LINKED_REASON, event.linked_at)
        case wire.RequestCancelled():
            new = ("cancelled", f"{event.reason_code}: {event.reason}", event.cancelled_at)
        case wire.AssignmentAccepted():
            new = ("inProgress", f"accepted by technician {event.technician_id}", event.accepted_at)
        case wire.WorkStarted():
            new = ("inProgress", f"work started {event.mode.replace('_', ' ')}", event.started_at)
        case wire.WorkLogged() if current in (None, "acknowledged"):
            new = ("inProgress", f"work logged: {event.action}", event.logged_at)
        case wire.WorkResumed():
            new = ("inProgress", "work resumed", event.resumed_at)
        case wire.WorkPaused():
            new = (event.kind, event.reason, event.paused_at)
        case wire.Resolved():
            new = ("resolved", f"{event.resolution_code}: {event.summary}", event.resolved_at)
        case wire.Reopened():
            # TMF621's reopening: back to acknowledged (also from closed, within the operator's reopen period)
            if current in ("resolved", "closed"):
                return StatusChange("acknowledged", f"reopened ({event.reason_code}): {event.reason}",
                                    event.reopened_at)
        case wire.Closed():
            new = ("closed", event.reason.replace("_", " "), event.closed_at)
    return None if new is None else StatusChange(*new)


# --- the read model's evolution: a ticket's TMF state after each event ------------------------------

def characteristics(native: dict[str, Any]) -> dict[str, str]:
    """The characteristics native fields show as (only those present in ``native``)."""
    chars: dict[str, str] = {}
    if native.get("region"):
        chars["region"] = native["region"]
    if "location" in native:
        for tmf_name, part in LOCATION_PARTS.items():
            if (value := (native["location"] or {}).get(part)) is not None:
                chars[tmf_name] = str(value)
    if native.get("customer_tier"):
        chars["customerTier"] = str(native["customer_tier"])
    if native.get("special_needs"):
        chars["specialNeeds"] = native["special_needs"]
    for name, value in (native.get("details") or {}).items():
        chars[DETAIL + name] = str(value)
    return chars


@dataclass
class Evolution:
    state: dict[str, Any] | None  # the row: indexed columns plus ``doc``; None when the event shows nothing
    change: StatusChange | None
    notices: list[str]  # TMF notification event names the event causes


def tmf_attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    """The attributes the TMF621 view shows, of the shape TMF621 gives them.

    A native request's ``attributes`` are free-form (a channel keeps there what the platform does not act on):
    a ``note`` that is a text, or a ``severity`` that is a number, is kept by the request but is not a TMF621
    note or severity, so the view leaves it out rather than answer with a ticket TMF621 cannot read.
    """
    out: dict[str, Any] = {}
    for name in ("severity", "ticketType", *KEPT):
        value = attributes.get(name)
        if name == "note":
            if isinstance(value, list) and all(isinstance(n, dict) for n in value):
                out[name] = value
        elif isinstance(value, str):
            out[name] = value
    return out


def created(ev: wire.RequestSubmitted) -> dict[str, Any]:
    attrs = tmf_attributes(ev.attributes)
    tr = ev.time_requirement
    native = ev.model_dump(mode="json", include={"region", "location", "customer_tier", "special_needs", "details"})
    doc: dict[str, Any] = {
        "description": ev.description,
        "channelKind": ev.channel.value,
        "characteristic": characteristics(native),
        "requestedResolutionDate": iso(tr.deadline or tr.window_end),
        "severity": attrs.get("severity"),  # as sent; the column holds it case-folded for filters
        **{k: attrs[k] for k in KEPT if attrs.get(k) is not None},
    }
    return {
        "ticket_id": ev.ticket_id,
        "status": None,
        "status_change_date": None,
        "status_change_reason": None,
        "severity": _folded(attrs.get("severity")),
        "ticket_type": attrs.get("ticketType") or ev.service_type,
        "priority_name": None,
        "channel_id": ev.channel_id,
        "customer_id": ev.customer_id,
        "external_id": ev.channel_request_ref,
        "creation_date": ev.submitted_at,
        "last_update": ev.submitted_at,
        "deleted": False,
        "doc": {k: v for k, v in doc.items() if v is not None},
    }


def evolve(state: dict[str, Any] | None, ev: wire.TicketEvent, at: datetime) -> Evolution:
    """The ticket's next TMF state; pure, so the projection and a freshly created ticket agree."""
    if isinstance(ev, wire.RequestSubmitted):
        if state is not None:
            return Evolution(None, None, [])
        return Evolution(created(ev), None, ["TroubleTicketCreateEvent"])
    if state is None:
        return Evolution(None, None, [])  # not submitted (yet): nothing to show (the projection keeps the step)
    new = {**state, "doc": dict(state["doc"])}
    doc = new["doc"]
    notices: list[str] = []
    match ev:
        case wire.RequestAccepted():
            new["priority_name"] = PRIORITY_NAMES.get(ev.priority, str(ev.priority))
            if ev.resolve_by is not None:
                doc["expectedResolutionDate"] = iso(ev.resolve_by)
        case wire.RequestPendingInformation():
            notices.append("TroubleTicketInformationRequiredEvent")
        case wire.RequestLinked():
            doc["duplicateOf"] = ev.duplicate_of
        case wire.RequestUpdated():
            _apply_changes(new, ev.changes)
            notices.append("TroubleTicketAttributeValueChangeEvent")
        case wire.RequestCancelled() if ev.reason_code == DELETED:
            new["deleted"] = True
            notices.append("TroubleTicketDeleteEvent")
        case wire.Resolved():
            doc["resolutionDate"] = iso(ev.resolved_at)
            notices.append("TroubleTicketResolvedEvent")
    change = status_change(ev, state["status"])
    if change is not None:
        new.update(status=change.status, status_change_date=change.at, status_change_reason=change.reason)
        notices.insert(0, "TroubleTicketStatusChangeEvent")
    if change is None and not notices and new == state:
        return Evolution(None, None, [])
    new["last_update"] = at
    return Evolution(new, change, notices)


def fold(events: Iterable[tuple[wire.TicketEvent, datetime]]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """A ticket's TMF state and status history from its events, as the projection would build them."""
    state: dict[str, Any] | None = None
    history: list[dict[str, Any]] = []
    for ev, at in events:
        evolution = evolve(state, ev, at)
        if evolution.state is not None:
            state = evolution.state
        if evolution.change is not None:
            c = evolution.change
            history.append({"status": c.status, "reason": c.reason, "at": c.at})
    return state, history


DELETED = "deleted"  # the reason code of an admin's DELETE: cancelled and gone from the TMF collection


def _apply_changes(state: dict[str, Any], changes: dict[str, Any]) -> None:
    doc = state["doc"]
    chars: dict[str, str] = dict(doc.get("characteristic", {}))
    if "location" in changes:
        chars = {k: v for k, v in chars.items() if k not in LOCATION_PARTS}
    if "details" in changes:
        chars = {k: v for k, v in chars.items() if not k.startswith(DETAIL)}
    if "special_needs" in changes:
        chars.pop("specialNeeds", None)
    chars.update(characteristics(changes))
    doc["characteristic"] = chars
    for name, value in changes.items():
        if name == "description":
            doc["description"] = value
        elif name == "time_requirement" and isinstance(value, dict):
            doc["requestedResolutionDate"] = value.get("deadline") or value.get("window_end")
        elif name == "channel_request_ref":
            state["external_id"] = value
        elif name == "customer_id" and isinstance(value, str):
            state["customer_id"] = value
        elif name == "service_type":
            state["ticket_type"] = value
        elif name == "attributes" and isinstance(value, dict):  # the whole set, as the request now keeps it
            value = tmf_attributes(value)
            state["severity"] = _folded(value.get("severity"))
            if value.get("severity") is None:
                doc.pop("severity", None)
            else:
                doc["severity"] = value["severity"]
            for kept in KEPT:
                if value.get(kept) is None:
                    doc.pop(kept, None)
                else:
                    doc[kept] = value[kept]


class InvalidQuery(Invalid):
    """A list query the facade cannot answer, with the parameter and the reason."""

    def __init__(self, parameter: str, reason: str) -> None:
        super().__init__(reason, parameter)
        self.parameter = parameter
        self.extra["field"] = parameter


# List queries: attribute → column; every filterable attribute is indexed.
FILTERS = {
    "status": "status",
    "severity": "severity",
    "ticketType": "ticket_type",
    "priority": "priority_name",
    "channel.id": "channel_id",
    "externalIdentifier.id": "external_id",
    "relatedParty.id": "customer_id",
}
DATE_FILTERS = {"creationDate": "creation_date", "lastUpdate": "last_update"}
SORTS = {"creationDate": "creation_date", "lastUpdate": "last_update", "status": "status", "severity": "severity"}
NOT_NULL = frozenset({"creation_date", "last_update"})
# filters the per-combination counts answer (see projection.tmf_ticket_counts)
COUNTED = frozenset({"status", "severity", "ticket_type", "priority_name", "channel_id"})
OPERATORS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
RESERVED = frozenset({"fields", "offset", "limit", "sort"})
MAX_LIMIT = 1000
MAX_OFFSET = 2**63 - 1  # PostgreSQL's OFFSET is a bigint


@dataclass(frozen=True)
class ListQuery:
    where: tuple[tuple[str, str, Any], ...]  # (column, operator, value)
    order: tuple[tuple[str, bool], ...]  # (column, descending)
    offset: int
    limit: int
    fields: frozenset[str] | None

    def sql(self, extra: tuple[tuple[str, str, Any], ...] = ()) -> tuple[str, str, list[Any], bool]:
        """(filter condition, ORDER BY, arguments, whether the counts table can answer the total)."""
        clauses, args = ["true"], []
        where = (*self.where, *extra)
        for column, op, value in where:
            if op == "IN" and len(value) == 1:
                op, value = "=", value[0]  # a plain equality lets the planner walk the index in order
            args.append(value)
            clauses.append(f"{column} = ANY(${len(args)})" if op == "IN" else f"{column} {op} ${len(args)}")
        order = ", ".join(
            f"{c} {'DESC' if desc else 'ASC'}" + ("" if c in NOT_NULL else " NULLS LAST") for c, desc in self.order
        )
        countable = all(column in COUNTED and op == "IN" for column, op, _ in where)
        return " AND ".join(clauses), f"{order}, ticket_id", args, countable


def _folded(severity: Any) -> str | None:
    """The severity as the column keeps it: ``Critical``, ``CRITICAL`` and ``critical`` are one value."""
    return severity.lower() if isinstance(severity, str) else None


def parse_list_query(params: Iterable[tuple[str, str]]) -> ListQuery:
    """``?status=acknowledged,pending&creationDate.gte=…&sort=-creationDate&fields=status&limit=50``."""
    where: list[tuple[str, str, Any]] = []
    order: list[tuple[str, bool]] = []
    offset, limit, fields = 0, 100, None
    for name, value in params:
        if name == "offset":
            offset = _int(name, value, 0, MAX_OFFSET)
        elif name == "limit":
            limit = _int(name, value, 1, MAX_LIMIT)
        elif name == "fields":
            fields = frozenset(f.strip() for f in value.split(",") if f.strip())
        elif name == "sort":
            for part in (p.strip() for p in value.split(",") if p.strip()):
                attr = part.lstrip("-+")
                if attr not in SORTS:
                    raise InvalidQuery("sort", f"cannot sort by {attr!r}; sortable: {', '.join(sorted(SORTS))}")
                order.append((SORTS[attr], part.startswith("-")))
        elif name in FILTERS:
            values = [v for v in value.split(",") if v]
            if not values:
                raise InvalidQuery(name, "an empty filter value")
            if name == "status" and (bad := [v for v in values if v not in STATUSES]):
                raise InvalidQuery(name, f"unknown status {bad[0]!r}; one of {', '.join(STATUSES)}")
            if name == "severity":
                values = [v.lower() for v in values]  # as a client sent it when creating: any case
            where.append((FILTERS[name], "IN", values))
        elif "." in name and name.split(".", 1)[0] in DATE_FILTERS:
            attr, op = name.split(".", 1)
            if op not in OPERATORS:
                raise InvalidQuery(name, f"unknown operator {op!r}; one of {', '.join(OPERATORS)}")
            try:
                when = parse_datetime(value)
            except ValueError as exc:
                raise InvalidQuery(name, str(exc)) from None
            where.append((DATE_FILTERS[attr], OPERATORS[op], when))
        else:
            known = ", ".join([*sorted(FILTERS), *(f"{d}.gt|gte|lt|lte" for d in DATE_FILTERS)])
            raise InvalidQuery(name, f"not a filter this API supports; filters: {known}")
    if not order:
        order.append(("creation_date", True))
    return ListQuery(tuple(where), tuple(order), offset, limit, fields)


def parse_datetime(value: str) -> datetime:
    """An ISO 8601 date-time with its offset (``Z`` allowed); ValueError says what is wrong."""
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO 8601 date-time") from None
    if when.tzinfo is None:
        raise ValueError(f"{value!r} needs a time zone offset")
    try:
        when.astimezone(UTC)  # 0001-01-01T00:00+14:00 is in year 0 in UTC: no datetime can hold it
    except OverflowError:
        raise ValueError(f"{value!r} is out of range: the instant must fall within years 1 to 9999 in UTC") from None
    return when


DIGITS = re.compile(r"^[0-9]{1,30}$")  # ASCII digits only: int() would take "1_0", " 5" and Arabic-Indic digits


def _int(name: str, value: str, low: int, high: int) -> int:
    if not DIGITS.match(value):
        raise InvalidQuery(name, f"{value[:40]!r} is not a non-negative integer")
    number = int(value)
    if number < low or number > high:
        raise InvalidQuery(name, f"must be between {low} and {high}")
    return number


def select(resource: dict[str, Any], fields: frozenset[str] | None) -> dict[str, Any]:
    """TMF attribute selection: the named top-level attributes plus id, href and @type."""
    if not fields:
        return resource
    return {k: v for k, v in resource.items() if k in fields or k in ALWAYS}


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def _reason(text: str | None) -> str | None:
    return _OLD_LINKED.sub(LINKED_REASON, text) if text else text


def render(
    ticket: dict[str, Any],
    history: list[dict[str, Any]],
    base: str,
    sees: Callable[[str], bool] | None = None,
) -> dict[str, Any]:
    """A stored ticket (see projection.py) as a TMF621 ``TroubleTicket``; absent values are omitted.

    ``sees(ticket_id)`` says whether the reader may know of another ticket (a duplicate's original):
    a channel only of its own. Without it no other ticket is named.
    """
    doc: dict[str, Any] = ticket["doc"]
    kept = tmf_attributes(doc)  # a row stored before its attributes were shaped reads as TMF621 too
    duplicate_of = doc.get("duplicateOf")
    related = None
    if duplicate_of and sees is not None and sees(duplicate_of):
        related = [{"@type": "TroubleTicketRelationship", "id": duplicate_of, "href": f"{base}/{duplicate_of}",
                    "relationshipType": "isDuplicateOf"}]
    out: dict[str, Any] = {
        "@type": "TroubleTicket",
        "id": str(ticket["ticket_id"]),
        "href": f"{base}/{ticket['ticket_id']}",
        "name": kept.get("name"),
        "description": doc.get("description"),
        "severity": kept.get("severity") or ticket["severity"],
        "ticketType": ticket["ticket_type"],
        "priority": ticket["priority_name"],
        "status": ticket["status"],
        "statusChangeDate": iso(ticket["status_change_date"]),
        "statusChangeReason": _reason(ticket["status_change_reason"]),
        "creationDate": iso(ticket["creation_date"]),
        "lastUpdate": iso(ticket["last_update"]),
        "requestedResolutionDate": doc.get("requestedResolutionDate"),
        "expectedResolutionDate": doc.get("expectedResolutionDate"),
        "resolutionDate": doc.get("resolutionDate"),
        "channel": {"@type": "ChannelRef", "id": ticket["channel_id"] or doc.get("channelKind", ""),
                    "name": doc.get("channelKind")},
        "relatedParty": [
            {
                "@type": "RelatedPartyRefOrPartyRoleRef",
                "role": "customer",
                "partyOrPartyRole": {"@type": "PartyRef", "id": ticket["customer_id"]},
            }
        ]
        if ticket["customer_id"]
        else None,
        "troubleTicketRelationship": related,
        "statusChangeHistory": [
            {"@type": "StatusChange", "status": h["status"], "statusChangeReason": _reason(h["reason"]),
             "statusChangeDate": iso(h["at"])}
            for h in history
        ],
        "note": kept.get("note") or None,
        "@baseType": kept.get("@baseType"),
        "@schemaLocation": kept.get("@schemaLocation"),
        "externalIdentifier": (
            [{"@type": "ExternalIdentifier", "id": ticket["external_id"], "owner": ticket["channel_id"] or ""}]
            if ticket["external_id"]
            else None
        ),
        "troubleTicketCharacteristic": [
            {"@type": "StringCharacteristic", "name": name, "valueType": "string", "value": value}
            for name, value in doc.get("characteristic", {}).items()
        ]
        or None,
    }
    if ticket["status"] is None:
        out.pop("status")
    return {k: v for k, v in out.items() if v is not None}
