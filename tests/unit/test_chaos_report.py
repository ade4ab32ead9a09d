"""The chaos run's verdicts (bench.chaos.analyse) on made-up records: what counts as lost, doubled or a stall."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from bench.chaos import LIFECYCLE, Recorded, Tally, analyse

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def lifecycle(ticket: str, tech: str, start: float, step: float = 1.0) -> list[Recorded]:
    body = {"technician_id": tech, "work_order_id": f"wo-{ticket}"}
    return [
        Recorded(f"{ticket}-{i}", kind, T0 + timedelta(seconds=start + i * step), body)
        for i, kind in enumerate(LIFECYCLE)
    ]


def dossier(events: list[Recorded]) -> dict[str, Any]:
    return {"seal": {"verified": True}, "events": [{"type": e.type, "id": e.ce_id} for e in events]}


def verdict(records: dict[str, list[Recorded]], dossiers: dict[str, Any], capacity: int = 5) -> dict[str, Any]:
    tally = Tally(accepted=list(records))
    return analyse(records, dossiers, tally, {"tech-1": capacity, "tech-2": capacity})


def test_a_clean_lifecycle_is_completed_and_a_republished_event_is_not_a_duplicate() -> None:
    events = lifecycle("a", "tech-1", 0)
    republished = [*events, events[6], events[9]]  # the same ce_id twice: a relay published it again
    report = verdict({"a": republished}, {"a": dossier(events)})
    assert (report["completed"], report["lost"], report["duplicated"]) == (1, 0, 0)
    assert report["topic_records"] == len(LIFECYCLE) + 2 and report["topic_distinct_events"] == len(LIFECYCLE)


def test_a_second_resolved_with_its_own_id_is_a_duplicated_effect() -> None:
    events = lifecycle("a", "tech-1", 0)
    twice = [*events, Recorded("a-again", "tsop.ticket.resolved.v1", events[6].time, events[6].body)]
    report = verdict({"a": twice}, {"a": dossier(events)})
    assert report["duplicated"] == 1
    assert report["duplicated_tickets"] == {"a": {"tsop.ticket.resolved.v1": 2}}


def test_a_type_twice_in_the_dossier_is_a_duplicated_effect() -> None:
    events = lifecycle("a", "tech-1", 0)
    doubled = dossier(events)
    doubled["events"].append({"type": "tsop.ticket.closed.v1", "id": "other"})
    assert verdict({"a": events}, {"a": doubled})["duplicated"] == 1


def test_an_accepted_request_without_a_complete_sealed_dossier_is_lost() -> None:
    a, b, c = lifecycle("a", "tech-1", 0), lifecycle("b", "tech-1", 20), lifecycle("c", "tech-1", 40)
    unsealed = dossier(b) | {"seal": None}
    incomplete = dossier(c[:-1])
    report = verdict({"a": a, "b": b, "c": c}, {"a": None, "b": unsealed, "c": incomplete})
    assert report["lost"] == 3 and report["completed"] == 0 and set(report["lost_tickets"]) == {"a", "b", "c"}


def test_overlapping_work_beyond_capacity_is_flagged_and_work_in_turn_is_not() -> None:
    # assigned at +2 s, resolved at +6 s; "b" is assigned at +5 s (overlap), "c" at +30 s (after)
    a, b, c = lifecycle("a", "tech-1", 0), lifecycle("b", "tech-1", 3), lifecycle("c", "tech-1", 30)
    report = verdict({"a": a, "b": b, "c": c}, {t: dossier(e) for t, e in (("a", a), ("b", b), ("c", c))}, capacity=1)
    assert report["duplicated"] == 1 and report["over_capacity"][0]["technician"] == "tech-1"
    in_turn = verdict({"a": a, "c": c}, {"a": dossier(a), "c": dossier(c)}, capacity=1)
    assert in_turn["duplicated"] == 0 and in_turn["over_capacity"] == []


def test_the_longest_stall_is_the_longest_gap_between_recorded_events() -> None:
    a, b = lifecycle("a", "tech-1", 0), lifecycle("b", "tech-2", 10 + 7.5)  # a ends at +10 s
    report = verdict({"a": a, "b": b}, {"a": dossier(a), "b": dossier(b)})
    assert report["longest_stall_s"] == 7.5


def test_a_second_work_log_entry_is_counted_apart_not_as_a_duplicated_effect() -> None:
    events = lifecycle("a", "tech-1", 0)
    logged = next(e for e in events if e.type == "tsop.ticket.work-logged.v1")
    twice = [*events, Recorded("a-log-2", logged.type, logged.time, logged.body)]
    report = verdict({"a": twice}, {"a": dossier(twice)})
    assert report["duplicated"] == 0 and report["work_log_entries_repeated"] == 1
