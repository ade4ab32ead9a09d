"""The dispatch board (an in-memory view that follows dispatch's own log) and the timers that read it.

The timers are dispatch's durable clocks: the queue drain, acceptance time-outs,
SLA thresholds and automatic peak mode. Their state is the event store
(``accept_by``, the clocks' facts), so a restarted or second instance picks up
where another left off, and records each effect once.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from bisect import insort
from collections import Counter
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from operator import attrgetter
from typing import TYPE_CHECKING
from uuid import UUID

from tsop_dispatch import commands
from tsop_dispatch.domain import (
    Decision,
    DispatchError,
    IncidentHold,
    IncidentRecord,
    Job,
    PeakMode,
    Resource,
    SlaPolicy,
    Technician,
    TechnicianView,
    WorkOrder,
    clock_fact,
    fact_of,
    rank_candidates,
)
from tsop_dispatch.sla import Fact, Policy, next_due
from tsop_events.commands import UnitOfWork
from tsop_events.errors import DomainError
from tsop_events.faults import Faults
from tsop_events.runtime import Service
from tsop_events.store import EventStoreApp, IntegrityError, LogFollower
from tsop_events.wake import SAFETY_NET_SECONDS

if TYPE_CHECKING:
    from tsop_dispatch.commands import DispatchApp

log = logging.getLogger(__name__)
_int = attrgetter("int")  # a UUID's order, compared as integers (UUID objects compare in Python, much slower)


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
    held: bool = False  # held by an incident: a technician's resume does not restart the clocks
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
        self._held: dict[UUID, Waiting] = {}  # queue entries of work orders an incident holds (§5.3)
        self.holds: dict[UUID, str] = {}  # work order → the incident holding it
        self.by_incident: dict[str, set[UUID]] = {}  # incident → the work orders it holds
        self.pending_holds: dict[str, set[UUID]] = {}  # incident → IncidentHold records of unopened work orders
        self.records: dict[UUID, str] = {}  # IncidentRecord → its incident
        self.resolving: set[str] = set()  # incidents resolved whose held work orders are not all resolved yet

    def apply(self, event: object) -> None:
        if isinstance(event, WorkOrder.Event):
            self._work_order(event)
        elif isinstance(event, Technician.Event):
            self._technician(event)
        elif isinstance(event, Resource.Event):
            self._resource(event)
        elif isinstance(event, PeakMode.Changed):
            self.peak = event.on
        elif isinstance(event, SlaPolicy.Adopted):
            self.policy = Policy.from_dict(event.policy)
        elif isinstance(event, IncidentRecord.Started):
            self.records[event.originator_id] = event.incident_id
        elif isinstance(event, IncidentRecord.Resolving):
            self.resolving.add(self.records.get(event.originator_id, ""))
        elif isinstance(event, IncidentRecord.Finished):
            self.resolving.discard(self.records.get(event.originator_id, ""))
        elif isinstance(event, IncidentHold.Changed | IncidentHold.Taken):
            for held in self.pending_holds.values():
                held.discard(event.originator_id)
            if isinstance(event, IncidentHold.Changed) and event.incident_id is not None and event.resolution is None:
                self.pending_holds.setdefault(event.incident_id, set()).add(event.originator_id)

    def _technician(self, e: Technician.Event) -> None:
        oid = e.originator_id
        if isinstance(e, Technician.Registered):
            view = TechnicianView(oid, frozenset(e.regions), e.capacity, name=e.name)
            self.technicians[oid] = view
            for q in e.qualifications:  # one recorded without valid_from is valid from registration
                since = q.get("valid_from") or e.registered_at
                self._qualify(view, q["service_type"], int(q["level"]), since, q["valid_until"])
            if e.credential_hash:
                self.credentials[e.credential_hash] = oid
        elif isinstance(e, Technician.QualificationGranted):
            self._qualify(self.technicians[oid], e.service_type, int(e.level), e.valid_from, e.valid_until)
        elif isinstance(e, Technician.ShiftScheduled):
            self.technicians[oid].shifts.append((e.start, e.end))
        elif isinstance(e, Technician.LeaveScheduled):
            self.technicians[oid].leave.append((e.start, e.end))
        elif isinstance(e, Technician.CapacityChanged):
            self.technicians[oid].capacity = e.capacity
        elif isinstance(e, Technician.CredentialIssued):
            for digest in [h for h, tid in self.credentials.items() if tid == oid]:
                del self.credentials[digest]
            self.credentials[e.credential_hash] = oid
        elif isinstance(e, Technician.Took):
            self.technicians[oid].active.add(e.work_order_id)
        elif isinstance(e, Technician.Released):
            self.technicians[oid].active.discard(e.work_order_id)

    def _resource(self, e: Resource.Event) -> None:
        oid = e.originator_id
        if isinstance(e, Resource.Registered):
            self.resources[oid] = (e.kind, e.region)
            self.free.setdefault((e.kind, e.region), set()).add(oid)
        elif isinstance(e, Resource.Reserved):
            self.free.get(self.resources[oid], set()).discard(oid)
        elif isinstance(e, Resource.Freed):
            self.free.setdefault(self.resources[oid], set()).add(oid)

    def _qualify(
        self, view: TechnicianView, service_type: str, level: int, since: datetime, until: datetime | None
    ) -> None:
        view.qualifications[service_type] = (level, since, until)
        self.by_type.setdefault(service_type, set()).add(view.id)
        for region in view.regions:
            self.by_type_region.setdefault((service_type, region), set()).add(view.id)

    def _work_order(self, e: WorkOrder.Event) -> None:
        oid = e.originator_id
        if isinstance(e, WorkOrder.Opened):
            self._enqueue(
                oid,
                Waiting(
                    e.priority, e.resolve_by or e.opened_at, e.opened_at, e.service_type, e.region, list(e.needs or [])
                ),
            )
            if e.targets:
                self.clocks[oid] = OpenClock([Fact(e.opened_at, "opened", {"targets": e.targets})])
        elif isinstance(e, WorkOrder.Assigned):
            w = self.waiting.pop(oid, None)
            if w is not None:
                self.queued[(w.service_type, w.region)] -= 1
                self._parked[oid] = w
            if e.accept_by is not None:
                self.awaiting_answer[oid] = e.accept_by
        elif isinstance(e, WorkOrder.Accepted):
            self.awaiting_answer.pop(oid, None)
        elif isinstance(e, WorkOrder.Declined | WorkOrder.Unassigned):
            self.awaiting_answer.pop(oid, None)
            w = self._parked.pop(oid, None)
            if w is not None:
                if isinstance(e, WorkOrder.Declined):
                    w.excluded.add(e.technician_id)
                else:
                    w.previous.add(e.technician_id)
                if oid in self.holds:
                    self._held[oid] = w  # back in the queue only when the hold is lifted
                else:
                    self._enqueue(oid, w)
        elif isinstance(e, WorkOrder.Held):
            self.holds[oid] = e.incident_id
            self.by_incident.setdefault(e.incident_id, set()).add(oid)
            w = self.waiting.pop(oid, None)
            if w is not None:
                self.queued[(w.service_type, w.region)] -= 1
                self._held[oid] = w
        elif isinstance(e, WorkOrder.HoldLifted):
            self._unhold(oid)
            w = self._held.pop(oid, None)
            if w is not None:
                self._enqueue(oid, w)
        elif isinstance(e, WorkOrder.Retargeted):
            for holder in (self.waiting, self._parked):
                if oid in holder:
                    holder[oid].priority = e.priority
            if oid in self.waiting:
                self._queue_insert(oid, self.waiting[oid])
        elif isinstance(e, WorkOrder.Reopened):
            # back in the queue (the same technician first) and its clocks followed again, as they stood
            w = Waiting(e.priority, e.resolve_by or e.opened_at, e.opened_at, e.service_type, e.region, list(e.needs))
            if e.technician_id is not None:
                w.previous.add(e.technician_id)
            self._enqueue(oid, w)
            facts = [fact_of(r) for r in e.facts]
            if facts and facts[0].kind == "opened":
                facts.append(Fact(e.reopened_at, "reopened", {"reason": e.reason}))
                self.clocks[oid] = OpenClock(facts, {(t, level) for t, level in e.crossed})
            return
        elif isinstance(e, WorkOrder.Resolved | WorkOrder.Withdrawn):
            self._parked.pop(oid, None)
            self._held.pop(oid, None)
            self._unhold(oid)
            self.clocks.pop(oid, None)
            self.awaiting_answer.pop(oid, None)
            w = self.waiting.pop(oid, None)  # its queue entry is skipped from now on, and swept later
            if w is not None:
                self.queued[(w.service_type, w.region)] -= 1
            return
        c = self.clocks.get(oid)
        if c is None:
            return
        if isinstance(e, WorkOrder.ThresholdCrossed):
            c.crossed.add((e.target, e.level))
        fact = clock_fact(e, c.paused, c.held)
        if isinstance(e, WorkOrder.Held | WorkOrder.HoldLifted):
            c.held = isinstance(e, WorkOrder.Held)
        if fact is not None:
            c.facts.append(fact)
            c.paused = fact.kind == "paused"
        c.due = None  # recomputed lazily by whoever asks

    def _unhold(self, oid: UUID) -> None:
        incident = self.holds.pop(oid, None)
        if incident is not None:
            held = self.by_incident.get(incident, set())
            held.discard(oid)
            if not held:
                self.by_incident.pop(incident, None)

    def held_by(self, incident_id: str, limit: int | None = None) -> tuple[list[UUID], list[UUID]]:
        """(work orders, pending IncidentHold records) the incident holds, in id order; ``limit``: the first that
        many of each (a chunk), picked in one pass on the ids' integers instead of sorting every held one (at
        100,000 held, sorting UUID objects per chunk was ~0.5 s of CPU, ~100 times over a resolution)."""
        with self.lock:
            held, pending = self.by_incident.get(incident_id, set()), self.pending_holds.get(incident_id, set())
            if limit is None:
                return sorted(held, key=_int), sorted(pending, key=_int)
            return heapq.nsmallest(limit, held, key=_int), heapq.nsmallest(limit, pending, key=_int)

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

    def unanswered(self, now: datetime) -> list[UUID]:
        """Refreshed: the assigned work orders whose technician did not accept by ``now``."""
        with self.lock:
            self.refresh()
            return [oid for oid, by in self.awaiting_answer.items() if by <= now]

    def due_clocks(self, now: datetime) -> list[UUID]:
        """Refreshed: the open work orders with a threshold reached by ``now`` and not yet recorded."""
        with self.lock:
            self.refresh()
            out = []
            for oid, c in self.clocks.items():
                if c.due is None:
                    c.due = next_due(c.facts, c.crossed, now) or datetime.max.replace(tzinfo=now.tzinfo)
                if c.due <= now:
                    out.append(oid)
            return out

    def technician_of(self, credential_hash: str) -> UUID | None:
        # one dict look-up (atomic under the GIL), not the board's lock: a refresh holds that lock through its read
        # of the log in a thread, and this runs on the event loop for every technician's request
        return self.credentials.get(credential_hash)


# --- the timers ------------------------------------------------------------------------------------


async def drain_queue(svc: Service[DispatchApp], limit: int = 500) -> int:
    """Assign waiting work orders, highest priority then earliest deadline first.

    Decisions are saved together (one transaction per round, so a technician's
    Took and the work order's Assigned never part); if another instance saved
    first, the round decides again on fresh state.
    """
    app = svc.app
    rounds = 0

    def decide(uow: UnitOfWork) -> int:
        nonlocal rounds
        rounds += 1
        return commands.drain_round(app, uow, limit)

    try:
        assigned = await svc.commands.run(decide)
        app.conflicts += rounds - 1  # each retry: another instance saved first, decided again on fresh state
    except IntegrityError:
        app.conflicts += rounds
        assigned = 0  # another instance kept moving first: the next round decides again
    await asyncio.to_thread(app.board.refresh)
    return assigned


async def expire_acceptances(svc: Service[DispatchApp]) -> int:
    """Assignments not accepted in time are declined (timed out) and go to someone else."""
    app = svc.app
    now = app.clock.now()
    due = await asyncio.to_thread(app.board.unanswered, now)
    expired = 0
    for oid in due:
        try:
            if await commands.time_out(svc, oid, now):
                expired += 1
        except (IntegrityError, DomainError):
            pass  # answered meanwhile, or another instance expired it
    if due:
        await asyncio.to_thread(app.board.refresh)
    return expired


async def check_clocks(svc: Service[DispatchApp]) -> int:
    """The durable SLA timer: every threshold reached is recorded once, by whichever instance gets there."""
    app = svc.app
    now = app.clock.now()
    due = await asyncio.to_thread(app.board.due_clocks, now)

    async def check(oid: UUID) -> bool:
        def decide(uow: UnitOfWork) -> bool:
            wo = uow.find(WorkOrder, oid)
            return wo is not None and wo.check_clocks(now) > 0

        try:
            return await svc.commands.run(decide)
        except (IntegrityError, DispatchError):
            return False  # changed meanwhile (or another instance recorded it): the next tick decides again

    crossed = sum(await asyncio.gather(*(check(oid) for oid in due)))
    if crossed:
        await asyncio.to_thread(app.board.refresh)
    return crossed


async def auto_peak(svc: Service[DispatchApp]) -> bool | None:
    """Peak mode follows the backlog: on above the threshold, off below half of it (hysteresis)."""
    app = svc.app
    await asyncio.to_thread(app.board.refresh)
    backlog, threshold = len(app.board.waiting), app.peak_backlog
    if not app.board.peak and backlog >= threshold:
        await commands.set_peak(svc, True, "auto", f"backlog {backlog} ≥ threshold {threshold}")
        return True
    if app.board.peak and backlog < threshold // 2:
        await commands.set_peak(svc, False, "auto", f"backlog {backlog} < {threshold // 2}")
        return False
    return None


RESOLVE_CHUNK = 1000  # work orders an incident's resolution resolves in one transaction
# seconds of one timer round the resolutions may take beyond one chunk per incident: the other timers wait no longer
# (a 100,000-order incident no longer runs ~100 transactions before them), the throughput is kept while it is idle
RESOLVE_BUDGET_SECONDS = 0.5


async def resolve_held(svc: Service[DispatchApp], chunk: int = RESOLVE_CHUNK, budget: float | None = None,
                       faults: Faults | None = None) -> int:
    """Resolve the work orders held by resolved incidents, ``chunk`` at a time, each chunk its own transaction
    (``policies.resolve_chunk``); the record is finished once none is left. The held set is the durable cursor:
    after a crash the next round goes on with what is still held. How many were resolved.

    ``budget``: one chunk per incident, and more only while this call has taken less than ``budget`` seconds (the
    timers pass ``RESOLVE_BUDGET_SECONDS``, so that a large incident never stalls the other timers; None: until
    done). An incident whose chunk fails is reported (once, in ``faults``) and left for the next call; the other
    incidents go on."""
    from tsop_dispatch.policies import resolve_chunk  # policies import this module's neighbours, not the reverse

    app = svc.app
    board = app.board
    faults = faults or Faults("dispatch timer", log)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.to_thread(board.refresh)

    def resolving() -> list[str]:
        with board.lock:  # in a thread: a refresh elsewhere may hold the lock, and the event loop never waits on it
            return sorted(i for i in board.resolving if i)

    incidents = await asyncio.to_thread(resolving)
    # an incident that failed here and that another instance has resolved since no longer fails here
    faults.only("resolve_held:", {f"resolve_held:{i}" for i in incidents})
    total = 0
    for incident_id in incidents:
        step = f"resolve_held:{incident_id}"
        chunks = 0
        while True:
            held, pending = await asyncio.to_thread(board.held_by, incident_id, chunk)
            work_orders = held[:chunk]
            early = pending[: max(0, chunk - len(work_orders))]
            if (work_orders or early) and chunks and budget is not None and loop.time() - started >= budget:
                break  # the rest in the next round
            chunks += 1

            def decide(uow: UnitOfWork, i: str = incident_id, w: list[UUID] = work_orders,
                       e: list[UUID] = early) -> int | None:
                return resolve_chunk(uow, i, w, e, app.clock.now())

            try:
                n = await svc.commands.run(decide)
            except IntegrityError:
                break  # another instance resolved this chunk meanwhile: the next round decides again
            except Exception as exc:  # noqa: BLE001 - one incident's failing chunk never stops the others
                faults.failed(step, exc)
                break
            await asyncio.to_thread(board.refresh)
            if n is None or (not work_orders and not early):
                faults.ok(step)
                break  # finished (or nothing to do)
            if n == 0 and not early:
                faults.failed(step, f"{len(work_orders)} held work orders could not be resolved")
                break
            faults.ok(step)
            total += n
    return total


async def tick(svc: Service[DispatchApp], faults: Faults | None = None) -> dict[str, int]:
    """One round of every timer dispatch keeps in its event store: each step isolated from the others' failures,
    and the resolutions within their budget (the rest in the next rounds), so no step waits long for another."""
    f = faults or Faults("dispatch timer", log)

    def held() -> Awaitable[int]:
        return resolve_held(svc, RESOLVE_CHUNK, RESOLVE_BUDGET_SECONDS, f)

    out = {
        "resolved_by_incidents": await f.step("resolve_held", held),
        "assigned": await f.step("drain_queue", lambda: drain_queue(svc)),
        "expired": await f.step("expire_acceptances", lambda: expire_acceptances(svc)),
        "crossed": await f.step("check_clocks", lambda: check_clocks(svc)),
    }
    await f.step("auto_peak", lambda: auto_peak(svc))
    return {k: v or 0 for k, v in out.items()}


async def follow_board(svc: Service[DispatchApp], every: float = 0.5) -> None:
    """Keep the board current in a process that serves the routes (an ``api`` process runs no timers): a
    technician's credential replaced through another instance is refused here within ``every`` seconds. A process
    that runs the timers needs nothing more (they refresh the board at every save; a second loop refreshing it
    would only double the reads, and clear a timer round's reservations midway)."""
    if svc.parts.work:
        return
    wake = svc.waiter(saved=True, pace=every)  # any instance saved (NOTIFY), or the safety net
    while True:
        await asyncio.to_thread(svc.app.board.refresh)
        await wake.wait()


async def timers(svc: Service[DispatchApp], every: float) -> None:
    """The durable timers: a round when any instance saved (at most one per ``every`` seconds), and at least
    one a second for the due times (SLA thresholds, acceptance deadlines)."""
    wake = svc.waiter(saved=True, pace=every)
    while True:
        await tick(svc, svc.faults)  # what fails is logged once and shown in /readyz (tsop_events.faults)
        await wake.wait(max(every, SAFETY_NET_SECONDS))
