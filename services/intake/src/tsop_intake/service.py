"""Intake's commands, shared by the native ``/v1`` routes and the TMF621 facade.

Every function takes the service's ``Runtime`` and the calling ``Principal``;
I/O (lookups, saves) happens here, decisions in ``domain``.

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

Errors are ``IntakeError`` subclasses carrying ``status``, ``title`` and ``errors`` (``[{field, reason}]``):
``InvalidInput`` / ``UnknownServiceType`` / ``IdempotencyConflict`` / ``InvalidChange`` /
``UnknownReasonCode`` (422), ``NotFound`` (404), ``NotYours`` (403), ``InvalidTransition`` (409),
``tsop_events.errors.TooMany`` (429 with ``Retry-After``: the channel is over its per-minute limit;
nothing was recorded).
A ``callback_url`` that ``tsop_events.outbound`` refuses (loopback, private, the platform's own…) is 422.
The channel identity comes from ``caller.channel_id``.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Annotated, Any
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
from tsop_events.envelope import derived_id
from tsop_events.errors import TooMany
from tsop_events.http import Problem
from tsop_events.inbound import (
    Inbound,
    Int,
    JsonObject,
    Moment,
    Number,
    TextCheck,
)
from tsop_events.runtime import Runtime
from tsop_events.schemas import Channel, CustomerTier
from tsop_events.store import IntegrityError, retry_on_conflict
from tsop_intake import domain
from tsop_intake.application import IntakeApp
from tsop_intake.domain import ChannelSystem, Facts, ServiceRequest, review
from tsop_intake.projection import FINISHED

STAFF = (Role.agent, Role.supervisor, Role.auditor, Role.admin)


# ---------------------------------------------------------------- errors


class IntakeError(Problem):
    """A refused command; a ``Problem`` (problem+json natively, TMF error bodies under /tmf-api)."""

    status_code = 422
    title_text = "Invalid request"

    def __init__(self, field: str, reason: str, **extra: Any) -> None:
        self.field, self.reason = field, reason
        self.errors: list[dict[str, str]] = [{"field": field, "reason": reason}]
        super().__init__(self.status_code, self.title_text, f"{field}: {reason}", errors=self.errors, **extra)


class InvalidInput(IntakeError):
    @classmethod
    def from_validation(cls, exc: ValidationError, prefix: str = "") -> InvalidInput:
        errors = [
            {"field": prefix + (".".join(str(p) for p in e["loc"] if p != "[key]") or "body"), "reason": e["msg"]}
            for e in exc.errors()
        ]
        err = cls(errors[0]["field"], errors[0]["reason"])
        err.errors[:] = errors
        err.detail = "; ".join(f"{e['field']}: {e['reason']}" for e in errors)
        return err


class UnknownServiceType(IntakeError):
    title_text = "Unknown service type"


class IdempotencyConflict(IntakeError):
    title_text = "Idempotency-Key reused"


class InvalidChange(IntakeError):
    title_text = "Invalid change"


class UnknownReasonCode(IntakeError):
    title_text = "Unknown reason code"


class NotFound(IntakeError):
    status_code = 404
    title_text = "Not found"


class NotYours(IntakeError):
    status_code = 403
    title_text = "Forbidden"


class InvalidTransition(IntakeError):
    status_code = 409
    title_text = "Not allowed in this state"


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


def intake(runtime: Runtime) -> IntakeApp:
    app = runtime.app
    assert isinstance(app, IntakeApp)
    return app


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
    return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _check_owner(request: ServiceRequest, caller: Principal) -> None:
    if caller.channel_id is not None:
        if request.channel_id != caller.channel_id:
            raise NotYours("ticket_id", "this request was submitted by another channel")
    elif not caller.has(*STAFF):
        raise NotYours("ticket_id", f"{caller.subject} may not act on requests")


async def _load(runtime: Runtime, ticket_id: UUID, caller: Principal) -> ServiceRequest:
    found = await asyncio.to_thread(intake(runtime).get_request, ticket_id)
    if found is None:
        raise NotFound("ticket_id", f"no request {ticket_id}")
    _check_owner(found, caller)
    return found


async def _closed_downstream(runtime: Runtime, ticket: UUID) -> bool:
    status = await runtime.pool.fetchval("SELECT status FROM request_status WHERE ticket_id = $1", ticket)
    return status in FINISHED


async def check_callback(runtime: Runtime, field: str, url: object) -> None:
    """Refuse a callback URL the outbound guard would never deliver to (422 naming the field)."""
    if url is None:
        return
    try:
        await outbound.guard_for(getattr(runtime, "settings", None)).check(str(url))
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


async def _facts(runtime: Runtime, request: ServiceRequest, now: datetime) -> Facts:
    """Look up what the review needs; returns without awaiting after the last lookup (so no other
    submission can slip in between these facts and the caller noting its own request)."""
    app = intake(runtime)
    checked: set[UUID] = set()
    while True:
        if not request.customer_id.strip():
            dup = None  # no customer yet: nothing to be a duplicate of (review asks for the customer)
            break
        dup = app.index.open_duplicate(request.customer_id, request.service_type, request.location)
        if dup == request.id:
            dup = None
        if dup is None or dup in checked:
            break
        if await _closed_downstream(runtime, dup):
            app.index.drop_closed(dup)
        checked.add(dup)
    _, per_customer = app.index.recent(request.channel_id or request.channel, request.customer_id, now)
    return Facts(now=now, open_duplicate=dup, customer_recent=per_customer)


# ---------------------------------------------------------------- requests


async def submit(
    runtime: Runtime, fields: dict[str, Any] | FieldsIn, caller: Principal, idempotency_key: str | None
) -> tuple[ServiceRequest, bool]:
    """Submit an application; it is reviewed at once. Returns the request and whether it is new.

    ``fields`` is a dict (validated here), or a ``FieldsIn`` a route has validated already.
    """
    app = intake(runtime)
    if isinstance(fields, FieldsIn):
        parsed = fields
    else:
        try:
            parsed = FieldsIn.model_validate(fields)
        except ValidationError as exc:
            raise InvalidInput.from_validation(exc) from None
    if app.catalogue.get(parsed.service_type) is None:
        raise UnknownServiceType(
            "service_type", f"{parsed.service_type!r} is not in the catalogue", known=sorted(app.catalogue.types)
        )
    await _caught_up(app)
    data = parsed.model_dump(mode="json")
    data["location"] = _normalise_location(data["location"])
    if caller.channel_id is not None:
        info = app.index.channel(caller.channel_id)
        if info is None:
            await asyncio.to_thread(app.index.refresh)
            info = app.index.channel(caller.channel_id)
        if info is None:
            raise NotYours("channel", "the calling channel is not registered")
        if data["channel"] is not None and data["channel"] != info.kind:
            raise InvalidInput("channel", f"this credential belongs to a {info.kind} channel, not {data['channel']}")
        data["channel"] = info.kind
        if data["callback_url"] is None:
            data["callback_url"] = info.callback_url  # checked when the channel registered it
        elif parsed.callback_url is not None:
            await check_callback(runtime, "callback_url", data["callback_url"])
        owner = caller.channel_id
    elif data["channel"] is None:
        raise InvalidInput("channel", "staff submitting without a channel credential must name the channel")
    else:
        owner = f"staff:{caller.subject}"
        await check_callback(runtime, "callback_url", data["callback_url"])
    fingerprint = _fingerprint(data)
    ticket_id = derived_id("request", owner, idempotency_key) if idempotency_key else uuid4()
    if idempotency_key and ticket_id in app.index.versions:
        return await _replay(runtime, ticket_id, fingerprint), False

    now = app.clock.now()
    channel_key = caller.channel_id or data["channel"]
    _refuse_over_limit(app, channel_key, caller.channel_id, now)  # cheap, before any other work
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
    facts = await _facts(runtime, request, now)
    # again after the last await, so concurrent submissions cannot all pass the same last free slot
    _refuse_over_limit(app, channel_key, caller.channel_id, now)
    request.apply_decision(review(app.catalogue, request.fields(), facts), now)
    # noted before the save, with no await in between: a concurrent twin sees it as open
    app.index.observe(request.pending_events)
    try:
        await runtime.committer.save(request)
    except IntegrityError:
        app.index.forget(ticket_id)
        if not idempotency_key:
            raise
        # the first submission with this key: a refresh may have skipped it while ours was noted
        await asyncio.to_thread(app.index.reobserve, ticket_id)
        return await _replay(runtime, ticket_id, fingerprint), False
    except BaseException:
        app.index.forget(ticket_id)
        raise
    return request, True


async def _replay(runtime: Runtime, ticket_id: UUID, fingerprint: str, patience: float = 5.0) -> ServiceRequest:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    # the index notes a submission before its save commits: a twin arriving meanwhile waits for it
    while (existing := await asyncio.to_thread(intake(runtime).get_request, ticket_id)) is None:
        if loop.time() > deadline:
            raise InvalidTransition("Idempotency-Key", "a submission with this key is still being saved; retry")
        await asyncio.sleep(0.02)
    if getattr(existing, "fingerprint", None) != fingerprint:
        raise IdempotencyConflict("Idempotency-Key", "this key was already used for a different request")
    return existing


async def get(runtime: Runtime, ticket_id: UUID, caller: Principal) -> ServiceRequest:
    return await _load(runtime, ticket_id, caller)


async def sees_duplicate(runtime: Runtime, request: ServiceRequest, caller: Principal) -> bool:
    """Whether the caller may know which ticket ``request`` duplicates: staff always, a channel only its own."""
    if request.duplicate_of is None or caller.channel_id is None:
        return True
    original = await asyncio.to_thread(intake(runtime).get_request, UUID(request.duplicate_of))
    return original is not None and original.channel_id == caller.channel_id


def _domain_errors(exc: domain.RequestError) -> IntakeError:
    if isinstance(exc, domain.InvalidChange):
        return InvalidChange(exc.field, exc.reason)
    if isinstance(exc, domain.InvalidState):
        return InvalidTransition("status", str(exc), current_status=exc.status)
    return InvalidTransition("status", str(exc))


async def _change(
    runtime: Runtime,
    ticket_id: UUID,
    caller: Principal,
    change: Callable[[ServiceRequest, datetime], Awaitable[None]],
) -> ServiceRequest:
    """Load, decide, save; when another writer saved first, decide again on fresh state."""
    app = intake(runtime)
    for attempt in range(5):
        request = await _load(runtime, ticket_id, caller)
        try:
            await change(request, app.clock.now())
        except domain.RequestError as exc:
            raise _domain_errors(exc) from None
        events = list(request.pending_events)
        try:
            await runtime.committer.save(request)
        except IntegrityError:
            if attempt == 4:
                raise
            continue
        app.index.observe(events)
        return request
    raise AssertionError("unreachable")


async def update(runtime: Runtime, ticket_id: UUID, changes: dict[str, Any], caller: Principal) -> ServiceRequest:
    """Complete pending information or correct attributes; a pending application is reviewed again."""
    app = intake(runtime)
    for fixed in ("channel", "channel_id", "customer"):  # customer_id: once, to complete (see domain)
        if fixed in changes:
            raise InvalidChange(fixed, "cannot be changed once submitted")
    try:
        parsed = ChangesIn.model_validate(changes)
    except ValidationError as exc:
        raise InvalidInput.from_validation(exc) from None
    normalised = parsed.model_dump(mode="json", include=set(changes))
    await check_callback(runtime, "callback_url", normalised.get("callback_url"))
    if "location" in normalised:
        normalised["location"] = _normalise_location(normalised["location"])
    if "service_type" in normalised and app.catalogue.get(normalised["service_type"]) is None:
        raise UnknownServiceType("service_type", f"{normalised['service_type']!r} is not in the catalogue",
                                 known=sorted(app.catalogue.types))
    await _caught_up(app)

    async def complete(request: ServiceRequest, now: datetime) -> None:
        if request.update(normalised, caller.subject, now):
            facts = await _facts(runtime, request, now)
            request.apply_decision(review(app.catalogue, request.fields(), facts), now)

    return await _change(runtime, ticket_id, caller, complete)


def _reason_code(app: IntakeApp, kind: str, code: str) -> str:
    codes: dict[str, str] = getattr(app.catalogue.reason_codes, kind)
    if code not in codes:
        raise UnknownReasonCode("reason_code", f"{code!r} is not a {kind} reason code", known=sorted(codes))
    return codes[code]


async def cancel(
    runtime: Runtime, ticket_id: UUID, reason_code: str, reason: str, caller: Principal
) -> ServiceRequest:
    """Withdraw an open request (pending, queued or accepted) with a catalogued reason code."""
    meaning = _reason_code(intake(runtime), "cancel", reason_code)
    reason = _reason("reason", reason) or ""

    async def withdraw(request: ServiceRequest, now: datetime) -> None:
        if request.status == "accepted" and await _closed_downstream(runtime, ticket_id):
            raise InvalidTransition("status", "the request is already resolved or closed")
        request.cancel(reason_code, reason or meaning, caller.subject, now)

    return await _change(runtime, ticket_id, caller, withdraw)


async def decide(
    runtime: Runtime, ticket_id: UUID, accept: bool, reason_code: str, reason: str | None, caller: Principal
) -> ServiceRequest:
    """An agent's decision on a request in the review queue, with a catalogued reason code."""
    app = intake(runtime)
    meaning = _reason_code(app, "accept" if accept else "reject", reason_code)
    reason = _reason("reason", reason)

    async def judge(request: ServiceRequest, now: datetime) -> None:
        st = app.catalogue.get(request.service_type)
        if accept and st is None:
            raise InvalidTransition("service_type", f"{request.service_type!r} is no longer in the catalogue")
        if accept and st is not None:
            decision = domain.accept_decision(app.catalogue, st, request.fields(), now, reason_code,
                                              reason or meaning)
        else:
            decision = domain.Decision("reject", reason_code, reason or meaning)
        request.agent_decision(decision, now, caller.subject)

    return await _change(runtime, ticket_id, caller, judge)


# ---------------------------------------------------------------- channels


@retry_on_conflict()
def _save_channel(app: IntakeApp, channel_id: UUID, change: Any) -> ChannelSystem:
    ch = app.find(channel_id)
    if not isinstance(ch, ChannelSystem):
        raise NotFound("channel_id", f"no channel {channel_id}")
    change(ch)
    app.save(ch)
    return ch


async def register_channel(
    runtime: Runtime, name: str, kind: str, callback_url: str | None, rate_limit_per_minute: int | None,
    caller: Principal,
) -> tuple[ChannelSystem, str, str]:
    """Register a channel system and issue its first credential: (channel, credential id, token shown once)."""
    app = intake(runtime)
    name = _reason("name", name) or ""
    await check_callback(runtime, "callback_url", callback_url)
    now = app.clock.now()
    ch = ChannelSystem(id=uuid4(), name=name, kind=kind, callback_url=callback_url,
                       rate_limit_per_minute=rate_limit_per_minute, registered_by=caller.subject, registered_at=now)
    token, digest = issue_token("tsop_ch")
    credential_id = uuid4().hex[:12]
    ch.issue_credential(credential_id, digest, caller.subject, now)
    events = list(ch.pending_events)
    await asyncio.to_thread(app.save, ch)
    app.index.observe(events)
    return ch, credential_id, token


async def issue_credential(runtime: Runtime, channel_id: UUID, caller: Principal) -> tuple[ChannelSystem, str, str]:
    app = intake(runtime)
    token, digest = issue_token("tsop_ch")
    credential_id = uuid4().hex[:12]
    ch = await asyncio.to_thread(
        _save_channel, app, channel_id,
        lambda c: c.issue_credential(credential_id, digest, caller.subject, app.clock.now()),
    )
    await asyncio.to_thread(app.index.refresh)
    return ch, credential_id, token


async def revoke_credential(runtime: Runtime, channel_id: UUID, credential_id: str, caller: Principal) -> ChannelSystem:
    app = intake(runtime)

    def revoke(c: ChannelSystem) -> None:
        try:
            c.revoke_credential(credential_id, caller.subject, app.clock.now())
        except domain.ChannelError as exc:
            if credential_id not in c.credentials:
                raise NotFound("credential_id", str(exc)) from None
            raise InvalidTransition("credential_id", str(exc)) from None

    ch = await asyncio.to_thread(_save_channel, app, channel_id, revoke)
    await asyncio.to_thread(app.index.refresh)
    return ch


async def change_channel(
    runtime: Runtime, channel_id: UUID, changes: dict[str, Any], caller: Principal
) -> ChannelSystem:
    app = intake(runtime)
    await check_callback(runtime, "callback_url", changes.get("callback_url"))
    ch = await asyncio.to_thread(
        _save_channel, app, channel_id, lambda c: c.change_settings(changes, caller.subject, app.clock.now())
    )
    await asyncio.to_thread(app.index.refresh)
    return ch


async def get_channel(runtime: Runtime, channel_id: UUID) -> ChannelSystem:
    ch = await asyncio.to_thread(intake(runtime).find, channel_id)
    if not isinstance(ch, ChannelSystem):
        raise NotFound("channel_id", f"no channel {channel_id}")
    return ch
