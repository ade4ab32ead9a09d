from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from tsop_events.clock import ManualClock
from tsop_intake.application import IdempotencyConflict, IntakeApp, to_wire
from tsop_intake.domain import Catalogue, review

NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
CAT = Catalogue.load()


def decide(**kw):
    args = dict(
        service_type="broadband.fault_repair",
        region="north",
        customer_tier="standard",
        description="No internet since the storm",
        deadline=None,
        window_end=None,
        now=NOW,
    )
    args.update(kw)
    return review(CAT, **args)


def test_accepts_with_type_default_priority_and_resolution_target():
    d = decide()
    assert d.accepted and d.priority == 2
    assert d.resolve_by == NOW + timedelta(hours=24)


def test_vip_and_urgent_deadline_raise_priority_and_cap_resolve_by():
    deadline = NOW + timedelta(hours=2)
    d = decide(customer_tier="vip", deadline=deadline)
    assert d.accepted and d.priority == 1 and d.resolve_by == deadline


def test_rejections_carry_reason_codes():
    assert decide(service_type="fax.repair").reason_code == "unknown_service_type"
    assert decide(service_type="cloud.data_migration", region="atlantis").reason_code == "not_offered_in_region"
    assert decide(description="broken").reason_code == "insufficient_description"
    assert decide(deadline=NOW - timedelta(minutes=1)).reason_code == "infeasible_time"


@given(st.sampled_from(sorted(CAT.types)), st.sampled_from(["standard", "gold", "vip", "enterprise"]))
def test_priority_always_within_1_to_5(service_type, tier):
    d = decide(service_type=service_type, customer_tier=tier, region="north")
    assert d.accepted and 1 <= d.priority <= 5


def fields(**kw):
    f = dict(
        channel="web",
        channel_request_ref=None,
        customer_id="c1",
        customer_tier="gold",
        region="north",
        service_type="broadband.fault_repair",
        description="No internet since the storm",
        time_requirement={"deadline": None, "window_start": None, "window_end": None},
        special_needs=None,
        callback_url=None,
    )
    f.update(kw)
    return f


def memory_app() -> IntakeApp:
    return IntakeApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=ManualClock(NOW))


def test_idempotency_key_returns_the_same_request_and_refuses_a_different_one():
    app = memory_app()
    first, new1 = app.submit(fields(), "key-1")
    again, new2 = app.submit(fields(), "key-1")
    assert new1 and not new2 and again.id == first.id
    other, _ = app.submit(fields(), None)
    assert other.id != first.id
    try:
        app.submit(fields(description="something else entirely"), "key-1")
    except IdempotencyConflict:
        pass
    else:
        raise AssertionError("a reused key with another body must be refused")


def test_submitted_and_accepted_map_to_wire_events_with_the_ticket_as_key():
    app = memory_app()
    req, _ = app.submit(fields(), None)
    events = [app.mapper.to_domain_event(n) for n in app.recorder.select_notifications(1, 10)]
    wire = [to_wire(e) for e in events]
    assert [w.event.event_type for w in wire if w] == [
        "tsop.ticket.request-submitted.v1",
        "tsop.ticket.request-accepted.v1",
    ]
    assert all(w and w.event.key() == str(req.id) for w in wire)
