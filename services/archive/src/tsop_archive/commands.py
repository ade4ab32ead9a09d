"""The archive's use cases: seal the dossiers that are due, and an auditor's decision to seal one incomplete.

Each reads what the archive holds of a ticket (``projection``, asyncpg), then
decides and saves through ``svc.commands.run``: the event store refuses a second
seal of the same ticket (a dossier's id derives from it), and the run decides
again on fresh state when another archive instance sealed first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tsop_archive import projection
from tsop_archive.domain import AlreadySealed, Dossier, dossier_id, may_seal_complete, seal, seal_by_decision
from tsop_events.auth import Principal
from tsop_events.clock import Clock, SystemClock
from tsop_events.commands import UnitOfWork
from tsop_events.runtime import Service
from tsop_events.settings import ServiceSettings
from tsop_events.store import EventStoreApp
from tsop_events.topics import Topic


class ArchiveApp(EventStoreApp):
    """The archive's write model: the sealed dossiers."""

    def __init__(
        self, settings: ServiceSettings | None = None, env: dict[str, str] | None = None, clock: Clock | None = None
    ) -> None:
        super().__init__(settings, env)
        self.clock = clock or SystemClock()


def tickets_topic(svc: Service[ArchiveApp]) -> str:
    return Topic.tickets.qualified(svc.settings.topic_prefix)


async def sealed_dossier(svc: Service[ArchiveApp], ticket_id: str) -> Dossier | None:
    """The ticket's sealed dossier, if any."""

    def find(uow: UnitOfWork) -> Dossier | None:
        return uow.find(Dossier, dossier_id(ticket_id))

    return await svc.commands.run(find)


@dataclass
class Sealing:
    """What one round of the sealer did."""

    sealed: int = 0
    done: list[str] = field(default_factory=list)  # sealed now, or already sealed
    blocked: list[str] = field(default_factory=list)  # something is missing


async def seal_due(svc: Service[ArchiveApp], limit: int = 200, settled_before: int | None = None) -> int:
    """Seal the dossiers of tickets the store holds up to their final event; return how many.

    Only tickets whose final event arrived before ``settled_before`` (an arrival
    mark up to which every dead letter has been read) are judged, so a failure
    noted before the final event is never missed. A ticket with an open gap is
    set aside until the missing event arrives. Exactly once by construction: a
    dossier's id derives from its ticket, so a second seal is refused by the
    event store (and the run, deciding again, finds it sealed).
    """
    due = await projection.due(svc.pool, limit, settled_before, svc.app.clock.now())
    if not due:
        return 0
    records = await projection.ticket_records(svc.pool, tickets_topic(svc), [t for t, _ in due])

    def decide(uow: UnitOfWork) -> Sealing:
        now, out = svc.app.clock.now(), Sealing()
        for ticket_id, final_id in due:
            if uow.find(Dossier, dossier_id(ticket_id)) is not None:
                out.done.append(ticket_id)
                continue
            events, gaps = records.get(ticket_id, ([], []))
            if not may_seal_complete(gaps):
                out.blocked.append(ticket_id)
                continue
            uow.add(seal(dossier_id(ticket_id), ticket_id, events, gaps, now, final_id))
            out.sealed += 1
            out.done.append(ticket_id)
        return out

    sealing = await svc.commands.run(decide)
    await projection.settle(svc.pool, sealing.done, sealing.blocked)
    return sealing.sealed


async def seal_incomplete(svc: Service[ArchiveApp], ticket_id: str, reason: str, caller: Principal) -> Dossier:
    """An auditor's or supervisor's recorded decision: seal what the archive holds although events are missing.

    ``AlreadySealed`` when the dossier is sealed; ``DossierError`` when nothing is
    known to be missing (its seal is then the sealer's) or nothing is held.
    """
    events, gaps = await projection.ticket_record(svc.pool, tickets_topic(svc), ticket_id)

    def decide(uow: UnitOfWork) -> Dossier:
        now = svc.app.clock.now()
        if uow.find(Dossier, dossier_id(ticket_id)) is not None:
            raise AlreadySealed(f"the dossier of ticket {ticket_id} is sealed already")
        dossier = seal_by_decision(ticket_id, events, gaps, now, caller.subject, reason)
        uow.add(dossier)
        return dossier

    dossier = await svc.commands.run(decide)
    await projection.settle(svc.pool, [ticket_id])
    return dossier
