"""Technicians, resources, work orders and the assignment decision (§2.2, §2.3, §3.2, §3.3). No I/O."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypedDict
from uuid import UUID

from eventsourcing.domain import Aggregate, event
from pydantic import JsonValue

from tsop_dispatch.sla import Fact, TargetsSpec, clocks, due_thresholds
from tsop_events.errors import Conflict, Forbidden, Invalid


class DispatchError(Conflict):
    """The work order's (or technician's) state refuses the change (answered 409)."""

    title = "Not allowed now"


class OverCapacity(DispatchError):
    """The technician is at capacity, or the resource is reserved by other work."""


class NotYours(Forbidden):
    """A technician acting on a work order that is not theirs (answered 403)."""

    title = "Not your work order"


class QualificationRecord(TypedDict):
    """A qualification as events record it."""

    service_type: str
    certificate: str
    level: int
    valid_from: datetime | None  # None only in registrations recorded before it defaulted (see ``registered``)
    valid_until: datetime | None


class CandidateRecord(TypedDict):
    """One of the best candidates of an assignment, as the Assigned event records it."""

    technician_id: str
    score: float
    load: int
    capacity: int


class LogEntry(TypedDict):
    """A step of a work order's operation log (its view shows them)."""

    technician_id: str
    action: str
    mode: str
    notes: str | None
    equipment: list[str]
    measurements: dict[str, float | str]
    at: str


def registered(q: QualificationRecord, registered_at: datetime) -> QualificationRecord:
    """A qualification as registered; one recorded without ``valid_from`` (before it defaulted) is valid from then."""
    return q if q.get("valid_from") is not None else QualificationRecord(**{**q, "valid_from": registered_at})


def qualification(
    service_type: str,
    certificate: str,
    level: int,
    valid_from: datetime | None,
    valid_until: datetime | None,
    now: datetime,
    field: str = "",
) -> QualificationRecord:
    """A qualification as recorded: valid from ``now`` unless a start is given, and ending after it starts."""
    since = valid_from or now
    if valid_until is not None and valid_until <= since:
        raise Invalid(f"must be after valid_from ({since.isoformat()})", f"{field}valid_until")
    if not 1 <= level <= 5:
        raise Invalid("must be between 1 and 5", f"{field}level")
    return {
        "service_type": service_type,
        "certificate": certificate,
        "level": level,
        "valid_from": since,
        "valid_until": valid_until,
    }


class Technician(Aggregate):
    class Registered(Aggregate.Created):
        name: str
        regions: list[str]
        capacity: int
        qualifications: list[QualificationRecord]
        credential_hash: str | None
        registered_at: datetime

    class QualificationGranted(Aggregate.Event):
        service_type: str
        certificate: str
        level: int
        valid_from: datetime
        valid_until: datetime | None
        renewal: bool
        source: str
        granted_at: datetime

    class ShiftScheduled(Aggregate.Event):
        start: datetime
        end: datetime

    class LeaveScheduled(Aggregate.Event):
        start: datetime
        end: datetime
        reason: str

    class CredentialIssued(Aggregate.Event):
        credential_hash: str

    class CapacityChanged(Aggregate.Event):
        capacity: int

    class Took(Aggregate.Event):
        work_order_id: str

    class Released(Aggregate.Event):
        work_order_id: str

    @event(Registered)
    def __init__(
        self,
        id: UUID,  # noqa: A002
        name: str,
        regions: list[str],
        capacity: int,
        qualifications: list[QualificationRecord],
        credential_hash: str | None,
        registered_at: datetime,
    ) -> None:
        self.name = name
        self.regions = regions
        self.capacity = capacity
        self.qualifications: dict[str, QualificationRecord] = {
            q["service_type"]: registered(q, registered_at) for q in qualifications
        }
        self.credential_hash = credential_hash
        self.shifts: list[tuple[datetime, datetime]] = []
        self.leave: list[tuple[datetime, datetime, str]] = []
        self.active: list[str] = []

    def grant(
        self,
        service_type: str,
        certificate: str,
        level: int,
        valid_from: datetime,
        valid_until: datetime | None,
        source: str,
        at: datetime,
    ) -> None:
        qualification(service_type, certificate, level, valid_from, valid_until, at)  # refuses what cannot be
        self._granted(
            service_type=service_type,
            certificate=certificate,
            level=level,
            valid_from=valid_from,
            valid_until=valid_until,
            renewal=service_type in self.qualifications,
            source=source,
            granted_at=at,
        )

    @event(QualificationGranted)
    def _granted(
        self,
        service_type: str,
        certificate: str,
        level: int,
        valid_from: datetime,
        valid_until: datetime | None,
        renewal: bool,
        source: str,
        granted_at: datetime,
    ) -> None:
        self.qualifications[service_type] = {
            "service_type": service_type,
            "certificate": certificate,
            "level": level,
            "valid_from": valid_from,
            "valid_until": valid_until,
        }

    def schedule_shift(self, start: datetime, end: datetime) -> None:
        if end <= start:
            raise DispatchError("a shift ends after it starts")
        self._shift(start=start, end=end)

    @event(ShiftScheduled)
    def _shift(self, start: datetime, end: datetime) -> None:
        self.shifts.append((start, end))

    def schedule_leave(self, start: datetime, end: datetime, reason: str) -> None:
        if end <= start:
            raise DispatchError("leave ends after it starts")
        self._leave(start=start, end=end, reason=reason)

    @event(LeaveScheduled)
    def _leave(self, start: datetime, end: datetime, reason: str) -> None:
        self.leave.append((start, end, reason))

    def rotate_credential(self, credential_hash: str) -> None:
        """A new credential; the old one stops working (only hashes are ever recorded)."""
        self._credential(credential_hash=credential_hash)

    @event(CredentialIssued)
    def _credential(self, credential_hash: str) -> None:
        self.credential_hash = credential_hash

    def change_capacity(self, capacity: int) -> None:
        if capacity < 1:
            raise DispatchError("capacity must be at least 1")
        if capacity != self.capacity:
            self._capacity(capacity=capacity)

    @event(CapacityChanged)
    def _capacity(self, capacity: int) -> None:
        self.capacity = capacity

    def take(self, work_order_id: UUID) -> None:
        if str(work_order_id) in self.active:
            return
        if len(self.active) >= self.capacity:
            raise OverCapacity(f"technician {self.id} is at capacity {self.capacity}")
        self._took(work_order_id=str(work_order_id))

    @event(Took)
    def _took(self, work_order_id: str) -> None:
        self.active.append(work_order_id)

    def release(self, work_order_id: UUID) -> None:
        if str(work_order_id) in self.active:
            self._released(work_order_id=str(work_order_id))

    @event(Released)
    def _released(self, work_order_id: str) -> None:
        self.active.remove(work_order_id)


class Resource(Aggregate):
    """Equipment (an ONT, a test set) or a venue slot, reserved with a work order (§2.2)."""

    class Registered(Aggregate.Created):
        kind: str
        name: str
        region: str
        registered_at: datetime

    class Reserved(Aggregate.Event):
        work_order_id: str

    class Freed(Aggregate.Event):
        work_order_id: str

    @event(Registered)
    def __init__(self, id: UUID, kind: str, name: str, region: str, registered_at: datetime) -> None:  # noqa: A002
        self.kind, self.name, self.region = kind, name, region
        self.reserved_by: str | None = None

    def reserve(self, work_order_id: UUID) -> None:
        if self.reserved_by == str(work_order_id):
            return
        if self.reserved_by is not None:
            raise OverCapacity(f"resource {self.id} is reserved by work order {self.reserved_by}")
        self._reserved(work_order_id=str(work_order_id))

    @event(Reserved)
    def _reserved(self, work_order_id: str) -> None:
        self.reserved_by = work_order_id

    def release(self, work_order_id: UUID) -> None:
        if self.reserved_by == str(work_order_id):
            self._freed(work_order_id=str(work_order_id))

    @event(Freed)
    def _freed(self, work_order_id: str) -> None:
        self.reserved_by = None


class PeakMode(Aggregate):
    """The one switch between the 24-hour norm and the 48-hour peak norm (§2.2), with who turned it."""

    class Created(Aggregate.Created):
        pass

    class Changed(Aggregate.Event):
        on: bool
        by: str
        reason: str
        backlog: int
        changed_at: datetime

    @event(Created)
    def __init__(self, id: UUID) -> None:  # noqa: A002
        self.on = False

    def change(self, on: bool, by: str, reason: str, backlog: int, at: datetime) -> bool:
        if on == self.on:
            return False
        self._changed(on=on, by=by, reason=reason, backlog=backlog, changed_at=at)
        return True

    @event(Changed)
    def _changed(self, on: bool, by: str, reason: str, backlog: int, changed_at: datetime) -> None:
        self.on = on


class IncidentHold(Aggregate):
    """A ticket linked to an incident before dispatch opened its work order (the two topics race):
    the hold (or the incident's resolution) applies when the work order opens."""

    class Noted(Aggregate.Created):
        ticket_id: str

    class Changed(Aggregate.Event):
        incident_id: str | None
        resolution: dict[str, str | None] | None

    @event(Noted)
    def __init__(self, id: UUID, ticket_id: str) -> None:  # noqa: A002
        self.ticket_id = ticket_id
        self.incident_id: str | None = None
        self.resolution: dict[str, str | None] | None = None

    class Taken(Aggregate.Event):
        """The ticket's work order opened and took over what was noted (if anything). Every opening writes this
        record, so a link racing the opening conflicts with it and is retried on fresh state (§5.3)."""

        incident_id: str | None
        resolution: dict[str, str | None] | None

    def change(self, incident_id: str | None, resolution: dict[str, str | None] | None = None) -> None:
        if (incident_id, resolution) != (self.incident_id, self.resolution):
            self._changed(incident_id=incident_id, resolution=resolution)

    @event(Changed)
    def _changed(self, incident_id: str | None, resolution: dict[str, str | None] | None) -> None:
        self.incident_id, self.resolution = incident_id, resolution

    def take(self) -> tuple[str | None, dict[str, str | None] | None]:
        """The work order opens: what an incident noted for it (incident id, resolution), now cleared."""
        noted = (self.incident_id, self.resolution)
        self._taken(incident_id=self.incident_id, resolution=self.resolution)
        return noted

    @event(Taken)
    def _taken(self, incident_id: str | None, resolution: dict[str, str | None] | None) -> None:
        self.incident_id, self.resolution = None, None


class IncidentRecord(Aggregate):
    """What dispatch applied of one incident's events. The incidents topic is consumed again from the start after
    a broker change, so a replayed link, unlink or resolution must change nothing.

    Per ticket only the unlinks are kept (by time): a link older than the ticket's latest unlink is stale, and a
    replayed unlink is refused. Links are not recorded (an incident may link 100,000 tickets): a replayed link is
    refused by the work order itself (``WorkOrder.hold`` knows each incident's latest hold, release and resolution
    it applied). Once the incident is resolved nothing of it applies any more.

    The resolution is applied in chunks, each its own transaction, after the record is closed with it
    (``Resolving``): the work orders still held are the durable cursor (each resolved one leaves the set), every
    chunk touches this record (``Advanced``, so two instances never resolve the same chunk at once) and the last
    one records ``Finished``. A crash in between resumes with the work orders still held."""

    class Started(Aggregate.Created):
        incident_id: str

    class Applied(Aggregate.Event):
        ticket_id: str
        kind: str  # linked | unlinked (records written before only unlinks were kept also hold links)
        at: datetime

    class Closed(Aggregate.Event):
        """The resolution, applied in the same transaction (records written before the chunked resolution)."""

        at: datetime

    class Resolving(Aggregate.Event):
        at: datetime
        resolution: dict[str, str | None]

    class Advanced(Aggregate.Event):
        resolved: int
        at: datetime

    class Finished(Aggregate.Event):
        resolved: int
        at: datetime

    @event(Started)
    def __init__(self, id: UUID, incident_id: str) -> None:  # noqa: A002
        self.incident_id = incident_id
        self.resolved = False
        self.done = False  # every held work order resolved (and every early hold given the resolution)
        self.resolution: dict[str, str | None] | None = None
        self.resolved_at: datetime | None = None
        self.count = 0  # work orders resolved by the chunks so far
        self.latest: dict[str, tuple[datetime, str]] = {}

    def note(self, ticket_id: str, kind: str, at: datetime) -> bool:
        """A link or unlink of ``ticket_id``: True if it may be news (to apply), False if replayed or stale."""
        if self.resolved:
            return False
        last = self.latest.get(ticket_id)
        if last is not None and (at < last[0] or (at == last[0] and kind == last[1])):
            return False
        if kind == "unlinked":
            self._applied(ticket_id=ticket_id, kind=kind, at=at)
        return True

    @event(Applied)
    def _applied(self, ticket_id: str, kind: str, at: datetime) -> None:
        self.latest[ticket_id] = (at, kind)

    def close(self, at: datetime, resolution: dict[str, str | None]) -> bool:
        """The incident was resolved: True the first time (its held work orders are to be resolved), False for a
        replay."""
        if self.resolved:
            return False
        self._resolving(at=at, resolution=resolution)
        return True

    @event(Closed)
    def _closed(self, at: datetime) -> None:
        self.resolved = self.done = True
        self.latest = {}

    @event(Resolving)
    def _resolving(self, at: datetime, resolution: dict[str, str | None]) -> None:
        self.resolved = True
        self.resolution, self.resolved_at = resolution, at
        self.latest = {}

    def advance(self, resolved: int, at: datetime) -> None:
        """A chunk of the held work orders was resolved."""
        self._advanced(resolved=resolved, at=at)

    @event(Advanced)
    def _advanced(self, resolved: int, at: datetime) -> None:
        self.count += resolved

    def finish(self, at: datetime) -> bool:
        if not self.resolved or self.done:
            return False
        self._finished(resolved=self.count, at=at)
        return True

    @event(Finished)
    def _finished(self, resolved: int, at: datetime) -> None:
        self.done = True


class SlaPolicy(Aggregate):
    """The service-level policy in force (targets, calendars, peak norm): data, adopted with a record of who."""

    class Created(Aggregate.Created):
        pass

    class Adopted(Aggregate.Event):
        policy: dict[str, JsonValue]
        version: str
        by: str
        adopted_at: datetime

    @event(Created)
    def __init__(self, id: UUID) -> None:  # noqa: A002
        self.policy: dict[str, JsonValue] | None = None

    def adopt(self, policy: dict[str, JsonValue], by: str, at: datetime) -> None:
        self._adopted(policy=policy, version=str(policy.get("version", "")), by=by, adopted_at=at)

    @event(Adopted)
    def _adopted(self, policy: dict[str, JsonValue], version: str, by: str, adopted_at: datetime) -> None:
        self.policy = policy


ACTIVE = ("assigned", "accepted", "in_progress", "paused")


class WorkOrder(Aggregate):
    class Opened(Aggregate.Created):
        ticket_id: str
        service_type: str
        region: str
        priority: int
        resolve_by: datetime | None
        causation_id: str
        opened_at: datetime
        targets: TargetsSpec | None = None
        needs: list[str] | None = None

    class Assigned(Aggregate.Event):
        ticket_id: str
        technician_id: str
        reason: str
        candidates: list[CandidateRecord]
        assigned_at: datetime
        causation_id: str
        accept_by: datetime | None = None
        resources: list[str] | None = None
        assigned_by: str = "auto"
        previous_technician_id: str | None = None

    class Accepted(Aggregate.Event):
        ticket_id: str
        technician_id: str
        accepted_at: datetime

    class Declined(Aggregate.Event):
        ticket_id: str
        technician_id: str
        reason: str
        timed_out: bool
        declined_at: datetime

    class Unassigned(Aggregate.Event):
        ticket_id: str
        technician_id: str
        reason: str
        by: str
        at: datetime

    class Started(Aggregate.Event):
        ticket_id: str
        technician_id: str
        mode: str
        started_at: datetime

    class WorkLogged(Aggregate.Event):
        ticket_id: str
        technician_id: str
        action: str
        mode: str
        notes: str | None
        logged_at: datetime
        equipment: list[str] | None = None
        measurements: dict[str, float | str] | None = None

    class Paused(Aggregate.Event):
        ticket_id: str
        technician_id: str
        kind: str
        reason: str
        paused_at: datetime

    class Resumed(Aggregate.Event):
        ticket_id: str
        technician_id: str
        resumed_at: datetime

    class Resolved(Aggregate.Event):
        ticket_id: str
        technician_id: str
        resolution_code: str
        summary: str
        advice: str | None
        resolved_at: datetime

    class Withdrawn(Aggregate.Event):
        ticket_id: str
        technician_id: str | None
        reason: str
        withdrawn_at: datetime

    class Reopened(Aggregate.Event):
        """The customer said the problem is not solved (or a closed ticket was reopened): back to the queue, the
        same technician first; the resolve clock continues from where it stopped. Carries what the board needs
        to queue it and follow its clocks again."""

        ticket_id: str
        technician_id: str | None
        reason: str
        reopen_count: int
        reopened_at: datetime
        causation_id: str
        service_type: str
        region: str
        priority: int
        resolve_by: datetime | None
        opened_at: datetime
        needs: list[str]
        facts: list[dict[str, JsonValue]]
        crossed: list[list[str]]

    class Retargeted(Aggregate.Event):
        ticket_id: str
        targets: TargetsSpec
        priority: int
        why: str
        at: datetime

    class Held(Aggregate.Event):
        ticket_id: str
        incident_id: str
        held_at: datetime

    class HoldLifted(Aggregate.Event):
        ticket_id: str
        incident_id: str
        reason: str
        resume_clock: bool
        lifted_at: datetime

    class ThresholdCrossed(Aggregate.Event):
        ticket_id: str
        target: str
        level: str
        deadline: datetime
        elapsed_seconds: float
        target_seconds: float
        crossed_at: datetime

    class Escalated(Aggregate.Event):
        ticket_id: str
        to_role: str
        reason: str
        escalated_at: datetime

    @event(Opened)
    def __init__(
        self,
        id: UUID,  # noqa: A002
        ticket_id: str,
        service_type: str,
        region: str,
        priority: int,
        resolve_by: datetime | None,
        causation_id: str,
        opened_at: datetime,
        targets: TargetsSpec | None = None,
        needs: list[str] | None = None,
    ) -> None:
        self.ticket_id = ticket_id
        self.service_type = service_type
        self.region = region
        self.priority = priority
        self.resolve_by = resolve_by
        self.opened_at = opened_at
        self.causation_id = causation_id
        self.needs = list(needs or [])
        self.status = "waiting"
        self.technician_id: str | None = None
        self.accept_by: datetime | None = None
        self.resources: list[str] = []
        self.excluded: list[str] = []  # technicians who declined or let it time out
        self.previous: list[str] = []  # technicians who worked it before (continuity)
        self.log: list[LogEntry] = []
        self.reopen_count = 0
        self.crossed: set[tuple[str, str]] = set()
        self.targets = targets
        self.facts: list[Fact] = [Fact(opened_at, "opened", {"targets": targets})] if targets else []
        self.held_by: str | None = None  # the incident holding it (§5.3): clocks paused, nobody sent to it
        # per incident, the latest hold, release or resolution this work order applied (time, kind): rebuilt from
        # its own events, so a replay of the incidents topic is refused even where dispatch's IncidentRecord is
        # empty (a store written before the records existed)
        self.by_incident: dict[str, tuple[datetime, str]] = {}

    # --- assignment -------------------------------------------------------------------------------

    def assign(
        self,
        technician: Technician,
        reason: str,
        candidates: list[CandidateRecord],
        at: datetime,
        accept_by: datetime | None = None,
        resources: Iterable[Resource] = (),
        assigned_by: str = "auto",
    ) -> None:
        if self.status != "waiting":
            raise DispatchError(f"work order {self.id} is {self.status}, not waiting")
        if self.held_by is not None:
            raise DispatchError(f"work order {self.id} is held by incident {self.held_by}")
        technician.take(self.id)
        reserved = list(resources)
        for r in reserved:
            r.reserve(self.id)
        self._assigned(
            ticket_id=self.ticket_id,
            technician_id=str(technician.id),
            reason=reason,
            candidates=candidates,
            assigned_at=at,
            causation_id=self.causation_id,
            accept_by=accept_by,
            resources=[str(r.id) for r in reserved],
            assigned_by=assigned_by,
            previous_technician_id=self.previous[-1] if self.previous else None,
        )

    @event(Assigned)
    def _assigned(
        self,
        ticket_id: str,
        technician_id: str,
        reason: str,
        candidates: list[CandidateRecord],
        assigned_at: datetime,
        causation_id: str,
        accept_by: datetime | None = None,
        resources: list[str] | None = None,
        assigned_by: str = "auto",
        previous_technician_id: str | None = None,
    ) -> None:
        self.status = "assigned"
        self.technician_id = technician_id
        self.accept_by = accept_by
        self.resources = list(resources or [])
        self.facts.append(Fact(assigned_at, "assigned", {"technician_id": technician_id}))

    def _let_go(self, technician: Technician, resources: Iterable[Resource]) -> None:
        """The technician and the reserved resources are free of this work order."""
        technician.release(self.id)
        for r in resources:
            r.release(self.id)

    def _check_worker(self, technician_id: str, *allowed: str) -> None:
        if technician_id != self.technician_id:
            raise NotYours(f"technician {technician_id} is not assigned to work order {self.id}")
        if self.status not in allowed:
            raise DispatchError(f"work order {self.id} is {self.status}; this needs {' or '.join(allowed)}")

    def accept(self, technician_id: str, at: datetime) -> None:
        self._check_worker(technician_id, "assigned")
        self._accepted(ticket_id=self.ticket_id, technician_id=technician_id, accepted_at=at)

    @event(Accepted)
    def _accepted(self, ticket_id: str, technician_id: str, accepted_at: datetime) -> None:
        self.status = "accepted"
        self.accept_by = None
        self.facts.append(Fact(accepted_at, "accepted"))

    def decline(
        self,
        technician: Technician,
        reason: str,
        at: datetime,
        resources: Iterable[Resource] = (),
        timed_out: bool = False,
    ) -> None:
        """The technician says no, or did not answer in time: back to the queue, without them."""
        self._check_worker(str(technician.id), "assigned")
        self._let_go(technician, resources)
        self._declined(
            ticket_id=self.ticket_id,
            technician_id=str(technician.id),
            reason=reason,
            timed_out=timed_out,
            declined_at=at,
        )

    @event(Declined)
    def _declined(
        self, ticket_id: str, technician_id: str, reason: str, timed_out: bool, declined_at: datetime
    ) -> None:
        self.status = "waiting"
        self.excluded.append(technician_id)
        self.technician_id = None
        self.accept_by = None
        self.resources = []
        self.facts.append(Fact(declined_at, "declined", {"technician_id": technician_id}))

    def unassign(
        self, technician: Technician, reason: str, by: str, at: datetime, resources: Iterable[Resource] = ()
    ) -> None:
        """A supervisor takes the work order from its technician (to reassign it, with a reason)."""
        if self.status not in ACTIVE:
            raise DispatchError(f"work order {self.id} is {self.status}; only active work can be reassigned")
        if str(technician.id) != self.technician_id:
            raise DispatchError(f"technician {technician.id} does not hold work order {self.id}")
        self._let_go(technician, resources)
        self._unassigned(ticket_id=self.ticket_id, technician_id=str(technician.id), reason=reason, by=by, at=at)

    @event(Unassigned)
    def _unassigned(self, ticket_id: str, technician_id: str, reason: str, by: str, at: datetime) -> None:
        if self.status == "paused" and self.held_by is None:  # the pause ends with the hand-over (not a hold)
            self.facts.append(Fact(at, "resumed"))
        self.status = "waiting"
        self.previous.append(technician_id)
        self.technician_id = None
        self.accept_by = None
        self.resources = []

    # --- work -------------------------------------------------------------------------------------

    def start(self, technician_id: str, mode: str, at: datetime) -> None:
        self._check_worker(technician_id, "accepted")
        self._started(ticket_id=self.ticket_id, technician_id=technician_id, mode=mode, started_at=at)

    @event(Started)
    def _started(self, ticket_id: str, technician_id: str, mode: str, started_at: datetime) -> None:
        self.status = "in_progress"

    def log_work(
        self,
        technician_id: str,
        action: str,
        mode: str,
        notes: str | None,
        at: datetime,
        equipment: list[str] | None = None,
        measurements: dict[str, float | str] | None = None,
    ) -> None:
        self._check_worker(technician_id, "in_progress", "paused")
        self._logged(
            ticket_id=self.ticket_id,
            technician_id=technician_id,
            action=action,
            mode=mode,
            notes=notes,
            logged_at=at,
            equipment=list(equipment or []),
            measurements=dict(measurements or {}),
        )

    @event(WorkLogged)
    def _logged(
        self,
        ticket_id: str,
        technician_id: str,
        action: str,
        mode: str,
        notes: str | None,
        logged_at: datetime,
        equipment: list[str] | None = None,
        measurements: dict[str, float | str] | None = None,
    ) -> None:
        self.log.append(
            {
                "technician_id": technician_id,
                "action": action,
                "mode": mode,
                "notes": notes,
                "equipment": equipment or [],
                "measurements": measurements or {},
                "at": logged_at.isoformat(),
            }
        )

    def pause(self, technician_id: str, kind: str, reason: str, at: datetime) -> None:
        if kind not in ("pending", "held"):
            raise DispatchError("kind is pending (waiting for the customer) or held (parts, incident)")
        self._check_worker(technician_id, "in_progress")
        self._paused(ticket_id=self.ticket_id, technician_id=technician_id, kind=kind, reason=reason, paused_at=at)

    @event(Paused)
    def _paused(self, ticket_id: str, technician_id: str, kind: str, reason: str, paused_at: datetime) -> None:
        self.status = "paused"
        self.facts.append(Fact(paused_at, "paused", {"kind": kind, "reason": reason}))

    def resume(self, technician_id: str, at: datetime) -> None:
        self._check_worker(technician_id, "paused")
        self._resumed(ticket_id=self.ticket_id, technician_id=technician_id, resumed_at=at)

    @event(Resumed)
    def _resumed(self, ticket_id: str, technician_id: str, resumed_at: datetime) -> None:
        self.status = "in_progress"
        if self.held_by is None:  # an incident's hold keeps the clocks paused
            self.facts.append(Fact(resumed_at, "resumed"))

    # --- incidents (§5.3) ----------------------------------------------------------------------------

    def hold(self, incident_id: str, at: datetime) -> bool:
        """Linked to an incident: the SLA clocks pause for its duration and no technician is sent to it alone.

        False when there is nothing to hold (closed already, or held by this incident).
        """
        if self.status in ("resolved", "withdrawn") or self.held_by == incident_id:
            return False
        if not self._news(incident_id, at):
            return False  # a replay: this incident's hold, release or resolution applied already
        self._held(ticket_id=self.ticket_id, incident_id=incident_id, held_at=at)
        return True

    @event(Held)
    def _held(self, ticket_id: str, incident_id: str, held_at: datetime) -> None:
        self.held_by = incident_id
        self._mark(incident_id, held_at, "held")
        self.facts.append(Fact(held_at, "paused", {"kind": "held", "reason": f"incident {incident_id}"}))

    def _news(self, incident_id: str, at: datetime, lifting: bool = False) -> bool:
        """Whether a hold (or release, ``lifting``) by ``incident_id`` at ``at`` is new to this work order: never
        after its resolution by that incident, nor as old as the latest release by it. A release is not compared
        with the hold's time (an early hold is stamped with dispatch's opening time, later than the link)."""
        last = getattr(self, "by_incident", {}).get(incident_id)
        if last is None:
            return True
        if last[1] == "resolved":
            return False
        return at > last[0] if (last[1] == "unlinked" or not lifting) else True

    def _mark(self, incident_id: str, at: datetime, kind: str) -> None:
        if not hasattr(self, "by_incident"):
            self.by_incident = {}
        self.by_incident[incident_id] = (at, kind)

    def lift_hold(self, incident_id: str, reason: str, at: datetime) -> bool:
        """Unlinked (it proved unrelated): back to normal dispatch, the clocks running again
        (unless the technician had paused the work before)."""
        if self.held_by != incident_id or self.status in ("resolved", "withdrawn"):
            return False
        if not self._news(incident_id, at, lifting=True):
            return False
        self._hold_lifted(
            ticket_id=self.ticket_id, incident_id=incident_id, reason=reason,
            resume_clock=self.status != "paused", lifted_at=at,
        )
        return True

    @event(HoldLifted)
    def _hold_lifted(
        self, ticket_id: str, incident_id: str, reason: str, resume_clock: bool, lifted_at: datetime
    ) -> None:
        self.held_by = None
        self._mark(incident_id, lifted_at, "unlinked")
        if resume_clock:
            self.facts.append(Fact(lifted_at, "resumed"))

    def resolve_with_incident(
        self,
        incident_id: str,
        resolution_code: str,
        summary: str,
        advice: str | None,
        at: datetime,
        technician: Technician | None = None,
        resources: Iterable[Resource] = (),
    ) -> bool:
        """The incident holding it was resolved: resolved with the incident's resolution, its own Resolved event."""
        if self.held_by != incident_id or self.status in ("resolved", "withdrawn"):
            return False
        if self.technician_id is not None:
            if technician is None or str(technician.id) != self.technician_id:
                raise DispatchError(f"resolving work order {self.id} needs its technician {self.technician_id}")
            self._let_go(technician, resources)
        self._resolved(
            ticket_id=self.ticket_id,
            technician_id=self.technician_id or "",
            resolution_code=resolution_code,
            summary=summary,
            advice=advice,
            resolved_at=at,
        )
        return True

    def resolve(
        self,
        technician: Technician,
        resolution_code: str,
        summary: str,
        advice: str | None,
        at: datetime,
        resources: Iterable[Resource] = (),
    ) -> None:
        self._check_worker(str(technician.id), "in_progress")
        self._let_go(technician, resources)
        self._resolved(
            ticket_id=self.ticket_id,
            technician_id=str(technician.id),
            resolution_code=resolution_code,
            summary=summary,
            advice=advice,
            resolved_at=at,
        )

    @event(Resolved)
    def _resolved(
        self,
        ticket_id: str,
        technician_id: str,
        resolution_code: str,
        summary: str,
        advice: str | None,
        resolved_at: datetime,
    ) -> None:
        self.status = "resolved"
        if self.held_by is not None:  # resolved while held: that incident's later events never apply again
            self._mark(self.held_by, resolved_at, "resolved")
        self.held_by = None  # a resolution ends any hold: a reopening starts unheld and goes to the queue
        self.facts.append(Fact(resolved_at, "resolved"))

    # --- reopening ----------------------------------------------------------------------------------

    def reopen(self, reason: str, reopen_count: int, at: datetime, causation_id: str) -> bool:
        """The ticket was reopened downstream: wait again, remembering who resolved it (continuity).

        False when there is nothing to reopen: not resolved (withdrawn, or reopened already), or this
        reopening was applied before (a redelivery).
        """
        if self.status != "resolved" or reopen_count <= self.reopen_count:
            return False
        self._reopened(
            ticket_id=self.ticket_id,
            technician_id=self.technician_id,
            reason=reason,
            reopen_count=reopen_count,
            reopened_at=at,
            causation_id=causation_id,
            service_type=self.service_type,
            region=self.region,
            priority=self.priority,
            resolve_by=self.resolve_by,
            opened_at=self.opened_at,
            needs=list(self.needs),
            facts=[fact_record(f) for f in self.facts],
            crossed=[[t, level] for t, level in sorted(self.crossed)],
        )
        return True

    @event(Reopened)
    def _reopened(
        self,
        ticket_id: str,
        technician_id: str | None,
        reason: str,
        reopen_count: int,
        reopened_at: datetime,
        causation_id: str,
        service_type: str,
        region: str,
        priority: int,
        resolve_by: datetime | None,
        opened_at: datetime,
        needs: list[str],
        facts: list[dict[str, JsonValue]],
        crossed: list[list[str]],
    ) -> None:
        self.status = "waiting"
        self.held_by = None
        self.reopen_count = reopen_count
        self.causation_id = causation_id
        if technician_id is not None:
            self.previous.append(technician_id)
        self.technician_id = None
        self.accept_by = None
        self.resources = []
        self.facts.append(Fact(reopened_at, "reopened", {"reason": reason}))

    @property
    def resolved_by(self) -> str | None:
        """Who resolved it last (before a reopening): the technician the reopened work goes back to first."""
        return self.previous[-1] if self.previous else None

    # --- withdrawal ---------------------------------------------------------------------------------

    def withdraw(
        self, reason: str, at: datetime, technician: Technician | None = None, resources: Iterable[Resource] = ()
    ) -> bool:
        """The request was cancelled upstream: the work order closes and whoever held it is free.

        False when there is nothing to withdraw (already resolved or withdrawn).
        """
        if self.status in ("resolved", "withdrawn"):
            return False
        if self.technician_id is not None:
            if technician is None or str(technician.id) != self.technician_id:
                raise DispatchError(f"withdrawing work order {self.id} needs its technician {self.technician_id}")
            self._let_go(technician, resources)
        self._withdrawn(ticket_id=self.ticket_id, technician_id=self.technician_id, reason=reason, withdrawn_at=at)
        return True

    @event(Withdrawn)
    def _withdrawn(self, ticket_id: str, technician_id: str | None, reason: str, withdrawn_at: datetime) -> None:
        self.status = "withdrawn"
        self.held_by = None
        self.facts.append(Fact(withdrawn_at, "withdrawn", {"reason": reason}))
        if technician_id is not None:
            self.previous.append(technician_id)
        self.technician_id = None
        self.accept_by = None
        self.resources = []

    # --- service levels ---------------------------------------------------------------------------

    def retarget(self, targets: TargetsSpec, priority: int, why: str, at: datetime) -> None:
        """New targets (a priority or policy change): elapsed time stays, the deadlines move."""
        if self.status in ("resolved", "withdrawn"):
            raise DispatchError(f"work order {self.id} is {self.status}")
        self._retargeted(ticket_id=self.ticket_id, targets=targets, priority=priority, why=why, at=at)

    @event(Retargeted)
    def _retargeted(self, ticket_id: str, targets: TargetsSpec, priority: int, why: str, at: datetime) -> None:
        self.priority = priority
        self.targets = targets
        self.facts.append(Fact(at, "retargeted", {"targets": targets, "why": why}))

    def check_clocks(self, now: datetime) -> int:
        """Record every threshold reached by ``now`` once (warning 75 %, breach 100 %, escalation)."""
        crossed = 0
        state = clocks(self.facts)
        for name, level, elapsed in due_thresholds(self.facts, self.crossed, now):
            c = state[name]
            self._crossed(
                ticket_id=self.ticket_id,
                target=name,
                level=level,
                deadline=c.at_fraction(1.0, now) or now,
                elapsed_seconds=round(elapsed, 3),
                target_seconds=c.target_seconds,
                crossed_at=now,
            )
            crossed += 1
            if level == "breach":
                self._escalated(
                    ticket_id=self.ticket_id,
                    to_role="supervisor",
                    reason=f"{name} target of {c.target_seconds / 3600:g} h breached ({elapsed / 3600:.2f} h elapsed)",
                    escalated_at=now,
                )
        return crossed

    @event(ThresholdCrossed)
    def _crossed(
        self,
        ticket_id: str,
        target: str,
        level: str,
        deadline: datetime,
        elapsed_seconds: float,
        target_seconds: float,
        crossed_at: datetime,
    ) -> None:
        self.crossed.add((target, level))

    @event(Escalated)
    def _escalated(self, ticket_id: str, to_role: str, reason: str, escalated_at: datetime) -> None:
        pass


def fact_record(f: Fact) -> dict[str, JsonValue]:
    """A clock fact as an event records it (JSON: the time as ISO 8601)."""
    return {"at": f.at.isoformat(), "kind": f.kind, "data": f.data}


def fact_of(record: dict[str, JsonValue]) -> Fact:
    data = record.get("data")
    return Fact(datetime.fromisoformat(str(record["at"])), str(record["kind"]), dict(data) if isinstance(data, dict)
                else {})


def clock_fact(e: WorkOrder.Event, paused: bool, held: bool = False) -> Fact | None:
    """The clock fact a work-order event adds (for views that follow the log, as the aggregate does)."""
    if isinstance(e, WorkOrder.Accepted):
        return Fact(e.accepted_at, "accepted")
    if isinstance(e, WorkOrder.Paused):
        return Fact(e.paused_at, "paused", {"kind": e.kind, "reason": e.reason})
    if isinstance(e, WorkOrder.Resumed):
        return None if held else Fact(e.resumed_at, "resumed")
    if isinstance(e, WorkOrder.Held):
        return Fact(e.held_at, "paused", {"kind": "held", "reason": f"incident {e.incident_id}"})
    if isinstance(e, WorkOrder.HoldLifted):
        return Fact(e.lifted_at, "resumed") if e.resume_clock else None
    if isinstance(e, WorkOrder.Unassigned) and paused and not held:
        return Fact(e.at, "resumed")
    if isinstance(e, WorkOrder.Retargeted):
        return Fact(e.at, "retargeted", {"targets": e.targets, "why": e.why})
    return None


# --- the assignment decision --------------------------------------------------------------------


@dataclass
class TechnicianView:
    id: UUID
    regions: frozenset[str]
    capacity: int
    qualifications: dict[str, tuple[int, datetime, datetime | None]] = field(default_factory=dict)
    shifts: list[tuple[datetime, datetime]] = field(default_factory=list)
    leave: list[tuple[datetime, datetime]] = field(default_factory=list)
    active: set[str] = field(default_factory=set)
    tentative: set[str] = field(default_factory=set)  # decided, not yet read back from the log
    name: str = ""

    @property
    def load(self) -> int:
        return len(self.active | self.tentative) if self.tentative else len(self.active)

    def qualified(self, service_type: str, now: datetime) -> int | None:
        """The level of a valid qualification for ``service_type`` at ``now``, or None."""
        q = self.qualifications.get(service_type)
        if q is None:
            return None
        level, since, until = q
        return level if since <= now and (until is None or now < until) else None

    def serves(self, region: str) -> bool:
        return region in self.regions or "*" in self.regions

    def on_shift(self, now: datetime) -> bool:
        """No shifts scheduled means on call around the clock; leave always wins."""
        if not self.shifts and not self.leave:
            return True
        if any(s <= now < e for s, e in self.leave):
            return False
        return not self.shifts or any(s <= now < e for s, e in self.shifts)


@dataclass(frozen=True)
class Job:
    """What the decision needs to know of a work order."""

    service_type: str
    region: str
    priority: int
    excluded: frozenset[str] = frozenset()
    previous: frozenset[str] = frozenset()


FILTERS = ("qualification", "region", "declined", "on_shift", "capacity")
WEIGHTS = {"load": 40.0, "level": 20.0, "continuity": 15.0, "affinity": 10.0}


def components(t: TechnicianView, job: Job, level: int, load: int | None = None) -> tuple[float, float, float, float]:
    """The score's components, in the order of WEIGHTS: load, level, continuity, affinity (higher is better)."""
    load = t.load if load is None else load
    urgency = (6 - max(1, min(5, job.priority))) / 5  # priority 1 → 1.0, priority 5 → 0.2
    return (
        WEIGHTS["load"] * (t.capacity - load) / t.capacity,
        WEIGHTS["level"] * urgency * min(level, 5) / 5,
        WEIGHTS["continuity"] if job.previous and str(t.id) in job.previous else 0.0,
        WEIGHTS["affinity"] if job.region in t.regions else 0.0,
    )


def score(t: TechnicianView, job: Job, level: int) -> dict[str, float]:
    """The score's components by name; their sum decides among those who passed the filters."""
    return {name: round(v, 3) for name, v in zip(WEIGHTS, components(t, job, level), strict=True)}


@dataclass
class Decision:
    ranked: list[tuple[float, tuple[float, ...], TechnicianView]]  # (score, components, technician), best first
    excluded: dict[str, int]
    considered: int
    loads: dict[UUID, int] = field(default_factory=dict)  # each eligible technician's load when it was decided

    def load_of(self, t: TechnicianView) -> int:
        """The load the decision saw (not the live view, which counts this very job once it is taken)."""
        return self.loads.get(t.id, t.load)

    def explain(self, winner: TechnicianView | None = None) -> str:
        kept = len(self.ranked)
        filt = ", ".join(f"{k} -{v}" for k, v in self.excluded.items() if v)
        head = f"{self.considered} technicians considered; filters {filt or 'excluded none'}; {kept} eligible"
        for total, parts, t in self.ranked:
            if winner is None or t.id == winner.id:
                comps = ", ".join(f"{k} {round(v, 3):g}" for k, v in zip(WEIGHTS, parts, strict=True))
                return f"{head}; chose {t.id} with score {total:g} ({comps}; load {self.load_of(t)}/{t.capacity})"
        return head

    def candidates(self, limit: int = 5) -> list[CandidateRecord]:
        return [
            {"technician_id": str(t.id), "score": total, "load": self.load_of(t), "capacity": t.capacity}
            for total, _, t in self.ranked[:limit]
        ]


def rank_candidates(
    techs: Iterable[TechnicianView],
    job: Job,
    now: datetime,
    considered: int | None = None,
    salt: int = 0,
    pre_excluded: dict[str, int] | None = None,
) -> Decision:
    """Hard filters in order (counting whom each excludes), then the score, best first.

    ``techs`` may be pre-selected by an index (those holding the qualification at all);
    ``considered`` is then the whole workforce, and the difference counts as excluded by qualification.
    ``pre_excluded`` gives those counts when an index did filters already (by type and region).
    ``salt`` only reorders technicians whose score and load are equal.
    """
    excluded = dict.fromkeys(FILTERS, 0)
    pool = list(techs)
    total_considered = len(pool) if considered is None else considered
    if pre_excluded is not None:
        excluded.update(pre_excluded)
    else:
        excluded["qualification"] = total_considered - len(pool)
    entries: list[tuple[float, int, int, float, tuple[float, ...], TechnicianView]] = []
    for t in pool:
        level = t.qualified(job.service_type, now)
        if level is None:
            excluded["qualification"] += 1
        elif not t.serves(job.region):
            excluded["region"] += 1
        elif job.excluded and str(t.id) in job.excluded:
            excluded["declined"] += 1
        elif not t.on_shift(now):
            excluded["on_shift"] += 1
        elif (load := t.load) >= t.capacity:
            excluded["capacity"] += 1
        else:
            parts = components(t, job, level, load)
            total = round(sum(parts), 3)
            # equal scores: the lighter load, then an order of ids each instance salts differently
            entries.append((-total, load, t.id.int ^ salt, total, parts, t))
    entries.sort()
    return Decision(
        [(total, parts, t) for _, _, _, total, parts, t in entries],
        excluded,
        total_considered,
        {t.id: load for _, load, _, _, _, t in entries},
    )
