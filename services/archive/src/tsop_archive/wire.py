"""The archive's events on the wire: a sealed dossier is announced as Archived."""

from __future__ import annotations

from tsop_archive.domain import Dossier
from tsop_archive.records.domain import Expiry, LegalHold
from tsop_events import schemas as wire
from tsop_events.wiremap import WireMap


def _event_count(e: Dossier.Sealed) -> int:
    return len(e.event_ids)


def _last_event_id(e: Dossier.Sealed) -> str:
    return e.event_ids[-1]


def _missing_event_ids(e: Dossier.Sealed) -> list[str]:
    return [str(m["event_id"]) for m in e.missing or []]


# the cause is the ticket's final event (the seal's own ``causation_id``)
WIRE = WireMap().add(
    Dossier.Sealed,
    wire.Archived,
    fields={
        "event_count": _event_count,
        "last_event_id": _last_event_id,
        "archived_at": "sealed_at",
        "missing_event_ids": _missing_event_ids,
    },
)


def _expired_ticket(e: Expiry.Recorded) -> bool:
    return e.is_ticket


def _ticket_id(e: Expiry.Recorded) -> str:
    return e.key


# retention on a ticket's records is announced on the ticket (other records' expiries stay in the archive)
WIRE.add(
    Expiry.Recorded,
    wire.RecordsExpired,
    fields={"ticket_id": _ticket_id, "retention_days": "days", "expired_at": "at"},
    when=_expired_ticket,
)


def _hold_id(e: LegalHold.Event) -> str:
    return str(e.originator_id)


# legal holds are announced on the customers topic: intake refuses an erasure a hold covers (docs/erasure.md)
WIRE.add(LegalHold.Placed, wire.LegalHoldPlaced, fields={"hold_id": _hold_id, "placed_at": "at"})
def _kind(e: LegalHold.Event) -> str | None:
    return getattr(e, "kind", None)  # decisions recorded before it was carried have none


def _subject(e: LegalHold.Event) -> str | None:
    return getattr(e, "subject", None)


WIRE.add(LegalHold.Released, wire.LegalHoldReleased,
         fields={"hold_id": _hold_id, "released_at": "at", "kind": _kind, "subject": _subject})
WIRE.add(LegalHold.PlacedAgain, wire.LegalHoldPlacedAgain,
         fields={"hold_id": _hold_id, "placed_at": "at", "kind": _kind, "subject": _subject})
