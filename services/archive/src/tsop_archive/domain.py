"""Dossiers: a ticket's events in causal order, sealed with a hash chain (§2.4, §7.2). No I/O.

A dossier is sealed as complete only when nothing of its ticket is known to be
missing. A dead letter anywhere on the platform (a consumer that could not
process one of the ticket's events, or a relay that could not publish one) is a
*gap*. A gap is closed when the archive receives the event after the failure was
noted, from another record than the one that failed (a republish, or the event
recovered from the archive's own dead letter).
An auditor or supervisor may seal a dossier with open gaps, as incomplete, by an
explicit decision with a reason.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import orjson
from eventsourcing.domain import Aggregate, event

from tsop_events.envelope import derived_id
from tsop_events.errors import Conflict
from tsop_events.schemas import (
    Archived,
    Closed,
    DeadLettered,
    Reopened,
    RequestCancelled,
    RequestLinked,
    RequestRejected,
)

GapView = dict[str, str | bool | None]
"""A gap as the dossier shows it and a seal records it (JSON: ``failed_at`` as ISO 8601)."""

# a ticket's record is complete at its final event: closed after service, or ended at review
FINAL = frozenset(
    {Closed.event_type, RequestRejected.event_type, RequestCancelled.event_type, RequestLinked.event_type}
)

# a reopened ticket has not ended: of these, the last one held says whether it has
ENDING = FINAL | {Reopened.event_type}


def has_ended(types: Iterable[str]) -> bool:
    """Whether a ticket whose events have these types (in order) has ended: its last final-or-reopened is final."""
    last = None
    for t in types:
        if t in ENDING:
            last = t
    return last is not None and last in FINAL


def reopenable_until(closed_body: bytes) -> datetime | None:
    """Until when a Closed event's ticket may be reopened (its dossier is sealed only after that); None: final."""
    try:
        value = json.loads(closed_body).get("reopenable_until")
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except (ValueError, AttributeError):
        return None


@dataclass(frozen=True)
class ArchivedEvent:
    seq: int
    id: str
    type: str
    source: str
    time: datetime
    causation_id: str | None
    data: dict[str, Any] | None  # None once retention purged the body
    recovered_from: str | None = None

    def canonical(self) -> bytes:
        doc = {
            "id": self.id, "type": self.type, "source": self.source, "time": self.time.isoformat(), "data": self.data
        }
        try:
            return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:  # what orjson cannot encode (a lone surrogate) still hashes, faithfully
            return json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode(
                "utf-8", "surrogatepass"
            )


def causal_order(events: Sequence[ArchivedEvent]) -> list[ArchivedEvent]:
    """Arrival order, except that no event comes before the event that caused it."""
    pending = sorted(events, key=lambda e: e.seq)
    ids = {e.id for e in pending}
    done: set[str] = set()
    ordered: list[ArchivedEvent] = []
    while pending:
        for i, e in enumerate(pending):
            if e.causation_id is None or e.causation_id not in ids or e.causation_id in done:
                ordered.append(e)
                done.add(e.id)
                del pending[i]
                break
        else:  # a cycle cannot happen with honest ids; keep arrival order rather than loop
            ordered.extend(pending)
            break
    return ordered


def chain_hash(events: Sequence[ArchivedEvent]) -> str:
    """Each link hashes the previous link with the next event: change any event and the end changes."""
    digest = b""
    for e in events:
        digest = hashlib.sha256(digest + e.canonical()).digest()
    return digest.hex()


# --------------------------------------------------------------------------- gaps


@dataclass(frozen=True)
class LetterFacts:
    """What a dead letter says is missing, and for which ticket."""

    ticket_id: str
    event_id: str
    event_type: str | None
    consumer: str
    error: str
    source: str  # topic:partition:offset of the record that failed (or the relay's own position)
    failed_at: datetime


def is_relay(consumer: str) -> bool:
    return consumer.startswith("relay:")


def is_own(consumer: str) -> bool:
    """Whether a consumer is one of the archive's own (the store, the statistics)."""
    return consumer.startswith("archive-")


def letter_facts(letter: DeadLettered, tickets_topic: str, deadletter_topic: str) -> LetterFacts | None:
    """The gap a dead letter reveals, or None when it concerns no ticket.

    A consumer's letter names the record it failed on; a ticket's events are keyed
    by the ticket id. A relay's letter (``consumer`` = ``relay:<service>``) names the
    ticket in ``source_key``. A letter about a letter (a dead-letter consumer that
    failed) is read for the letter inside it.
    """
    source = f"{letter.source_topic}:{letter.source_partition}:{letter.source_offset}"
    if letter.source_topic == deadletter_topic and not is_relay(letter.consumer):
        try:
            inner = DeadLettered.model_validate_json(letter.source_value)
        except ValueError:
            return None
        return letter_facts(inner, tickets_topic, deadletter_topic)
    if not letter.source_key or not (letter.source_topic == tickets_topic or is_relay(letter.consumer)):
        return None
    return LetterFacts(
        ticket_id=letter.source_key,
        event_id=letter.source_headers.get("ce_id") or source,
        # a relay's letter may not know the wire type (the event could not be mapped): its stored class then
        event_type=letter.source_headers.get("ce_type") or letter.source_headers.get("stored_topic"),
        consumer=letter.consumer,
        error=letter.error,
        source=source,
        failed_at=letter.failed_at,
    )


@dataclass(frozen=True)
class Gap:
    """A dead-lettered event of a ticket. ``noted`` and ``delivered`` are the archive's arrival marks."""

    event_id: str
    event_type: str | None
    consumer: str
    error: str
    source: str
    failed_at: datetime | None
    noted: int
    delivered: int | None = None

    @property
    def open(self) -> bool:
        """Open until the archive receives the event after it noted the failure (the store counts only a
        record other than the one that failed: the archive may read that one after the letter)."""
        return self.delivered is None or self.delivered < self.noted

    def view(self) -> GapView:
        return {
            "event_id": self.event_id,
            "event_type": self.event_type,
            "consumer": self.consumer,
            "error": self.error,
            "source": self.source,
            "failed_at": self.failed_at.isoformat() if self.failed_at else None,
            "open": self.open,
        }


def open_gaps(gaps: Iterable[Gap]) -> list[Gap]:
    """The gaps still open, one per (event, consumer): the latest failure of each counts."""
    latest: dict[tuple[str, str], Gap] = {}
    for g in gaps:
        k = (g.event_id, g.consumer)
        if k not in latest or g.noted > latest[k].noted:
            latest[k] = g
    return sorted((g for g in latest.values() if g.open), key=lambda g: g.noted)


DossierStatus = Literal["open", "awaiting_seal", "incomplete", "sealed", "sealed_incomplete"]


def dossier_status(final_held: bool, gaps: Iterable[Gap], seal_complete: bool | None) -> DossierStatus:
    """Where a ticket's record stands.

    ``seal_complete`` is None while unsealed. ``open``: the ticket has not ended;
    ``awaiting_seal``: ended, nothing missing, the seal is due; ``incomplete``: ended
    or not, something is missing and no seal covers it; ``sealed``: sealed complete
    and nothing found missing since; ``sealed_incomplete``: sealed by a decision with
    gaps, or a gap found after a complete seal.
    """
    missing = bool(open_gaps(gaps))
    if seal_complete is not None:
        return "sealed" if seal_complete and not missing else "sealed_incomplete"
    if missing:
        return "incomplete"
    return "awaiting_seal" if final_held else "open"


def may_seal_complete(gaps: Iterable[Gap]) -> bool:
    """A dossier is sealed as complete only when no gap of its ticket is open."""
    return not open_gaps(gaps)


class DossierError(Conflict):
    """The dossier's state refuses the seal (nothing is missing, nothing is held)."""

    title = "Nothing to decide"


class AlreadySealed(DossierError):
    title = "Already sealed"


def dossier_id(ticket_id: str) -> UUID:
    """A dossier's id derives from its ticket: a second seal of the same ticket is refused by the event store."""
    return derived_id("dossier", ticket_id)


class Dossier(Aggregate):
    """A ticket's sealed record. Old stored ``Sealed`` events may lack the fields added since (``complete``
    and after): their defaults here are what those seals meant."""

    class Sealed(Aggregate.Created):
        ticket_id: str
        dossier_hash: str
        event_ids: list[str]
        sealed_at: datetime
        causation_id: str
        complete: bool = True
        missing: list[GapView] | None = None
        decided_by: str | None = None
        reason: str | None = None

    @event(Sealed)
    def __init__(
        self,
        id: UUID,  # noqa: A002
        ticket_id: str,
        dossier_hash: str,
        event_ids: list[str],
        sealed_at: datetime,
        causation_id: str,
        complete: bool = True,
        missing: list[GapView] | None = None,
        decided_by: str | None = None,
        reason: str | None = None,
    ) -> None:
        self.ticket_id = ticket_id
        self.dossier_hash = dossier_hash
        self.event_ids = event_ids
        self.sealed_at = sealed_at
        self.causation_id = causation_id
        self.complete = complete
        self.missing: list[GapView] = missing or []
        self.decided_by = decided_by
        self.reason = reason

    def verified(self, held: Sequence[ArchivedEvent], witnesses: Mapping[str, tuple[str, str]] | None = None) -> bool:
        """Whether the events held still hash to the seal: every sealed event present, none changed.

        An event whose body retention dropped or anonymised is checked by its *witness* instead (the seal's
        chain digests just before and after it, recorded when it expired): the digest reached before it must
        be the witness's first, and the chain goes on from the second."""
        return self.digests(held, witnesses or {}) is not None

    def digests(
        self, held: Sequence[ArchivedEvent], witnesses: Mapping[str, tuple[str, str]]
    ) -> dict[str, tuple[str, str]] | None:
        """The seal's chain digest before and after each sealed event (hex), or None when it does not verify."""
        by_id = {e.id: e for e in held}
        if any(i not in by_id for i in self.event_ids):
            return None
        digest = b""
        out: dict[str, tuple[str, str]] = {}
        for i in self.event_ids:
            before = digest
            w = witnesses.get(i)
            if w is not None:
                if before.hex() != w[0]:
                    return None
                digest = bytes.fromhex(w[1])
            else:
                digest = hashlib.sha256(digest + by_id[i].canonical()).digest()
            out[i] = (before.hex(), digest.hex())
        return out if digest.hex() == self.dossier_hash else None


def sealable(events: Iterable[ArchivedEvent]) -> list[ArchivedEvent]:
    """What a seal covers: Archived is the archive's own, published after the seal, never part of it."""
    return [e for e in events if e.type != Archived.event_type]


def seal(
    id: UUID,  # noqa: A002
    ticket_id: str,
    events: Sequence[ArchivedEvent],
    gaps: Iterable[Gap],
    at: datetime,
    causation_id: str,
    decided_by: str | None = None,
    reason: str | None = None,
) -> Dossier:
    """Seal the events held, in causal order: complete when nothing is missing, else only by a decision."""
    missing = open_gaps(gaps)
    if missing and (decided_by is None or not reason):
        raise DossierError(f"ticket {ticket_id} has {len(missing)} missing event(s); only a decision seals it")
    ordered = causal_order(sealable(events))
    if not ordered:
        raise DossierError(f"the archive holds no event of ticket {ticket_id}")
    return Dossier(
        id=id,
        ticket_id=ticket_id,
        dossier_hash=chain_hash(ordered),
        event_ids=[e.id for e in ordered],
        sealed_at=at,
        causation_id=causation_id,
        complete=not missing,
        missing=[g.view() for g in missing],
        decided_by=decided_by,
        reason=reason,
    )


def seal_by_decision(
    ticket_id: str, events: Sequence[ArchivedEvent], gaps: Sequence[Gap], at: datetime, decided_by: str, reason: str
) -> Dossier:
    """An explicit, recorded decision: seal what the archive holds although events are missing.

    Refused when nothing is known to be missing (the dossier is then sealed when its
    final event is stored). The seal's cause is the last event held, or else the
    latest missing one.
    """
    if may_seal_complete(gaps):
        raise DossierError(
            f"nothing of ticket {ticket_id} is known to be missing; its dossier is sealed when its final "
            "event is stored"
        )
    ended = any(e.type in FINAL for e in events) or any(g.event_type in FINAL for g in open_gaps(gaps))
    if not ended:
        raise DossierError(
            f"ticket {ticket_id} has not ended (no final event is held or missing); a seal now would leave "
            "its later events outside the dossier"
        )
    held = causal_order(sealable(events))
    cause = held[-1].id if held else open_gaps(gaps)[-1].event_id
    return seal(dossier_id(ticket_id), ticket_id, held, gaps, at, cause, decided_by=decided_by, reason=reason)
