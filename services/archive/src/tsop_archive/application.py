"""Sealing dossiers, and the mapping to wire events."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from tsop_archive.domain import ArchivedEvent, Dossier, DossierSealed, causal_order, chain_hash
from tsop_archive.store import row_to_event
from tsop_events import schemas as wire
from tsop_events.clock import Clock, SystemClock
from tsop_events.envelope import derived_id
from tsop_events.relay import Outgoing
from tsop_events.settings import ServiceSettings
from tsop_events.store import EventStoreApp, IntegrityError
from tsop_events.topics import Topic


def dossier_id(ticket_id: str) -> UUID:
    return derived_id("dossier", ticket_id)


class ArchiveApp(EventStoreApp):
    def __init__(
        self, settings: ServiceSettings | None = None, env: dict[str, str] | None = None, clock: Clock | None = None
    ) -> None:
        super().__init__(settings, env)
        self.clock = clock or SystemClock()
        self.tickets_topic = (settings or ServiceSettings()).topic(Topic.tickets.value)

    def ticket_events(self, ticket_id: str) -> list[ArchivedEvent]:
        """The stored events of one ticket, in causal order (read through the event store's pool)."""
        datastore: Any = self.recorder.datastore  # type: ignore[attr-defined]
        with datastore.get_connection() as conn:
            rows = conn.execute(
                "SELECT seq, ce_id, ce_type, ce_source, ce_time, causation_id, data FROM archive_events "
                "WHERE key = %s AND topic = %s ORDER BY seq",
                (ticket_id, self.tickets_topic),
            ).fetchall()
        return causal_order([row_to_event(r) for r in rows])

    def seal_pending(self, limit: int = 200) -> int:
        """Seal the dossiers of tickets the store holds up to their final event; return how many.

        Exactly once by construction: a dossier's id derives from its ticket, so
        a second seal of the same ticket is refused by the event store.
        """
        datastore: Any = self.recorder.datastore  # type: ignore[attr-defined]
        with datastore.get_connection() as conn:
            pending = conn.execute(
                "SELECT ticket_id, closed_event_id FROM archive_to_seal LIMIT %s", (limit,)
            ).fetchall()
        if not pending:
            return 0
        dossiers = []
        for row in pending:
            ticket_id, closed_id = row["ticket_id"], row["closed_event_id"]
            if self.exists(dossier_id(ticket_id)):
                continue
            events = self.ticket_events(ticket_id)
            ids = [e.id for e in events]
            sealed = events[: ids.index(closed_id) + 1] if closed_id in ids else events
            dossiers.append(
                Dossier(
                    id=dossier_id(ticket_id),
                    ticket_id=ticket_id,
                    dossier_hash=chain_hash(sealed),
                    event_ids=[e.id for e in sealed],
                    sealed_at=self.clock.now(),
                    causation_id=closed_id,
                )
            )
        if dossiers:
            try:
                self.save(*dossiers)
            except IntegrityError:  # another archive instance sealed some of them: seal the rest
                for d in dossiers:
                    try:
                        self.save(d)
                    except IntegrityError:
                        pass
        with datastore.get_connection() as conn:
            conn.execute(
                "DELETE FROM archive_to_seal WHERE ticket_id = ANY(%s)", ([r["ticket_id"] for r in pending],)
            )
        return len(dossiers)


def to_wire(e: Any) -> Outgoing | None:
    if isinstance(e, DossierSealed):
        return Outgoing(
            wire.Archived(
                ticket_id=e.ticket_id,
                dossier_hash=e.dossier_hash,
                event_count=len(e.event_ids),
                last_event_id=e.event_ids[-1],
                archived_at=e.sealed_at,
            ),
            causation_id=e.causation_id,
        )
    return None
