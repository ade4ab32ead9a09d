"""Sealing dossiers, and the mapping to wire events."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from tsop_archive.domain import (
    ArchivedEvent,
    Dossier,
    DossierError,
    DossierSealed,
    Gap,
    causal_order,
    may_seal_complete,
    open_gaps,
    seal,
)
from tsop_archive.store import COLUMNS, GAP_COLUMNS, row_to_event, row_to_gap
from tsop_events import schemas as wire
from tsop_events.clock import Clock, SystemClock
from tsop_events.envelope import derived_id
from tsop_events.relay import Outgoing
from tsop_events.settings import ServiceSettings
from tsop_events.store import EventStoreApp, IntegrityError
from tsop_events.topics import Topic


def dossier_id(ticket_id: str) -> UUID:
    return derived_id("dossier", ticket_id)


class AlreadySealed(DossierError):
    pass


class ArchiveApp(EventStoreApp):
    def __init__(
        self, settings: ServiceSettings | None = None, env: dict[str, str] | None = None, clock: Clock | None = None
    ) -> None:
        super().__init__(settings, env)
        self.clock = clock or SystemClock()
        self.tickets_topic = (settings or ServiceSettings()).topic(Topic.tickets.value)

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        datastore: Any = self.recorder.datastore  # type: ignore[attr-defined]
        with datastore.get_connection() as conn:
            return list(conn.execute(sql, args).fetchall())

    def ticket_events(self, ticket_id: str) -> list[ArchivedEvent]:
        """The stored events of one ticket, in causal order (read through the event store's pool)."""
        rows = self._query(
            f"SELECT {COLUMNS} FROM archive_events WHERE key = %s AND topic = %s ORDER BY seq",
            (ticket_id, self.tickets_topic),
        )
        return causal_order([row_to_event(r) for r in rows])

    def ticket_gaps(self, ticket_id: str) -> list[Gap]:
        rows = self._query(f"SELECT {GAP_COLUMNS} FROM archive_gaps WHERE ticket_id = %s ORDER BY noted", (ticket_id,))
        return [row_to_gap(r) for r in rows]

    def seal_pending(self, limit: int = 200, settled_before: int | None = None) -> int:
        """Seal the dossiers of tickets the store holds up to their final event; return how many.

        Only tickets whose final event arrived before ``settled_before`` (an arrival
        mark up to which every dead letter has been read) are judged, so a failure
        noted before the final event is never missed. A ticket with an open gap is
        set aside until the missing event arrives. Exactly once by construction: a
        dossier's id derives from its ticket, so a second seal is refused by the
        event store.
        """
        pending = self._query(
            "SELECT ticket_id, closed_event_id FROM archive_to_seal WHERE NOT blocked AND final_arrival < %s LIMIT %s",
            (settled_before if settled_before is not None else 2**62, limit),
        )
        if not pending:
            return 0
        dossiers, blocked, done = [], [], []
        for row in pending:
            ticket_id, closed_id = row["ticket_id"], row["closed_event_id"]
            if self.exists(dossier_id(ticket_id)):
                done.append(ticket_id)
                continue
            gaps = self.ticket_gaps(ticket_id)
            if not may_seal_complete(gaps):
                blocked.append(ticket_id)
                continue
            # Archived is ours, published after the seal: never part of what it seals
            events = [e for e in self.ticket_events(ticket_id) if e.type != wire.Archived.event_type]
            dossiers.append(seal(dossier_id(ticket_id), ticket_id, events, gaps, self.clock.now(), closed_id))
            done.append(ticket_id)
        if dossiers:
            try:
                self.save(*dossiers)
            except IntegrityError:  # another archive instance sealed some of them: seal the rest
                for d in dossiers:
                    try:
                        self.save(d)
                    except IntegrityError:
                        pass
        datastore: Any = self.recorder.datastore  # type: ignore[attr-defined]
        with datastore.get_connection() as conn:
            conn.execute("DELETE FROM archive_to_seal WHERE ticket_id = ANY(%s)", (done,))
            # until a missing event arrives (the store clears the flag then)
            conn.execute("UPDATE archive_to_seal SET blocked = true WHERE ticket_id = ANY(%s)", (blocked,))
        return len(dossiers)

    def seal_incomplete(self, ticket_id: str, decided_by: str, reason: str) -> Dossier:
        """An explicit, recorded decision: seal what the archive holds although events are missing."""
        if self.exists(dossier_id(ticket_id)):
            raise AlreadySealed(f"the dossier of ticket {ticket_id} is sealed already")
        gaps = self.ticket_gaps(ticket_id)
        if may_seal_complete(gaps):
            raise DossierError(
                f"nothing of ticket {ticket_id} is known to be missing; its dossier is sealed when its final "
                "event is stored"
            )
        events = [e for e in self.ticket_events(ticket_id) if e.type != wire.Archived.event_type]
        cause = events[-1].id if events else open_gaps(gaps)[-1].event_id
        dossier = seal(
            dossier_id(ticket_id), ticket_id, events, gaps, self.clock.now(), cause, decided_by=decided_by,
            reason=reason,
        )
        try:
            self.save(dossier)
        except IntegrityError:
            raise AlreadySealed(f"the dossier of ticket {ticket_id} is sealed already") from None
        datastore: Any = self.recorder.datastore  # type: ignore[attr-defined]
        with datastore.get_connection() as conn:
            conn.execute("DELETE FROM archive_to_seal WHERE ticket_id = %s", (ticket_id,))
        return dossier


def to_wire(e: Any) -> Outgoing | None:
    if isinstance(e, DossierSealed):
        complete = getattr(e, "complete", True)
        return Outgoing(
            wire.Archived(
                ticket_id=e.ticket_id,
                dossier_hash=e.dossier_hash,
                event_count=len(e.event_ids),
                last_event_id=e.event_ids[-1],
                archived_at=e.sealed_at,
                complete=complete,
                missing_event_ids=[m["event_id"] for m in (getattr(e, "missing", None) or [])],
                decided_by=getattr(e, "decided_by", None),
                reason=getattr(e, "reason", None),
            ),
            causation_id=e.causation_id,
        )
    return None
