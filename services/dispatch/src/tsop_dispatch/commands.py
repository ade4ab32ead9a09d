"""Dispatch's use cases: each loads, decides and saves through ``svc.commands.run`` (tsop_events.commands).

Also the write model's handle, ``DispatchApp``: the event store with dispatch's
configuration (clock, SLA policy file, acceptance window, sharding), its board,
and the one check every save passes (only what the wire can carry is recorded).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, ClassVar, TypeVar
from uuid import UUID

from eventsourcing.application import ProcessingEvent
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import Recording, StoredEvent
from eventsourcing.postgres import PostgresAggregateRecorder
from psycopg.sql import SQL, Identifier

from tsop_dispatch import views
from tsop_dispatch.domain import (
    Decision,
    DispatchError,
    Job,
    NotYours,
    OverCapacity,
    PeakMode,
    QualificationRecord,
    Resource,
    SlaPolicy,
    Technician,
    WorkOrder,
    qualification,
)
from tsop_dispatch.sla import Policy, explain
from tsop_dispatch.wire import WIRE
from tsop_events.auth import issue_token
from tsop_events.clock import Clock, SystemClock
from tsop_events.commands import Idempotency, UnitOfWork
from tsop_events.envelope import derived_id
from tsop_events.errors import Conflict, Invalid, NotFound
from tsop_events.personal import PersonalFields, SealingMapper
from tsop_events.runtime import Service
from tsop_events.settings import ServiceSettings
from tsop_events.store import EventStoreApp

log = logging.getLogger(__name__)

PEAK_MODE_ID = derived_id("dispatch", "peak-mode")
SLA_POLICY_ID = derived_id("dispatch", "sla-policy")

T = TypeVar("T", bound=Aggregate)
R = TypeVar("R")


def work_order_id(ticket_id: str) -> UUID:
    return derived_id("work-order", ticket_id)


class AlreadyRegistered(Conflict):
    title = "Already registered"


class InvalidPolicy(Invalid):
    title = "Invalid policy"


async def load(svc: Service[DispatchApp], cls: type[T], aggregate_id: UUID, what: str) -> T:
    """Read one aggregate (a thread hop, nothing saved); 404 naming ``what`` if there is none."""
    return await svc.commands.run(lambda uow: get(uow, cls, aggregate_id, what))


def _ticket_of(e: Any) -> str:
    return str(e.ticket_id)


class DispatchApp(EventStoreApp):
    """Dispatch's event store, its configuration and its board."""

    # lawful erasure (docs/erasure.md): a work log's notes may quote the customer: sealed under the ticket's key
    personal: ClassVar[Mapping[type, PersonalFields]] = {
        WorkOrder.WorkLogged: PersonalFields(frozenset({"notes"}), subject=_ticket_of),
    }

    # a technician's history grows with every job: load it from a recent snapshot
    snapshotting_intervals = {Technician: 100}

    def __init__(
        self,
        settings: ServiceSettings | None = None,
        env: dict[str, str] | None = None,
        clock: Clock | None = None,
        policy: Policy | None = None,
        accept_within: timedelta = timedelta(minutes=15),
        peak_backlog: int = 1000,
        shard: tuple[int, int] = (0, 1),
        shard_grace: timedelta = timedelta(seconds=5),
        service_types: frozenset[str] | None = None,
        complaint_types: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(settings, env)
        # the operator's catalogue (tsop_events.service_types); None: any name is taken (tests of other rules)
        self.service_types = service_types
        # the types feedback's complaint desk works (``"handled_by": "complaints"``): no work order, no technician
        self.complaint_types = complaint_types
        self.clock = clock or SystemClock()
        self.default_policy = policy or Policy.load()
        self.accept_within = accept_within
        self.peak_backlog = peak_backlog
        # with several instances, each drains its share of the queue first; any takes what waited past the grace
        self.shard, self.shard_grace = shard, shard_grace
        self.salt = (shard[0] * 0x9E3779B97F4A7C15) & ((1 << 128) - 1)
        self.conflicts = 0  # drain rounds decided again because another instance saved first
        self.board = views.Board(self)

    @property
    def policy(self) -> Policy:
        """The SLA policy in force: the last adopted (every instance reads it from the log), else the file."""
        return self.board.policy or self.default_policy

    # --- every save: all of it or nothing, and nothing after it that can fail ---------------------------

    def _record(self, processing_event: ProcessingEvent[UUID]) -> list[Recording[UUID]]:
        """Record only what the wire can carry: an event the mapper refuses fails the command whole, unsaved.

        (Otherwise the relay would have to set it aside and the ticket's history on the bus would have a gap.)
        """
        for e in processing_event.events:
            WIRE(e)
        return super()._record(processing_event)

    def _take_snapshots(self, processing_event: ProcessingEvent[UUID]) -> None:
        # a snapshot only speeds up loading; once the events are saved, the command has succeeded
        try:
            super()._take_snapshots(processing_event)
        except Exception:  # noqa: BLE001
            log.warning("snapshot not taken (the events are saved; the next one will be)", exc_info=True)

    def load_many(self, ids: list[UUID]) -> dict[UUID, Any]:
        """Aggregates by id in two queries on PostgreSQL (latest snapshots, then the events after them)."""
        recorder = self.recorder
        if not ids or not isinstance(recorder, PostgresAggregateRecorder):
            return {i: self.load(i) for i in ids}
        out: dict[UUID, Any] = {}
        after: dict[UUID, int] = dict.fromkeys(ids, 0)
        snapshots = self.snapshots
        if snapshots is not None and isinstance(snapshots.recorder, PostgresAggregateRecorder):
            rows = _select(
                snapshots.recorder,
                "SELECT DISTINCT ON (originator_id) * FROM {schema}.{table} WHERE originator_id = ANY(%s) "
                "ORDER BY originator_id, originator_version DESC",
                [ids],
            )
            for stored in rows:
                snap: Any = snapshots.mapper.to_domain_event(stored)
                out[snap.originator_id] = snap.mutate(None)
                after[snap.originator_id] = snap.originator_version
        rows = _select(
            recorder,
            "SELECT e.* FROM {schema}.{table} e JOIN unnest(%s::uuid[], %s::bigint[]) AS s(id, v) "
            "ON e.originator_id = s.id AND e.originator_version > s.v ORDER BY e.originator_id, e.originator_version",
            [list(after), list(after.values())],
        )
        if isinstance(self.mapper, SealingMapper):
            self.mapper.prefetch(rows)  # the sealed notes' keys in one round trip
        for stored in rows:
            e: Any = self.mapper.to_domain_event(stored)
            out[e.originator_id] = e.mutate(out.get(e.originator_id))
        return out

    def check_service_type(self, service_type: str, field: str) -> None:
        """Refuse a service type the operator's catalogue does not offer (422 naming the field)."""
        if self.service_types is not None and service_type not in self.service_types:
            raise Invalid(f"{service_type!r} is not a service type of the catalogue", field)

    def check_policy(self, new: Policy) -> None:
        """A policy must give targets for every service type of the catalogue (else work of it could not open)."""
        for st in sorted(self.service_types or ()):
            try:
                new.targets_for(st, 3, False)
            except ValueError:
                raise Invalid(f"no target matches service type {st!r} of the catalogue", "targets") from None

    def explain_clocks(self, wo: WorkOrder) -> dict[str, Any]:
        return explain(wo.facts, self.clock.now())

    def mine(self, wo_id: UUID, opened_at: datetime, now: datetime) -> bool:
        index, count = self.shard
        return count == 1 or wo_id.int % count == index or now - opened_at > self.shard_grace


def _select(recorder: PostgresAggregateRecorder, sql: str, params: list[Any]) -> list[StoredEvent]:
    statement = SQL(sql).format(
        schema=Identifier(recorder.datastore.schema), table=Identifier(recorder.events_table_name)
    )
    with recorder.datastore.get_connection() as conn, conn.cursor() as curs:
        curs.execute(statement, params)
        return [
            StoredEvent(r["originator_id"], r["originator_version"], r["topic"], bytes(r["state"]))
            for r in curs.fetchall()
        ]


def get(uow: UnitOfWork, cls: type[T], aggregate_id: UUID, what: str) -> T:
    """The aggregate of type ``cls``; 404 naming ``what`` if there is none (or the id is of something else)."""
    found = uow.get(aggregate_id)
    if not isinstance(found, cls):
        raise NotFound(f"no {what} {aggregate_id}")
    return found


def holdings(uow: UnitOfWork, wo: WorkOrder) -> tuple[Technician | None, list[Resource]]:
    """The technician holding ``wo`` (if any) and the resources reserved for it."""
    tech = get(uow, Technician, UUID(wo.technician_id), "technician") if wo.technician_id else None
    return tech, [get(uow, Resource, UUID(r), "resource") for r in wo.resources]


async def after_save(what: str, step: Callable[[], Awaitable[R]]) -> R | None:
    """Work that follows a save only to be quicker (refresh a view, assign at once): it may not undo success."""
    try:
        return await step()
    except Exception:  # noqa: BLE001 - the timers and the next read do it anyway
        log.warning("after %s: a follow-up step failed; the timers will catch up", what, exc_info=True)
        return None


async def refresh_board(svc: Service[DispatchApp], what: str) -> None:
    """Read back what was just saved, so this instance's next answer shows it."""

    async def step() -> None:
        await asyncio.to_thread(svc.app.board.refresh)

    await after_save(what, step)


# --- the assignment ------------------------------------------------------------------------------


def open_work_order(
    app: DispatchApp,
    wo_id: UUID,
    ticket_id: str,
    service_type: str,
    region: str,
    priority: int,
    resolve_by: datetime | None,
    causation_id: str,
) -> WorkOrder:
    """A new work order with the targets of the policy in force (peak or not, as the board knows)."""
    targets = app.policy.targets_for(service_type, priority, app.board.peak)
    return WorkOrder(
        id=wo_id,
        ticket_id=ticket_id,
        service_type=service_type,
        region=region,
        priority=priority,
        resolve_by=resolve_by,
        causation_id=causation_id,
        opened_at=app.clock.now(),
        targets=targets.spec(),
        needs=app.policy.resources_for(service_type),
    )


def decide(app: DispatchApp, wo: WorkOrder) -> Decision:
    """The ranking of technicians for ``wo`` on the board, as of now."""
    job = Job(wo.service_type, wo.region, wo.priority, frozenset(wo.excluded), frozenset(wo.previous))
    return app.board.decide(job, app.clock.now(), app.salt, app.shard)


def try_assign(
    app: DispatchApp, wo: WorkOrder, uow: UnitOfWork, assigned_by: str = "auto", decision: Decision | None = None
) -> bool:
    """Assign ``wo`` to the best technician that still has room; False if none has (it waits), or it is held."""
    if wo.held_by is not None:
        return False  # an incident holds it: nobody is sent to it on its own (§5.3)
    reserved: list[Resource] = []
    for kind in wo.needs:
        for rid in app.board.free_resource(kind, wo.region):
            r = get(uow, Resource, rid, "resource")
            if r.reserved_by is None:
                reserved.append(r)
                break
        else:
            return False
    if decision is None or wo.needs:
        decision = decide(app, wo)
    now = app.clock.now()
    for _, _, view in decision.ranked:
        tech = get(uow, Technician, view.id, "technician")
        try:
            wo.assign(
                tech,
                decision.explain(view),
                decision.candidates(),
                now,
                accept_by=now + app.accept_within,
                resources=reserved,
                assigned_by=assigned_by,
            )
        except OverCapacity:
            continue
        app.board.note_taken(view, wo.id, [r.id for r in reserved])
        return True
    return False


def drain_round(app: DispatchApp, uow: UnitOfWork, limit: int) -> int:
    """One round of the queue drain (see ``views.drain_queue``): how many work orders it assigned."""
    board = app.board
    board.refresh()
    now = app.clock.now()
    # first the work orders someone can take now (by the board), then load them in one query
    picked: list[UUID] = []
    full: set[tuple[str, str]] = set()  # kinds of work nobody can take this round
    spare: dict[tuple[str, str], int] = {}
    for wo_id, w in board.queue_iter():
        if len(picked) >= limit:
            break
        key = (w.service_type, w.region)
        if key in full or not app.mine(wo_id, w.opened_at, now):
            continue
        if key not in spare:
            ranked = board.decide(Job(w.service_type, w.region, w.priority), now).ranked
            spare[key] = sum(t.capacity - t.load for _, _, t in ranked)
            for kind in w.needs:  # and as many of each resource it reserves
                spare[key] = min(spare[key], len(board.free_resource(kind, w.region)))
        if spare[key] <= 0:
            full.add(key)
            continue
        spare[key] -= 1
        picked.append(wo_id)
    # decide on the board (each decision counts the ones before it), then load what they touch at once
    decisions: dict[UUID, Decision] = {}
    for wo_id in picked:
        w = board.waiting[wo_id]
        job = Job(w.service_type, w.region, w.priority, frozenset(w.excluded), frozenset(w.previous))
        decision = board.decide(job, now, app.salt, app.shard)
        if decision.ranked:
            decisions[wo_id] = decision
            board.note_taken(decision.ranked[0][2], wo_id, [])
    chosen = {d.ranked[0][2].id for d in decisions.values()}
    for aggregate in app.load_many([*decisions, *chosen]).values():
        uow.add(aggregate)
    assigned = 0
    for wo_id, decision in decisions.items():
        wo = get(uow, WorkOrder, wo_id, "work order")
        if wo.status == "waiting" and wo.held_by is None and try_assign(app, wo, uow, decision=decision):
            assigned += 1
    return assigned


async def assign_now(svc: Service[DispatchApp], wo_id: UUID) -> WorkOrder:
    """Assign a waiting work order at once if anyone has room (else the queue drain does it later)."""
    app = svc.app

    def decide_(uow: UnitOfWork) -> WorkOrder:
        app.board.refresh()
        wo = get(uow, WorkOrder, wo_id, "work order")
        if wo.status == "waiting":
            try_assign(app, wo, uow)
        return wo

    return await svc.commands.run(decide_)


# --- the workforce and resources -----------------------------------------------------------------


async def register_technician(
    svc: Service[DispatchApp],
    technician_id: UUID,
    name: str,
    service_types: list[str],
    regions: list[str],
    capacity: int,
    qualifications: list[dict[str, Any]] | None = None,
    idempotency: Idempotency | None = None,
) -> tuple[Technician, str | None]:
    """A technician with their qualifications, and the credential they use (shown once, hash kept).

    A qualification without ``valid_from`` is valid from now (the moment of registration). With an
    ``Idempotency-Key``, a retry after a lost answer finds the technician registered the first time (one
    technician, not two) and answers without a credential: only its hash was kept.
    """
    app = svc.app
    token, digest = issue_token("tech")

    def decide_(uow: UnitOfWork) -> Technician:
        now = app.clock.now()
        quals: dict[str, QualificationRecord] = {}
        for i, q in enumerate(qualifications or []):
            app.check_service_type(q["service_type"], f"qualifications.{i}.service_type")
            quals[q["service_type"]] = qualification(
                q["service_type"],
                q["certificate"],
                q.get("level", 1),
                q.get("valid_from"),
                q.get("valid_until"),
                now,
                f"qualifications.{i}.",
            )
        for i, st in enumerate(service_types):
            app.check_service_type(st, f"service_types.{i}")
            quals.setdefault(st, qualification(st, "registration", 1, now, None, now))
        if uow.get(technician_id) is not None:
            raise AlreadyRegistered(f"technician {technician_id} exists")
        tech = Technician(
            id=technician_id,
            name=name,
            regions=regions,
            capacity=capacity,
            qualifications=list(quals.values()),
            credential_hash=digest,
            registered_at=now,
        )
        uow.add(tech)
        return tech

    tech, replayed = await svc.commands.run_once(
        idempotency, decide_, lambda t: str(t.id), lambda uow, kept: uow.load(Technician, UUID(kept))
    )
    return tech, None if replayed else token


async def grant_qualification(
    svc: Service[DispatchApp],
    technician_id: UUID,
    service_type: str,
    certificate: str,
    level: int,
    valid_from: datetime | None,
    valid_until: datetime | None,
    source: str,
) -> Technician:
    app = svc.app
    app.check_service_type(service_type, "service_type")

    def decide_(uow: UnitOfWork) -> Technician:
        tech = get(uow, Technician, technician_id, "technician")
        now = app.clock.now()
        tech.grant(service_type, certificate, level, valid_from or now, valid_until, source, now)
        return tech

    return await svc.commands.run(decide_)


async def schedule(
    svc: Service[DispatchApp], technician_id: UUID, what: str, start: datetime, end: datetime, reason: str = ""
) -> Technician:
    """A shift (``what`` = "shift") or leave for a technician."""

    def decide_(uow: UnitOfWork) -> Technician:
        tech = get(uow, Technician, technician_id, "technician")
        if what == "shift":
            tech.schedule_shift(start, end)
        else:
            tech.schedule_leave(start, end, reason)
        return tech

    return await svc.commands.run(decide_)


async def rotate_credential(svc: Service[DispatchApp], technician_id: UUID) -> tuple[Technician, str]:
    """A new credential for a technician (shown once); the previous one is revoked."""
    token, digest = issue_token("tech")

    def decide_(uow: UnitOfWork) -> Technician:
        tech = get(uow, Technician, technician_id, "technician")
        tech.rotate_credential(digest)
        return tech

    tech = await svc.commands.run(decide_)
    await refresh_board(svc, "a new credential")  # usable here at once (others read it on a miss)
    return tech, token


async def change_capacity(svc: Service[DispatchApp], technician_id: UUID, capacity: int) -> Technician:
    def decide_(uow: UnitOfWork) -> Technician:
        tech = get(uow, Technician, technician_id, "technician")
        tech.change_capacity(capacity)
        return tech

    return await svc.commands.run(decide_)


async def register_resource(
    svc: Service[DispatchApp], resource_id: UUID, kind: str, name: str, region: str,
    idempotency: Idempotency | None = None,
) -> tuple[Resource, bool]:
    """A piece of equipment or a venue slot; ``(resource, replayed)``: with an ``Idempotency-Key`` a retry
    after a lost answer finds the resource registered the first time."""
    app = svc.app

    def decide_(uow: UnitOfWork) -> Resource:
        if uow.get(resource_id) is not None:
            raise AlreadyRegistered(f"resource {resource_id} exists")
        r = Resource(id=resource_id, kind=kind, name=name, region=region, registered_at=app.clock.now())
        uow.add(r)
        return r

    return await svc.commands.run_once(
        idempotency, decide_, lambda r: str(r.id), lambda uow, kept: uow.load(Resource, UUID(kept))
    )


async def set_peak(svc: Service[DispatchApp], on: bool, by: str, reason: str) -> PeakMode:
    app = svc.app

    def decide_(uow: UnitOfWork) -> PeakMode:
        peak = uow.find(PeakMode, PEAK_MODE_ID)
        if peak is None:
            peak = PeakMode(id=PEAK_MODE_ID)
            uow.add(peak)
        peak.change(on, by, reason, len(app.board.waiting), app.clock.now())
        return peak

    peak = await svc.commands.run(decide_)
    await refresh_board(svc, "a peak-mode change")
    return peak


# --- the service levels --------------------------------------------------------------------------


def parse_policy(raw: dict[str, Any]) -> Policy:
    """The operator's policy data as a ``Policy``; a 422 naming what is wrong."""
    try:
        return Policy.from_dict(raw)
    except KeyError as exc:
        raise Invalid("missing", str(exc.args[0])) from None
    except (ValueError, TypeError) as exc:
        raise Invalid(str(exc), "body") from None


async def adopt_policy(svc: Service[DispatchApp], raw: dict[str, Any], by: str) -> int:
    """Adopt a new SLA policy (validated first) and recalculate the targets of every open work order.

    The adoption and every recalculation are saved in one transaction: all or nothing (a write race
    with other commands decides again on fresh state). Elapsed time stays; the deadlines move.
    Returns how many work orders got new targets.
    """
    app = svc.app
    new = parse_policy(raw)
    app.check_policy(new)

    def decide_(uow: UnitOfWork) -> int:
        app.board.refresh()
        old = app.policy
        record = uow.find(SlaPolicy, SLA_POLICY_ID)
        if record is None:
            record = SlaPolicy(id=SLA_POLICY_ID)
            uow.add(record)
        now = app.clock.now()
        record.adopt(raw, by, now)
        why = f"policy v{old.version} → v{new.version} adopted by {by}"
        with app.board.lock:
            open_ids = list(app.board.clocks)
        retargeted = 0
        for wo in app.load_many(open_ids).values():
            try:
                changed = _retarget_to_policy(wo, new, why, now)
            except ValueError as exc:  # no target for an open work order's type
                raise InvalidPolicy(str(exc), "body") from None
            if changed:
                uow.add(wo)
                retargeted += 1
        return retargeted

    changed = await svc.commands.run(decide_)
    await refresh_board(svc, "adopting a policy")
    return changed


def _retarget_to_policy(wo: WorkOrder, policy: Policy, why: str, now: datetime) -> bool:
    if wo.status in ("resolved", "withdrawn") or wo.targets is None:
        return False
    spec = policy.targets_for(wo.service_type, wo.priority, bool(wo.targets.get("peak"))).spec()
    if {k: v for k, v in spec.items() if k != "rule"} == {k: v for k, v in wo.targets.items() if k != "rule"}:
        return False
    wo.retarget(spec, wo.priority, why, now)
    return True


async def change_priority(svc: Service[DispatchApp], wo_id: UUID, priority: int, by: str, reason: str) -> WorkOrder:
    """A new priority: the targets are recalculated, the time already elapsed stays."""
    app = svc.app

    def decide_(uow: UnitOfWork) -> WorkOrder:
        wo = get(uow, WorkOrder, wo_id, "work order")
        peak = bool(wo.targets.get("peak")) if wo.targets else app.board.peak
        targets = app.policy.targets_for(wo.service_type, priority, peak)
        why = f"priority {wo.priority} → {priority} by {by}: {reason}"
        wo.retarget(targets.spec(), priority, why, app.clock.now())
        return wo

    return await svc.commands.run(decide_)


# --- a technician's work -------------------------------------------------------------------------


async def _change(svc: Service[DispatchApp], wo_id: UUID, change: Callable[[WorkOrder, datetime], None]) -> WorkOrder:
    app = svc.app

    def decide_(uow: UnitOfWork) -> WorkOrder:
        wo = get(uow, WorkOrder, wo_id, "work order")
        change(wo, app.clock.now())
        return wo

    return await svc.commands.run(decide_)


async def accept(svc: Service[DispatchApp], wo_id: UUID, technician_id: str) -> WorkOrder:
    return await _change(svc, wo_id, lambda wo, now: wo.accept(technician_id, now))


async def start(svc: Service[DispatchApp], wo_id: UUID, technician_id: str, mode: str) -> WorkOrder:
    return await _change(svc, wo_id, lambda wo, now: wo.start(technician_id, mode, now))


async def log_work(
    svc: Service[DispatchApp],
    wo_id: UUID,
    technician_id: str,
    action: str,
    mode: str,
    notes: str | None,
    equipment: list[str] | None = None,
    measurements: dict[str, float | str] | None = None,
    idempotency_key: str | None = None,
) -> tuple[WorkOrder, bool]:
    """Log a step of the work: (work order, replayed).

    A log entry is the one technician step that is not a state change, so a client that sends it again
    after a lost answer would log it twice; with an ``Idempotency-Key`` the retry replays the first answer.
    """
    app = svc.app
    body = {"wo": str(wo_id), "action": action, "mode": mode, "notes": notes, "equipment": equipment,
            "measurements": measurements}
    key = None
    if idempotency_key:
        # the notes may quote the customer: the fingerprint is keyed by the ticket's data key (docs/erasure.md)
        ticket = await svc.commands.run(lambda uow: get(uow, WorkOrder, wo_id, "work order").ticket_id)
        key = await asyncio.to_thread(Idempotency.of, f"work-log:{technician_id}", idempotency_key, body,
                                      keyring=app.keyring, subject=str(ticket))

    def decide_(uow: UnitOfWork) -> WorkOrder:
        wo = get(uow, WorkOrder, wo_id, "work order")
        wo.log_work(technician_id, action, mode, notes, app.clock.now(), equipment, measurements)
        return wo

    def replay(uow: UnitOfWork, kept: str) -> WorkOrder:
        return get(uow, WorkOrder, UUID(kept), "work order")

    return await svc.commands.run_once(key, decide_, lambda wo: str(wo.id), replay)


async def pause(svc: Service[DispatchApp], wo_id: UUID, technician_id: str, kind: str, reason: str) -> WorkOrder:
    return await _change(svc, wo_id, lambda wo, now: wo.pause(technician_id, kind, reason, now))


async def resume(svc: Service[DispatchApp], wo_id: UUID, technician_id: str) -> WorkOrder:
    return await _change(svc, wo_id, lambda wo, now: wo.resume(technician_id, now))


def _held_by(uow: UnitOfWork, wo: WorkOrder, technician_id: str) -> tuple[Technician, list[Resource]]:
    """The acting technician's own work order, with what it holds; 403 if it is not theirs."""
    if wo.technician_id != technician_id:
        raise NotYours(f"technician {technician_id} is not assigned to work order {wo.id}")
    tech, resources = holdings(uow, wo)
    assert tech is not None
    return tech, resources


async def resolve(
    svc: Service[DispatchApp], wo_id: UUID, technician_id: str, resolution_code: str, summary: str, advice: str | None
) -> WorkOrder:
    app = svc.app

    def decide_(uow: UnitOfWork) -> WorkOrder:
        wo = get(uow, WorkOrder, wo_id, "work order")
        tech, resources = _held_by(uow, wo, technician_id)
        wo.resolve(tech, resolution_code, summary, advice, app.clock.now(), resources)
        return wo

    return await svc.commands.run(decide_)


async def decline(
    svc: Service[DispatchApp], wo_id: UUID, technician_id: str, reason: str, timed_out: bool = False
) -> WorkOrder:
    """The technician says no (or did not answer in time): saved, then offered to someone else at once."""
    app = svc.app

    def decide_(uow: UnitOfWork) -> WorkOrder:
        wo = get(uow, WorkOrder, wo_id, "work order")
        tech, resources = _held_by(uow, wo, technician_id)
        wo.decline(tech, reason, app.clock.now(), resources, timed_out=timed_out)
        return wo

    wo = await svc.commands.run(decide_)
    return await after_save("a decline", lambda: assign_now(svc, wo_id)) or wo


async def time_out(svc: Service[DispatchApp], wo_id: UUID, now: datetime) -> bool:
    """Decline an assignment not accepted by its ``accept_by`` (False if it was answered meanwhile)."""
    app = svc.app

    def decide_(uow: UnitOfWork) -> bool:
        wo = get(uow, WorkOrder, wo_id, "work order")
        if wo.status != "assigned" or wo.accept_by is None or wo.accept_by > now or wo.technician_id is None:
            return False
        tech, resources = _held_by(uow, wo, wo.technician_id)
        reason = f"not accepted by {wo.accept_by.isoformat()}"
        wo.decline(tech, reason, app.clock.now(), resources, timed_out=True)
        return True

    if not await svc.commands.run(decide_):
        return False
    await after_save("a time-out", lambda: assign_now(svc, wo_id))
    return True


async def reassign(
    svc: Service[DispatchApp], wo_id: UUID, technician_id: UUID | None, reason: str, by: str
) -> WorkOrder:
    """A supervisor moves the work to another technician (or back to the queue's best choice)."""
    app = svc.app

    def decide_(uow: UnitOfWork) -> WorkOrder:
        app.board.refresh()
        wo = get(uow, WorkOrder, wo_id, "work order")
        old, resources = holdings(uow, wo)
        if old is None:
            raise DispatchError(f"work order {wo_id} is {wo.status}; nobody holds it")
        if technician_id is not None and str(technician_id) == wo.technician_id:
            raise DispatchError(f"technician {technician_id} already holds work order {wo_id}")
        now = app.clock.now()
        wo.unassign(old, reason, by, now, resources)
        if technician_id is None:
            try_assign(app, wo, uow, assigned_by=by)
            return wo
        new = get(uow, Technician, technician_id, "technician")
        view = app.board.technicians.get(technician_id)
        level = view.qualified(wo.service_type, now) if view else None
        if level is None:
            raise DispatchError(f"technician {technician_id} holds no valid qualification for {wo.service_type}")
        wo.assign(new, f"reassigned by {by}: {reason}", [], now, accept_by=now + app.accept_within, assigned_by=by)
        return wo

    return await svc.commands.run(decide_)
