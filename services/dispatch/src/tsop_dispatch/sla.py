"""Service-level clocks (§3.2): calendars, targets and the clock arithmetic. Pure, no I/O.

A clock is computed from a work order's own facts (opened, accepted, paused,
resumed, retargeted, resolved, reopened), so replaying the events gives the same answer.
Times are UTC; a business calendar's hours are UTC hours.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, TypedDict

WARNING, BREACH = 0.75, 1.0
LEVELS: tuple[tuple[str, float], ...] = (("warning", WARNING), ("breach", BREACH))
MAX_DAYS = 3660  # a deadline further than ten years of working days away is a configuration error


class CalendarSpec(TypedDict):
    """A calendar as events record it."""

    name: str
    always: bool
    days: list[int]
    start: str
    end: str
    holidays: list[str]


class TargetsSpec(TypedDict):
    """A work order's targets as events record them (``Targets.spec``)."""

    respond_seconds: float
    resolve_seconds: float
    calendar: CalendarSpec
    rule: str
    peak: bool


@dataclass(frozen=True)
class Calendar:
    """When a clock runs: around the clock, or working hours on working days minus holidays."""

    name: str = "24x7"
    always: bool = True
    days: frozenset[int] = frozenset(range(5))  # Monday = 0
    start: time = time(8, 0)
    end: time = time(18, 0)
    holidays: frozenset[date] = frozenset()

    def __post_init__(self) -> None:
        if not self.always and (not self.days or self.start >= self.end):
            raise ValueError(f"calendar {self.name}: needs working days and start < end")

    def spec(self) -> CalendarSpec:
        """What an event records, so a replay never depends on today's configuration."""
        return {
            "name": self.name,
            "always": self.always,
            "days": sorted(self.days),
            "start": self.start.isoformat("minutes"),
            "end": self.end.isoformat("minutes"),
            "holidays": sorted(d.isoformat() for d in self.holidays),
        }

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Calendar:
        return cls(
            name=str(spec.get("name", "calendar")),
            always=bool(spec.get("always", False)),
            days=frozenset(int(d) for d in spec.get("days", range(5))),
            start=time.fromisoformat(spec.get("start", "08:00")),
            end=time.fromisoformat(spec.get("end", "18:00")),
            holidays=frozenset(date.fromisoformat(d) for d in spec.get("holidays", [])),
        )

    def _window(self, day: date, tz: Any) -> tuple[datetime, datetime] | None:
        if day.weekday() not in self.days or day in self.holidays:
            return None
        return datetime.combine(day, self.start, tz), datetime.combine(day, self.end, tz)

    def working_seconds(self, a: datetime, b: datetime) -> float:
        """Seconds of clock time between ``a`` and ``b``."""
        if b <= a:
            return 0.0
        if self.always:
            return (b - a).total_seconds()
        total = 0.0
        day = a.date()
        while day <= b.date():
            w = self._window(day, a.tzinfo)
            if w is not None:
                s, e = max(a, w[0]), min(b, w[1])
                if e > s:
                    total += (e - s).total_seconds()
            day += timedelta(days=1)
        return total

    def add(self, t: datetime, seconds: float) -> datetime:
        """The moment ``seconds`` of clock time after ``t``."""
        if seconds <= 0:
            return t
        if self.always:
            return t + timedelta(seconds=seconds)
        day = t.date()
        for _ in range(MAX_DAYS):
            w = self._window(day, t.tzinfo)
            if w is not None:
                s = max(t, w[0])
                if s < w[1]:
                    available = (w[1] - s).total_seconds()
                    if seconds <= available:
                        return s + timedelta(seconds=seconds)
                    seconds -= available
            day += timedelta(days=1)
        raise ValueError(f"calendar {self.name}: no working time within {MAX_DAYS} days")


@dataclass(frozen=True)
class Targets:
    """What one ticket is held to: seconds of clock time to respond and to resolve, on a calendar."""

    respond_seconds: float
    resolve_seconds: float
    calendar: Calendar
    rule: str  # which policy row gave them (the explanation names it)
    peak: bool = False  # the peak norm applied

    def spec(self) -> TargetsSpec:
        return {
            "respond_seconds": self.respond_seconds,
            "resolve_seconds": self.resolve_seconds,
            "calendar": self.calendar.spec(),
            "rule": self.rule,
            "peak": self.peak,
        }

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Targets:
        return cls(
            float(spec["respond_seconds"]),
            float(spec["resolve_seconds"]),
            Calendar.from_spec(spec["calendar"]),
            str(spec.get("rule", "")),
            bool(spec.get("peak", False)),
        )


@dataclass(frozen=True)
class Policy:
    """Targets per service type and priority (data: ``sla_policy.json``), and the peak norm."""

    calendars: dict[str, Calendar]
    type_calendars: list[tuple[str, str]]  # (service-type pattern, calendar name), first match wins
    targets: list[tuple[str, dict[int, tuple[float, float]]]]  # (pattern, priority → (respond h, resolve h))
    peak_resolve_hours: float = 48.0
    norm_resolve_hours: float = 24.0
    version: str = "1"
    resources: dict[str, list[str]] = field(default_factory=dict)  # service type → resource kinds it reserves

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Policy:
        calendars = {name: Calendar.from_spec({"name": name, **spec}) for name, spec in raw["calendars"].items()}
        type_calendars = [(str(p), str(c)) for p, c in raw["type_calendars"].items()]
        for p, c in type_calendars:
            if c not in calendars:
                raise ValueError(f"type_calendars[{p}]: unknown calendar {c}")
        targets = [
            (str(p), {int(pr): (float(v["respond_hours"]), float(v["resolve_hours"])) for pr, v in rows.items()})
            for p, rows in raw["targets"].items()
        ]
        return cls(
            calendars,
            type_calendars,
            targets,
            float(raw.get("peak_resolve_hours", 48)),
            float(raw.get("norm_resolve_hours", 24)),
            str(raw.get("version", "1")),
            {str(k): [str(x) for x in v] for k, v in raw.get("resources", {}).items()},
        )

    @classmethod
    def load(cls, path: Path | None = None) -> Policy:
        path = path or Path(__file__).with_name("sla_policy.json")
        return cls.from_dict(json.loads(path.read_text()))

    def resources_for(self, service_type: str) -> list[str]:
        return list(self.resources.get(service_type, []))

    def targets_for(self, service_type: str, priority: int, peak: bool) -> Targets:
        cal_name = next((c for p, c in self.type_calendars if fnmatch(service_type, p)), "24x7")
        calendar = self.calendars.get(cal_name, Calendar())
        for pattern, rows in self.targets:
            if fnmatch(service_type, pattern) and rows:
                pr = priority if priority in rows else min(rows, key=lambda k: abs(k - priority))
                respond_h, resolve_h = rows[pr]
                rule = f"v{self.version} {pattern} priority {pr}"
                if peak and resolve_h >= self.norm_resolve_hours:
                    # at peak the standard's norm stretches (24 h → 48 h); tighter targets stay
                    resolve_h = resolve_h * self.peak_resolve_hours / self.norm_resolve_hours
                    rule += " (peak)"
                return Targets(respond_h * 3600, resolve_h * 3600, calendar, rule, peak)
        raise ValueError(f"no SLA target for service type {service_type}")


@dataclass(frozen=True)
class Fact:
    """One thing that happened to a ticket's clocks."""

    at: datetime
    kind: str  # opened | accepted | paused | resumed | retargeted | resolved | reopened | assigned | declined
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Segment:
    start: datetime
    end: datetime | None
    state: str  # running | paused
    why: str

    def view(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat() if self.end else None,
            "state": self.state,
            "why": self.why,
        }


@dataclass
class ClockState:
    name: str  # respond | resolve
    target_seconds: float
    calendar: Calendar
    rule: str
    segments: list[Segment]
    stopped_at: datetime | None
    stopped_by: str | None

    def elapsed(self, now: datetime) -> float:
        total = 0.0
        for s in self.segments:
            if s.state == "running":
                end = min(s.end or now, now)
                total += self.calendar.working_seconds(s.start, end)
        return total

    @property
    def running(self) -> bool:
        return self.stopped_at is None and bool(self.segments) and self.segments[-1].state == "running"

    def at_fraction(self, fraction: float, now: datetime) -> datetime | None:
        """When the clock reaches (or reached) ``fraction`` of its target; None while paused or stopped short."""
        needed, acc = fraction * self.target_seconds, 0.0
        for s in self.segments:
            if s.state != "running":
                continue
            if s.end is None:
                return self.calendar.add(s.start, needed - acc)
            length = self.calendar.working_seconds(s.start, s.end)
            if acc + length >= needed - 1e-5:  # a microsecond of rounding is not a missed deadline
                return self.calendar.add(s.start, needed - acc)
            acc += length
        return None

    def held(self, fraction: float, now: datetime) -> datetime | None:
        """When ``fraction`` of the target was (or is) due: for a stopped clock, the moment that held when it stopped.

        A clock stopped short of the fraction would have reached it had it kept running from where it
        stopped; a clock that reached it before stopping reached it then.
        """
        at = self.at_fraction(fraction, now)
        if at is not None or self.stopped_at is None:
            return at
        return self.calendar.add(self.stopped_at, fraction * self.target_seconds - self.elapsed(self.stopped_at))

    def explain(self, now: datetime) -> dict[str, Any]:
        end = self.stopped_at or now
        elapsed = self.elapsed(end)
        deadline = self.held(BREACH, now)
        remaining = self.target_seconds - elapsed
        met: bool | None = None
        if self.stopped_at is not None:
            met = remaining >= 0
            state = "met" if met else "breached"
        else:
            state = self.segments[-1].state if self.segments else "not_started"
        return {
            "clock": self.name,
            "state": state,
            "rule": self.rule,
            "calendar": self.calendar.name,
            "target_seconds": self.target_seconds,
            "elapsed_seconds": round(elapsed, 3),
            "remaining_seconds": round(max(remaining, 0.0), 3),
            "overrun_seconds": round(max(-remaining, 0.0), 3),
            "percent": round(100.0 * elapsed / self.target_seconds, 2) if self.target_seconds else None,
            "deadline": deadline.isoformat() if deadline else None,
            "warning_at": (w.isoformat() if (w := self.held(WARNING, now)) else None),
            "met": met,
            "stopped_at": self.stopped_at.isoformat() if self.stopped_at else None,
            "stopped_by": self.stopped_by,
            "segments": [s.view() for s in self.segments],
        }


def clocks(facts: list[Fact]) -> dict[str, ClockState]:
    """Both clocks of a ticket from its facts, in order."""
    out: dict[str, ClockState] = {}
    for f in facts:
        if f.kind == "opened":
            t = Targets.from_spec(f.data["targets"])
            for name, seconds in (("respond", t.respond_seconds), ("resolve", t.resolve_seconds)):
                out[name] = ClockState(
                    name, seconds, t.calendar, t.rule, [Segment(f.at, None, "running", "open")], None, None
                )
        elif f.kind == "retargeted":
            t = Targets.from_spec(f.data["targets"])
            for name, seconds in (("respond", t.respond_seconds), ("resolve", t.resolve_seconds)):
                c = out[name]
                c.target_seconds, c.calendar, c.rule = seconds, t.calendar, f"{t.rule} ({f.data.get('why', 'changed')})"
        elif f.kind in ("paused", "resumed"):
            for c in out.values():
                if c.stopped_at is not None or not c.segments:
                    continue
                last = c.segments[-1]
                wanted = "paused" if f.kind == "paused" else "running"
                if last.state == wanted:
                    continue
                last.end = f.at
                why = f"{f.data.get('kind', '')}: {f.data.get('reason', '')}" if f.kind == "paused" else "resumed"
                c.segments.append(Segment(f.at, None, wanted, why))
        elif f.kind == "reopened":
            # the customer says it is not solved: the resolve clock runs on from where it stopped (the time
            # between the resolution and the reopening is not counted); the respond clock stays as it was
            again = out.get("resolve")
            if again is not None and again.stopped_at is not None and again.stopped_by == "resolved":
                again.stopped_at, again.stopped_by = None, None
                again.segments.append(Segment(f.at, None, "running", f"reopened: {f.data.get('reason', '')}"))
        elif f.kind in ("accepted", "resolved", "withdrawn"):
            names = ("respond",) if f.kind == "accepted" else ("respond", "resolve")
            for name in names:
                stopping = out.get(name)
                if stopping is not None and stopping.stopped_at is None:
                    stopping.segments[-1].end = f.at
                    stopping.stopped_at, stopping.stopped_by = f.at, f.kind
    return out


def explain(facts: list[Fact], now: datetime) -> dict[str, Any]:
    return {name: c.explain(now) for name, c in clocks(facts).items()}


def due_thresholds(facts: list[Fact], crossed: set[tuple[str, str]], now: datetime) -> list[tuple[str, str, float]]:
    """The (clock, level, elapsed) thresholds reached by ``now`` and not yet recorded, in order."""
    out: list[tuple[str, str, float]] = []
    for name, c in clocks(facts).items():
        if c.stopped_at is not None:
            continue  # a stopped clock never crosses anything later
        elapsed = c.elapsed(now)
        for level, fraction in LEVELS:
            if (name, level) not in crossed and elapsed >= fraction * c.target_seconds - 1e-6:
                out.append((name, level, elapsed))
    return out


def next_due(facts: list[Fact], crossed: set[tuple[str, str]], now: datetime) -> datetime | None:
    """The earliest moment a threshold not yet recorded will be reached (None: no running clock)."""
    times: list[datetime] = []
    for name, c in clocks(facts).items():
        if c.stopped_at is not None:
            continue
        for level, fraction in LEVELS:
            if (name, level) not in crossed and (t := c.at_fraction(fraction, now)) is not None:
                times.append(t)
    return min(times) if times else None
