"""The statistics of §7.3, pure: each ticket's facts folded from its events, and the figures computed from them.

Everything here is derived from what the topics carry, so an analytics consumer of the topics computes the
same figures: ``fold`` reads an event as its JSON body (``type`` and ``data``), as any consumer would, and
``figures``/``scorecards`` are the reference definitions the SQL of ``projection`` must agree with (a
property test holds them together). No I/O.

Definitions (the README's statistics section says the same in words):

* a ticket counts in the period of its submission (a cohort): its acceptance, times, SLA, rating, reopening
  and first-time fix belong to the day, week or month it was submitted in; complaints count by when they
  were filed, incidents by when they were declared, the backlog at the end of each period;
* self-service channels are the online platform, ``web`` and ``app`` (§2.1, about 70 % of applications);
  ``hotline`` and ``onsite`` are manual;
* time to assign: submission → first assignment; time to resolve: submission → first resolution; p50 and
  p90 interpolate linearly between the two nearest values (PostgreSQL's ``percentile_cont``);
* SLA compliance per clock (respond, resolve): of the tickets whose clock was decided (responded to, or
  resolved, or breached), the share never breached;
* rating response rate: tickets rated / tickets whose rating was asked for (FeedbackSent);
* reopen rate and first-time fix: of the resolved tickets, the share reopened, and the share resolved by
  their first assignment without ever being reopened;
* backlog at an instant: tickets submitted by then that were not yet resolved, rejected, cancelled or
  linked (a reopened ticket is open again from its reopening: its ``ended_at`` moves to its last resolution);
* a technician's utilisation: the time work orders were held (assignment → resolution, decline or
  reassignment), overlapping the range, over capacity x the range's length.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from tsop_events import schemas as wire
from tsop_events.errors import Invalid

Granularity = Literal["day", "week", "month"]
GRANULARITIES: tuple[Granularity, ...] = ("day", "week", "month")
SELF_SERVICE = frozenset({"web", "app"})
SCORES = (1, 2, 3, 4, 5)
DIMENSIONS = ("channel", "service_type", "region", "priority")

T = "tsop.ticket."
SUBMITTED, ACCEPTED, REJECTED = f"{T}request-submitted.v1", f"{T}request-accepted.v1", f"{T}request-rejected.v1"
CANCELLED, LINKED, UPDATED = f"{T}request-cancelled.v1", f"{T}request-linked.v1", f"{T}request-updated.v1"
ASSIGNED, ASSIGNMENT_ACCEPTED = f"{T}assigned.v1", f"{T}assignment-accepted.v1"
DECLINED, STARTED, RESOLVED = f"{T}assignment-declined.v1", f"{T}work-started.v1", f"{T}resolved.v1"
SLA_CROSSED, FEEDBACK_SENT, RATED, CLOSED = (
    f"{T}sla-threshold-crossed.v1", f"{T}feedback-sent.v1", f"{T}rated.v1", f"{T}closed.v1"
)
TICKET_TYPES = frozenset({
    SUBMITTED, ACCEPTED, REJECTED, CANCELLED, LINKED, UPDATED, ASSIGNED, ASSIGNMENT_ACCEPTED, DECLINED, STARTED,
    RESOLVED, SLA_CROSSED, FEEDBACK_SENT, RATED, CLOSED,
})
# events other chapters add: recognised by name, whatever their version, so the statistics need no change
REOPENED = re.compile(r"^tsop\.ticket\.reopened\.v\d+$")
COMPLAINT_FILED = re.compile(r"^tsop\.complaints?\.(complaint-)?(filed|lodged|received|opened|raised|submitted)\.v\d+$")
INCIDENT_DECLARED = re.compile(r"^tsop\.incidents?\.(incident-)?declared\.v\d+$")
INCIDENT_RESTORED = re.compile(r"^tsop\.incidents?\.(incident-)?(service-)?(restored|resolved)\.v\d+$")
INCIDENT_RESCOPED = re.compile(r"^tsop\.incidents?\.(incident-)?severity-changed\.v\d+$")  # a new scope


COMPLAINT_LINKED = wire.ComplaintTicketLinked.event_type


def ticket_ids_of(data: Any) -> list[str]:
    """The tickets a complaint's body names: ``ticket_ids`` (``ComplaintReceived``), or one ``ticket_id``."""
    if not isinstance(data, dict):
        return []
    ids = data.get("ticket_ids")
    out = [t for t in ids if isinstance(t, str) and t] if isinstance(ids, list) else []
    one = data.get("ticket_id")
    if isinstance(one, str) and one and one not in out:
        out.append(one)
    return out


def tolerated(event_type: str) -> bool:
    """An event of another chapter the statistics read by its name."""
    return event_type == COMPLAINT_LINKED or any(
        p.match(event_type)
        for p in (REOPENED, COMPLAINT_FILED, INCIDENT_DECLARED, INCIDENT_RESTORED, INCIDENT_RESCOPED)
    )


def wanted(known: Iterable[str]) -> frozenset[str]:
    """Of the event types the platform knows, those the statistics read."""
    return frozenset(t for t in known if t in TICKET_TYPES or tolerated(t))


def moment(value: Any, fallback: datetime) -> datetime:
    """An ISO 8601 instant of a body (UTC if it names no zone), or ``fallback``."""
    if isinstance(value, str):
        try:
            t = datetime.fromisoformat(value)
        except ValueError:
            return fallback
        return t if t.tzinfo else t.replace(tzinfo=UTC)
    return fallback


@dataclass
class Assignment:
    """One technician holding one work order, from assignment to its end."""

    n: int
    work_order_id: str
    technician_id: str
    assigned_at: datetime
    ended_at: datetime | None = None
    outcome: str | None = None  # resolved | declined | reassigned | closed


@dataclass
class TicketFacts:
    """What the statistics know of one ticket: no personal data (no customer, address or free text)."""

    ticket_id: str
    channel: str | None = None
    service_type: str | None = None
    region: str | None = None
    priority: int | None = None
    submitted_at: datetime | None = None
    accepted_at: datetime | None = None
    rejected_at: datetime | None = None
    reject_reason: str | None = None
    cancelled_at: datetime | None = None
    linked_at: datetime | None = None
    first_assigned_at: datetime | None = None
    responded_at: datetime | None = None
    resolved_at: datetime | None = None
    ended_at: datetime | None = None
    closed_at: datetime | None = None
    resolutions: int = 0
    reopens: int = 0
    respond_breached: bool = False
    resolve_breached: bool = False
    feedback_sent_at: datetime | None = None
    rated_at: datetime | None = None
    score: int | None = None
    first_fix: bool = False
    resolved_by: str | None = None
    assignments: list[Assignment] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)  # the ids of the events folded in: a republished one is not

    @property
    def time_to_assign(self) -> float | None:
        return _seconds(self.submitted_at, self.first_assigned_at)

    @property
    def time_to_resolve(self) -> float | None:
        return _seconds(self.submitted_at, self.resolved_at)


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else (end - start).total_seconds()


def _end_open(facts: TicketFacts, at: datetime, outcome: str, work_order: str | None = None) -> None:
    for a in facts.assignments:
        if a.ended_at is None and (work_order is None or a.work_order_id == work_order):
            a.ended_at, a.outcome = at, outcome


def fold(facts: TicketFacts, event_type: str, data: Mapping[str, Any], at: datetime,
         in_place: bool = False) -> TicketFacts:
    """The ticket's facts after one of its events (its JSON body); ``at`` is the envelope's time, used only
    when the body names no instant. Events of types the statistics do not read change nothing. ``facts`` is
    left as it was, unless ``in_place`` (a rebuild that owns every fact it folds: no copy per event)."""
    f = facts if in_place else replace(facts, assignments=[replace(a) for a in facts.assignments])

    def when(name: str) -> datetime:
        return moment(data.get(name), at)

    if event_type == SUBMITTED:
        f.channel, f.submitted_at = str(data.get("channel")), when("submitted_at")
        f.service_type = f.service_type or str(data.get("service_type"))
        f.region = f.region or (str(data.get("region") or "") or None)
    elif event_type == UPDATED:
        changes = data.get("changes") or {}
        for name in ("region", "service_type"):
            if isinstance(changes, dict) and isinstance(changes.get(name), str) and changes[name]:
                setattr(f, name, changes[name])
    elif event_type == ACCEPTED:
        f.accepted_at = when("accepted_at")
        f.service_type, f.region = str(data.get("service_type")), str(data.get("region"))
        f.priority = int(data["priority"]) if isinstance(data.get("priority"), int) else None
    elif event_type == REJECTED:
        f.rejected_at, f.reject_reason = when("rejected_at"), str(data.get("reason_code"))
        f.ended_at = f.ended_at or f.rejected_at
    elif event_type == CANCELLED:
        f.cancelled_at = when("cancelled_at")
        f.ended_at = f.ended_at or f.cancelled_at
        _end_open(f, f.cancelled_at, "closed")
    elif event_type == LINKED:
        f.linked_at = when("linked_at")
        f.ended_at = f.ended_at or f.linked_at
    elif event_type == ASSIGNED:
        t = when("assigned_at")
        wo = str(data.get("work_order_id"))
        _end_open(f, t, "reassigned", wo)
        f.assignments.append(Assignment(len(f.assignments), wo, str(data.get("technician_id")), t))
        f.first_assigned_at = f.first_assigned_at or t
    elif event_type in (ASSIGNMENT_ACCEPTED, STARTED):
        f.responded_at = f.responded_at or when("accepted_at" if event_type == ASSIGNMENT_ACCEPTED else "started_at")
    elif event_type == DECLINED:
        _end_open(f, when("declined_at"), "declined", str(data.get("work_order_id")))
    elif event_type == RESOLVED:
        t = when("resolved_at")
        _end_open(f, t, "resolved", str(data.get("work_order_id")))
        f.resolutions += 1
        if f.resolved_at is None:
            f.resolved_at, f.resolved_by = t, str(data.get("technician_id"))
            f.first_fix = len(f.assignments) == 1
        f.ended_at = t
    elif event_type == SLA_CROSSED:
        if data.get("level") == "breach":
            if data.get("target") == "respond":
                f.respond_breached = True
            elif data.get("target") == "resolve":
                f.resolve_breached = True
    elif event_type == FEEDBACK_SENT:
        f.feedback_sent_at = f.feedback_sent_at or when("sent_at")
    elif event_type == RATED:
        f.rated_at = f.rated_at or when("rated_at")
        if f.score is None and isinstance(data.get("score"), int):
            f.score = int(data["score"])
    elif event_type == CLOSED:
        f.closed_at = when("closed_at")
        _end_open(f, f.closed_at, "closed")
    elif REOPENED.match(event_type):
        f.reopens += 1
        f.first_fix = False
        f.ended_at = None
    return f


def fold_once(facts: TicketFacts, event_id: str, event_type: str, data: Mapping[str, Any], at: datetime) -> TicketFacts:
    """``fold``, once per event id: the same event delivered again (a republish) changes nothing."""
    if event_id in facts.seen:
        return facts
    f = fold(facts, event_type, data, at)
    f.seen = [*facts.seen, event_id]
    return f


def fold_all(events: Iterable[tuple[str, str, str, Mapping[str, Any], datetime]]) -> dict[str, TicketFacts]:
    """Every ticket's facts from (ticket id, event id, type, body, envelope time), in each ticket's order."""
    out: dict[str, TicketFacts] = {}
    for ticket, event_id, event_type, data, at in events:
        out[ticket] = fold_once(out.get(ticket) or TicketFacts(ticket), event_id, event_type, data, at)
    return out


@dataclass(frozen=True)
class Complaint:
    """A complaint as the statistics count it: when it was received, and the tickets it is about (those
    ``ComplaintReceived.ticket_ids`` named, and any ``ComplaintTicketLinked`` later)."""

    complaint_id: str
    ticket_ids: tuple[str, ...]
    filed_at: datetime


@dataclass(frozen=True)
class Incident:
    incident_id: str
    declared_at: datetime | None
    restored_at: datetime | None
    regions: frozenset[str] = frozenset()  # every region its scope named (declared, or widened later)
    services: frozenset[str] = frozenset()  # every affected service type its scope named


# --- the question: a range, a granularity, filters ---


@dataclass(frozen=True)
class Filters:
    channel: str | None = None
    service_type: str | None = None
    region: str | None = None
    priority: int | None = None

    def admits(self, f: TicketFacts) -> bool:
        return all(getattr(self, d) is None or getattr(self, d) == getattr(f, d) for d in DIMENSIONS)

    @property
    def empty(self) -> bool:
        return all(getattr(self, d) is None for d in DIMENSIONS)

    def admits_incident(self, i: Incident) -> bool:
        """An incident counts under a region or service-type filter when its scope named that region (or every
        region, ``*``) or service type; channel and priority are a ticket's, not an outage's: they filter none."""
        return (self.region is None or self.region in i.regions or "*" in i.regions) and (
            self.service_type is None or self.service_type in i.services)


MAX_BUCKETS = 1100


@dataclass(frozen=True)
class Question:
    start: datetime
    end: datetime
    granularity: Granularity = "day"
    filters: Filters = Filters()
    periods: bool = True  # a series of periods is asked for (a report): at most MAX_BUCKETS of them

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise Invalid("must name its time zone (e.g. 2026-06-01T00:00:00Z)", "from")
        if self.end <= self.start:
            raise Invalid("must be after `from`", "to")
        if self.periods and len(buckets(self.start, self.end, self.granularity)) > MAX_BUCKETS:
            raise Invalid(f"more than {MAX_BUCKETS} periods: choose a coarser granularity", "granularity")


def floor(t: datetime, g: Granularity) -> datetime:
    """The start (UTC) of the period ``t`` falls in: the day, the ISO week (Monday), the month."""
    t = t.astimezone(UTC)
    d = t.date()
    if g == "week":
        d -= timedelta(days=d.weekday())
    elif g == "month":
        d = d.replace(day=1)
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def step(t: datetime, g: Granularity) -> datetime:
    if g == "day":
        return t + timedelta(days=1)
    if g == "week":
        return t + timedelta(days=7)
    return datetime(t.year + t.month // 12, t.month % 12 + 1, 1, tzinfo=UTC)


def buckets(start: datetime, end: datetime, g: Granularity) -> list[datetime]:
    """The starts of the periods that meet [start, end)."""
    out, t = [], floor(start, g)
    while t < end:
        out.append(t)
        t = step(t, g)
        if len(out) > MAX_BUCKETS:
            break
    return out


# --- the figures ---


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """Linear interpolation between the closest ranks (PostgreSQL's ``percentile_cont``)."""
    if not ordered:
        return None
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True)
class Durations:
    count: int
    mean: float | None
    p50: float | None
    p90: float | None

    @classmethod
    def of(cls, values: Iterable[float]) -> Durations:
        v = sorted(values)
        return cls(len(v), math.fsum(v) / len(v) if v else None, percentile(v, 0.5), percentile(v, 0.9))


def ratio(part: int, whole: int) -> float | None:
    return None if whole == 0 else part / whole


@dataclass(frozen=True)
class Compliance:
    measured: int
    met: int

    @property
    def rate(self) -> float | None:
        return ratio(self.met, self.measured)


@dataclass(frozen=True)
class Figures:
    """The figures of one period (or of the whole range)."""

    start: datetime
    submitted: int
    accepted: int
    rejected: int
    cancelled: int
    linked: int
    resolved: int
    closed: int
    self_service: int
    manual: int
    by_channel: dict[str, int]
    by_service_type: dict[str, int]
    by_region: dict[str, int]
    by_priority: dict[str, int]
    rejections_by_reason: dict[str, int]
    time_to_assign: Durations
    time_to_resolve: Durations
    sla_respond: Compliance
    sla_resolve: Compliance
    rating_asked: int
    rated: int
    scores: dict[str, int]
    mean_score: float | None
    reopened: int
    first_time_fixed: int
    complaints: int
    backlog: int
    incidents_declared: int
    time_to_restore: Durations

    @property
    def self_service_share(self) -> float | None:
        return ratio(self.self_service, self.self_service + self.manual)

    @property
    def acceptance_rate(self) -> float | None:
        return ratio(self.accepted, self.accepted + self.rejected)

    @property
    def rating_response_rate(self) -> float | None:
        return ratio(self.rated, self.rating_asked)

    @property
    def reopen_rate(self) -> float | None:
        return ratio(self.reopened, self.resolved)

    @property
    def first_time_fix_rate(self) -> float | None:
        return ratio(self.first_time_fixed, self.resolved)

    @property
    def complaint_rate(self) -> float | None:
        return ratio(self.complaints, self.submitted)


def _count(values: Iterable[str | None]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        if v is not None:
            out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def backlog_at(tickets: Iterable[TicketFacts], t: datetime) -> int:
    return sum(
        1 for f in tickets
        if f.submitted_at is not None and f.submitted_at < t and (f.ended_at is None or f.ended_at >= t)
    )


def period_figures(
    start: datetime, end: datetime, tickets: Sequence[TicketFacts], complaints: Sequence[Complaint],
    incidents: Sequence[Incident], filtered: bool,
) -> Figures:
    """The figures of [start, end): ``tickets`` are those the filters admit (any submission time); when
    ``filtered``, a complaint counts only if it names one of them."""
    cohort = [f for f in tickets if f.submitted_at is not None and start <= f.submitted_at < end]
    admitted = {f.ticket_id for f in tickets}
    filed = [c for c in complaints
             if start <= c.filed_at < end and (not filtered or not admitted.isdisjoint(c.ticket_ids))]
    declared = [i for i in incidents if i.declared_at is not None and start <= i.declared_at < end]
    resolved = [f for f in cohort if f.resolved_at is not None]
    rated = [f for f in cohort if f.score is not None]
    return Figures(
        start=start,
        submitted=len(cohort),
        accepted=sum(f.accepted_at is not None for f in cohort),
        rejected=sum(f.rejected_at is not None for f in cohort),
        cancelled=sum(f.cancelled_at is not None for f in cohort),
        linked=sum(f.linked_at is not None for f in cohort),
        resolved=len(resolved),
        closed=sum(f.closed_at is not None for f in cohort),
        self_service=sum(f.channel in SELF_SERVICE for f in cohort),
        manual=sum(f.channel not in SELF_SERVICE for f in cohort),
        by_channel=_count(f.channel for f in cohort),
        by_service_type=_count(f.service_type for f in cohort),
        by_region=_count(f.region for f in cohort),
        by_priority=_count(None if f.priority is None else str(f.priority) for f in cohort),
        rejections_by_reason=_count(f.reject_reason for f in cohort if f.rejected_at is not None),
        time_to_assign=Durations.of(v for f in cohort if (v := f.time_to_assign) is not None),
        time_to_resolve=Durations.of(v for f in cohort if (v := f.time_to_resolve) is not None),
        sla_respond=Compliance(
            sum(f.respond_breached or f.responded_at is not None for f in cohort),
            sum(not f.respond_breached and f.responded_at is not None for f in cohort),
        ),
        sla_resolve=Compliance(
            sum(f.resolve_breached or f.resolved_at is not None for f in cohort),
            sum(not f.resolve_breached and f.resolved_at is not None for f in cohort),
        ),
        rating_asked=sum(f.feedback_sent_at is not None for f in cohort),
        rated=len(rated),
        scores={str(s): sum(f.score == s for f in rated) for s in SCORES},
        mean_score=math.fsum(f.score or 0 for f in rated) / len(rated) if rated else None,
        reopened=sum(f.reopens > 0 for f in resolved),
        first_time_fixed=sum(f.first_fix for f in resolved),
        complaints=len(filed),
        backlog=backlog_at(tickets, end),
        incidents_declared=len(declared),
        time_to_restore=Durations.of(
            (i.restored_at - i.declared_at).total_seconds() for i in declared if i.restored_at and i.declared_at
        ),
    )


@dataclass(frozen=True)
class Report:
    question: Question
    total: Figures
    series: list[Figures]


def report(
    q: Question, tickets: Iterable[TicketFacts], complaints: Iterable[Complaint] = (),
    incidents: Iterable[Incident] = (),
) -> Report:
    """The reference computation: the whole range and each period, from every ticket's facts."""
    admitted = [f for f in tickets if q.filters.admits(f)]
    cs, filtered = list(complaints), not q.filters.empty
    inc = [i for i in incidents if q.filters.admits_incident(i)]
    starts = buckets(q.start, q.end, q.granularity)
    series = [
        period_figures(max(s, q.start), min(step(s, q.granularity), q.end), admitted, cs, inc, filtered)
        for s in starts
    ]
    return Report(q, period_figures(q.start, q.end, admitted, cs, inc, filtered), series)


@dataclass(frozen=True)
class Scorecard:
    """A technician's record over a range (§4.2, §6.3)."""

    technician_id: str
    assignments: int
    declined: int
    resolved: int
    time_to_resolve: Durations  # their assignment → their resolution
    rated: int
    mean_score: float | None
    first_time_fixed: int
    reopened: int
    busy_seconds: float
    capacity: int
    utilisation: float | None


def scorecards(
    q: Question, tickets: Iterable[TicketFacts], capacities: Mapping[str, int], now: datetime
) -> list[Scorecard]:
    """Per technician: assignments made and resolutions done within the range, and the time their work
    orders were held overlapping it (an assignment still held counts until ``now``)."""
    horizon = min(q.end, max(now, q.start))
    span = (q.end - q.start).total_seconds()
    rows: dict[str, dict[str, Any]] = {}
    for f in tickets:
        if not q.filters.admits(f):
            continue
        for a in f.assignments:
            r = rows.setdefault(a.technician_id, {"a": 0, "d": 0, "res": [], "busy": 0.0, "sc": [], "ftf": 0, "ro": 0})
            if q.start <= a.assigned_at < q.end:
                r["a"] += 1
                r["d"] += a.outcome == "declined"
            if a.outcome == "resolved" and a.ended_at is not None and q.start <= a.ended_at < q.end:
                r["res"].append((a.ended_at - a.assigned_at).total_seconds())
                if f.resolved_by == a.technician_id and f.resolved_at == a.ended_at:
                    r["ftf"] += f.first_fix
                    r["ro"] += f.reopens > 0
                    if f.score is not None:
                        r["sc"].append(f.score)
            lo, hi = max(a.assigned_at, q.start), min(a.ended_at or horizon, horizon)
            if hi > lo:
                r["busy"] += (hi - lo).total_seconds()
    out = []
    for tech, r in sorted(rows.items()):
        cap = capacities.get(tech, 1)
        out.append(Scorecard(
            technician_id=tech, assignments=r["a"], declined=r["d"], resolved=len(r["res"]),
            time_to_resolve=Durations.of(r["res"]), rated=len(r["sc"]),
            mean_score=math.fsum(r["sc"]) / len(r["sc"]) if r["sc"] else None,
            first_time_fixed=r["ftf"], reopened=r["ro"], busy_seconds=r["busy"], capacity=cap,
            utilisation=r["busy"] / (cap * span) if span > 0 else None,
        ))
    return [s for s in out if s.assignments or s.resolved or s.busy_seconds]



# --------------------------------------------------------------------------- per-day rollups (issue 13: figures)
# A month's report reads per-day cells, not every ticket: each ticket contributes to the cell of its submission
# day and dimensions (its counts, its durations, exactly: the values themselves, so percentiles stay exact), and
# to the cells of the days it ended and settled (the backlog). The read model keeps the cells in step with the
# tickets' facts: a change of a ticket's facts moves its contribution from the cell it was in to the one it is in.

CellKey = tuple[datetime, str | None, str | None, str | None, int | None]  # day, channel, service_type, region, prio
COUNTERS = (
    "submitted", "accepted", "rejected", "cancelled", "linked", "resolved", "closed", "self_service",
    "respond_measured", "respond_met", "resolve_measured", "resolve_met", "asked", "rated", "score_sum",
    "reopened", "first_time_fixed", "s1", "s2", "s3", "s4", "s5", "ended", "settled",
)


@dataclass
class Cell:
    """What some tickets add to one day's cell: counters, reasons of rejection, and the durations' values."""

    counts: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    assign: list[float] = field(default_factory=list)
    resolve: list[float] = field(default_factory=list)
    assign_gone: list[float] = field(default_factory=list)  # values to take out (a ticket left the cell)
    resolve_gone: list[float] = field(default_factory=list)

    def empty(self) -> bool:
        return not (any(self.counts.values()) or any(self.reasons.values()) or self.assign or self.resolve
                    or self.assign_gone or self.resolve_gone)


def day_of(t: datetime) -> datetime:
    """The UTC day an instant falls in (its midnight)."""
    u = t.astimezone(UTC)
    return datetime(u.year, u.month, u.day, tzinfo=UTC)


def contributions(f: TicketFacts) -> list[tuple[CellKey, Cell]]:
    """What one ticket adds to the cells: the SQL of the read model's report over tickets, per ticket (the
    counts of ``MAIN``, ``BREAKDOWN``, ``ENDED`` and the backlog's settling day)."""
    if f.submitted_at is None:
        return []
    dims = (f.channel, f.service_type, f.region, f.priority)
    c: dict[str, int] = {
        "submitted": 1, "accepted": f.accepted_at is not None, "rejected": f.rejected_at is not None,
        "cancelled": f.cancelled_at is not None, "linked": f.linked_at is not None,
        "resolved": f.resolved_at is not None, "closed": f.closed_at is not None,
        "self_service": f.channel in SELF_SERVICE,
        "respond_measured": f.respond_breached or f.responded_at is not None,
        "respond_met": not f.respond_breached and f.responded_at is not None,
        "resolve_measured": f.resolve_breached or f.resolved_at is not None,
        "resolve_met": not f.resolve_breached and f.resolved_at is not None,
        "asked": f.feedback_sent_at is not None, "rated": f.score is not None, "score_sum": f.score or 0,
        "reopened": f.resolved_at is not None and f.reopens > 0,
        "first_time_fixed": f.resolved_at is not None and f.first_fix,
    }
    if f.score in SCORES:
        c[f"s{f.score}"] = 1
    main = Cell({k: int(v) for k, v in c.items()}, {f.reject_reason: 1} if f.reject_reason is not None else {})
    a, r = f.time_to_assign, f.time_to_resolve
    main.assign = [] if a is None else [a]
    main.resolve = [] if r is None else [r]
    out: list[tuple[CellKey, Cell]] = [((day_of(f.submitted_at), *dims), main)]
    if f.ended_at is not None:
        out.append(((day_of(f.ended_at), *dims), Cell({"ended": 1})))
        out.append(((day_of(max(f.ended_at, f.submitted_at)), *dims), Cell({"settled": 1})))
    return out


def cell_deltas(before: Iterable[TicketFacts], after: Iterable[TicketFacts]) -> dict[CellKey, Cell]:
    """How the cells change when tickets' facts go from ``before`` to ``after``: the new contributions in, the
    old ones out. Cells that do not change are left out."""
    out: dict[CellKey, Cell] = {}
    for sign, facts in ((-1, before), (1, after)):
        for f in facts:
            for key, part in contributions(f):
                cell = out.setdefault(key, Cell())
                for k, v in part.counts.items():
                    cell.counts[k] = cell.counts.get(k, 0) + sign * v
                for k, v in part.reasons.items():
                    cell.reasons[k] = cell.reasons.get(k, 0) + sign * v
                for name in ("assign", "resolve"):
                    values: list[float] = getattr(part, name)
                    if not values:
                        continue
                    if sign > 0:
                        getattr(cell, name).extend(values)
                    else:
                        getattr(cell, f"{name}_gone").extend(values)
    for cell in out.values():  # a value taken out and put back into the same cell: no change
        for name in ("assign", "resolve"):
            added, gone = getattr(cell, name), getattr(cell, f"{name}_gone")
            for v in list(gone):
                if v in added:
                    added.remove(v)
                    gone.remove(v)
        cell.counts = {k: v for k, v in cell.counts.items() if v}
        cell.reasons = {k: v for k, v in cell.reasons.items() if v}
    return {k: v for k, v in out.items() if not v.empty()}


DURATION_KINDS = ("assign", "resolve")
ValueKey = tuple[datetime, str | None, str | None, str | None, int | None, str, float]  # cell, kind, value


def value_deltas(deltas: Mapping[CellKey, Cell]) -> dict[ValueKey, int]:
    """The cells' durations as counted values: how many occurrences of each value of each kind (``assign``,
    ``resolve``) a cell gains (> 0) or loses (< 0). What a batch writes is proportional to what it changes,
    never to how many values the cell holds. Values whose count does not change are left out."""
    out: dict[ValueKey, int] = {}
    for key, cell in deltas.items():
        for kind in DURATION_KINDS:
            for sign, values in ((1, getattr(cell, kind)), (-1, getattr(cell, f"{kind}_gone"))):
                for v in values:
                    k = (*key, kind, v)
                    out[k] = out.get(k, 0) + sign
    return {k: n for k, n in out.items() if n}
