"""Service-level clock arithmetic: calendars, pauses, retargeting, thresholds (property-based)."""

from datetime import UTC, date, datetime, time, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from tsop_dispatch.sla import Calendar, Fact, Policy, Targets, clocks, due_thresholds, explain, next_due

BUSINESS = Calendar(
    "business",
    always=False,
    days=frozenset(range(5)),
    start=time(8),
    end=time(18),
    holidays=frozenset({date(2026, 6, 3)}),
)
H = 3600.0

moments = st.datetimes(min_value=datetime(2026, 5, 1), max_value=datetime(2026, 8, 1), timezones=st.just(UTC))
durations = st.floats(min_value=0, max_value=200 * H, allow_nan=False).map(lambda x: round(x, 3))


def targets(respond: float, resolve: float, cal: Calendar = BUSINESS) -> dict:
    return Targets(respond, resolve, cal, "test").spec()


@given(moments, durations)
def test_adding_clock_time_and_measuring_it_agree(t: datetime, seconds: float) -> None:
    end = BUSINESS.add(t, seconds)
    assert end >= t
    assert abs(BUSINESS.working_seconds(t, end) - seconds) < 1e-3


@given(moments, moments, moments)
def test_working_time_is_additive(a: datetime, b: datetime, c: datetime) -> None:
    a, b, c = sorted((a, b, c))
    total = BUSINESS.working_seconds(a, c)
    assert abs(total - BUSINESS.working_seconds(a, b) - BUSINESS.working_seconds(b, c)) < 1e-3
    assert total <= (c - a).total_seconds()


def test_business_hours_skip_nights_weekends_and_holidays() -> None:
    friday_17 = datetime(2026, 6, 5, 17, tzinfo=UTC)
    # one working hour left on Friday, then Monday 08:00 + 1 h
    assert BUSINESS.add(friday_17, 2 * H) == datetime(2026, 6, 8, 9, tzinfo=UTC)
    # Wednesday 3 June is a holiday: Tuesday 17:00 + 2 h → Thursday 09:00
    assert BUSINESS.add(datetime(2026, 6, 2, 17, tzinfo=UTC), 2 * H) == datetime(2026, 6, 4, 9, tzinfo=UTC)
    assert Calendar().add(friday_17, 2 * H) == friday_17 + timedelta(hours=2)


def test_a_pause_across_a_calendar_boundary_stops_the_clock() -> None:
    opened = datetime(2026, 6, 5, 16, tzinfo=UTC)  # Friday 16:00
    facts = [
        Fact(opened, "opened", {"targets": targets(1 * H, 10 * H)}),
        Fact(opened + timedelta(minutes=30), "accepted"),
        Fact(datetime(2026, 6, 5, 17, tzinfo=UTC), "paused", {"kind": "pending", "reason": "customer away"}),
        Fact(datetime(2026, 6, 8, 10, tzinfo=UTC), "resumed"),  # Monday 10:00
    ]
    now = datetime(2026, 6, 8, 12, tzinfo=UTC)
    out = explain(facts, now)
    resolve = out["resolve"]
    # Friday 16-17 runs (1 h), the pause swallows Friday 17-18 and Monday 08-10, Monday 10-12 runs (2 h)
    assert resolve["elapsed_seconds"] == 3 * H
    assert [s["state"] for s in resolve["segments"]] == ["running", "paused", "running"]
    assert resolve["segments"][1]["why"] == "pending: customer away"
    assert resolve["deadline"] == datetime(2026, 6, 9, 9, tzinfo=UTC).isoformat()  # 7 h left: Mon 12-18, Tue 08-09
    assert out["respond"]["state"] == "met" and out["respond"]["elapsed_seconds"] == 30 * 60


secs = st.integers(0, 50 * 3600)


@given(moments, st.integers(3600, 100 * 3600), secs, secs, secs)
@settings(max_examples=200)
def test_paused_time_never_counts(opened: datetime, target: int, run1: int, paused: int, run2: int) -> None:
    cal = Calendar()
    p = opened + timedelta(seconds=run1)
    r = p + timedelta(seconds=paused)
    now = r + timedelta(seconds=run2)
    facts = [
        Fact(opened, "opened", {"targets": targets(H, target, cal)}),
        Fact(p, "paused", {"kind": "held", "reason": "parts"}),
        Fact(r, "resumed"),
    ]
    resolve = clocks(facts)["resolve"]
    assert abs(resolve.elapsed(now) - (run1 + run2)) < 1e-3
    deadline = resolve.at_fraction(1.0, now)
    assert deadline is not None
    # a deadline reached before the pause stays where it was; a later one moves by the pause
    expected = target if target <= run1 else target + paused
    assert abs((deadline - opened).total_seconds() - expected) < 1e-3


@given(moments, st.floats(2 * H, 60 * H), st.floats(2 * H, 60 * H), st.floats(0, 1))
@settings(max_examples=200)
def test_a_policy_change_mid_flight_keeps_elapsed_time_and_moves_the_deadline(
    opened: datetime, old: float, new: float, when: float
) -> None:
    changed = BUSINESS.add(opened, when * old)
    base = [Fact(opened, "opened", {"targets": targets(H, old)})]
    after = [*base, Fact(changed, "retargeted", {"targets": targets(H, new), "why": "priority 3 → 1"})]
    now = changed
    before_c, after_c = clocks(base)["resolve"], clocks(after)["resolve"]
    assert abs(before_c.elapsed(now) - after_c.elapsed(now)) < 1e-6
    d_old, d_new = before_c.at_fraction(1.0, now), after_c.at_fraction(1.0, now)
    assert d_old is not None and d_new is not None
    moved = BUSINESS.working_seconds(min(d_old, d_new), max(d_old, d_new))
    assert abs(moved - abs(new - old)) < 1e-2
    assert "priority 3 → 1" in explain(after, now)["resolve"]["rule"]


def test_thresholds_are_due_once_each_and_never_after_the_clock_stopped() -> None:
    opened = datetime(2026, 6, 1, 0, tzinfo=UTC)
    facts = [Fact(opened, "opened", {"targets": targets(H, 4 * H, Calendar())})]
    assert due_thresholds(facts, set(), opened + timedelta(minutes=44)) == []
    assert next_due(facts, set(), opened) == opened + timedelta(minutes=45)  # respond warning
    due = due_thresholds(facts, set(), opened + timedelta(hours=3))
    assert [(c, lvl) for c, lvl, _ in due] == [("respond", "warning"), ("respond", "breach"), ("resolve", "warning")]
    crossed = {(c, lvl) for c, lvl, _ in due}
    assert next_due(facts, crossed, opened + timedelta(hours=3)) == opened + timedelta(hours=4)
    facts.append(Fact(opened + timedelta(hours=3, minutes=30), "resolved"))
    assert due_thresholds(facts, crossed, opened + timedelta(hours=9)) == []
    assert next_due(facts, crossed, opened + timedelta(hours=9)) is None


def test_the_policy_file_is_data_installations_in_working_hours_faults_around_the_clock() -> None:
    policy = Policy.load()
    fault = policy.targets_for("broadband.fault_repair", 2, peak=False)
    assert fault.calendar.always and fault.resolve_seconds == 24 * H
    assert policy.targets_for("broadband.fault_repair", 2, peak=True).resolve_seconds == 48 * H
    install = policy.targets_for("broadband.installation", 3, peak=False)
    assert not install.calendar.always and date(2026, 12, 25) in install.calendar.holidays
    assert policy.resources_for("broadband.installation") == ["ont"]
