"""The archive-as-evidence routes, for auditors and supervisors: verify, checkpoints and keys, retention,
legal holds, and past states."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field, JsonValue

from tsop_archive.commands import ArchiveApp
from tsop_archive.records import commands as rc
from tsop_archive.records import projection as rp
from tsop_archive.records.domain import HoldKind, LegalHold, RecordClass, TicketState, parse_expect
from tsop_events.auth import Principal, Role, requires
from tsop_events.errors import Invalid, NotFound
from tsop_events.http import service_dependency
from tsop_events.inbound import Inbound, Int, Text, clean_text
from tsop_events.runtime import Service

router = APIRouter(tags=["records"])

Svc = Annotated[Service[ArchiveApp], Depends(service_dependency(ArchiveApp))]
Auditor = Annotated[Principal, Depends(requires(Role.auditor, Role.supervisor))]

MAX_SEQ = 2**62


def _aware(name: str, at: datetime) -> datetime:
    if at.tzinfo is None:
        raise Invalid("must name its time zone (e.g. 2026-06-01T09:00:00Z)", name)
    if not EARLIEST <= at <= LATEST:
        raise Invalid("must lie between 1970-01-01 and 9000-01-01", name)
    return at


EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


class BreakAnswer(BaseModel):
    seq: int = Field(description="The position (archive sequence number) of the first broken link")
    reason: str


class VerifyAnswer(BaseModel):
    ok: bool = Field(description="The range verifies: every record, link and checkpoint in it holds")
    from_seq: int
    to_seq: int
    checked: int = Field(description="Records whose link was recomputed")
    intact: int = Field(description="Records whose stored form still hashes to their record hash")
    expired: int = Field(description="Records whose body retention dropped or anonymised (a recorded expiry)")
    checkpoints: int = Field(description="Signed checkpoints in the range whose link and signature hold")
    last_link: str = Field(description="The link reached at the end of the range (hex)")
    broken: BreakAnswer | None = Field(description="The first broken link, if any")


@router.get("/v1/archive/verify", response_model=VerifyAnswer)
async def verify(
    svc: Svc, caller: Auditor,
    from_seq: Annotated[int, Query(alias="from", ge=1, le=MAX_SEQ)] = 1,
    to_seq: Annotated[int, Query(alias="to", ge=1, le=MAX_SEQ)] = MAX_SEQ,
    expect: Annotated[str | None, Query(max_length=100, description="A checkpoint kept from an earlier audit, "
                                        "`N:link-hex`: it must still be there, alike, and reached")] = None,
) -> VerifyAnswer:
    """Recompute the whole-archive chain over ``from``..``to`` (archive sequence numbers, inclusive) and
    name the first broken link. Expired records verify by their kept hash."""
    if to_seq < from_seq:
        raise Invalid("must not be below `from`", "to")
    expected = None
    if expect is not None:
        try:
            expected = parse_expect(expect)
        except ValueError as e:
            raise Invalid("must be N:LINK, a checkpoint's number and its link (64 hex digits)", "expect") from e
    v = await rc.verify(svc.pool, from_seq, to_seq, expect=expected)
    return VerifyAnswer(
        ok=v.ok, from_seq=v.from_seq, to_seq=v.last_seq, checked=v.checked, intact=v.intact, expired=v.expired,
        checkpoints=v.checkpoints, last_link=v.last_link.hex(),
        broken=BreakAnswer(**v.broken.view()) if v.broken else None,
    )


class CheckpointAnswer(BaseModel):
    number: int
    upto_seq: int
    count: int = Field(description="Records in the chain up to and including upto_seq")
    link: str = Field(description="The chain's link at upto_seq (hex)")
    at: str = Field(description="ISO 8601")
    key_id: str
    signature: str = Field(description="Ed25519 signature (hex) of the message below")
    previous: str | None = Field(
        default=None, description="SHA-256 (hex) of the checkpoint before it, its message and its signature; the "
        "first: 64 zeros (null: a v1 checkpoint, which signed no predecessor)")
    message: str = Field(description="What was signed: tsop-archive-checkpoint/v2|upto_seq|count|link|at|previous "
                                     "(v1: without previous)")


@router.get("/v1/archive/checkpoints", response_model=list[CheckpointAnswer])
async def checkpoints(
    svc: Svc, caller: Auditor,
    from_seq: Annotated[int, Query(alias="from", ge=0, le=MAX_SEQ)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[CheckpointAnswer]:
    """The signed checkpoints, oldest first: an auditor keeps them and checks them offline."""
    return [
        CheckpointAnswer(
            number=c.number, upto_seq=c.upto_seq, count=c.count, link=c.link.hex(), at=c.at.isoformat(),
            key_id=c.key_id, signature=c.signature.hex(), message=c.message().decode(),
            previous=None if c.previous is None else c.previous.hex(),
        )
        for c in await rp.checkpoints(svc.pool, from_seq, MAX_SEQ, limit)
    ]


class KeyAnswer(BaseModel):
    key_id: str
    public_key_pem: str
    public_key_hex: str = Field(description="The raw 32-byte Ed25519 public key")
    first_used: str = Field(description="ISO 8601")


@router.get("/v1/archive/keys", response_model=list[KeyAnswer])
async def keys(svc: Svc, caller: Auditor) -> list[KeyAnswer]:
    """The public keys that sign the archive's checkpoints."""
    return [
        KeyAnswer(key_id=k, public_key_pem=rc.public_pem(raw), public_key_hex=raw.hex(), first_used=at.isoformat())
        for k, (raw, at) in (await rp.public_keys(svc.pool)).items()
    ]


# --------------------------------------------------------------------------- retention


class PeriodChange(Inbound):
    days: Annotated[Int, Field(ge=1, le=36500)]
    reason: Annotated[Text, Field(min_length=3, max_length=2000)]


class RetentionAnswer(BaseModel):
    periods: dict[str, int] = Field(description="Days each record class is kept after its matter ended")


@router.get("/v1/retention", response_model=RetentionAnswer)
async def retention(svc: Svc, caller: Auditor) -> RetentionAnswer:
    """The retention period of each record class (service_records, personal_data, work_logs, complaints)."""
    return RetentionAnswer(periods={c.value: d for c, d in (await rc.policy(svc)).items()})


@router.put("/v1/retention/{record_class}", response_model=RetentionAnswer)
async def set_retention(
    record_class: RecordClass, body: PeriodChange, svc: Svc, caller: Auditor
) -> RetentionAnswer:
    """Set a record class's retention period (recorded as an event, with who and why)."""
    periods = await rc.set_period(svc, record_class, body.days, body.reason, caller)
    return RetentionAnswer(periods={c.value: d for c, d in periods.items()})


class HoldDecision(Inbound):
    reason: Annotated[Text, Field(min_length=3, max_length=2000)]


class HoldAnswer(BaseModel):
    kind: HoldKind
    subject: str
    active: bool
    history: list[dict[str, str]] = Field(description="Each placement and release: action, by, reason, at")

    @classmethod
    def of(cls, h: LegalHold) -> HoldAnswer:
        return cls(kind=HoldKind(h.kind), subject=h.subject, active=h.active, history=h.history)


def _subject(kind: HoldKind, subject: str) -> str:
    """A ticket's or an incident's id is a UUID, held in its one written form (another spelling would hold
    nothing: records and intake name it so); a customer's is any id intake takes (1 to 128 characters, no control
    character), up to 200: a hold must be placeable on every customer whose data may expire."""
    if kind is not HoldKind.customer:
        try:
            return str(UUID(subject))
        except ValueError:
            raise Invalid(f"a {kind.value} id is a UUID", "subject") from None
    try:
        text = clean_text(subject)
    except ValueError:
        raise Invalid("contains a control character", "subject") from None
    if not 1 <= len(text) <= 200 or not text.strip():
        raise Invalid("1 to 200 characters, not only spaces", "subject")
    return text


@router.post("/v1/legal-holds/{kind}/{subject}", status_code=201, response_model=HoldAnswer)
async def place_hold(kind: HoldKind, subject: str, body: HoldDecision, svc: Svc, caller: Auditor) -> HoldAnswer:
    """Place a legal hold on a ticket, a customer or an incident: nothing of it expires while it holds.
    409 when a hold is in force already."""
    return HoldAnswer.of(await rc.place_hold(svc, kind, _subject(kind, subject), body.reason, caller))


@router.post("/v1/legal-holds/{kind}/{subject}/release", response_model=HoldAnswer)
async def release_hold(kind: HoldKind, subject: str, body: HoldDecision, svc: Svc, caller: Auditor) -> HoldAnswer:
    """Release a legal hold (recorded, with who and why); 404 if none was placed, 409 if none is in force."""
    return HoldAnswer.of(await rc.release_hold(svc, kind, _subject(kind, subject), body.reason, caller))


@router.get("/v1/legal-holds/{kind}/{subject}", response_model=HoldAnswer)
async def get_hold(kind: HoldKind, subject: str, svc: Svc, caller: Auditor) -> HoldAnswer:
    """A legal hold and its history."""
    h = await rc.find_hold(svc, kind, _subject(kind, subject))
    if h is None:
        raise NotFound(f"no legal hold was ever placed on {kind.value} {subject}")
    return HoldAnswer.of(h)


class ExpiryAnswer(BaseModel):
    seq: int
    event_id: str
    action: str = Field(description="purged (body dropped) or anonymised (personal fields dropped)")
    record_class: str
    matter: str = Field(description="The ticket (or other record key) the record belongs to")
    expiry_id: str
    at: str = Field(description="ISO 8601")


@router.get("/v1/retention/expiries", response_model=list[ExpiryAnswer])
async def expiries(
    svc: Svc, caller: Auditor, matter: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[ExpiryAnswer]:
    """What retention has expired, oldest first (of one matter, e.g. a ticket, with ``matter``)."""
    return [
        ExpiryAnswer(seq=r["seq"], event_id=r["event_id"], action=r["action"], record_class=r["record_class"],
                     matter=r["matter"], expiry_id=str(r["expiry_id"]), at=r["at"].isoformat())
        for r in await rp.expiries(svc.pool, matter, limit)
    ]


# --------------------------------------------------------------------------- time travel


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


class TicketStateAnswer(BaseModel):
    ticket_id: str
    as_of: str = Field(description="ISO 8601")
    status: str | None = Field(description="The ticket's status at that instant")
    open: bool
    fields: dict[str, JsonValue] = Field(description="What its events had said by then (type, region, …)")
    events: int = Field(description="How many of its events had happened by then")
    last_event_id: str | None
    last_event_at: str | None
    opened_at: str | None
    ended_at: str | None

    @classmethod
    def of(cls, s: TicketState, as_of: datetime) -> TicketStateAnswer:
        return cls(
            ticket_id=s.ticket_id, as_of=as_of.isoformat(), status=s.status, open=s.open, fields=s.fields,
            events=s.events, last_event_id=s.last_event_id, last_event_at=_iso(s.last_event_at),
            opened_at=_iso(s.opened_at), ended_at=_iso(s.ended_at),
        )


@router.get("/v1/tickets/{ticket_id}/state", response_model=TicketStateAnswer)
async def ticket_state(
    ticket_id: UUID, svc: Svc, caller: Auditor, as_of: Annotated[datetime, Query()]
) -> TicketStateAnswer:
    """A ticket's state as it stood at ``as_of`` (ISO 8601 with a time zone), computed from the archived
    log. 404 when the ticket did not exist yet then."""
    at = _aware("as_of", as_of)
    return TicketStateAnswer.of(await rc.ticket_as_of(svc, str(ticket_id), at), at)


class BacklogTicket(BaseModel):
    ticket_id: str
    opened_at: str = Field(description="ISO 8601")


class BacklogAnswer(BaseModel):
    as_of: str
    open: int = Field(description="Tickets submitted by then and not yet ended (closed, rejected, cancelled, linked)")
    tickets: list[BacklogTicket] = Field(description="The oldest first, at most `limit`")


@router.get("/v1/backlog", response_model=BacklogAnswer)
async def backlog(
    svc: Svc, caller: Auditor, as_of: Annotated[datetime, Query()],
    limit: Annotated[int, Query(ge=0, le=10_000)] = 100,
) -> BacklogAnswer:
    """The platform's open backlog as it stood at ``as_of``, computed from the archived log."""
    at = _aware("as_of", as_of)
    rows = await rc.backlog_as_of(svc, at)
    return BacklogAnswer(
        as_of=at.isoformat(), open=len(rows),
        tickets=[BacklogTicket(ticket_id=k, opened_at=t.isoformat()) for k, t in rows[:limit]],
    )

