"""Dispatch commands, the dispatch board, the durable timers, and the mapping to wire events."""

from __future__ import annotations

import logging
from bisect import insort
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import islice
from typing import Any
from uuid import UUID

from eventsourcing.application import ProcessingEvent
from eventsourcing.persistence import Recording, StoredEvent
from eventsourcing.postgres import PostgresAggregateRecorder
from psycopg.sql import SQL, Identifier

from tsop_dispatch import domain as d
from tsop_dispatch.domain import (
    Decision,
    DispatchError,
    Invalid,
    Job,
    OverCapacity,
    PeakMode,
    Resource,
    SlaPolicy,
    Technician,
    TechnicianView,
    WorkOrder,
    clock_fact,
    qualification,
    rank_candidates,
)
from tsop_dispatch.sla import Fact, Policy, explain, next_due
from tsop_events import schemas as wire
from tsop_events.auth import issue_token
from tsop_events.clock import Clock, SystemClock
from tsop_events.envelope import derived_id, stable_event_id
from tsop_events.relay import Outgoing
from tsop_events.settings import ServiceSettings
from tsop_events.store import EventStoreApp, IntegrityError, LogFollower, retry_on_conflict

log = logging.getLogger(__name__)

PEAK_MODE_ID = derived_id("dispatch", "peak-mode")
SLA_POLICY_ID = derived_id("dispatch", "sla-policy")


def work_order_id(ticket_id: str) -> UUID:
    return derived_id("work-order", ticket_id)


@dataclass
class Waiting:
    priority: int
    deadline: datetime
    opened_at: datetime
    service_type: str
    region: str
    needs: list[str]
    excluded: set[str] = field(default_factory=set)
    previous: set[str] = field(default_factory=set)

    def order(self) -> tuple[int, datetime, datetime]:
        return (self.priority, self.deadline, self.opened_at)


@dataclass
class OpenClock:
    facts: list[Fact]
    crossed: set[tuple[str, str]] = field(default_factory=set)
    paused: bool = False
    due: datetime | None = None


class Board(LogFollower):
    """What dispatch knows of its workforce, resources and open work orders.

    Built from the service's own notification log, so every instance converges
    on the same view; the aggregates stay the authority (a stale view costs a
    retry, never an over-capacity assignment).
    """

    def __init__(self, app: EventStoreApp) -> None:
        super().__init__(app)
        self.technicians: dict[UUID, TechnicianView] = {}
        self.by_type: dict[str, set[UUID]] = {}
        self.by_type_region: dict[tuple[str, str], set[UUID]] = {}
        self.credentials: dict[str, UUID] = {}
        self.waiting: dict[UUID, Waiting] = {}
        self.awaiting_answer: dict[UUID, datetime] = {}  # assigned, not yet accepted: accept_by
        self.clocks: dict[UUID, OpenClock] = {}
        self.resources: dict[UUID, tuple[str, str]] = {}  # id → (kind, region)
        self.free: dict[tuple[str, str], set[UUID]] = {}
        self.tentative_resources: set[UUID] = set()
        self.peak = False
        self.policy: Policy | None = None  # the adopted SLA policy, once one was adopted
        self.queued: Counter[tuple[str, str]] = Counter()
        self._sorted: list[tuple[tuple[int, datetime, datetime, int], UUID]] = []
        self._parked: dict[UUID, Waiting] = {}  # assigned work orders' queue entries, to re-queue them

    def apply(self, e: Any) -> None:
        oid = e.originator_id
        if isinstance(e, d.TechnicianRegistered):
            view = TechnicianView(oid, frozenset(e.regions), e.capacity, name=e.name)
            self.technicians[oid] = view
            for q in e.qualifications:
                self._qualify(view, d.registered(q, e.registered_at))
            if e.credential_hash:
                self.credentials[e.credential_hash] = oid
        elif isinstance(e, d.TechnicianQualificationGranted):
            self._qualify(self.technicians[oid], e.__dict__)
        elif isinstance(e, d.TechnicianShiftScheduled):
            self.technicians[oid].shifts.append((e.start, e.end))
        elif isinstance(e, d.TechnicianLeaveScheduled):
            self.technicians[oid].leave.append((e.start, e.end))
        elif isinstance(e, d.TechnicianCapacityChanged):
            self.technicians[oid].capacity = e.capacity
        elif isinstance(e, d.TechnicianCredentialIssued):
            for digest in [h for h, tid in self.credentials.items() if tid == oid]:
                del self.credentials[digest]
            self.credentials[e.credential_hash] = oid
        elif isinstance(e, d.TechnicianTook):
            self.technicians[oid].active.add(e.work_order_id)
        elif isinstance(e, d.TechnicianReleased):
            self.technicians[oid].active.discard(e.work_order_id)
        elif isinstance(e, d.ResourceRegistered):
            self.resources[oid] = (e.kind, e.region)
            self.free.setdefault((e.kind, e.region), set()).add(oid)
        elif isinstance(e, d.ResourceReserved):
            self.free.get(self.resources[oid], set()).discard(oid)
        elif isinstance(e, d.ResourceFreed):
            self.free.setdefault(self.resources[oid], set()).add(oid)
        elif isinstance(e, d.PeakModeChanged):
            self.peak = e.on
        elif isinstance(e, d.SlaPolicyAdopted):
            self.policy = Policy.from_dict(e.policy)
        else:
            self._apply_work_order(oid, e)

    def _qualify(self, view: TechnicianView, q: dict[str, Any]) -> None:
        view.qualifications[q["service_type"]] = (int(q["level"]), q["valid_from"], q["valid_until"])
        self.by_type.setdefault(q["service_type"], set()).add(view.id)
        for region in view.regions:
            self.by_type_region.setdefault((q["service_type"], region), set()).add(view.id)

    def _apply_work_order(self, oid: UUID, e: Any) -> None:
        if isinstance(e, d.WorkOrderOpened):
            self._enqueue(
                oid,
                Waiting(
                    e.priority, e.resolve_by or e.opened_at, e.opened_at, e.service_type, e.region, list(e.needs or [])
                ),
            )
            if e.targets:
                self.clocks[oid] = OpenClock([Fact(e.opened_at, "opened", {"targets": e.targets})])
        elif isinstance(e, d.WorkOrderAssigned):
            w = self.waiting.pop(oid, None)
            if w is not None:
                self.queued[(w.service_type, w.region)] -= 1
                self._parked[oid] = w
            if e.accept_by is not None:
                self.awaiting_answer[oid] = e.accept_by
        elif isinstance(e, d.WorkOrderAccepted):
            self.awaiting_answer.pop(oid, None)
        elif isinstance(e, d.WorkOrderDeclined | d.WorkOrderUnassigned):
            self.awaiting_answer.pop(oid, None)
            w = self._parked.pop(oid, None)
            if w is not None:
                if isinstance(e, d.WorkOrderDeclined):
                    w.excluded.add(e.technician_id)
                else:
                    w.previous.add(e.technician_id)
                self._enqueue(oid, w)
        elif isinstance(e, d.WorkOrderRetargeted):
            for holder in (self.waiting, self._parked):
                if oid in holder:
                    holder[oid].priority = e.priority
            if oid in self.waiting:
                self._queue_insert(oid, self.waiting[oid])
        elif isinstance(e, d.WorkOrderResolved | d.WorkOrderWithdrawn):
            self._parked.pop(oid, None)
            self.clocks.pop(oid, None)
            self.awaiting_answer.pop(oid, None)
            w = self.waiting.pop(oid, None)  # its queue entry is skipped from now on, and swept later
            if w is not None:
                self.queued[(w.service_type, w.region)] -= 1
            return
        c = self.clocks.get(oid)
        if c is None:
            return
        if isinstance(e, d.WorkOrderThresholdCrossed):
            c.crossed.add((e.target, e.level))
        fact = clock_fact(e, c.paused)
        if fact is not None:
            c.facts.append(fact)
            c.paused = fact.kind == "paused"
        c.due = None  # recomputed lazily by whoever asks

    def _enqueue(self, oid: UUID, w: Waiting) -> None:
        if oid not in self.waiting:
            self.queued[(w.service_type, w.region)] += 1
        self.waiting[oid] = w
        self._queue_insert(oid, w)

    def _queue_insert(self, oid: UUID, w: Waiting) -> None:
        insort(self._sorted, ((*w.order(), oid.int), oid))

    def waiting_ahead(self, wo: WorkOrder) -> bool:
        """Whether work of the same kind already waits (then the queue, in order, decides, not the newcomer)."""
        with self.lock:
            return self.queued[(wo.service_type, wo.region)] > 0

    def queue(self, limit: int | None = None) -> list[tuple[UUID, Waiting]]:
        """Waiting work orders in the order they are served: priority, then deadline, then age."""
        return list(islice(self.queue_iter(), limit))

    def queue_iter(self) -> Iterator[tuple[UUID, Waiting]]:
        """The queue, lazily: a drain round reads only its head.

        ``_sorted`` holds (order, id) entries, inserted in order as work orders join; entries of
        work orders that left, or whose order changed since, are skipped, and swept out now and then.
        """
        with self.lock:
            if len(self._sorted) > 2 * len(self.waiting) + 1000:
                self._sorted = [(k, i) for k, i in self._sorted if self._current(k, i)]
            entries = list(self._sorted)  # a copy of references: joiners may be inserted meanwhile
        seen: set[UUID] = set()
        for k, i in entries:
            w = self.waiting.get(i)
            if w is not None and (k[0], k[1], k[2]) == w.order() and i not in seen:
                seen.add(i)
                yield i, w

    def _current(self, k: tuple[int, datetime, datetime, int], i: UUID) -> bool:
        w = self.waiting.get(i)
        return w is not None and (k[0], k[1], k[2]) == w.order()

    def note_taken(self, view: TechnicianView, work_order_id: UUID, resources: list[UUID]) -> None:
        """Count a job before its event is read back, so the next decision in a batch sees it."""
        with self.lock:
            view.tentative.add(str(work_order_id))
            self.tentative_resources.update(resources)

    def refresh(self) -> None:
        with self.lock:
            super().refresh()
            # what was decided is now either in the log (active) or was never saved
            for view in self.technicians.values():
                if view.tentative:
                    view.tentative.clear()
            self.tentative_resources.clear()

    def decide(self, job: Job, now: datetime, salt: int = 0, shard: tuple[int, int] = (0, 1)) -> Decision:
        with self.lock:
            qualified = len(self.by_type.get(job.service_type, ()))
            ids = self.by_type_region.get((job.service_type, job.region), set()) | self.by_type_region.get(
                (job.service_type, "*"), set()
            )
            pool = [self.technicians[i] for i in ids]
            # the indexes did the first two filters: count whom they left out
            pre = {"qualification": len(self.technicians) - qualified, "region": qualified - len(pool)}
            total = len(self.technicians)
            index, count = shard
            if count > 1:
                # several instances: each looks first among its own share of the technicians, so that two
                # instances rarely pick the same person at once (a conflict costs the whole round)
                own = [t for t in pool if t.id.int % count == index]
                first = rank_candidates(
                    own, job, now, total, salt, {**pre, "other_instances_share": len(pool) - len(own)}
                )
                if first.ranked:
                    return first
            return rank_candidates(pool, job, now, considered=total, salt=salt, pre_excluded=pre)

    def free_resource(self, kind: str, region: str) -> list[UUID]:
        with self.lock:
            pool = self.free.get((kind, region), set()) | self.free.get((kind, "*"), set())
            return sorted(pool - self.tentative_resources, key=str)

    def due_clocks(self, now: datetime) -> list[UUID]:
        with self.lock:
            out = []
            for oid, c in self.clocks.items():
                if c.due is None:
                    c.due = next_due(c.facts, c.crossed, now) or datetime.max.replace(tzinfo=now.tzinfo)
                if c.due <= now:
                    out.append(oid)
            return out

    def technician_of(self, credential_hash: str) -> UUID | None:
        with self.lock:
            return self.credentials.get(credential_hash)


class DispatchApp(EventStoreApp):
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
    ) -> None:
        super().__init__(settings, env)
        # the operator's catalogue (tsop_events.service_types); None: any name is taken (tests of other rules)
        self.service_types = service_types
        self.clock = clock or SystemClock()
        self.default_policy = policy or Policy.load()
        self.accept_within = accept_within
        self.peak_backlog = peak_backlog
        # with several instances, each drains its share of the queue first; any takes what waited past the grace
        self.shard, self.shard_grace = shard, shard_grace
        self.salt = (shard[0] * 0x9E3779B97F4A7C15) & ((1 << 128) - 1)
        self.conflicts = 0  # drain rounds dropped because another instance saved first
        self.board = Board(self)

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
            to_wire(e)
        return super()._record(processing_event)

    def _take_snapshots(self, processing_event: ProcessingEvent[UUID]) -> None:
        # a snapshot only speeds up loading; once the events are saved, the command has succeeded
        try:
            super()._take_snapshots(processing_event)
        except Exception:  # noqa: BLE001
            log.warning("snapshot not taken (the events are saved; the next one will be)", exc_info=True)

    def _after_save(self, what: str, step: Callable[[], object]) -> None:
        """Work that follows a save only to be quicker (refresh a view, assign at once): it may not undo success."""
        try:
            step()
        except Exception:  # noqa: BLE001 - the timers and the next read do it anyway
            log.warning("after %s: a follow-up step failed; the timers will catch up", what, exc_info=True)

    def check_service_type(self, service_type: str, field: str) -> None:
        """Refuse a service type the operator's catalogue does not offer (422 naming the field)."""
        if self.service_types is not None and service_type not in self.service_types:
            raise Invalid(field, f"{service_type!r} is not a service type of the catalogue")

    def check_policy(self, new: Policy) -> None:
        """A policy must give targets for every service type of the catalogue (else work of it could not open)."""
        for st in sorted(self.service_types or ()):
            try:
                new.targets_for(st, 3, False)
            except ValueError:
                raise Invalid("targets", f"no target matches service type {st!r} of the catalogue") from None

    @retry_on_conflict()
    def adopt_policy(self, raw: dict[str, Any], by: str) -> int:
        """Adopt a new SLA policy (validated first) and recalculate the targets of every open work order.

        The adoption and every recalculation are saved in one transaction: all or nothing (a write race
        with other commands decides again on fresh state). Elapsed time stays; the deadlines move.
        Returns how many work orders got new targets.
        """
        try:
            new = Policy.from_dict(raw)
        except KeyError as exc:
            raise Invalid(str(exc.args[0]), "missing") from None
        except (ValueError, TypeError) as exc:
            raise Invalid("body", str(exc)) from None
        self.check_policy(new)
        self.board.refresh()
        old = self.policy
        record: SlaPolicy | None = self.find(SLA_POLICY_ID)
        if record is None:
            record = SlaPolicy(id=SLA_POLICY_ID)
        now = self.clock.now()
        record.adopt(raw, by, now)
        why = f"policy v{old.version} → v{new.version} adopted by {by}"
        with self.board.lock:
            open_ids = list(self.board.clocks)
        retargeted = [wo for wo in self.load_many(open_ids).values() if self._retarget_to_policy(wo, new, why, now)]
        self.save(record, *retargeted)
        self._after_save("adopting a policy", self.board.refresh)
        return len(retargeted)

    @staticmethod
    def _retarget_to_policy(wo: WorkOrder, policy: Policy, why: str, now: datetime) -> bool:
        if wo.status in ("resolved", "withdrawn") or wo.targets is None:
            return False
        spec = policy.targets_for(wo.service_type, wo.priority, bool(wo.targets.get("peak"))).spec()
        if {k: v for k, v in spec.items() if k != "rule"} == {k: v for k, v in wo.targets.items() if k != "rule"}:
            return False
        wo.retarget(spec, wo.priority, why, now)
        return True

    # --- workforce and resources ------------------------------------------------------------------

    def register_technician(
        self,
        technician_id: UUID,
        name: str,
        service_types: list[str],
        regions: list[str],
        capacity: int,
        qualifications: list[dict[str, Any]] | None = None,
    ) -> tuple[Technician, str]:
        """A technician with their qualifications, and the credential they use (shown once, hash kept).

        A qualification without ``valid_from`` is valid from now (the moment of registration).
        """
        now = self.clock.now()
        quals: dict[str, dict[str, Any]] = {}
        for i, q in enumerate(qualifications or []):
            self.check_service_type(q["service_type"], f"qualifications.{i}.service_type")
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
            self.check_service_type(st, f"service_types.{i}")
            quals.setdefault(st, qualification(st, "registration", 1, now, None, now))
        token, digest = issue_token("tech")
        tech = Technician(
            id=technician_id,
            name=name,
            regions=regions,
            capacity=capacity,
            qualifications=list(quals.values()),
            credential_hash=digest,
            registered_at=now,
        )
        self.save(tech)
        return tech, token

    @retry_on_conflict()
    def grant_qualification(
        self,
        technician_id: UUID,
        service_type: str,
        certificate: str,
        level: int,
        valid_from: datetime | None,
        valid_until: datetime | None,
        source: str,
    ) -> Technician:
        self.check_service_type(service_type, "service_type")
        tech: Technician = self.load(technician_id)
        now = self.clock.now()
        tech.grant(service_type, certificate, level, valid_from or now, valid_until, source, now)
        self.save(tech)
        return tech

    @retry_on_conflict()
    def schedule(self, technician_id: UUID, what: str, start: datetime, end: datetime, reason: str = "") -> Technician:
        tech: Technician = self.load(technician_id)
        if what == "shift":
            tech.schedule_shift(start, end)
        else:
            tech.schedule_leave(start, end, reason)
        self.save(tech)
        return tech

    @retry_on_conflict()
    def rotate_credential(self, technician_id: UUID) -> tuple[Technician, str]:
        """A new credential for a technician (shown once); the previous one is revoked."""
        tech: Technician = self.load(technician_id)
        token, digest = issue_token("tech")
        tech.rotate_credential(digest)
        self.save(tech)
        self._after_save("a new credential", self.board.refresh)  # usable here at once (others read it on a miss)
        return tech, token

    @retry_on_conflict()
    def change_capacity(self, technician_id: UUID, capacity: int) -> Technician:
        tech: Technician = self.load(technician_id)
        tech.change_capacity(capacity)
        self.save(tech)
        return tech

    def register_resource(self, resource_id: UUID, kind: str, name: str, region: str) -> Resource:
        r = Resource(id=resource_id, kind=kind, name=name, region=region, registered_at=self.clock.now())
        self.save(r)
        return r

    @retry_on_conflict()
    def set_peak(self, on: bool, by: str, reason: str) -> PeakMode:
        peak: PeakMode | None = self.find(PEAK_MODE_ID)
        if peak is None:
            peak = PeakMode(id=PEAK_MODE_ID)
        peak.change(on, by, reason, len(self.board.waiting), self.clock.now())
        self.save(peak)
        self._after_save("a peak-mode change", self.board.refresh)
        return peak

    def auto_peak(self) -> bool | None:
        """Peak mode follows the backlog: on above the threshold, off below half of it (hysteresis)."""
        self.board.refresh()
        backlog = len(self.board.waiting)
        if not self.board.peak and backlog >= self.peak_backlog:
            self.set_peak(True, "auto", f"backlog {backlog} ≥ threshold {self.peak_backlog}")
            return True
        if self.board.peak and backlog < self.peak_backlog // 2:
            self.set_peak(False, "auto", f"backlog {backlog} < {self.peak_backlog // 2}")
            return False
        return None

    # --- work orders and assignment ---------------------------------------------------------------

    def open_work_order(
        self,
        wo_id: UUID,
        ticket_id: str,
        service_type: str,
        region: str,
        priority: int,
        resolve_by: datetime | None,
        causation_id: str,
    ) -> WorkOrder:
        now = self.clock.now()
        targets = self.policy.targets_for(service_type, priority, self.board.peak)
        return WorkOrder(
            id=wo_id,
            ticket_id=ticket_id,
            service_type=service_type,
            region=region,
            priority=priority,
            resolve_by=resolve_by,
            causation_id=causation_id,
            opened_at=now,
            targets=targets.spec(),
            needs=self.policy.resources_for(service_type),
        )

    def decide(self, wo: WorkOrder) -> Decision:
        job = Job(wo.service_type, wo.region, wo.priority, frozenset(wo.excluded), frozenset(wo.previous))
        return self.board.decide(job, self.clock.now(), self.salt, self.shard)

    def mine(self, wo_id: UUID, opened_at: datetime, now: datetime) -> bool:
        index, count = self.shard
        return count == 1 or wo_id.int % count == index or now - opened_at > self.shard_grace

    def try_assign(
        self, wo: WorkOrder, load: Callable[[UUID], Any], assigned_by: str = "auto", decision: Decision | None = None
    ) -> bool:
        """Assign ``wo`` to the best technician that still has room; False if none has (it waits)."""
        reserved: list[Resource] = []
        for kind in wo.needs:
            for rid in self.board.free_resource(kind, wo.region):
                r: Resource = load(rid)
                if r.reserved_by is None:
                    reserved.append(r)
                    break
            else:
                return False
        if decision is None or wo.needs:
            decision = self.decide(wo)
        now = self.clock.now()
        for _, _, view in decision.ranked:
            tech: Technician = load(view.id)
            try:
                wo.assign(
                    tech,
                    decision.explain(view),
                    decision.candidates(),
                    now,
                    accept_by=now + self.accept_within,
                    resources=reserved,
                    assigned_by=assigned_by,
                )
            except OverCapacity:
                continue
            self.board.note_taken(view, wo.id, [r.id for r in reserved])
            return True
        return False

    def drain_queue(self, limit: int = 500) -> int:
        """Assign waiting work orders, highest priority then earliest deadline first.

        Decisions are saved together (one transaction per round, so a technician's
        Took and the work order's Assigned never part); if another instance saved
        first, nothing of the round is written and the next round decides again.
        """
        self.board.refresh()
        queue = self.board.queue_iter()
        now = self.clock.now()
        # first the work orders someone can take now (by the board), then load them in one query
        picked: list[UUID] = []
        full: set[tuple[str, str]] = set()  # kinds of work nobody can take this round
        spare: dict[tuple[str, str], int] = {}
        for wo_id, w in queue:
            if len(picked) >= limit:
                break
            key = (w.service_type, w.region)
            if key in full or not self.mine(wo_id, w.opened_at, now):
                continue
            if key not in spare:
                ranked = self.board.decide(Job(w.service_type, w.region, w.priority), now).ranked
                spare[key] = sum(t.capacity - t.load for _, _, t in ranked)
                for kind in w.needs:  # and as many of each resource it reserves
                    spare[key] = min(spare[key], len(self.board.free_resource(kind, w.region)))
            if spare[key] <= 0:
                full.add(key)
                continue
            spare[key] -= 1
            picked.append(wo_id)
        # decide on the board (each decision counts the ones before it), then load what they touch at once
        decisions: dict[UUID, Decision] = {}
        for wo_id in picked:
            w = self.board.waiting[wo_id]
            job = Job(w.service_type, w.region, w.priority, frozenset(w.excluded), frozenset(w.previous))
            decision = self.board.decide(job, now, self.salt, self.shard)
            if decision.ranked:
                decisions[wo_id] = decision
                self.board.note_taken(decision.ranked[0][2], wo_id, [])
        chosen = {d.ranked[0][2].id for d in decisions.values()}
        touched: dict[UUID, Any] = self.load_many([*decisions, *chosen])

        def load(aid: UUID) -> Any:
            if aid not in touched:
                touched[aid] = self.load(aid)
            return touched[aid]

        decided: list[WorkOrder] = []
        for wo_id, decision in decisions.items():
            wo: WorkOrder = load(wo_id)
            if wo.status == "waiting" and self.try_assign(wo, load, decision=decision):
                decided.append(wo)
        assigned = 0
        if decided:
            try:
                self.save(*touched.values())
                assigned = len(decided)
            except IntegrityError:
                self.conflicts += 1  # another instance moved first: the next round decides again on fresh state
        self.board.refresh()
        return assigned

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
        for stored in rows:
            e: Any = self.mapper.to_domain_event(stored)
            out[e.originator_id] = e.mutate(out.get(e.originator_id))
        return out

    def _assign_one(self, wo_id: UUID) -> int:
        self.board.refresh()
        touched: dict[UUID, Any] = {}

        def load(aid: UUID) -> Any:
            if aid not in touched:
                touched[aid] = self.load(aid)
            return touched[aid]

        wo: WorkOrder = load(wo_id)
        if wo.status != "waiting" or not self.try_assign(wo, load):
            return 0
        try:
            self.save(*touched.values())
            return 1
        except IntegrityError:
            return 0  # the next round sees the other instance's decision

    def _with_holdings(self, wo: WorkOrder, tech_id: str | None) -> tuple[Technician | None, list[Resource]]:
        tech = self.load(UUID(tech_id)) if tech_id else None
        return tech, [self.load(UUID(r)) for r in wo.resources]

    @retry_on_conflict()
    def accept(self, wo_id: UUID, technician_id: str) -> WorkOrder:
        wo: WorkOrder = self.load(wo_id)
        wo.accept(technician_id, self.clock.now())
        self.save(wo)
        return wo

    @retry_on_conflict()
    def decline(self, wo_id: UUID, technician_id: str, reason: str, timed_out: bool = False) -> WorkOrder:
        wo: WorkOrder = self.load(wo_id)
        if wo.technician_id != technician_id:
            raise d.NotYours(f"technician {technician_id} is not assigned to work order {wo_id}")
        tech, resources = self._with_holdings(wo, technician_id)
        assert tech is not None
        wo.decline(tech, reason, self.clock.now(), resources, timed_out=timed_out)
        self.save(wo, tech, *resources)
        after = [wo]

        def reassign_now() -> None:  # to someone else at once, if anyone has room (else the queue drain does it)
            self._assign_one(wo_id)
            after[0] = self.load(wo_id)

        self._after_save("a decline", reassign_now)
        return after[0]

    def expire_acceptances(self) -> int:
        """Assignments not accepted in time are declined (timed out) and go to someone else."""
        self.board.refresh()
        now = self.clock.now()
        with self.board.lock:
            due = [(oid, by) for oid, by in self.board.awaiting_answer.items() if by <= now]
        expired = 0
        for oid, _ in due:
            wo: WorkOrder = self.load(oid)
            if wo.status != "assigned" or wo.accept_by is None or wo.accept_by > now or wo.technician_id is None:
                continue
            try:
                self.decline(oid, wo.technician_id, f"not accepted by {wo.accept_by.isoformat()}", timed_out=True)
                expired += 1
            except (IntegrityError, DispatchError):
                pass  # answered meanwhile, or another instance expired it
        if due:
            self.board.refresh()
        return expired

    @retry_on_conflict()
    def reassign(self, wo_id: UUID, technician_id: UUID | None, reason: str, by: str) -> WorkOrder:
        """A supervisor moves the work to another technician (or back to the queue's best choice)."""
        self.board.refresh()
        wo: WorkOrder = self.load(wo_id)
        old, resources = self._with_holdings(wo, wo.technician_id)
        if old is None:
            raise DispatchError(f"work order {wo_id} is {wo.status}; nobody holds it")
        if technician_id is not None and str(technician_id) == wo.technician_id:
            raise DispatchError(f"technician {technician_id} already holds work order {wo_id}")
        now = self.clock.now()
        wo.unassign(old, reason, by, now, resources)
        touched: dict[UUID, Any] = {old.id: old, **{r.id: r for r in resources}}

        def load(aid: UUID) -> Any:
            if aid not in touched:
                touched[aid] = self.load(aid)
            return touched[aid]

        if technician_id is not None:
            new: Technician = load(technician_id)
            view = self.board.technicians.get(technician_id)
            level = view.qualified(wo.service_type, now) if view else None
            if level is None:
                raise DispatchError(f"technician {technician_id} holds no valid qualification for {wo.service_type}")
            wo.assign(new, f"reassigned by {by}: {reason}", [], now, accept_by=now + self.accept_within, assigned_by=by)
        else:
            self.try_assign(wo, load, assigned_by=by)
        self.save(wo, *touched.values())
        return wo

    @retry_on_conflict()
    def start(self, wo_id: UUID, technician_id: str, mode: str) -> WorkOrder:
        wo: WorkOrder = self.load(wo_id)
        wo.start(technician_id, mode, self.clock.now())
        self.save(wo)
        return wo

    @retry_on_conflict()
    def log_work(
        self,
        wo_id: UUID,
        technician_id: str,
        action: str,
        mode: str,
        notes: str | None,
        equipment: list[str] | None = None,
        measurements: dict[str, float | str] | None = None,
    ) -> WorkOrder:
        wo: WorkOrder = self.load(wo_id)
        wo.log_work(technician_id, action, mode, notes, self.clock.now(), equipment, measurements)
        self.save(wo)
        return wo

    @retry_on_conflict()
    def pause(self, wo_id: UUID, technician_id: str, kind: str, reason: str) -> WorkOrder:
        wo: WorkOrder = self.load(wo_id)
        wo.pause(technician_id, kind, reason, self.clock.now())
        self.save(wo)
        return wo

    @retry_on_conflict()
    def resume(self, wo_id: UUID, technician_id: str) -> WorkOrder:
        wo: WorkOrder = self.load(wo_id)
        wo.resume(technician_id, self.clock.now())
        self.save(wo)
        return wo

    @retry_on_conflict()
    def resolve(
        self, wo_id: UUID, technician_id: str, resolution_code: str, summary: str, advice: str | None
    ) -> WorkOrder:
        wo: WorkOrder = self.load(wo_id)
        if wo.technician_id != technician_id:
            raise d.NotYours(f"technician {technician_id} is not assigned to work order {wo_id}")
        tech, resources = self._with_holdings(wo, technician_id)
        assert tech is not None
        wo.resolve(tech, resolution_code, summary, advice, self.clock.now(), resources)
        self.save(wo, tech, *resources)
        return wo

    # --- service levels ---------------------------------------------------------------------------

    @retry_on_conflict()
    def change_priority(self, wo_id: UUID, priority: int, by: str, reason: str) -> WorkOrder:
        wo: WorkOrder = self.load(wo_id)
        peak = bool(wo.targets.get("peak")) if wo.targets else self.board.peak
        targets = self.policy.targets_for(wo.service_type, priority, peak)
        wo.retarget(
            targets.spec(), priority, f"priority {wo.priority} → {priority} by {by}: {reason}", self.clock.now()
        )
        self.save(wo)
        return wo

    def check_clocks(self) -> int:
        """The durable SLA timer: every threshold reached is recorded once, by whichever instance gets there."""
        self.board.refresh()
        now = self.clock.now()
        crossed = 0
        for oid in self.board.due_clocks(now):
            wo: WorkOrder = self.load(oid)
            if wo.check_clocks(now):
                try:
                    self.save(wo)
                    crossed += 1
                except IntegrityError:
                    pass  # changed meanwhile (or another instance recorded it): the next tick decides again
        if crossed:
            self.board.refresh()
        return crossed

    def explain_clocks(self, wo: WorkOrder) -> dict[str, Any]:
        return explain(wo.facts, self.clock.now())

    def tick(self) -> dict[str, int]:
        """One round of every timer dispatch keeps in its event store."""
        out = {"assigned": self.drain_queue(), "expired": self.expire_acceptances(), "crossed": self.check_clocks()}
        self.auto_peak()
        return out


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


def _prev(e: Any) -> str:
    return stable_event_id(e.originator_id, e.originator_version - 1)


def to_wire(e: Any) -> Outgoing | None:
    oid = str(e.originator_id)
    if isinstance(e, d.TechnicianRegistered):
        quals = [wire.Qualification.model_validate(d.registered(q, e.registered_at)) for q in e.qualifications]
        return Outgoing(
            wire.TechnicianRegistered(
                technician_id=oid,
                name=e.name,
                service_types=sorted(q.service_type for q in quals),
                qualifications=quals,
                regions=e.regions,
                capacity=e.capacity,
                registered_at=e.registered_at,
            )
        )
    if isinstance(e, d.TechnicianQualificationGranted):
        q = wire.Qualification(
            service_type=e.service_type,
            certificate=e.certificate,
            level=e.level,
            valid_from=e.valid_from,
            valid_until=e.valid_until,
        )
        return Outgoing(
            wire.QualificationGranted(
                technician_id=oid, qualification=q, renewal=e.renewal, source=e.source, granted_at=e.granted_at
            ),
            causation_id=_prev(e),
        )
    if isinstance(e, d.TechnicianShiftScheduled):
        return Outgoing(wire.ShiftScheduled(technician_id=oid, start=e.start, end=e.end), causation_id=_prev(e))
    if isinstance(e, d.TechnicianLeaveScheduled):
        return Outgoing(
            wire.LeaveScheduled(technician_id=oid, start=e.start, end=e.end, reason=e.reason), causation_id=_prev(e)
        )
    if isinstance(e, d.TechnicianCapacityChanged):
        return Outgoing(wire.CapacityChanged(technician_id=oid, capacity=e.capacity), causation_id=_prev(e))
    if isinstance(e, d.ResourceRegistered):
        return Outgoing(
            wire.ResourceRegistered(
                resource_id=oid, kind=e.kind, name=e.name, region=e.region, registered_at=e.registered_at
            )
        )
    if isinstance(e, d.PeakModeChanged):
        return Outgoing(
            wire.PeakModeChanged(on=e.on, changed_by=e.by, reason=e.reason, backlog=e.backlog, changed_at=e.changed_at),
            causation_id=_prev(e),
        )
    return _ticket_wire(e, oid)


def _ticket_wire(e: Any, oid: str) -> Outgoing | None:
    if isinstance(e, d.WorkOrderAssigned):
        return Outgoing(
            wire.Assigned(
                ticket_id=e.ticket_id,
                work_order_id=oid,
                technician_id=e.technician_id,
                reason=e.reason,
                candidates=[wire.AssignmentCandidate.model_validate(c) for c in e.candidates],
                assigned_by=e.assigned_by,
                previous_technician_id=e.previous_technician_id,
                resources=e.resources or [],
                accept_by=e.accept_by,
                assigned_at=e.assigned_at,
            ),
            # the first assignment follows from the acceptance of the request; later ones from what came before
            causation_id=e.causation_id if e.originator_version == 2 else _prev(e),
        )
    ev: wire.WireEvent | None = None
    if isinstance(e, d.WorkOrderAccepted):
        ev = wire.AssignmentAccepted(
            ticket_id=e.ticket_id, work_order_id=oid, technician_id=e.technician_id, accepted_at=e.accepted_at
        )
    elif isinstance(e, d.WorkOrderDeclined):
        ev = wire.AssignmentDeclined(
            ticket_id=e.ticket_id,
            work_order_id=oid,
            technician_id=e.technician_id,
            reason=e.reason,
            timed_out=e.timed_out,
            declined_at=e.declined_at,
        )
    elif isinstance(e, d.WorkOrderStarted):
        ev = wire.WorkStarted(
            ticket_id=e.ticket_id,
            work_order_id=oid,
            technician_id=e.technician_id,
            mode=e.mode,
            started_at=e.started_at,
        )
    elif isinstance(e, d.WorkOrderWorkLogged):
        ev = wire.WorkLogged(
            ticket_id=e.ticket_id,
            work_order_id=oid,
            technician_id=e.technician_id,
            action=e.action,
            mode=e.mode,
            notes=e.notes,
            equipment=e.equipment or [],
            measurements=e.measurements or {},
            logged_at=e.logged_at,
        )
    elif isinstance(e, d.WorkOrderPaused):
        ev = wire.WorkPaused(
            ticket_id=e.ticket_id,
            work_order_id=oid,
            technician_id=e.technician_id,
            kind=e.kind,
            reason=e.reason,
            paused_at=e.paused_at,
        )
    elif isinstance(e, d.WorkOrderResumed):
        ev = wire.WorkResumed(
            ticket_id=e.ticket_id, work_order_id=oid, technician_id=e.technician_id, resumed_at=e.resumed_at
        )
    elif isinstance(e, d.WorkOrderResolved):
        ev = wire.Resolved(
            ticket_id=e.ticket_id,
            work_order_id=oid,
            technician_id=e.technician_id,
            resolution_code=e.resolution_code,
            summary=e.summary,
            advice=e.advice,
            resolved_at=e.resolved_at,
        )
    elif isinstance(e, d.WorkOrderThresholdCrossed):
        ev = wire.SlaThresholdCrossed(
            ticket_id=e.ticket_id,
            target=e.target,
            level=e.level,
            deadline=e.deadline,
            elapsed_seconds=e.elapsed_seconds,
            target_seconds=e.target_seconds,
            crossed_at=e.crossed_at,
        )
    elif isinstance(e, d.WorkOrderEscalated):
        ev = wire.Escalated(ticket_id=e.ticket_id, to_role=e.to_role, reason=e.reason, escalated_at=e.escalated_at)
    return Outgoing(ev, causation_id=_prev(e)) if ev is not None else None
