"""Dossiers: a ticket's events in causal order, sealed with a hash chain (§2.4, §7.2). No I/O."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
from eventsourcing.domain import Aggregate, event


@dataclass(frozen=True)
class ArchivedEvent:
    seq: int
    id: str
    type: str
    source: str
    time: datetime
    causation_id: str | None
    data: dict[str, Any]

    def canonical(self) -> bytes:
        return orjson.dumps(
            {"id": self.id, "type": self.type, "source": self.source, "time": self.time.isoformat(), "data": self.data},
            option=orjson.OPT_SORT_KEYS,
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


class Dossier(Aggregate):
    @event("Sealed")
    def __init__(
        self,
        id: UUID,  # noqa: A002
        ticket_id: str,
        dossier_hash: str,
        event_ids: list[str],
        sealed_at: datetime,
        causation_id: str,
    ) -> None:
        self.ticket_id = ticket_id
        self.dossier_hash = dossier_hash
        self.event_ids = event_ids
        self.sealed_at = sealed_at
        self.causation_id = causation_id

# The event classes the @event decorators made, named for the code that maps them (and for mypy).
DossierSealed: type[Any] = Dossier.__dict__["Sealed"]
