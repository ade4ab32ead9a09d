"""Ticket lifecycles for the statistics' tests: every path a ticket can take, times increasing along each.

``lifecycle`` gives one ticket's events as raw (ticket, event id, type, body, time) tuples, the way an
analytics consumer of the topics reads them; ``envelopes`` turns them into what the services publish.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from tsop_events import schemas as wire
from tsop_events.envelope import Envelope, wrap

Raw = tuple[str, str, str, dict[str, Any], datetime]
CHANNELS = ("web", "app", "hotline", "onsite")
TYPES = ("broadband.fault_repair", "mobile.sim_swap", "cloud.migration")
REGIONS = ("north", "south", "east")
REOPENED = "tsop.ticket.reopened.v1"


def lifecycle(rng: random.Random, start: datetime, span: timedelta, reopen: bool = False) -> list[Raw]:
    """One ticket, submitted somewhere in [start, start + span), and whatever followed, in order."""
    ticket = str(uuid.UUID(int=rng.getrandbits(128)))
    t = start + timedelta(seconds=rng.uniform(0, span.total_seconds()))
    out: list[Raw] = []

    def add(event_type: str, body: dict[str, Any], field: str) -> None:
        nonlocal t
        body = {"ticket_id": ticket, **body, field: t.isoformat()}
        out.append((ticket, f"{ticket}-{len(out)}", event_type, body, t))

    def later(hours: float) -> None:
        nonlocal t
        t += timedelta(seconds=round(rng.uniform(60, hours * 3600)))

    channel, stype, region = rng.choice(CHANNELS), rng.choice(TYPES), rng.choice(REGIONS)
    add(wire.RequestSubmitted.event_type, {
        "channel": channel, "customer_id": "c", "customer_tier": "standard", "region": region,
        "service_type": stype, "description": "no service", "time_requirement": {},
    }, "submitted_at")
    later(2)
    fate = rng.random()
    if fate < 0.1:
        add(wire.RequestRejected.event_type, {"reason_code": rng.choice(["out_of_area", "duplicate_account"]),
                                              "reason": "no"}, "rejected_at")
        return out
    if fate < 0.15:
        add(wire.RequestCancelled.event_type, {"reason_code": "channel", "reason": "withdrawn",
                                               "cancelled_by": "web"}, "cancelled_at")
        return out
    add(wire.RequestAccepted.event_type, {"service_type": stype, "region": region, "priority": rng.randint(1, 5),
                                          "customer_tier": "standard"}, "accepted_at")
    if fate < 0.25:
        return out  # waiting to be assigned
    techs = [f"tech-{rng.randint(1, 6)}" for _ in range(3)]
    wo = f"wo-{ticket[:8]}"

    def assign(tech: str) -> None:
        later(3)
        add(wire.Assigned.event_type, {"work_order_id": wo, "technician_id": tech, "reason": "best",
                                       "candidates": []}, "assigned_at")

    assign(techs[0])
    holder = techs[0]
    if rng.random() < 0.2:
        later(1)
        add(wire.AssignmentDeclined.event_type, {"work_order_id": wo, "technician_id": holder, "reason": "busy"},
            "declined_at")
        holder = techs[1]
        assign(holder)
    if rng.random() < 0.15:
        add(wire.SlaThresholdCrossed.event_type, {"target": "respond", "level": "breach", "deadline": t.isoformat(),
                                                  "elapsed_seconds": 1.0, "target_seconds": 1.0}, "crossed_at")
    later(1)
    add(wire.AssignmentAccepted.event_type, {"work_order_id": wo, "technician_id": holder}, "accepted_at")
    if fate < 0.35:
        return out  # in progress
    later(2)
    add(wire.WorkStarted.event_type, {"work_order_id": wo, "technician_id": holder, "mode": "on_site"},
        "started_at")
    if rng.random() < 0.2:
        add(wire.SlaThresholdCrossed.event_type, {"target": "resolve", "level": "breach", "deadline": t.isoformat(),
                                                  "elapsed_seconds": 1.0, "target_seconds": 1.0}, "crossed_at")
    later(20)
    add(wire.Resolved.event_type, {"work_order_id": wo, "technician_id": holder, "resolution_code": "fixed",
                                   "summary": "fixed"}, "resolved_at")
    if reopen and rng.random() < 0.2:
        later(5)
        add(REOPENED, {"reason": "again"}, "reopened_at")
        assign(techs[2])
        holder = techs[2]
        later(10)
        add(wire.Resolved.event_type, {"work_order_id": wo, "technician_id": holder, "resolution_code": "fixed",
                                       "summary": "fixed"}, "resolved_at")
    if rng.random() < 0.9:
        later(0.1)
        add(wire.FeedbackSent.event_type, {"channel": "none", "attempts": 1, "rating_due_at": t.isoformat()},
            "sent_at")
        if rng.random() < 0.7:
            later(20)
            add(wire.Rated.event_type, {"score": rng.choice([1, 2, 3, 4, 4, 5, 5, 5])}, "rated_at")
            later(0.01)
            add(wire.Closed.event_type, {"reason": "rated"}, "closed_at")
    return out


def many(seed: int, n: int, start: datetime, span: timedelta, reopen: bool = False) -> list[list[Raw]]:
    rng = random.Random(seed)
    return [lifecycle(rng, start, span, reopen) for _ in range(n)]


def envelopes(events: Iterable[Raw]) -> list[tuple[str, Envelope]]:
    """(key, envelope) as a service would publish them."""
    out = []
    for ticket, event_id, event_type, body, t in events:
        out.append((ticket, wrap(wire.parse_event(event_type, body), event_id=event_id, source="test", time=t)))
    return out
