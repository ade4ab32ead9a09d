"""Sealing dossiers, and the mapping to wire events."""

from __future__ import annotations

from typing import Any, ClassVar
from uuid import UUID

from tsop_archive.domain import ArchivedEvent, Dossier, DossierSealed, causal_order, chain_hash
from tsop_archive.store import row_to_event
from tsop_events import schemas as wire
from tsop_events.clock import Clock, SystemClock
from tsop_events.consumer import EventStoreSink, Incoming, Retry, UnitOfWork
from tsop_events.envelope import derived_id
from tsop_events.relay import Outgoing
from tsop_events.settings import ServiceSettings
from tsop_events.store import EventStoreApp
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


class SealDossiers(EventStoreSink):
    """On Closed: once the store holds the ticket's events up to Closed, seal them."""

    name: ClassVar[str] = "archive-sealer"
    event_types: ClassVar[frozenset[str] | None] = frozenset({wire.Closed.event_type})

    def __init__(self, app: ArchiveApp) -> None:
        super().__init__(app)
        self.archive = app

    def react(self, uow: UnitOfWork, incoming: Incoming) -> None:
        ticket_id = incoming.key or ""
        did = dossier_id(ticket_id)
        if uow.get(did) is not None:
            return  # sealed already
        events = self.archive.ticket_events(ticket_id)
        ids = [e.id for e in events]
        if incoming.envelope.id not in ids:
            raise Retry(f"the store has not yet archived Closed of ticket {ticket_id}")
        sealed = events[: ids.index(incoming.envelope.id) + 1]
        uow.add(
            Dossier(
                id=did,
                ticket_id=ticket_id,
                dossier_hash=chain_hash(sealed),
                event_ids=[e.id for e in sealed],
                sealed_at=self.archive.clock.now(),
                causation_id=incoming.envelope.id,
            )
        )


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
