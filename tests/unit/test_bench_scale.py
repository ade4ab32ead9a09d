"""The scale-out bench's replay check (bench.scale.replay_load) and its CPU sums, on made-up events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bench.chaos import Recorded
from bench.scale import per_service, replay_load

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def ev(ce_id: str, kind: str, at: float, tech: str, wo: str) -> Recorded:
    return Recorded(ce_id, f"tsop.ticket.{kind}.v1", T0 + timedelta(seconds=at), {"technician_id": tech,
                                                                                 "work_order_id": wo})


def test_load_within_capacity_is_clean_and_binding_capacity_is_seen() -> None:
    records = {
        "a": [ev("a1", "assigned", 0, "t1", "wa"), ev("a2", "resolved", 5, "t1", "wa")],
        "b": [ev("b1", "assigned", 1, "t1", "wb"), ev("b2", "resolved", 6, "t1", "wb")],
        # released and taken at the same instant: the release counts first
        "c": [ev("c1", "assigned", 5, "t1", "wc"), ev("c2", "resolved", 9, "t1", "wc")],
    }
    r = replay_load(records, {"t1": 2})
    assert r["over_capacity"] == 0 and r["peak_held_max"] == 2
    assert r["assignments"] == 3 and r["resolutions"] == 3
    assert r["assignments_that_filled_a_technician"] == 2 and r["technicians_that_reached_capacity"] == 1


def test_a_third_work_order_for_a_technician_of_capacity_two_is_named() -> None:
    records = {
        "a": [ev("a1", "assigned", 0, "t1", "wa")],
        "b": [ev("b1", "assigned", 1, "t1", "wb")],
        "c": [ev("c1", "assigned", 2, "t1", "wc"), ev("c1", "assigned", 2, "t1", "wc")],  # republished: once
        "d": [ev("d1", "assigned", 2, "t2", "wd")],
    }
    r = replay_load(records, {"t1": 2, "t2": 2})
    assert r["over_capacity"] == 1 and r["assignments"] == 4
    assert r["over_capacity_first"] == [{"technician": "t1", "at": (T0 + timedelta(seconds=2)).isoformat(),
                                         "held": 3, "capacity": 2}]


def test_cpu_per_service_sums_instances_and_brokers() -> None:
    per = {"intake-0": 10.0, "intake-1": 5.5, "dispatch-0": 7.0, "kafka-0": 1.0, "kafka-1": 2.0, "kafka-2": 3.0,
           "postgres": 20.0, "bench-driver": 30.0}
    assert per_service(per) == {"intake": 15.5, "dispatch": 7.0, "broker": 6.0, "postgres": 20.0,
                                "bench-driver": 30.0}
