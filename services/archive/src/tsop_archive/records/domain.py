"""The archive as evidence (§7.2, §7.4): the whole-archive chain, signed checkpoints, retention and legal
hold, and past states. Pure: no I/O.

**The chain.** Every record the archive stores has a *record hash* (SHA-256 of its stored form, computed
by PostgreSQL, see ``projection``) and a *link*: ``link(n) = SHA-256(link(n-1) ‖ record_hash(n))`` in the
order of the store's sequence, starting from 32 zero bytes. The chain runs over record hashes, not bodies,
so a body that retention drops or anonymises leaves its hash and its link in place: the chain still
verifies across it, and the record is reported as *expired*, not broken — but only where an *announcement* in
the chain names it (``announcement``): every expiry, of every record class (a ticket's, a complaint's, an
incident's, a dead letter's), is announced by a record the archive writes into its own store, signs with the
checkpoints' key, and links into the chain in the same transaction as the expiry. A row made to look expired
behind the archive's back (an expiry row forged, a body dropped) has no such announcement, or one whose
signature does not hold, and ``verify`` names it.

**Checkpoints.** Every so often the archive signs (Ed25519) the link it has reached; an auditor holding the
published public key checks offline that the archive has not been rewritten since, even by someone able to
recompute every link.

**Retention.** Each record belongs to a class (service records, work logs, complaints); personal data is a
class of *fields* within records. A class's period counts from the end of the matter (a ticket's final
event; otherwise the record's own time). A record past its period is expired (its body purged, or its
personal fields anonymised) unless a legal hold covers its ticket, its customer or its incident.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Literal, NamedTuple
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from tsop_events import schemas as wire
from tsop_events.envelope import derived_id
from tsop_events.errors import Conflict, Invalid

GENESIS = bytes(32)
"""The link before the first record."""


def link(previous: bytes, record_hash: bytes) -> bytes:
    """The next link of the chain."""
    return hashlib.sha256(previous + record_hash).digest()


def chain(previous: bytes, record_hashes: Iterable[bytes]) -> list[bytes]:
    """The links of consecutive records, after ``previous``."""
    out: list[bytes] = []
    sha = hashlib.sha256
    for h in record_hashes:
        previous = sha(previous + h).digest()
        out.append(previous)
    return out


# --------------------------------------------------------------------------- verification


class RowState(StrEnum):
    """What the store says of one position of the chain (see ``projection.VERIFY``)."""

    intact = "intact"  # the record's stored form still hashes to its record hash
    expired = "expired"  # its body was dropped or anonymised by a recorded expiry, and matches that expiry
    altered = "altered"  # the stored form no longer hashes to the record hash
    missing = "missing"  # a link names a record the store no longer holds
    unchained = "unchained"  # a record below the chained horizon that no link covers
    unannounced = "unannounced"  # a record expired, but no announcement in the chain names it
    unsigned = "unsigned"  # a record expired, named only by announcements the archive's key did not sign


class ChainRow(NamedTuple):
    """One position of the chain as the store answers it (``projection.verify_rows``)."""

    seq: int
    record_hash: bytes | None  # None: unchained
    link: bytes | None
    state: str  # a RowState


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement: the chain had reached ``link`` at record ``upto_seq``, after ``count`` records."""

    number: int
    upto_seq: int
    count: int
    link: bytes
    at: datetime
    key_id: str
    signature: bytes
    previous: bytes | None = None  # the digest of the checkpoint before it (None: a v1 checkpoint, unchained)

    def message(self) -> bytes:
        return checkpoint_message(self.upto_seq, self.count, self.link, self.at, self.previous)

    def digest(self) -> bytes:
        """What the next checkpoint signs of this one: SHA-256 of its message and its signature."""
        return hashlib.sha256(self.message() + self.signature).digest()


def checkpoint_message(upto_seq: int, count: int, link_: bytes, at: datetime, previous: bytes | None = None) -> bytes:
    """The bytes a checkpoint signs; an auditor rebuilds them from the published checkpoint. Since v2 a
    checkpoint also signs its predecessor's digest (``Checkpoint.digest``; 32 zero bytes for the first), so the
    checkpoints form a chain of their own: one deleted or replaced between two others no longer fits."""
    if previous is None:
        return f"tsop-archive-checkpoint/v1|{upto_seq}|{count}|{link_.hex()}|{at.isoformat()}".encode()
    return f"tsop-archive-checkpoint/v2|{upto_seq}|{count}|{link_.hex()}|{at.isoformat()}|{previous.hex()}".encode()


def checkpoint_chain_breaks(before: Checkpoint | None, checkpoints: Sequence[Checkpoint]) -> dict[int, str]:
    """Where the chain of checkpoints does not hold, by ``upto_seq``: a checkpoint that signs a predecessor other
    than the one the archive holds before it (``before``, then each in number order), or an unchained (v1) one
    after a chained one (older v1 checkpoints before the first v2 are accepted as they are)."""
    out: dict[int, str] = {}
    prev = before
    for cp in sorted(checkpoints, key=lambda c: c.number):
        if cp.previous is None:
            if prev is not None and prev.previous is not None:
                out[cp.upto_seq] = (f"checkpoint {cp.number} does not sign its predecessor, checkpoint {prev.number}: "
                                    "it was not made by the archive")
        elif cp.previous != (GENESIS if prev is None else prev.digest()):
            named = "none" if prev is None else f"checkpoint {prev.number}"
            out[cp.upto_seq] = (f"checkpoint {cp.number} does not follow the checkpoint before it ({named}): "
                                "a checkpoint between them was deleted or altered")
        prev = cp
    return out


def key_id(public_key: bytes) -> str:
    """A public key's name: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(public_key).hexdigest()[:16]


@dataclass(frozen=True)
class Break:
    """The first broken link: where, and why."""

    seq: int
    reason: str

    def view(self) -> dict[str, Any]:
        return {"seq": self.seq, "reason": self.reason}


@dataclass
class Verification:
    """What a pass over part of the chain found. ``broken`` is the first break (the pass stops there)."""

    from_seq: int
    to_seq: int
    checked: int = 0
    intact: int = 0
    expired: int = 0
    checkpoints: int = 0
    last_link: bytes = GENESIS
    broken: Break | None = None
    last_seq: int = 0  # the last position checked (0: none)

    @property
    def ok(self) -> bool:
        return self.broken is None


class ChainVerifier:
    """Recomputes the links over rows in sequence order, checking each stored link and record state.

    Feed rows with ``feed`` (in batches, in order); checkpoints are checked when the pass reaches their
    position: the recomputed link must equal the signed one, and the signature must hold (``check_sig``).
    """

    def __init__(
        self, from_seq: int, to_seq: int, previous: bytes, checkpoints: Sequence[Checkpoint],
        check_sig: Callable[[Checkpoint], bool],
    ) -> None:
        self.result = Verification(from_seq, to_seq, last_link=previous)
        self._cps = {c.upto_seq: c for c in checkpoints}
        self._check_sig = check_sig
        self._cp_breaks: dict[int, str] = {}

    def chain_checkpoints(self, before: Checkpoint | None) -> None:
        """Also hold the checkpoints to their own chain: each must sign the one the archive holds before it
        (``before``: the checkpoint just before the range's first)."""
        self._cp_breaks = checkpoint_chain_breaks(before, list(self._cps.values()))

    def feed(self, rows: Iterable[Sequence[Any]]) -> bool:
        """Rows are (seq, record_hash, link, state) in sequence order. False once a break is found."""
        r = self.result
        if r.broken is not None:
            return False
        prev, checked, expired, last = r.last_link, 0, 0, r.last_seq
        sha, cps = hashlib.sha256, self._cps
        for seq, record_hash, stored_link, state in rows:
            if state == "intact" or state == "expired":
                prev = sha(prev + record_hash).digest()
                if prev != stored_link:
                    r.broken = Break(seq, "link altered: the stored link is not the hash of the link before it "
                                          "and the record's hash")
                    break
                checked += 1
                if state == "expired":
                    expired += 1
            else:
                r.broken = Break(seq, _REASONS.get(state, f"unknown state {state}"))
                break
            if seq in cps:
                cp = cps[seq]
                if cp.link != prev:
                    r.broken = Break(seq, f"checkpoint {cp.number} disagrees: the chain was rewritten up to here")
                    break
                if not self._check_sig(cp):
                    r.broken = Break(seq, f"checkpoint {cp.number}: its signature does not hold")
                    break
                if seq in self._cp_breaks:
                    r.broken = Break(seq, self._cp_breaks[seq])
                    break
                r.checkpoints += 1
            last = seq
        r.last_seq = last
        r.checked += checked
        r.expired += expired
        r.intact += checked - expired
        r.last_link = prev
        return r.broken is None

    def finish(self) -> Verification:
        """After the last row: a checkpoint in range the pass never reached means records it signed are gone
        (the tail of the chain, with its links, was deleted)."""
        r = self.result
        if r.broken is None:
            for upto in sorted(self._cps):
                if upto > r.last_seq:
                    cp = self._cps[upto]
                    r.broken = Break(upto, f"checkpoint {cp.number} signed the chain up to {upto}, but the chain now "
                                           f"ends at {r.last_seq}: records it covered are gone")
                    break
        return r


def check_expected(r: Verification, number: int, link_: bytes, found: Checkpoint | None) -> Verification:
    """Hold the pass to a checkpoint the auditor kept (its number and link, e.g. from the last audit): it must
    still be there, name the same link, and — when the range covers it — have been reached and checked. Without
    this, deleting the tail of the chain together with its last checkpoints leaves a shorter chain that
    verifies."""
    if r.broken is not None:
        return r
    if found is None:
        r.broken = Break(r.last_seq, f"checkpoint {number}, which the auditor holds, is gone from the archive")
    elif found.link != link_:
        r.broken = Break(found.upto_seq, f"checkpoint {number} differs from the one the auditor holds")
    elif r.from_seq <= found.upto_seq <= r.to_seq and found.upto_seq > r.last_seq:
        r.broken = Break(found.upto_seq, f"checkpoint {number}, which the auditor holds, is beyond the chain's end")
    return r


def parse_expect(text: str) -> tuple[int, bytes]:
    """``N:link-hex`` (a checkpoint's number and link) as an auditor passes it; ValueError when malformed."""
    number, _, hexed = text.partition(":")
    n, lk = int(number), bytes.fromhex(hexed)
    if n < 1 or len(lk) != 32:
        raise ValueError("expected N:64 hex digits")
    return n, lk


def signed_only(
    rows: Iterable[Sequence[Any]], covers: Mapping[int, Sequence[Any]], holds: Callable[[Any], bool]
) -> list[tuple[Any, ...]]:
    """Rows of a window with each *expired* one held to its announcements' signatures: it stays expired when one
    of the announcements that name it (``covers``: its seq -> their bodies) is signed (``holds``), else it is
    ``unsigned``."""
    rows = list(rows)
    bad = {r[0] for r in rows if r[3] == RowState.expired and not any(holds(b) for b in covers.get(r[0], ()))}
    if not bad:
        return rows  # type: ignore[return-value]  # the window as it came: every expired row is signed for
    return [(r[0], r[1], r[2], RowState.unsigned.value if r[0] in bad else r[3]) for r in rows]


_REASONS = {
    RowState.altered: "record altered: its stored form no longer hashes to its record hash",
    RowState.missing: "record missing: the chain links a record the store no longer holds",
    RowState.unchained: "record not in the chain: it sits below the chained horizon, unlinked",
    RowState.unannounced: "record expired without its announcement in the chain (no linked announcement of an "
                          "expiry names it and that action): a body dropped or anonymised behind the archive's back",
    RowState.unsigned: "record expired, but the announcements that name it are not signed by the archive's key: an "
                       "expiry announced behind the archive's back",
}


# --------------------------------------------------------------------------- retention


class RecordClass(StrEnum):
    service_records = "service_records"
    personal_data = "personal_data"
    work_logs = "work_logs"
    complaints = "complaints"


ExpiryAction = Literal["purged", "anonymised"]

DEFAULT_DAYS: dict[RecordClass, int] = {
    RecordClass.service_records: 3 * 365,
    RecordClass.personal_data: 365,
    RecordClass.work_logs: 3 * 365,
    RecordClass.complaints: 3 * 365,
}
"""Until the operator says otherwise (``PUT /v1/retention/{class}``)."""

WORK_LOG_TYPES = frozenset({
    wire.WorkStarted.event_type, wire.WorkLogged.event_type, wire.WorkPaused.event_type, wire.WorkResumed.event_type,
})

PERSONAL_FIELDS = frozenset({
    "customer_id", "description", "special_needs", "callback_url", "location", "details", "attributes",
    "channel_request_ref", "name", "contact", "address", "phone", "email", "comment", "notes", "text",
    "source_value",  # a dead letter's copy of the failed record, whole: it may hold any of the above
})
"""Fields that carry a customer's personal data (identity, contact, address, free text they wrote)."""

ANONYMISED = "[anonymised]"

ANNOUNCEMENT_TYPE = "tsop.archive.records-expired.v1"
"""The type of the archive's own announcement of an expiry (``announcement``): a record the archive writes into
its store, never a wire event."""

ANNOUNCEMENT_PARTITION = -1
"""The partition an announcement is stored under: no broker's (theirs count from 0), so a record that came
through the broker never passes for one."""

NEVER_EXPIRES = frozenset({wire.RecordsExpired.event_type, ANNOUNCEMENT_TYPE, wire.CustomerDataErased.event_type})
"""Kept for good: the archive's own announcements of an expiry (they name records, hold no personal data, and
expiring them would announce another expiry, forever), and the record of a lawful erasure (who asked, on which
legal basis, when: the proof that the request was honoured, which holds nothing left to erase)."""


def announcement_id(expiry: UUID) -> str:
    """The announcement's ``ce_id``: one per expiry decision (so a decision applied again announces nothing new)."""
    return f"archive-expiry-{expiry}"


def announcement(
    expiry: UUID, matter: str, record_class: str, action: str, days: int, at: datetime, seqs: Sequence[int],
    event_ids: Sequence[str],
) -> dict[str, Any]:
    """The body of the archive's announcement of one expiry, of any record class: the matter, the class, the
    action and the period that ran out, and the records it acted on — by their place in the chain (``seqs``)
    and their ``ce_id`` (``event_ids``, what ``verify`` matches). It holds no personal data."""
    return {
        "expiry_id": str(expiry), "matter": matter, "record_class": record_class, "action": action,
        "retention_days": days, "expired_at": at.isoformat(), "seqs": list(seqs), "event_ids": list(event_ids),
    }


_SIGNED = ("expiry_id", "matter", "record_class", "action", "retention_days", "expired_at", "seqs", "event_ids")


def announcement_message(body: Mapping[str, Any]) -> bytes:
    """The bytes an announcement's signature covers: every field but the signature itself, in a fixed order (an
    auditor rebuilds them from the stored body). KeyError when a field is missing."""
    fields = [body[k] for k in _SIGNED]
    return b"tsop-archive-expiry/v1|" + json.dumps(fields, separators=(",", ":"), ensure_ascii=True).encode()


def signed(body: Mapping[str, Any], kid: str, sign: Callable[[bytes], bytes]) -> dict[str, Any]:
    """The announcement with the archive's signature (Ed25519, the key that signs checkpoints): someone able to
    write the archive's tables still cannot announce an expiry the archive did not make."""
    return {**body, "key_id": kid, "signature": sign(announcement_message(body)).hex()}


def announcement_holds(body: Any, check: Callable[[str, bytes, bytes], bool]) -> bool:
    """Whether a stored announcement carries a signature that holds (``check(key_id, message, signature)``)."""
    if not isinstance(body, dict):
        return False
    kid, sig = body.get("key_id"), body.get("signature")
    if not isinstance(kid, str) or not isinstance(sig, str):
        return False
    try:
        return check(kid, announcement_message(body), bytes.fromhex(sig))
    except (KeyError, ValueError, TypeError):
        return False


def matter_refs(bodies: Iterable[Any]) -> tuple[set[str], set[str], set[str]]:
    """What the bodies of one matter's records say it is about, across ALL its records: customers (as
    ``customer_ref``), incidents, tickets (``ticket_id`` and ``ticket_ids``)."""
    customers: set[str] = set()
    incidents: set[str] = set()
    tickets: set[str] = set()
    for data in bodies:
        if not isinstance(data, dict):
            continue
        inner = data.get("source_value")  # a dead letter: what the failed record was about
        if isinstance(inner, str) and inner and inner != ANONYMISED:
            try:
                parsed = json.loads(inner)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                c2, i2, t2 = matter_refs([parsed.get("data", parsed) if isinstance(parsed.get("data"), dict)
                                          else parsed])
                customers |= c2
                incidents |= i2
                tickets |= t2
        c = data.get("customer_id")
        if isinstance(c, str) and c and c != ANONYMISED:
            customers.add(customer_ref(c))
        i = data.get("incident_id")
        if isinstance(i, str) and i:
            incidents.add(i)
        t = data.get("ticket_id")
        if isinstance(t, str) and t:
            tickets.add(t)
        ts = data.get("ticket_ids")
        if isinstance(ts, list):
            tickets.update(x for x in ts if isinstance(x, str) and x)
    return customers, incidents, tickets


def record_class(topic: str, event_type: str, prefix: str) -> RecordClass:
    """The class a whole record belongs to."""
    if topic == f"{prefix}complaints":
        return RecordClass.complaints
    if event_type in WORK_LOG_TYPES:
        return RecordClass.work_logs
    return RecordClass.service_records


def has_personal_data(data: Any) -> bool:
    """Whether a body holds a personal field with something in it (also inside ``changes``)."""
    if not isinstance(data, dict):
        return False
    if any(k in PERSONAL_FIELDS and v not in (None, "", [], {}, ANONYMISED) for k, v in data.items()):
        return True
    return has_personal_data(data.get("changes"))


def anonymise(data: Mapping[str, Any]) -> dict[str, Any]:
    """The body without a customer's personal data: those fields (also inside ``changes``) say so instead."""
    out = {k: (ANONYMISED if k in PERSONAL_FIELDS and v not in (None, "", [], {}) else v) for k, v in data.items()}
    changes = out.get("changes")
    if isinstance(changes, dict):
        out["changes"] = anonymise(changes)
    return out


class HoldKind(StrEnum):
    ticket = "ticket"
    customer = "customer"
    incident = "incident"


@dataclass(frozen=True)
class Matter:
    """What retention needs to know of one key's records (a ticket, or another record key)."""

    key: str
    is_ticket: bool
    ended_at: datetime | None  # a ticket's final event; None while open
    customer_ids: frozenset[str] = frozenset()
    incident_ids: frozenset[str] = frozenset()
    ticket_ids: frozenset[str] = frozenset()  # tickets a non-ticket matter (e.g. a complaint) is about


def held(m: Matter, holds: Mapping[HoldKind, frozenset[str]]) -> bool:
    """Whether a legal hold covers this matter: its ticket (or key, or a ticket it is about), its customer or
    its incident."""
    tickets = holds.get(HoldKind.ticket, frozenset())
    return (
        m.key in tickets
        or bool(m.ticket_ids & tickets)
        or bool(m.customer_ids & holds.get(HoldKind.customer, frozenset()))
        or bool(m.incident_ids & holds.get(HoldKind.incident, frozenset()))
        or (not m.is_ticket and m.key in holds.get(HoldKind.incident, frozenset()))
    )


def expires_at(m: Matter, record_time: datetime, days: int) -> datetime | None:
    """When a record of this matter expires: ``days`` after the ticket ended (never while it is open), or
    after the record's own time when it belongs to no ticket."""
    if m.is_ticket:
        return None if m.ended_at is None else m.ended_at + timedelta(days=days)
    return record_time + timedelta(days=days)


@dataclass(frozen=True)
class Candidate:
    """A stored record retention may act on."""

    seq: int
    event_id: str
    topic: str
    event_type: str
    time: datetime
    personal: bool  # its body holds personal fields
    anonymised: bool  # already anonymised


@dataclass(frozen=True)
class Due:
    seq: int
    event_id: str
    record_class: RecordClass
    action: ExpiryAction


def due_expiries(
    m: Matter, records: Iterable[Candidate], periods: Mapping[RecordClass, int],
    holds: Mapping[HoldKind, frozenset[str]], now: datetime, prefix: str,
) -> list[Due]:
    """What must expire now of one matter's records: a record past its class's period is purged; before that,
    once personal data is past its own (shorter) period, its personal fields are anonymised. Nothing while a
    legal hold covers the matter."""
    if held(m, holds):
        return []
    out: list[Due] = []
    for r in records:
        if r.event_type in NEVER_EXPIRES:
            continue
        cls = record_class(r.topic, r.event_type, prefix)
        whole = expires_at(m, r.time, periods.get(cls, DEFAULT_DAYS[cls]))
        if whole is not None and whole <= now:
            out.append(Due(r.seq, r.event_id, cls, "purged"))
            continue
        if r.personal and not r.anonymised:
            personal = expires_at(m, r.time, periods.get(RecordClass.personal_data,
                                                        DEFAULT_DAYS[RecordClass.personal_data]))
            if personal is not None and personal <= now:
                out.append(Due(r.seq, r.event_id, RecordClass.personal_data, "anonymised"))
    return out


class RetentionPolicy(Aggregate):
    """The operator's retention periods, one per record class; every change is an event."""

    class Created(Aggregate.Created):
        pass

    class PeriodSet(Aggregate.Event):
        record_class: str
        days: int
        set_by: str
        reason: str
        at: datetime

    @event(Created)
    def __init__(self, id: UUID) -> None:  # noqa: A002 - the derived id
        self.days: dict[str, int] = {}

    @event(PeriodSet)
    def set_period(self, record_class: str, days: int, set_by: str, reason: str, at: datetime) -> None:
        self.days[record_class] = days

    def periods(self) -> dict[RecordClass, int]:
        return {c: self.days.get(c.value, DEFAULT_DAYS[c]) for c in RecordClass}


POLICY_ID = derived_id("retention-policy", "archive")

MAX_DAYS = 100 * 365


def check_period(days: int) -> None:
    if not 1 <= days <= MAX_DAYS:
        raise Invalid(f"must be between 1 and {MAX_DAYS} days", "days")


class LegalHold(Aggregate):
    """A legal hold on a ticket, a customer or an incident: placed and released by recorded decisions."""

    class Placed(Aggregate.Created):
        kind: str
        subject: str
        placed_by: str
        reason: str
        at: datetime

    class Released(Aggregate.Event):
        released_by: str
        reason: str
        at: datetime
        kind: str | None  # what it holds, again (None in decisions recorded before): a reader that missed the
        subject: str | None  # placement (a hold placed before holds were announced) still knows what it covers

    class PlacedAgain(Aggregate.Event):
        placed_by: str
        reason: str
        at: datetime
        kind: str | None
        subject: str | None

    @event(Placed)
    def __init__(
        self, id: UUID, kind: str, subject: str, placed_by: str, reason: str, at: datetime  # noqa: A002
    ) -> None:
        self.kind, self.subject = kind, subject
        self.active = True
        self.history: list[dict[str, Any]] = [
            {"action": "placed", "by": placed_by, "reason": reason, "at": at.isoformat()}
        ]

    @event(Released)
    def _released(self, released_by: str, reason: str, at: datetime, kind: str | None = None,
                  subject: str | None = None) -> None:
        self.active = False
        self.history.append({"action": "released", "by": released_by, "reason": reason, "at": at.isoformat()})

    @event(PlacedAgain)
    def _placed_again(self, placed_by: str, reason: str, at: datetime, kind: str | None = None,
                      subject: str | None = None) -> None:
        self.active = True
        self.history.append({"action": "placed", "by": placed_by, "reason": reason, "at": at.isoformat()})

    def release(self, by: str, reason: str, at: datetime) -> None:
        if not self.active:
            raise Conflict(f"no legal hold is in force on {self.kind} {self.subject}")
        self._released(by, reason, at, self.kind, self.subject)

    def place_again(self, by: str, reason: str, at: datetime) -> None:
        if self.active:
            raise Conflict(f"a legal hold is already in force on {self.kind} {self.subject}")
        self._placed_again(by, reason, at, self.kind, self.subject)


def hold_subject(kind: HoldKind, subject: str) -> str:
    """How a hold's subject is looked up: customers by a hash of their id (records may no longer hold the id
    itself once anonymised), tickets and incidents by id."""
    return customer_ref(subject) if kind is HoldKind.customer else subject


def customer_ref(customer_id: str) -> str:
    return hashlib.sha256(f"customer:{customer_id}".encode()).hexdigest()


def hold_id(kind: HoldKind, subject: str) -> UUID:
    """The hold's id, from its kind and its looked-up subject (``hold_subject``)."""
    return derived_id("legal-hold", kind.value, subject)


class Expiry(Aggregate):
    """Retention acted on records of one matter: which, of which class, how (purged or anonymised).

    One per (matter, class, action): the event store refuses a second decision, and a restart re-applies a
    decision recorded but not yet applied to the store."""

    class Recorded(Aggregate.Created):
        key: str
        record_class: str
        action: str
        seqs: list[int]
        event_ids: list[str]
        days: int
        at: datetime
        witnesses: dict[str, list[str]] | None = None
        is_ticket: bool = False

    @event(Recorded)
    def __init__(
        self, id: UUID, key: str, record_class: str, action: str, seqs: list[int],  # noqa: A002
        event_ids: list[str], days: int, at: datetime, witnesses: dict[str, list[str]] | None = None,
        is_ticket: bool = False,
    ) -> None:
        self.key, self.record_class, self.action, self.is_ticket = key, record_class, action, is_ticket
        self.seqs, self.event_ids, self.days, self.at = seqs, event_ids, days, at
        self.witnesses = witnesses or {}


def expiry_id(key: str, record_class: str, action: str, first_seq: int) -> UUID:
    return derived_id("expiry", key, record_class, action, str(first_seq))


# --------------------------------------------------------------------------- time travel

STATUS_OF: dict[str, str] = {
    wire.RequestSubmitted.event_type: "submitted",
    wire.RequestPendingInformation.event_type: "pending_information",
    wire.RequestQueuedForReview.event_type: "in_review",
    wire.RequestAccepted.event_type: "accepted",
    wire.RequestRejected.event_type: "rejected",
    wire.RequestLinked.event_type: "linked",
    wire.RequestCancelled.event_type: "cancelled",
    wire.Assigned.event_type: "assigned",
    wire.AssignmentDeclined.event_type: "accepted",
    wire.AssignmentAccepted.event_type: "assignment_accepted",
    wire.WorkStarted.event_type: "in_progress",
    wire.WorkPaused.event_type: "paused",
    wire.WorkResumed.event_type: "in_progress",
    wire.Resolved.event_type: "resolved",
    wire.Closed.event_type: "closed",
    wire.Reopened.event_type: "reopened",
}
"""A ticket's status after each event of its life (events not named leave it as it was)."""

ENDED = frozenset({"rejected", "linked", "cancelled", "closed"})
KEPT = ("service_type", "region", "priority", "customer_tier", "technician_id", "work_order_id",
        "resolution_code", "score", "reason_code")


@dataclass
class TicketState:
    """A ticket as it stood: its status, what its events said, and how many of them it had seen."""

    ticket_id: str
    status: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    events: int = 0
    last_event_id: str | None = None
    last_event_at: datetime | None = None
    opened_at: datetime | None = None
    ended_at: datetime | None = None

    @property
    def open(self) -> bool:
        return self.status is not None and self.status not in ENDED

    def apply(self, event_id: str, event_type: str, at: datetime, data: Any) -> None:
        self.events += 1
        self.last_event_id, self.last_event_at = event_id, at
        status = STATUS_OF.get(event_type)
        if status is not None:
            self.status = status
            if status == "submitted" and self.opened_at is None:
                self.opened_at = at
            if status in ENDED:
                self.ended_at = at
            elif status == "reopened":
                self.ended_at = None  # open again: it ends at its next final event
        if isinstance(data, dict):
            f = self.fields
            for k in KEPT:
                v = data.get(k)
                if v is not None:
                    f[k] = v


def fold(ticket_id: str, events: Iterable[tuple[str, str, datetime, Any]]) -> TicketState:
    """A ticket's state after the given events (id, type, time, body), in their order."""
    s = TicketState(ticket_id)
    for e in events:
        s.apply(*e)
    return s


class Backlog:
    """The platform's open tickets, rebuilt from the log: every ticket's state, event by event."""

    def __init__(self) -> None:
        self.tickets: dict[str, TicketState] = {}

    def apply(self, key: str, event_id: str, event_type: str, at: datetime, data: Any) -> None:
        s = self.tickets.get(key)
        if s is None:
            s = self.tickets[key] = TicketState(key)
        s.apply(event_id, event_type, at, data)

    def open(self) -> list[TicketState]:
        return [s for s in self.tickets.values() if s.open]
