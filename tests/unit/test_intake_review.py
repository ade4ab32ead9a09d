"""The automatic review (§2.2): a pure function of the application, the catalogue and looked-up facts."""

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tsop_intake.catalogue import Catalogue
from tsop_intake.domain import Facts, InvalidChange, InvalidState, ServiceRequest, review

NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
CAT = Catalogue.load()


def app(**kw: Any) -> dict[str, Any]:
    a: dict[str, Any] = dict(
        service_type="broadband.fault_repair",
        region="north",
        customer_id="c1",
        customer_tier="standard",
        description="No internet since the storm",
        time_requirement={},
        location={"address": "1 Main Street"},
        details={},
        special_needs=None,
    )
    a.update(kw)
    return a


def decide(facts: Facts | None = None, **kw: Any):
    return review(CAT, app(**kw), facts or Facts(now=NOW))


def test_accepts_with_the_type_default_priority_and_resolution_target() -> None:
    d = decide()
    assert d.outcome == "accept" and d.reason_code == "rules_passed" and d.priority == 2
    assert d.resolve_by == NOW + timedelta(hours=24)


def test_priority_is_tier_times_urgency_times_type() -> None:
    soon = {"deadline": (NOW + timedelta(hours=2)).isoformat()}
    assert decide(customer_tier="gold").priority == 1
    assert decide(service_type="fixed.relocation", details={"new_address": "x"}).priority == 4
    assert decide(service_type="fixed.relocation", details={"new_address": "x"}, customer_tier="gold").priority == 3
    urgent = decide(service_type="fixed.relocation", details={"new_address": "x"}, time_requirement=soon)
    assert urgent.priority == 3 and urgent.resolve_by == NOW + timedelta(hours=2)


@given(st.sampled_from(sorted(CAT.types)), st.sampled_from(["standard", "gold", "vip", "enterprise"]),
       st.integers(min_value=1, max_value=500))
def test_priority_always_within_1_to_5(service_type: str, tier: str, hours: int) -> None:
    d = review(
        CAT,
        app(service_type=service_type, customer_tier=tier,
            time_requirement={"window_start": (NOW + timedelta(hours=hours)).isoformat(),
                              "window_end": (NOW + timedelta(hours=hours + 2)).isoformat()},
            details={"new_address": "2 High St", "data_volume_gb": 5}),
        Facts(now=NOW),
    )
    assert d.outcome in ("accept", "queue")
    if d.outcome == "accept":
        assert 1 <= d.priority <= 5


def test_type_not_offered_in_the_region_is_rejected_with_the_reason() -> None:
    d = decide(service_type="cloud.fault_repair", region="atlantis")
    assert d.outcome == "reject" and d.reason_code == "not_offered_in_region" and "atlantis" in d.reason


def test_time_requirement_in_the_past_or_beyond_the_horizon_is_infeasible() -> None:
    past = decide(time_requirement={"deadline": (NOW - timedelta(minutes=1)).isoformat()})
    assert past.outcome == "reject" and past.reason_code == "infeasible_time"
    far = decide(time_requirement={"deadline": (NOW + timedelta(days=400)).isoformat()})
    assert far.outcome == "reject" and far.reason_code == "infeasible_time" and "365" in far.reason


def test_missing_required_fields_keep_the_application_pending_with_each_field_named() -> None:
    d = decide(service_type="fixed.relocation", location=None, description="move")
    assert d.outcome == "pending"
    assert [f for f, _ in d.missing] == ["description", "location.address", "details.new_address"]
    assert all(reason for _, reason in d.missing)
    assert d.complete_by == NOW + timedelta(hours=72)
    window = decide(service_type="broadband.installation")
    assert window.missing == (("time_requirement.window",
                               "broadband.installation needs an appointment window (window_start and window_end)"),)
    cloud = decide(service_type="cloud.data_migration")
    assert cloud.missing[0][0] == "details.data_volume_gb"
    assert cloud.complete_by == NOW + timedelta(hours=120)  # the type's own completion time


def test_an_open_duplicate_is_linked_not_reviewed_again() -> None:
    first = uuid4()
    d = decide(Facts(now=NOW, open_duplicate=first))
    # the id travels in duplicate_of only, which views show to those who may see that ticket
    assert d.outcome == "link" and d.duplicate_of == first and str(first) not in d.reason


def test_abuse_limit_per_customer() -> None:
    # the per-channel limit is not a review rule: over it, intake answers 429 before anything is recorded
    busy = decide(Facts(now=NOW, customer_recent=CAT.limits.customer_per_day))
    assert busy.outcome == "queue" and busy.reason_code == "abuse_customer_limit"
    strict = CAT.model_copy(update={"limits": CAT.limits.model_copy(update={"customer_limit_action": "reject"})})
    assert review(strict, app(), Facts(now=NOW, customer_recent=99)).outcome == "reject"


def test_what_the_rules_cannot_decide_goes_to_an_agent_with_reasons() -> None:
    manual = decide(service_type="mobile.cancellation")
    assert manual.outcome == "queue" and manual.reasons[0].startswith("manual_type")
    tier = decide(service_type="cloud.data_migration", customer_tier="enterprise", details={"data_volume_gb": 10})
    assert tier.outcome == "queue" and tier.reasons[0].startswith("manual_tier")
    soon = {"window_start": (NOW + timedelta(hours=1)).isoformat(),
            "window_end": (NOW + timedelta(hours=3)).isoformat()}
    tight = decide(service_type="broadband.installation", time_requirement=soon)
    assert tight.outcome == "queue" and tight.reasons[0].startswith("time_tight")


def request(ticket: UUID | None = None, **kw: Any) -> ServiceRequest:
    a = app(**kw)
    return ServiceRequest(
        id=ticket or uuid4(), channel="web", channel_id="ch1", channel_request_ref=None, customer_id=a["customer_id"],
        customer_tier=a["customer_tier"], region=a["region"], service_type=a["service_type"],
        description=a["description"], time_requirement=a["time_requirement"], special_needs=None,
        callback_url=None, location=a["location"], details=a["details"], submitted_at=NOW,
    )


def test_changes_are_allowed_by_state() -> None:
    r = request(location=None)
    r.apply_decision(review(CAT, r.fields(), Facts(now=NOW)), NOW)
    assert r.status == "pending_information"
    with pytest.raises(InvalidChange, match="customer_id"):
        r.update({"customer_id": "someone"}, "ch", NOW)
    assert r.update({"region": r.region}, "ch", NOW) is False  # nothing changed: no new review, no new deadline
    assert r.update({"location": {"address": "3 Elm"}}, "ch", NOW) is True
    r.apply_decision(review(CAT, r.fields(), Facts(now=NOW)), NOW)
    assert r.status == "accepted"
    with pytest.raises(InvalidChange, match="region"):
        r.update({"region": "south"}, "ch", NOW)
    assert r.update({"description": "No internet, modem lights off"}, "ch", NOW) is False
    r.cancel("withdrawn_by_customer", "no longer needed", "ch", NOW)
    with pytest.raises(InvalidState):
        r.update({"description": "again and again"}, "ch", NOW)
    with pytest.raises(InvalidState):
        r.cancel("withdrawn_by_customer", "twice", "ch", NOW)


def test_a_pending_application_expires_only_after_its_deadline() -> None:
    r = request(location=None)
    r.apply_decision(review(CAT, r.fields(), Facts(now=NOW)), NOW)
    assert not r.expire(NOW + timedelta(hours=72))
    assert r.expire(NOW + timedelta(hours=72, seconds=1))
    assert r.status == "cancelled" and r.cancellation is not None
    assert r.cancellation["reason_code"] == "information_deadline_passed"
    assert "location.address" in r.cancellation["reason"]
    assert not r.expire(NOW + timedelta(days=9))


def test_without_customer_or_region_the_application_waits_for_them() -> None:
    d = decide(customer_id="", region="")
    assert d.outcome == "pending" and [f for f, _ in d.missing][:2] == ["customer_id", "region"]
    r = ServiceRequest(id=uuid4(), channel="web", channel_id="ch", channel_request_ref=None, customer_id="",
                       customer_tier="standard", region="", service_type="broadband.fault_repair",
                       description="No internet since the storm", time_requirement={}, special_needs=None,
                       callback_url=None, location=None, details={}, submitted_at=NOW)
    r.apply_decision(d, NOW)
    assert r.update({"customer_id": "c1", "region": "north"}, "portal", NOW)
    with pytest.raises(InvalidChange):
        r.update({"customer_id": "c2"}, "portal", NOW)  # once set, the customer is fixed
