"""The statistics' figures (§7.3): a worked example by hand, and streaming folds against a batch recomputation."""

from __future__ import annotations

import random
import statistics
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.stats_data import REOPENED, Raw, lifecycle
from tsop_archive.stats.domain import (
    Filters,
    Question,
    TicketFacts,
    buckets,
    fold_all,
    fold_once,
    percentile,
    report,
    scorecards,
    wanted,
)
from tsop_events import schemas as wire
from tsop_events.errors import Invalid

D0 = datetime(2026, 6, 1, tzinfo=UTC)
H = timedelta(hours=1)


def ev(ticket: str, n: int, event_type: str, at: datetime, **body: object) -> Raw:
    field = {
        wire.RequestSubmitted.event_type: "submitted_at", wire.RequestAccepted.event_type: "accepted_at",
        wire.RequestRejected.event_type: "rejected_at", wire.Assigned.event_type: "assigned_at",
        wire.AssignmentAccepted.event_type: "accepted_at", wire.Resolved.event_type: "resolved_at",
        wire.FeedbackSent.event_type: "sent_at", wire.Rated.event_type: "rated_at",
        wire.SlaThresholdCrossed.event_type: "crossed_at", REOPENED: "reopened_at",
    }[event_type]
    return ticket, f"{ticket}-{n}", event_type, {"ticket_id": ticket, **body, field: at.isoformat()}, at


def worked_example() -> list[Raw]:
    """Four tickets on 1 June, one on 2 June."""
    out: list[Raw] = []
    sub, acc, asg, ok, res = (wire.RequestSubmitted.event_type, wire.RequestAccepted.event_type,
                              wire.Assigned.event_type, wire.AssignmentAccepted.event_type, wire.Resolved.event_type)
    for i, (channel, assign_h, resolve_h) in enumerate([("web", 1, 10), ("app", 2, 20), ("hotline", 4, 40)]):
        t = f"t{i}"
        out += [
            ev(t, 0, sub, D0 + H, channel=channel, service_type="bb", region="north"),
            ev(t, 1, acc, D0 + 1.5 * H, service_type="bb", region="north", priority=2),
            ev(t, 2, asg, D0 + (1 + assign_h) * H, work_order_id=f"w{i}", technician_id="tech-a"),
            ev(t, 3, ok, D0 + (1.2 + assign_h) * H, work_order_id=f"w{i}", technician_id="tech-a"),
            ev(t, 4, res, D0 + (1 + resolve_h) * H, work_order_id=f"w{i}", technician_id="tech-a"),
            ev(t, 5, wire.FeedbackSent.event_type, D0 + (1 + resolve_h) * H),
        ]
    out.append(ev("t0", 6, wire.Rated.event_type, D0 + 30 * H, score=5))
    out.append(ev("t1", 6, wire.Rated.event_type, D0 + 40 * H, score=2))
    out.append(ev("t2", 6, REOPENED, D0 + 50 * H))
    out.append(ev("t1", 7, wire.SlaThresholdCrossed.event_type, D0 + 15 * H, target="resolve", level="breach"))
    out.append(ev("t3", 0, sub, D0 + 2 * H, channel="web", service_type="bb", region="south"))
    out.append(ev("t3", 1, wire.RequestRejected.event_type, D0 + 3 * H, reason_code="out_of_area"))
    out.append(ev("t4", 0, sub, D0 + 25 * H, channel="onsite", service_type="bb", region="south"))
    return out


def test_a_worked_example_by_hand() -> None:
    facts = fold_all(worked_example()).values()
    r = report(Question(D0, D0 + timedelta(days=2), "day"), facts)
    day1, day2 = r.series
    assert (day1.submitted, day2.submitted, r.total.submitted) == (4, 1, 5)
    assert day1.by_channel == {"app": 1, "hotline": 1, "web": 2} and day2.by_channel == {"onsite": 1}
    assert (r.total.self_service, r.total.manual, r.total.self_service_share) == (3, 2, 0.6)
    assert (day1.accepted, day1.rejected, day1.acceptance_rate) == (3, 1, 0.75)
    assert day1.rejections_by_reason == {"out_of_area": 1}
    assert day1.by_priority == {"2": 3} and day1.by_region == {"north": 3, "south": 1}
    # assigned after 1, 2 and 4 hours; resolved after 10, 20, 40
    assert day1.time_to_assign.count == 3 and day1.time_to_assign.mean == pytest.approx(7 / 3 * 3600)
    rates = (day1.sla_resolve.rate, day1.reopen_rate, day1.first_time_fix_rate)
    assert rates == pytest.approx((2 / 3, 1 / 3, 2 / 3))
    assert day1.time_to_assign.p50 == 2 * 3600 and day1.time_to_assign.p90 == pytest.approx(3.6 * 3600)
    assert day1.time_to_resolve.p50 == 20 * 3600 and day1.time_to_resolve.p90 == pytest.approx(36 * 3600)
    assert (day1.sla_respond.measured, day1.sla_respond.met) == (3, 3)
    assert (day1.sla_resolve.measured, day1.sla_resolve.met) == (3, 2)
    assert (day1.rating_asked, day1.rated, day1.mean_score) == (3, 2, 3.5)
    assert day1.scores == {"1": 0, "2": 1, "3": 0, "4": 0, "5": 1}
    assert (day1.reopened, day1.first_time_fixed) == (1, 2)
    # open at the end of day 1: t2 was reopened (open again), t4 not yet submitted; end of day 2: t2 and t4
    assert (day1.backlog, day2.backlog) == (1, 2)
    only_web = report(Question(D0, D0 + timedelta(days=2), "day", Filters(channel="web")), facts)
    assert only_web.total.submitted == 2 and only_web.total.rejected == 1
    cards = scorecards(Question(D0, D0 + timedelta(days=3)), facts, {"tech-a": 2}, D0 + timedelta(days=3))
    assert [c.technician_id for c in cards] == ["tech-a"]
    a = cards[0]
    assert (a.assignments, a.resolved, a.rated, a.mean_score, a.first_time_fixed, a.reopened) == (3, 3, 2, 3.5, 2, 1)
    busy = (10 - 1) + (20 - 2) + (40 - 4)  # hours each work order was held
    assert a.busy_seconds == busy * 3600 and a.utilisation == pytest.approx(busy / (2 * 72))


def test_a_republished_event_counts_once() -> None:
    events = worked_example()
    once = fold_all(events)
    twice = fold_all([*events, *events[:10]])
    assert once == {k: v for k, v in twice.items()}
    f = fold_once(TicketFacts("x"), "e1", REOPENED, {}, D0)
    assert fold_once(f, "e1", REOPENED, {}, D0).reopens == 1


def test_the_types_read_include_other_chapters_by_name() -> None:
    known = {*wire.EVENT_TYPES, "tsop.ticket.reopened.v2", "tsop.complaint.filed.v1", "tsop.incident.declared.v1",
             "tsop.incident.service-restored.v1", "tsop.ticket.something-else.v1"}
    got = wanted(known)
    assert {"tsop.ticket.reopened.v2", "tsop.complaint.filed.v1", "tsop.incident.declared.v1",
            "tsop.incident.service-restored.v1", wire.Rated.event_type} <= got
    assert "tsop.ticket.something-else.v1" not in got and wire.TechnicianRegistered.event_type not in got


def test_periods_and_bad_questions() -> None:
    assert len(buckets(D0, D0 + timedelta(days=30), "day")) == 30
    weeks = buckets(datetime(2026, 6, 3, tzinfo=UTC), datetime(2026, 6, 20, tzinfo=UTC), "week")
    assert weeks == [datetime(2026, 6, d, tzinfo=UTC) for d in (1, 8, 15)]  # ISO weeks start on Monday
    assert buckets(datetime(2026, 11, 15, tzinfo=UTC), datetime(2027, 2, 1, tzinfo=UTC), "month")[-1] == datetime(
        2027, 1, 1, tzinfo=UTC)
    with pytest.raises(Invalid) as exc:
        Question(D0, D0)
    assert exc.value.field == "to"
    with pytest.raises(Invalid) as exc:
        Question(D0, D0 + timedelta(days=4000), "day")
    assert exc.value.field == "granularity"
    assert percentile([], 0.5) is None and percentile([3.0], 0.9) == 3.0


# --- streaming (incremental, batched, redelivered) against a batch recomputation from the raw events ---


def batch_figures(events: list[Raw], start: datetime, end: datetime) -> dict[str, object]:
    """An independent recomputation of a period's figures, straight from the events (statistics' quantiles)."""
    by_ticket: dict[str, list[Raw]] = {}
    seen: set[str] = set()
    for e in events:
        if e[1] not in seen:
            seen.add(e[1])
            by_ticket.setdefault(e[0], []).append(e)
    cohort = {t: es for t, es in by_ticket.items()
              if any(e[2] == wire.RequestSubmitted.event_type and start <= e[4] < end for e in es)}

    def first(es: list[Raw], event_type: str) -> datetime | None:
        return next((e[4] for e in es if e[2] == event_type), None)

    def q(values: list[float], n: int) -> tuple[float | None, float | None]:
        if not values:
            return None, None
        if len(values) == 1:
            return values[0], values[0]
        return statistics.median(values), statistics.quantiles(values, n=10, method="inclusive")[n]

    assign, resolve, scores = [], [], []
    for es in cohort.values():
        s = first(es, wire.RequestSubmitted.event_type)
        a, r = first(es, wire.Assigned.event_type), first(es, wire.Resolved.event_type)
        assert s is not None
        if a:
            assign.append((a - s).total_seconds())
        if r:
            resolve.append((r - s).total_seconds())
        scores += [e[3]["score"] for e in es if e[2] == wire.Rated.event_type][:1]
    resolved = [es for es in cohort.values() if first(es, wire.Resolved.event_type)]

    def open_at(es: list[Raw], t: datetime) -> bool:
        s = first(es, wire.RequestSubmitted.event_type)
        if s is None or s >= t:
            return False
        ends = [e for e in es if e[2] in (wire.Resolved.event_type, wire.RequestRejected.event_type,
                                          wire.RequestCancelled.event_type, REOPENED)]
        last = ends[-1] if ends else None
        return last is None or last[2] == REOPENED or last[4] >= t

    return {
        "submitted": len(cohort),
        "by_channel": dict(sorted(Counter(es[0][3]["channel"] for es in cohort.values()).items())),
        "self_service": sum(es[0][3]["channel"] in ("web", "app") for es in cohort.values()),
        "rejected": sum(any(e[2] == wire.RequestRejected.event_type for e in es) for es in cohort.values()),
        "time_to_assign": (len(assign), *q(assign, 8)),
        "time_to_resolve": (len(resolve), *q(resolve, 8)),
        "rated": len(scores),
        "mean_score": statistics.fmean(scores) if scores else None,
        "reopened": sum(any(e[2] == REOPENED for e in es) for es in resolved),
        "first_time_fixed": sum(
            not any(e[2] == REOPENED for e in es)
            and sum(e[2] == wire.Assigned.event_type for e in es
                    if e[4] <= (first(es, wire.Resolved.event_type) or e[4])) == 1
            for es in resolved
        ),
        "respond_met": sum(
            first(es, wire.AssignmentAccepted.event_type) is not None
            and not any(e[2] == wire.SlaThresholdCrossed.event_type and e[3]["target"] == "respond" for e in es)
            for es in cohort.values()
        ),
        "backlog": sum(open_at(es, end) for es in by_ticket.values()),
    }


def streamed(events: list[Raw], rng: random.Random) -> dict[str, TicketFacts]:
    """Fold as a consumer does: tickets interleaved, in batches, a batch sometimes delivered twice."""
    queues: dict[str, list[Raw]] = {}
    for e in events:
        queues.setdefault(e[0], []).append(e)
    order: list[Raw] = []
    while queues:
        t = rng.choice(sorted(queues))
        order.append(queues[t].pop(0))
        if not queues[t]:
            del queues[t]
    facts: dict[str, TicketFacts] = {}
    i = 0
    while i < len(order):
        size = rng.randint(1, 7)
        batch = order[i:i + size]
        for _ in range(2 if rng.random() < 0.3 else 1):  # a redelivery after a crash
            for ticket, event_id, event_type, body, at in batch:
                facts[ticket] = fold_once(facts.get(ticket) or TicketFacts(ticket), event_id, event_type, body, at)
        i += size
    return facts


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(0, 25), days=st.integers(1, 10))
def test_streaming_figures_equal_a_batch_recomputation(seed: int, n: int, days: int) -> None:
    rng = random.Random(seed)
    events = [e for _ in range(n) for e in lifecycle(rng, D0, timedelta(days=days), reopen=True)]
    facts = streamed(events, rng)
    q = Question(D0, D0 + timedelta(days=days), "day")
    r = report(q, facts.values())
    for period in [r.total, *r.series]:
        end = period.start + timedelta(days=1) if period is not r.total else q.end
        want = batch_figures(events, period.start, end)
        got = {
            "submitted": period.submitted, "by_channel": period.by_channel, "self_service": period.self_service,
            "rejected": period.rejected,
            "time_to_assign": (period.time_to_assign.count, period.time_to_assign.p50, period.time_to_assign.p90),
            "time_to_resolve": (period.time_to_resolve.count, period.time_to_resolve.p50,
                                period.time_to_resolve.p90),
            "rated": period.rated, "mean_score": period.mean_score, "reopened": period.reopened,
            "first_time_fixed": period.first_time_fixed, "respond_met": period.sla_respond.met,
            "backlog": period.backlog,
        }
        for name, value in want.items():
            assert got[name] == (value if isinstance(value, dict) else pytest.approx(value)), (period.start, name)


def test_a_csv_cell_a_spreadsheet_would_run_as_a_formula_opens_as_its_text() -> None:
    """CSV injection: a channel's free text (a region, say) that starts like a formula is quoted."""
    import csv
    import io

    from tsop_archive.stats.api import csv_cell

    for text in ("=HYPERLINK(\"https://evil.example\",\"x\")", "+1+1", "-2", "@SUM(A1)", "\tx", "\rx"):
        assert csv_cell(text) == "'" + text
    assert csv_cell("north") == "north" and csv_cell(3) == 3 and csv_cell(-2.5) == -2.5 and csv_cell(None) == ""
    out = io.StringIO()
    csv.writer(out).writerow([csv_cell("=cmd|' /C calc'!A0"), csv_cell("east")])
    assert out.getvalue().startswith("\"'=cmd") or out.getvalue().startswith("'=cmd")
