"""Intake's commands, shared by the native ``/v1`` routes and the TMF621 facade.

Every use case takes the service (``Service[IntakeApp]``) and the calling
``Principal`` and runs through ``svc.commands.run(decide)``: ``decide`` loads,
calls the domain, returns; ``run`` saves (group commit) and retries a conflict.

``fields`` (``submit``) — a flat dict; unknown keys are refused:

* ``customer_id`` (str, required), ``customer_tier`` (standard | gold | vip | enterprise; default standard)
* ``region`` (str, required), ``service_type`` (a catalogue name, required), ``description`` (str, required)
* ``channel`` (web | app | hotline | onsite): optional for a registered channel (its kind is used, and a
  different value is refused); required when staff submit without a channel credential
* ``channel_request_ref`` (str), ``special_needs`` (str), ``callback_url`` (http(s) URL; default: the
  channel's registered callback URL)
* ``time_requirement``: ``{deadline, window_start, window_end}`` (ISO 8601 with offset; a window needs both ends)
* ``location``: ``{address, postcode, site_id}`` (strings); duplicate detection uses the site id, else the address
* ``details``: type-specific values (text ≤ 1000 characters, 64-bit integer, finite number within ±2⁶³, or
  boolean; ≤ 32 keys) the catalogue may require (``details.<name>``)
* ``attributes``: a free-form object (``tsop_events.inbound.JsonObject``: ≤ 8 levels, ≤ 1000 values)

Every text is refused with a control character (tab and newlines aside) and kept in Unicode NFC; a date-time
needs an offset within ±18:00 and must fall within years 1 to 9999 in UTC.

``changes`` (``update``) — the same keys except ``customer_id`` and ``channel`` (fixed once submitted).
While *pending information* or *queued for review* every such key may change (a pending application is
reviewed again at once); once *accepted* only ``description``, ``special_needs``, ``callback_url`` and
``channel_request_ref``; otherwise the request is closed to changes (409). A null removes only what a request
may lack (``special_needs``, ``callback_url``, ``location``, ``channel_request_ref``); for the rest it is 422.

Errors are ``tsop_events.errors`` (each names the field and the reason; ``create_app`` renders them):
``Invalid`` and its kinds ``InvalidInput`` / ``UnknownServiceType`` / ``IdempotencyConflict`` /
``InvalidChange`` / ``UnknownReasonCode`` (422), ``NotFound`` (404), ``Forbidden`` (403), ``Conflict``
(409), ``TooMany`` (429 with ``Retry-After``: the channel is over its per-minute limit; nothing was
recorded).
A ``callback_url`` that ``tsop_events.outbound`` refuses (loopback, private, the platform's own…) is 422.
The channel identity comes from ``caller.channel_id``.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Annotated, Any, ClassVar
from uuid import UUID, uuid4

import orjson
from pydantic import (
    AnyHttpUrl,
    ConfigDict,
    Field,
    PlainValidator,
    Strict,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from tsop_events import outbound
from tsop_events.auth import Principal, Role, issue_token
from tsop_events.clock import Clock, SystemClock
from tsop_events.commands import Idempotency, UnitOfWork
from tsop_events.envelope import derived_id
from tsop_events.errors import Conflict, Forbidden, Invalid, NotFound, TooMany
from tsop_events.inbound import (
    Inbound,
    Int,
    JsonObject,
    Moment,
    Number,
    TextCheck,
)
from tsop_events.personal import ERASED, PersonalFields
from tsop_events.runtime import Service
from tsop_events.schemas import Channel, CustomerTier
from tsop_events.settings import ServiceSettings
from tsop_events.store import EventStoreApp, IntegrityError
from tsop_intake import domain
from tsop_intake.catalogue import Catalogue
from tsop_intake.domain import (
    ChannelSystem,
    CustomerErasure,
    ErasureRefusal,
    Facts,
    IdempotencyConflict,
    InvalidChange,
    ServiceRequest,
    UnknownReasonCode,
    UnknownServiceType,
    review,
)
from tsop_intake.projection import FINISHED, covering_holds
from tsop_intake.views import IntakeIndex

__all__ = [
    "Conflict", "Forbidden", "IdempotencyConflict", "IntakeApp", "Invalid", "InvalidChange", "InvalidInput",
    "NotFound", "TooMany", "UnknownReasonCode", "UnknownServiceType",
]

STAFF = (Role.agent, Role.supervisor, Role.auditor, Role.admin)


# ---------------------------------------------------------------- the write model's handle


PERSONAL_FIELDS = frozenset({"description", "special_needs", "location", "details", "attributes"})
"""What a customer wrote or where they are: stored and sent only sealed under the ticket's data key
(crypto-shredding, docs/erasure.md). Ids, types, times, tier and region are the service record and stay."""
SERVICE_RECORD_ATTRIBUTES = frozenset({"severity", "ticketType", "@baseType", "@schemaLocation"})
"""What a TMF621 ticket keeps in its attributes that is not personal: filtered, sorted and counted on."""


class IntakeApp(EventStoreApp):
    """Intake's event store, with what its commands read: the catalogue, the clock and the index."""

    personal: ClassVar[Mapping[type, PersonalFields]] = {
        # the fingerprint (a hash of the personal fields, for Idempotency-Key retries) is sealed with them
        ServiceRequest.Submitted: PersonalFields(
            PERSONAL_FIELDS | {"fingerprint"}, customer="customer_id", keep=SERVICE_RECORD_ATTRIBUTES),
        ServiceRequest.Updated: PersonalFields(PERSONAL_FIELDS, within="changes", keep=SERVICE_RECORD_ATTRIBUTES),
        ServiceRequest.ResolutionConfirmed: PersonalFields(frozenset({"comment"})),  # the customer's words
    }

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
        self.index = IntakeIndex(self)

    def forget_erased(self, customer_ids: Iterable[str]) -> None:
        customers = frozenset(customer_ids)
        self.index.forget_customers(customers)
        super().forget_erased(customers)

    def get_request(self, ticket_id: UUID) -> ServiceRequest | None:
        found = self.find(ticket_id)
        return found if isinstance(found, ServiceRequest) else None


Intake = Service[IntakeApp]
"""What every command takes: the running service, typed by its application."""


class InvalidInput(Invalid):
    """The input breaks the inbound models' rules (every field with its reason)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason, field)
        self._errors = [{"field": field, "reason": reason}]

    @property
    def errors(self) -> list[dict[str, str]]:
        return self._errors

    @classmethod
    def from_validation(cls, exc: ValidationError, prefix: str = "") -> InvalidInput:
        errors = [
            {"field": prefix + (".".join(str(p) for p in e["loc"] if p != "[key]") or "body"), "reason": e["msg"]}
            for e in exc.errors()
        ]
        err = cls(errors[0]["field"], errors[0]["reason"])
        err._errors = errors
        err.args = ("; ".join(f"{e['field']}: {e['reason']}" for e in errors),)
        return err


# ---------------------------------------------------------------- input models
#
# Strict (tsop_events.inbound): text without control characters and in NFC, integers that are integers,
# finite numbers, moments the calendar can hold in UTC, free-form objects bounded in depth and size. So what
# a command accepts, the wire carries and every projection stores (tests/integration/test_edge_invariant.py).


class TimeRequirementIn(Inbound):
    deadline: Moment | None = None
    window_start: Moment | None = None
    window_end: Moment | None = None

    @model_validator(mode="after")
    def _window(self) -> TimeRequirementIn:
        if (self.window_start is None) != (self.window_end is None):
            raise ValueError("an appointment window needs both window_start and window_end")
        if self.window_start and self.window_end and self.window_end <= self.window_start:
            raise ValueError("window_end must be after window_start")
        return self


Short = Annotated[str, Strict(), Field(min_length=1, max_length=200), TextCheck]
Region = Annotated[str, Strict(), Field(min_length=1, max_length=64), TextCheck]
TypeName = Annotated[str, Strict(), Field(min_length=1, max_length=64), TextCheck]
Description = Annotated[str, Strict(), Field(min_length=1, max_length=4000), TextCheck]
Needs = Annotated[str, Strict(), Field(max_length=1000), TextCheck]
Ref = Annotated[str, Strict(), Field(max_length=128), TextCheck]
CustomerId = Annotated[str, Strict(), Field(min_length=1, max_length=128), TextCheck]


class LocationIn(Inbound):
    address: Annotated[str, Strict(), Field(min_length=1, max_length=500), TextCheck] | None = None
    postcode: Annotated[str, Strict(), Field(min_length=1, max_length=20), TextCheck] | None = None
    site_id: Annotated[str, Strict(), Field(min_length=1, max_length=64), TextCheck] | None = None


_DETAIL_TEXT: TypeAdapter[str] = TypeAdapter(Annotated[str, Strict(), Field(max_length=1000), TextCheck])
_DETAIL_INT: TypeAdapter[int] = TypeAdapter(Int)
_DETAIL_NUMBER: TypeAdapter[float] = TypeAdapter(Number)
_DETAIL_KINDS = "text (at most 1000 characters), an integer, a finite number, true or false"


def _detail(value: Any) -> str | int | float | bool:
    """One detail: judged by what it is, so a refusal gives one reason (a union would list four)."""
    if isinstance(value, bool):
        return value
    adapter: TypeAdapter[Any] | None = (
        _DETAIL_INT if isinstance(value, int) else _DETAIL_NUMBER if isinstance(value, float)
        else _DETAIL_TEXT if isinstance(value, str) else None
    )
    if adapter is None:
        raise ValueError(f"must be {_DETAIL_KINDS}")
    try:
        detail: str | int | float = adapter.validate_python(value)
    except ValidationError as exc:
        raise ValueError(exc.errors()[0]["msg"].removeprefix("Value error, ")) from None
    return detail


DetailValue = Annotated[
    str | int | float | bool,
    PlainValidator(_detail),
    WithJsonSchema({"anyOf": [
        _DETAIL_TEXT.json_schema(), _DETAIL_INT.json_schema(), _DETAIL_NUMBER.json_schema(), {"type": "boolean"},
    ]}),
]
Details = Annotated[
    dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")], DetailValue],
    Field(max_length=32),
]


REQUIRED_ONCE_SENT = (
    "customer_id", "customer_tier", "region", "service_type", "description", "time_requirement", "details",
    "attributes",
)


def _documented_without_null(schema: dict[str, Any]) -> None:
    """Absent means unchanged; null (removal) is refused for these, so the documented schema does not offer it."""
    for name in REQUIRED_ONCE_SENT:
        prop = schema["properties"][name]
        kinds = [k for k in prop.pop("anyOf", [prop]) if k.get("type") != "null"]
        prop.update(kinds[0])
        prop.pop("default", None)  # absent is "unchanged", not null


class ChangesIn(Inbound):
    """What may change after submission (all optional)."""

    model_config = ConfigDict(json_schema_extra=_documented_without_null)
    channel_request_ref: Ref | None = None
    customer_id: CustomerId | None = Field(
        default=None, description="Only to complete an application submitted without a customer."
    )
    customer_tier: CustomerTier | None = None
    region: Region | None = None
    service_type: TypeName | None = None
    description: Description | None = None
    time_requirement: TimeRequirementIn | None = None
    special_needs: Needs | None = None
    callback_url: AnyHttpUrl | None = None
    location: LocationIn | None = None
    details: Details | None = None
    attributes: JsonObject | None = None

    @field_validator(*REQUIRED_ONCE_SENT, mode="before")
    @classmethod
    def _not_removed(cls, value: Any) -> Any:
        # a merge patch's null removes a value: these every request keeps (the wire events carry them)
        if value is None:
            raise ValueError("cannot be removed (null): send the new value")
        return value


class ApplicationBase(Inbound):
    """What an application states besides the customer (the native body nests the customer, TMF maps it)."""

    channel: Channel | None = Field(default=None, description="Optional: the registered channel's kind is used.")
    channel_request_ref: Ref | None = None
    region: Region
    service_type: TypeName
    description: Description
    time_requirement: TimeRequirementIn = TimeRequirementIn()
    special_needs: Needs | None = None
    callback_url: AnyHttpUrl | None = None
    location: LocationIn | None = None
    details: Details = Field(default_factory=dict)
    attributes: JsonObject = Field(
        default_factory=dict, description="Kept, not acted on: what the TMF facade carries (name, severity, notes)."
    )


class FieldsIn(ApplicationBase):
    """An application as ``submit`` takes it.

    ``customer_id`` and ``region`` may be empty (a TMF621 ticket need not name them): review then asks for
    them (pending information). The native body requires both.
    """

    region: Annotated[str, Strict(), Field(max_length=64), TextCheck] = ""
    customer_id: Annotated[str, Strict(), Field(max_length=128), TextCheck] = ""
    customer_tier: CustomerTier = CustomerTier.standard


# ---------------------------------------------------------------- helpers


async def _caught_up(app: IntakeApp) -> None:
    """After a start, decide nothing before the index has read the whole log (duplicates, counts)."""
    if not app.index.refreshed_at:
        await asyncio.to_thread(app.index.refresh)


def _normalise_location(loc: dict[str, Any] | None) -> dict[str, Any] | None:
    if not loc:
        return None
    return {k: loc.get(k) for k in ("address", "postcode", "site_id")}


_REASON: TypeAdapter[str] = TypeAdapter(Annotated[str, Strict(), Field(max_length=1000), TextCheck])


def _reason(name: str, value: str | None) -> str | None:
    """A free-text argument a caller passes without a body model (the TMF facade): held to the same rule."""
    if value is None:
        return None
    try:
        return _REASON.validate_python(value)
    except ValidationError as exc:
        raise InvalidInput(name, exc.errors()[0]["msg"]) from None


def _fingerprint(fields: dict[str, Any]) -> str:
    """The submission's fingerprint: an ``Idempotency-Key`` retry must send the same body. It is a hash of the
    customer's personal fields, so it is stored and opened like them (sealed under the ticket's data key, see
    ``IntakeApp.personal``): once they are erased nobody can match it with guessed plaintext (docs/erasure.md)."""
    return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _check_owner(request: ServiceRequest, caller: Principal) -> None:
    if caller.channel_id is not None:
        if request.channel_id != caller.channel_id:
            raise Forbidden("this request was submitted by another channel", "ticket_id")
    elif not caller.has(*STAFF):
        raise Forbidden(f"{caller.subject} may not act on requests", "ticket_id")


def _request(uow: UnitOfWork, ticket_id: UUID) -> ServiceRequest | None:
    """The request with this id; None if there is none (or the id is a channel's)."""
    found = uow.get(ticket_id)
    return found if isinstance(found, ServiceRequest) else None


def _load(uow: UnitOfWork, ticket_id: UUID, caller: Principal) -> ServiceRequest:
    request = _request(uow, ticket_id)
    if request is None:
        raise NotFound(f"no request {ticket_id}", "ticket_id")
    _check_owner(request, caller)
    return request


async def _closed_downstream(svc: Intake, ticket: UUID) -> bool:
    status = await svc.pool.fetchval("SELECT status FROM request_status WHERE ticket_id = $1", ticket)
    return status in FINISHED


async def check_callback(svc: Intake, field: str, url: object) -> None:
    """Refuse a callback URL the outbound guard would never deliver to (422 naming the field)."""
    if url is None:
        return
    try:
        await outbound.guard_for(svc.settings).check(str(url))
    except outbound.Refused as exc:
        why = f"{exc.reason}: callbacks may not go there (operators: TSOP_OUTBOUND_ALLOW)"
        raise InvalidInput(field, why) from None


MINUTE = timedelta(minutes=1)


def _channel_limit(app: IntakeApp, channel_id: str | None) -> int | None:
    """A registered channel's own per-minute limit, else the catalogue's; None = no limit."""
    info = app.index.channel(channel_id) if channel_id is not None else None
    if info is not None and info.rate_limit_per_minute is not None:
        return info.rate_limit_per_minute
    return app.catalogue.limits.channel_per_minute


def _refuse_over_limit(app: IntakeApp, channel_key: str, channel_id: str | None, now: datetime) -> None:
    """429 with Retry-After when the channel's last minute is full (synchronous: no submission slips in)."""
    limit = _channel_limit(app, channel_id)
    if limit is None:
        return
    index = app.index
    with index.lock:
        window = index.per_channel.get(channel_key)
        if window is None or window.count(now) < limit:
            return
        times = sorted(window.items.values())
    # the window has room again once all but limit-1 of these are older than a minute
    frees_at = times[len(times) - limit] + MINUTE
    wait = max(1, math.ceil((frees_at - now).total_seconds()))
    raise TooMany(f"over the channel's limit of {limit} requests per minute; retry in {wait} s", "channel",
                  retry_after=wait, limit=limit)


def _duplicate(app: IntakeApp, request_id: UUID, customer_id: str, service_type: str,
               location: dict[str, Any] | None) -> UUID | None:
    """The open request this one would duplicate, as the index has it (None without a customer yet)."""
    if not customer_id.strip():
        return None  # no customer yet: nothing to be a duplicate of (review asks for the customer)
    dup = app.index.open_duplicate(customer_id, service_type, location)
    return None if dup == request_id else dup


async def _facts(svc: Intake, request_id: UUID, customer_id: str, service_type: str,
                 location: dict[str, Any] | None, channel_key: str, now: datetime) -> Facts:
    """Look up what the review needs; returns without awaiting after the last lookup (so no other
    submission can slip in between these facts and the caller noting its own request)."""
    app = svc.app
    checked: set[UUID] = set()
    while True:
        dup = _duplicate(app, request_id, customer_id, service_type, location)
        if dup is None or dup in checked:
            break
        if await _closed_downstream(svc, dup):
            app.index.drop_closed(dup)
        checked.add(dup)
    _, per_customer = app.index.recent(channel_key, customer_id, now)
    return Facts(now=now, open_duplicate=dup, customer_recent=per_customer)


class _CheckFirst(Exception):
    """Raised by a ``decide`` that needs to know whether a duplicate's original finished downstream."""

    def __init__(self, ticket: UUID) -> None:
        self.ticket = ticket


async def _run_checking(svc: Intake, decide: Callable[[UnitOfWork, dict[UUID, bool]], ServiceRequest]
                        ) -> ServiceRequest:
    """Run ``decide``, telling it which requests it asked about finished downstream (read outside ``decide``)."""
    closed: dict[UUID, bool] = {}
    while True:
        try:
            return await svc.commands.run(lambda uow: decide(uow, closed))
        except _CheckFirst as ask:
            closed[ask.ticket] = await _closed_downstream(svc, ask.ticket)
            if closed[ask.ticket]:
                svc.app.index.drop_closed(ask.ticket)


def _saved(svc: Intake, request: ServiceRequest, events: list[object]) -> ServiceRequest:
    svc.app.index.observe(events)  # read-your-write: this instance's index knows what it just saved
    return request


# ---------------------------------------------------------------- requests


async def submit(
    svc: Intake, fields: dict[str, Any] | FieldsIn, caller: Principal, idempotency_key: str | None
) -> tuple[ServiceRequest, bool]:
    """Submit an application; it is reviewed at once. Returns the request and whether it is new.

    ``fields`` is a dict (validated here), or a ``FieldsIn`` a route has validated already.
    """
    app = svc.app
    if isinstance(fields, FieldsIn):
        parsed = fields
    else:
        try:
            parsed = FieldsIn.model_validate(fields)
        except ValidationError as exc:
            raise InvalidInput.from_validation(exc) from None
    if app.catalogue.get(parsed.service_type) is None:
        raise UnknownServiceType(f"{parsed.service_type!r} is not in the catalogue", "service_type",
                                 known=sorted(app.catalogue.types))
    await _caught_up(app)
    data = parsed.model_dump(mode="json")
    data["location"] = _normalise_location(data["location"])
    if caller.channel_id is not None:
        info = app.index.channel(caller.channel_id)
        if info is None:
            await asyncio.to_thread(app.index.refresh)
            info = app.index.channel(caller.channel_id)
        if info is None:
            raise Forbidden("the calling channel is not registered", "channel")
        if data["channel"] is not None and data["channel"] != info.kind:
            raise InvalidInput("channel", f"this credential belongs to a {info.kind} channel, not {data['channel']}")
        data["channel"] = info.kind
        if data["callback_url"] is None:
            data["callback_url"] = info.callback_url  # checked when the channel registered it
        elif parsed.callback_url is not None:
            await check_callback(svc, "callback_url", data["callback_url"])
        owner = caller.channel_id
    elif data["channel"] is None:
        raise InvalidInput("channel", "staff submitting without a channel credential must name the channel")
    else:
        owner = f"staff:{caller.subject}"
        await check_callback(svc, "callback_url", data["callback_url"])
    # only a keyed submission can be retried: one without a key has nothing to be compared with
    fingerprint = _fingerprint(data) if idempotency_key else ""
    ticket_id = derived_id("request", owner, idempotency_key) if idempotency_key else uuid4()
    if idempotency_key and ticket_id in app.index.versions:
        return await _replay(svc, ticket_id, fingerprint), False

    now = app.clock.now()
    channel_key = caller.channel_id or data["channel"]
    _refuse_over_limit(app, channel_key, caller.channel_id, now)  # cheap, before any other work
    facts = await _facts(svc, ticket_id, data["customer_id"], data["service_type"], data["location"], channel_key,
                         now)
    noted = False

    def decide(uow: UnitOfWork) -> tuple[ServiceRequest, bool]:
        nonlocal noted
        if noted:
            if not idempotency_key:
                raise IntegrityError(f"request {ticket_id} was saved by another writer")
            # a conflict: the first submission with this key was saved meanwhile (a refresh may have
            # skipped it while ours was noted); the index learns the stored one, the caller gets it
            app.index.forget(ticket_id)
            noted = False
            app.index.reobserve(ticket_id)
            stored = _request(uow, ticket_id)
            if stored is None:
                raise NotFound(f"no request {ticket_id}", "Idempotency-Key")
            return _same_submission(stored, fingerprint), False
        # again after the last await, so concurrent submissions cannot all pass the same last free slot
        _refuse_over_limit(app, channel_key, caller.channel_id, now)
        request = ServiceRequest(
            id=ticket_id,
            channel=data["channel"],
            channel_id=caller.channel_id,
            channel_request_ref=data["channel_request_ref"],
            customer_id=data["customer_id"],
            customer_tier=data["customer_tier"],
            region=data["region"],
            service_type=data["service_type"],
            description=data["description"],
            time_requirement=data["time_requirement"],
            special_needs=data["special_needs"],
            callback_url=data["callback_url"],
            location=data["location"],
            details=data["details"],
            submitted_at=now,
            fingerprint=fingerprint,
            attributes=data["attributes"],
        )
        request.apply_decision(review(app.catalogue, request.fields(), facts), now)
        # noted before the save, with no await in between: a concurrent twin sees it as open
        app.index.observe(request.pending_events)
        noted = True
        uow.add(request)
        return request, True

    try:
        # on the loop, at once: no await between the facts, the limit check and noting the request
        return await svc.commands.run(decide, inline=True)
    except BaseException:
        if noted:
            app.index.forget(ticket_id)
        raise


def _same_submission(existing: ServiceRequest, fingerprint: str) -> ServiceRequest:
    if getattr(existing, "fingerprint", None) == ERASED:
        return existing  # its customer's data was erased: the body cannot be compared, the retry gets the request
    if getattr(existing, "fingerprint", None) != fingerprint:
        raise IdempotencyConflict("this key was already used for a different request", "Idempotency-Key")
    return existing


async def _replay(svc: Intake, ticket_id: UUID, fingerprint: str, patience: float = 5.0) -> ServiceRequest:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    # the index notes a submission before its save commits: a twin arriving meanwhile waits for it
    while (existing := await svc.commands.run(lambda uow: _request(uow, ticket_id))) is None:
        if loop.time() > deadline:
            raise Conflict("a submission with this key is still being saved; retry", "Idempotency-Key")
        await asyncio.sleep(0.02)
    return _same_submission(existing, fingerprint)


async def get(svc: Intake, ticket_id: UUID, caller: Principal) -> ServiceRequest:
    return await svc.commands.run(lambda uow: _load(uow, ticket_id, caller))


async def sees_duplicate(svc: Intake, request: ServiceRequest, caller: Principal) -> bool:
    """Whether the caller may know which ticket ``request`` duplicates: staff always, a channel only its own."""
    if request.duplicate_of is None or caller.channel_id is None:
        return True
    original_id = UUID(request.duplicate_of)
    original = await svc.commands.run(lambda uow: _request(uow, original_id))
    return original is not None and original.channel_id == caller.channel_id


async def update(svc: Intake, ticket_id: UUID, changes: dict[str, Any], caller: Principal) -> ServiceRequest:
    """Complete pending information or correct attributes; a pending application is reviewed again."""
    app = svc.app
    for fixed in ("channel", "channel_id", "customer"):  # customer_id: once, to complete (see domain)
        if fixed in changes:
            raise InvalidChange(fixed, "cannot be changed once submitted")
    try:
        parsed = ChangesIn.model_validate(changes)
    except ValidationError as exc:
        raise InvalidInput.from_validation(exc) from None
    normalised = parsed.model_dump(mode="json", include=set(changes))
    await check_callback(svc, "callback_url", normalised.get("callback_url"))
    if "location" in normalised:
        normalised["location"] = _normalise_location(normalised["location"])
    if "service_type" in normalised and app.catalogue.get(normalised["service_type"]) is None:
        raise UnknownServiceType(f"{normalised['service_type']!r} is not in the catalogue", "service_type",
                                 known=sorted(app.catalogue.types))
    await _caught_up(app)
    events: list[object] = []

    def decide(uow: UnitOfWork, closed: dict[UUID, bool]) -> ServiceRequest:
        request = _load(uow, ticket_id, caller)
        now = app.clock.now()
        if request.update(normalised, caller.subject, now):
            dup = _duplicate(app, request.id, request.customer_id, request.service_type, request.location)
            if dup is not None and dup not in closed:
                raise _CheckFirst(dup)
            _, per_customer = app.index.recent(request.channel_id or request.channel, request.customer_id, now)
            facts = Facts(now=now, open_duplicate=dup, customer_recent=per_customer)
            request.apply_decision(review(app.catalogue, request.fields(), facts), now)
        events[:] = request.pending_events
        return request

    return _saved(svc, await _run_checking(svc, decide), events)


def _reason_code(app: IntakeApp, kind: str, code: str) -> str:
    codes: dict[str, str] = getattr(app.catalogue.reason_codes, kind)
    if code not in codes:
        raise UnknownReasonCode(f"{code!r} is not a {kind} reason code", "reason_code", known=sorted(codes))
    return codes[code]


async def cancel(
    svc: Intake, ticket_id: UUID, reason_code: str, reason: str, caller: Principal
) -> ServiceRequest:
    """Withdraw an open request (pending, queued or accepted) with a catalogued reason code."""
    app = svc.app
    meaning = _reason_code(app, "cancel", reason_code)
    reason = _reason("reason", reason) or ""
    events: list[object] = []

    def decide(uow: UnitOfWork, closed: dict[UUID, bool]) -> ServiceRequest:
        request = _load(uow, ticket_id, caller)
        if request.status == "accepted":
            if ticket_id not in closed:
                raise _CheckFirst(ticket_id)
            if closed[ticket_id]:
                raise Conflict("the request is already resolved or closed", "status")
        request.cancel(reason_code, reason or meaning, caller.subject, app.clock.now())
        events[:] = request.pending_events
        return request

    return _saved(svc, await _run_checking(svc, decide), events)


CONFIRMABLE = frozenset({"resolved", "feedback_sent"})  # resolved, not yet rated, closed or reopened


async def confirm_resolution(svc: Intake, ticket_id: UUID, comment: str | None, caller: Principal) -> ServiceRequest:
    """The customer confirmed, through the ticket's own channel (or to staff), that its resolution solved the
    problem (§2.4): recorded here, closed by feedback. Only a ticket resolved downstream (the status read model)
    can be confirmed (409 otherwise: a ticket closed already is the caller's to answer as a retry). Should the
    ticket close or reopen meanwhile, feedback takes the confirmation for what it is then (nothing, or kept)."""
    comment = _reason("comment", comment)
    status = await svc.pool.fetchval("SELECT status FROM request_status WHERE ticket_id = $1", ticket_id)
    if status not in CONFIRMABLE:
        raise Conflict(f"the ticket is {status or 'not resolved'}: only a resolution can be confirmed", "status")
    events: list[object] = []

    def decide(uow: UnitOfWork) -> ServiceRequest:
        request = _load(uow, ticket_id, caller)
        request.confirm_resolution(caller.subject, comment, svc.app.clock.now())
        events[:] = request.pending_events
        return request

    return _saved(svc, await svc.commands.run(decide), events)


async def decide(
    svc: Intake, ticket_id: UUID, accept: bool, reason_code: str, reason: str | None, caller: Principal
) -> ServiceRequest:
    """An agent's decision on a request in the review queue, with a catalogued reason code."""
    app = svc.app
    meaning = _reason_code(app, "accept" if accept else "reject", reason_code)
    reason = _reason("reason", reason)
    events: list[object] = []

    def judge(uow: UnitOfWork) -> ServiceRequest:
        request = _load(uow, ticket_id, caller)
        now = app.clock.now()
        st = app.catalogue.get(request.service_type)
        if accept and st is None:
            raise Conflict(f"{request.service_type!r} is no longer in the catalogue", "service_type")
        if accept and st is not None:
            decision = domain.accept_decision(app.catalogue, st, request.fields(), now, reason_code,
                                              reason or meaning)
        else:
            decision = domain.Decision("reject", reason_code, reason or meaning)
        request.agent_decision(decision, now, caller.subject)
        events[:] = request.pending_events
        return request

    return _saved(svc, await svc.commands.run(judge), events)


# ---------------------------------------------------------------- channels


def _channel(uow: UnitOfWork, channel_id: UUID) -> ChannelSystem:
    found = uow.get(channel_id)
    if not isinstance(found, ChannelSystem):
        raise NotFound(f"no channel {channel_id}", "channel_id")
    return found


async def register_channel(
    svc: Intake, name: str, kind: str, callback_url: str | None, rate_limit_per_minute: int | None,
    caller: Principal, idempotency_key: str | None = None,
) -> tuple[ChannelSystem, str, str | None]:
    """Register a channel system and issue its first credential: (channel, credential id, token shown once).

    With an ``Idempotency-Key``, a retry after a lost answer finds the channel registered the first
    time (one channel, not two) and answers without a token: only its hash was kept.
    """
    app = svc.app
    name = _reason("name", name) or ""
    await check_callback(svc, "callback_url", callback_url)
    token, digest = issue_token("tsop_ch")
    credential_id = uuid4().hex[:12]
    events: list[object] = []
    body = {"name": name, "kind": kind, "callback_url": callback_url, "rate_limit_per_minute": rate_limit_per_minute}
    key = Idempotency.of(f"register-channel:{caller.subject}", idempotency_key, body) if idempotency_key else None

    def register(uow: UnitOfWork) -> tuple[ChannelSystem, str]:
        now = app.clock.now()
        ch = ChannelSystem(id=uuid4(), name=name, kind=kind, callback_url=callback_url,
                           rate_limit_per_minute=rate_limit_per_minute, registered_by=caller.subject,
                           registered_at=now)
        ch.issue_credential(credential_id, digest, caller.subject, now)
        events[:] = ch.pending_events
        uow.add(ch)
        return ch, credential_id

    def replay(uow: UnitOfWork, kept: str) -> tuple[ChannelSystem, str]:
        channel, first_credential = kept.split(" ", 1)
        return _channel(uow, UUID(channel)), first_credential

    (ch, issued), replayed = await svc.commands.run_once(key, register, lambda r: f"{r[0].id} {r[1]}", replay)
    if replayed:
        return ch, issued, None
    app.index.observe(events)
    return ch, issued, token


async def _change_channel(svc: Intake, channel_id: UUID, change: Callable[[ChannelSystem], None]
                          ) -> ChannelSystem:
    def decide(uow: UnitOfWork) -> ChannelSystem:
        ch = _channel(uow, channel_id)
        change(ch)
        return ch

    ch = await svc.commands.run(decide)
    await asyncio.to_thread(svc.app.index.refresh)
    return ch


async def issue_credential(svc: Intake, channel_id: UUID, caller: Principal) -> tuple[ChannelSystem, str, str]:
    app = svc.app
    token, digest = issue_token("tsop_ch")
    credential_id = uuid4().hex[:12]
    ch = await _change_channel(
        svc, channel_id, lambda c: c.issue_credential(credential_id, digest, caller.subject, app.clock.now())
    )
    return ch, credential_id, token


async def revoke_credential(svc: Intake, channel_id: UUID, credential_id: str, caller: Principal
                            ) -> ChannelSystem:
    app = svc.app
    return await _change_channel(
        svc, channel_id, lambda c: c.revoke_credential(credential_id, caller.subject, app.clock.now())
    )


async def change_channel(
    svc: Intake, channel_id: UUID, changes: dict[str, Any], caller: Principal
) -> ChannelSystem:
    app = svc.app
    await check_callback(svc, "callback_url", changes.get("callback_url"))
    return await _change_channel(
        svc, channel_id, lambda c: c.change_settings(changes, caller.subject, app.clock.now())
    )


async def get_channel(svc: Intake, channel_id: UUID) -> ChannelSystem:
    return await svc.commands.run(lambda uow: _channel(uow, channel_id))


# ---------------------------------------------------------------- lawful erasure (PIPL, §1.4, §7.4)


async def request_erasure(
    svc: Intake, customer_id: str, legal_basis: str, reference: str, caller: Principal
) -> tuple[CustomerErasure, bool, int]:
    """Record the customer's erasure request (once: a repeat answers the first record) and destroy their data
    keys (every time: a repeat after a crash between the two completes it). (record, created, keys destroyed)."""
    app = svc.app
    erasure_id = CustomerErasure.id_for(customer_id)
    await _refuse_under_hold(svc, customer_id, legal_basis, reference, caller)

    def record(uow: UnitOfWork) -> tuple[CustomerErasure, bool]:
        found = uow.find(CustomerErasure, erasure_id)
        if found is not None:
            return found, False
        erasure = CustomerErasure.request(customer_id, legal_basis, reference, caller.subject, app.clock.now())
        uow.add(erasure)
        return erasure, True

    erasure, created = await svc.commands.run(record)
    destroyed = await asyncio.to_thread(app.keyring.erase, customer_id)
    # what this process holds opened or derived in memory: aggregates loaded before the keys were destroyed, the
    # duplicate index's locations (other processes forget when they hear CustomerDataErased)
    app.forget_erased({customer_id})
    return erasure, created, destroyed


async def legal_holds(svc: Intake, customer_id: str) -> list[dict[str, Any]]:
    """The legal holds in force that intake has heard of and that cover the customer: on the customer, on one of
    their requests, or on an incident one of their requests was linked to (docs/erasure.md)."""
    await asyncio.to_thread(svc.app.index.refresh)
    tickets = sorted(str(t) for t in svc.app.index.tickets_of(customer_id))
    return await covering_holds(svc.pool, customer_id, tickets)


async def _refuse_under_hold(
    svc: Intake, customer_id: str, legal_basis: str, reference: str, caller: Principal
) -> None:
    """A legal hold preserves evidence: while one covers the customer their data may not be destroyed (409 naming
    each hold; nothing is erased). The refusal is recorded (``CustomerErasureRefused``), auditable as the erasure
    would have been. Released, the request can be made again."""
    holds = await legal_holds(svc, customer_id)
    if not holds:
        return
    app = svc.app

    def record(uow: UnitOfWork) -> ErasureRefusal:
        refusal = ErasureRefusal.record(customer_id, legal_basis, reference, caller.subject, app.clock.now(), holds)
        uow.add(refusal)
        return refusal

    refusal = await svc.commands.run(record)
    named = "; ".join(
        f"{h['kind']} {h['subject']}" + (f" (through ticket {h['ticket_id']})" if h.get("ticket_id") else "")
        + f", placed {h['placed_at']}: {h['reason']}" for h in holds)
    raise Conflict(f"a legal hold covers this customer's data ({named}); the erasure must wait until it is "
                   "released", "customer_id", holds=holds, refusal_id=str(refusal.id))
