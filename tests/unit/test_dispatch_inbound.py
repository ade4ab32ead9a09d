"""Whatever dispatch's edge accepts, its domain records all of and the wire carries (property-based, no I/O).

Bodies are generated from the inbound models' own JSON Schemas, validated as
FastAPI validates them, run through the command they feed on an in-memory
DispatchApp, and every event recorded is mapped to its wire event, encoded and
parsed back as a consumer would. A command either records everything it decided
and succeeds, or refuses (a tsop_events.errors.DomainError: 4xx) and records nothing.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from tests.dispatch_sync import SyncDispatch
from tsop_dispatch import api
from tsop_dispatch.commands import DispatchApp, work_order_id
from tsop_dispatch.domain import Invalid, Technician
from tsop_dispatch.sla import Calendar, Fact, Targets, explain
from tsop_dispatch.wire import WIRE
from tsop_events import schemas as wire
from tsop_events.clock import ManualClock
from tsop_events.envelope import stable_event_id, wrap
from tsop_events.errors import DomainError
from tsop_events.relay import Outgoing
from tsop_events.service_types import service_type_names

NOW = datetime(2026, 6, 1, 9, tzinfo=UTC)  # a Monday
FAULT = "broadband.fault_repair"
TYPES = sorted(service_type_names())
H = 3600.0

# --- bodies from the models' JSON Schemas -----------------------------------------------------------

TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")) | st.sampled_from("\t\n"), max_size=40)
OFFSETS = st.sampled_from([timedelta(0), timedelta(hours=2), timedelta(hours=-5, minutes=-30), timedelta(hours=14)])


def _moment(tz: timedelta, at: datetime) -> str:
    from datetime import timezone

    return at.astimezone(timezone(tz)).isoformat()


MOMENTS = st.builds(
    _moment,
    OFFSETS,
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
)
NAMED: dict[str, st.SearchStrategy[Any]] = {
    # a generated pattern rarely names a real service type: offer the catalogue's, and sometimes not
    "service_type": st.sampled_from(TYPES) | st.from_regex(r"^[a-z]+\.[a-z_]+$", fullmatch=True),
    "service_types": st.lists(st.sampled_from(TYPES), max_size=3),
    "holidays": st.lists(st.dates(date(2000, 1, 1), date(2100, 1, 1)).map(lambda d: d.isoformat()), max_size=3),
}


def from_schema(schema: dict[str, Any], defs: dict[str, Any], name: str = "") -> st.SearchStrategy[Any]:
    """Valid JSON for the subset of JSON Schema pydantic writes (objects, arrays, bounds, patterns, unions)."""
    if name in NAMED:
        return NAMED[name]
    if "$ref" in schema:
        return from_schema(defs[schema["$ref"].rsplit("/", 1)[-1]], defs, name)
    if "anyOf" in schema:
        return st.one_of([from_schema(s, defs, name) for s in schema["anyOf"]])
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        props: dict[str, Any] = schema.get("properties", {})
        if props:
            required = set(schema.get("required", []))
            return st.fixed_dictionaries(
                {k: from_schema(v, defs, k) for k, v in props.items() if k in required},
                optional={k: from_schema(v, defs, k) for k, v in props.items() if k not in required},
            )
        names = {"type": "string", **schema.get("propertyNames", {})}
        values_schema = schema.get("additionalProperties", {})
        if "patternProperties" in schema:
            pattern, values_schema = next(iter(schema["patternProperties"].items()))
            names["pattern"] = pattern
        keys = from_schema(names, defs)
        values = from_schema(values_schema, defs)
        return st.dictionaries(
            keys, values, min_size=schema.get("minProperties", 0), max_size=min(schema.get("maxProperties", 4), 4)
        )
    if kind == "array":
        return st.lists(
            from_schema(schema.get("items", {}), defs),
            min_size=schema.get("minItems", 0),
            max_size=min(schema.get("maxItems", 4), 4),
        )
    if kind == "string":
        if schema.get("format") == "date-time":
            return MOMENTS
        if schema.get("format") == "uuid":
            return st.uuids().map(str)
        if schema.get("format") == "date":
            return st.dates().map(lambda d: d.isoformat())
        strategy = st.from_regex(schema["pattern"], fullmatch=True) if "pattern" in schema else TEXT
        lo, hi = schema.get("minLength", 0), schema.get("maxLength", 10_000)
        return strategy.filter(lambda s: lo <= len(s) <= hi)
    if kind == "integer":
        return st.integers(schema.get("minimum", -(2**40)), schema.get("maximum", 2**40))
    if kind == "number":
        lo = schema.get("minimum", schema.get("exclusiveMinimum", -1e9))
        hi = schema.get("maximum", schema.get("exclusiveMaximum", 1e9))
        return st.floats(lo, hi, allow_nan=False, allow_infinity=False, exclude_min="exclusiveMinimum" in schema)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    # a free value (e.g. a measurement is a number or a text)
    return st.one_of(st.floats(-1e6, 1e6, allow_nan=False), TEXT)


def bodies(model: type[BaseModel]) -> st.SearchStrategy[Any]:
    schema = model.model_json_schema()
    return from_schema(schema, schema.get("$defs", {}))


# --- the commands each body feeds -------------------------------------------------------------------


def new_app() -> SyncDispatch:
    clock = ManualClock(NOW)
    return SyncDispatch(
        DispatchApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=clock, service_types=frozenset(TYPES))
    )


def ready(app: SyncDispatch) -> tuple[Technician, UUID]:
    """A technician holding an assigned work order (and one more eligible technician)."""
    worker, _ = app.register_technician(uuid4(), "Worker", [FAULT], ["north"], 3)
    wo = app.open_work_order(work_order_id("t1"), "t1", FAULT, "north", 2, None, "cause")
    app.save(wo)
    app.drain_queue()
    assert app.load(wo.id).technician_id == str(worker.id)
    app.register_technician(uuid4(), "Other", [FAULT], ["north"], 3)
    return worker, wo.id


def started(app: SyncDispatch, worker: Technician, wo: UUID) -> None:
    app.accept(wo, str(worker.id))
    app.start(wo, str(worker.id), "on_site")


def run(app: SyncDispatch, model: type[BaseModel], body: Any, mark: list[int]) -> None:
    """Feed ``body`` to its command; ``mark`` gets the log's end just before the command under test."""
    worker, wo = ready(app)
    me = str(worker.id)

    def checkpoint() -> None:
        mark.append(app.recorder.max_notification_id() or 0)

    if model not in (api.Start, api.LogWork, api.Pause, api.Resolve):
        checkpoint()
    if model is api.RegisterTechnician:
        quals = [q.model_dump() for q in body.qualifications]
        app.register_technician(body.id or uuid4(), body.name, body.service_types, body.regions, body.capacity, quals)
    elif model is api.QualificationIn:
        q = body
        app.grant_qualification(worker.id, q.service_type, q.certificate, q.level, q.valid_from, q.valid_until, "t")
    elif model is api.Period:
        app.schedule(worker.id, "shift", body.start, body.end)
        app.schedule(worker.id, "leave", body.start, body.end, body.reason)
    elif model is api.Capacity:
        app.change_capacity(worker.id, body.capacity)
    elif model is api.RegisterResource:
        app.register_resource(body.id or uuid4(), body.kind, body.name, body.region)
    elif model is api.PeakModeIn:
        app.set_peak(body.on, "supervisor-1", body.reason)
    elif model is api.Decline:
        app.decline(wo, me, body.reason)
    elif model is api.Start:
        app.accept(wo, me)
        checkpoint()
        app.start(wo, me, body.mode)
    elif model is api.LogWork:
        started(app, worker, wo)
        checkpoint()
        app.log_work(wo, me, body.action, body.mode, body.notes, body.equipment, body.measurements)
    elif model is api.Pause:
        started(app, worker, wo)
        checkpoint()
        app.pause(wo, me, body.kind, body.reason)
        app.resume(wo, me)
    elif model is api.Resolve:
        started(app, worker, wo)
        checkpoint()
        app.resolve(wo, me, body.resolution_code, body.summary, body.advice)
    elif model is api.Reassign:
        app.reassign(wo, body.technician_id, body.reason, "supervisor-1")
    elif model is api.Priority:
        app.change_priority(wo, body.priority, "supervisor-1", body.reason)
    elif model is api.SlaPolicyIn:
        app.adopt_policy(body.model_dump(mode="json", exclude_none=True), "admin-1")
    else:
        raise AssertionError(f"no command for {model.__name__}")


def mapped(app: SyncDispatch) -> list[Outgoing]:
    """The wire events of everything recorded, in order."""
    outs = (WIRE(app.mapper.to_domain_event(n)) for n in app.recorder.select_notifications(1, 100_000))
    return [o for o in outs if o is not None]


def carried(app: SyncDispatch) -> int:
    """Map every recorded event to the wire, encode it and parse it back as a consumer does; count them."""
    count = 0
    for n in app.recorder.select_notifications(1, 100_000):
        e = app.mapper.to_domain_event(n)
        out = WIRE(e)
        if out is None:
            continue
        env = wrap(out.event, event_id=stable_event_id(n.originator_id, n.originator_version), source="dispatch")
        assert wire.parse_event(env.type, env.data) == out.event
        json.loads(env.data)  # plain JSON: no NaN or Infinity
        count += 1
    return count


MODELS = [
    api.RegisterTechnician,
    api.QualificationIn,
    api.Period,
    api.Capacity,
    api.RegisterResource,
    api.PeakModeIn,
    api.Decline,
    api.Start,
    api.LogWork,
    api.Pause,
    api.Resolve,
    api.Reassign,
    api.Priority,
    api.SlaPolicyIn,
]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
@given(data=st.data())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_whatever_the_edge_accepts_is_recorded_whole_and_carried_by_the_wire(
    model: type[BaseModel], data: st.DataObject
) -> None:
    raw = data.draw(bodies(model), label="body")
    try:
        body = model.model_validate(raw)  # as FastAPI validates a JSON body
    except ValidationError:
        # refused at the edge with 422, nothing happens; hypothesis fails the test if too few bodies pass
        assume(False)
    app = new_app()
    mark: list[int] = []
    try:
        run(app, model, body, mark)
    except DomainError:
        # refused (409/422/403, or 404 for a technician that does not exist): the command recorded nothing
        assert (app.recorder.max_notification_id() or 0) == mark[-1]
    assert carried(app) > 0


# --- strict edges, by example -----------------------------------------------------------------------


def refused(model: type[BaseModel], body: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as info:
        model.model_validate(body)
    return [".".join(str(p) for p in e["loc"]) for e in info.value.errors()]


@pytest.mark.parametrize("value", ["5", True, 5.0, 5.5, None, 2**64])
def test_integers_are_integers(value: object) -> None:
    tech = {"name": "Q", "service_types": [FAULT], "regions": ["r"]}
    assert refused(api.RegisterTechnician, {**tech, "capacity": value}) == ["capacity"]
    assert refused(api.Capacity, {"capacity": value}) == ["capacity"]
    assert refused(api.Priority, {"priority": value, "reason": "r"}) == ["priority"]
    q = {"service_type": FAULT, "certificate": "C", "level": value}
    assert refused(api.QualificationIn, q) == ["level"]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, True, None, [1.0], "x" * 201])
def test_measurements_are_finite_numbers_or_short_texts(value: object) -> None:
    assert refused(api.LogWork, {"action": "a", "mode": "remote", "measurements": {"v": value}}) == ["measurements.v"]


def test_sizes_times_and_control_characters_are_bounded() -> None:
    assert refused(api.LogWork, {"action": "a", "mode": "remote", "measurements": {str(i): i for i in range(51)}})
    assert refused(api.RegisterTechnician, {"name": "Q", "service_types": [FAULT], "regions": ["r"] * 101})
    assert refused(api.Decline, {"reason": "x" * 1001}) == ["reason"]
    assert refused(api.Decline, {"reason": "bell\x07"}) == ["reason"]
    assert refused(api.Period, {"start": "2026-01-01T00:00:00Z", "end": 1_800_000_000}) == ["end"]
    assert refused(api.Period, {"start": "2026-01-01T00:00:00", "end": "2026-01-02T00:00:00Z"}) == ["start"]
    assert refused(api.Period, {"start": "2026-01-01T00:00:00Z", "end": "9999-12-31T23:59:59-14:00"}) == ["end"]
    assert refused(api.PeakModeIn, {"on": 1, "reason": "r"}) == ["on"]


def test_a_qualification_without_valid_from_is_valid_from_registration() -> None:
    """The issue's example: it used to answer 500 after saving, and the relay could never publish it."""
    app = new_app()
    body = api.RegisterTechnician.model_validate(
        {"name": "Q", "qualifications": [{"service_type": "fixed.installation", "certificate": "C"}], "regions": ["r"]}
    )
    quals = [q.model_dump() for q in body.qualifications]
    tech, _ = app.register_technician(uuid4(), body.name, body.service_types, body.regions, body.capacity, quals)
    assert tech.qualifications["fixed.installation"]["valid_from"] == NOW
    assert api.technician_view(tech)["qualifications"][0]["valid_from"] == NOW.isoformat()
    (registered,) = mapped(app)
    assert isinstance(registered.event, wire.TechnicianRegistered)
    assert registered.event.qualifications[0].valid_from == NOW


def test_a_qualification_ending_before_registration_is_refused_naming_the_field() -> None:
    app = new_app()
    q = {"service_type": FAULT, "certificate": "C", "level": 2, "valid_from": None}
    q["valid_until"] = NOW - timedelta(days=1)
    with pytest.raises(Invalid) as info:
        app.register_technician(uuid4(), "Q", [], ["r"], 2, [q])
    assert info.value.field == "qualifications.0.valid_until"
    assert app.recorder.max_notification_id() is None


def test_a_service_type_the_catalogue_does_not_offer_is_refused_naming_the_field() -> None:
    app = new_app()
    with pytest.raises(Invalid) as info:
        app.register_technician(uuid4(), "Q", [FAULT, "fax.repair"], ["r"], 2)
    assert info.value.field == "service_types.1"
    q = {"service_type": "fax.repair", "certificate": "C", "level": 2, "valid_from": None, "valid_until": None}
    with pytest.raises(Invalid) as info:
        app.register_technician(uuid4(), "Q", [], ["r"], 2, [q])
    assert info.value.field == "qualifications.0.service_type"
    assert app.recorder.max_notification_id() is None
    tech, _ = app.register_technician(uuid4(), "Q", [FAULT], ["r"], 2)
    with pytest.raises(Invalid) as info:
        app.grant_qualification(tech.id, "fax.repair", "C", 1, None, None, "training")
    assert info.value.field == "service_type"
    assert app.recorder.max_notification_id() == 1


def test_an_event_the_wire_cannot_carry_is_never_recorded() -> None:
    """The last line: a domain event the mapper refuses fails its command whole, so the relay never meets it."""
    app = new_app()
    bad = {"service_type": FAULT, "certificate": "C", "level": 9, "valid_from": NOW, "valid_until": None}
    tech = Technician(
        id=uuid4(), name="Q", regions=["r"], capacity=1, qualifications=[bad], credential_hash=None, registered_at=NOW
    )
    with pytest.raises(ValidationError):
        app.save(tech)
    assert app.recorder.max_notification_id() is None


def test_a_registration_recorded_before_the_fix_maps_and_assigns_as_valid_from_registration() -> None:
    """Stores written by the old code hold qualifications without valid_from; after the fix their relay
    republishes them (set aside until then), the board assigns their holders and their view shows."""
    app = new_app()
    legacy = {"service_type": FAULT, "certificate": "C", "level": 1, "valid_from": None, "valid_until": None}
    tech = Technician(
        id=uuid4(),
        name="Q",
        regions=["north"],
        capacity=1,
        qualifications=[legacy],
        credential_hash=None,
        registered_at=NOW - timedelta(days=1),
    )
    app.save(tech)
    (registered,) = mapped(app)
    assert isinstance(registered.event, wire.TechnicianRegistered)
    assert registered.event.qualifications[0].valid_from == NOW - timedelta(days=1)
    assert api.technician_view(app.load(tech.id))["qualifications"][0]["valid_from"]
    wo = app.open_work_order(work_order_id("legacy"), "legacy", FAULT, "north", 2, None, "cause")
    app.save(wo)
    assert app.drain_queue() == 1 and app.load(wo.id).technician_id == str(tech.id)


def test_a_policy_without_targets_for_an_offered_type_is_refused() -> None:
    app = new_app()
    policy = {
        "calendars": {"24x7": {"always": True}},
        "type_calendars": {"*": "24x7"},
        "targets": {"*.fault_repair": {"1": {"respond_hours": 1, "resolve_hours": 8}}},
    }
    with pytest.raises(Invalid) as info:
        app.adopt_policy(api.SlaPolicyIn.model_validate(policy).model_dump(mode="json", exclude_none=True), "admin")
    assert info.value.field == "targets" and "installation" in info.value.reason
    assert app.recorder.max_notification_id() is None


# --- the explanation of an assignment drained from the queue ----------------------------------------


def test_work_drained_from_the_queue_is_explained_with_the_load_the_decision_saw() -> None:
    app = new_app()
    tech, _ = app.register_technician(uuid4(), "Solo", [FAULT], ["north"], 1)
    wo = app.open_work_order(work_order_id("q1"), "q1", FAULT, "north", 2, None, "cause")
    app.save(wo)
    assert app.drain_queue() == 1
    (assigned,) = [o for o in mapped(app) if isinstance(o.event, wire.Assigned)]
    event = assigned.event
    assert isinstance(event, wire.Assigned) and event.technician_id == str(tech.id)
    assert re.search(r"; load 0/1\)$", event.reason), event.reason
    assert [(c.load, c.capacity) for c in event.candidates] == [(0, 1)]
    assert app.load(tech.id).active == [str(wo.id)]  # and now it is at 1/1


# --- the SLA explanation of a stopped clock ----------------------------------------------------------


def targets(respond: float, resolve: float, cal: Calendar) -> dict[str, Any]:
    return Targets(respond, resolve, cal, "test").spec()


def test_a_stopped_clock_still_shows_its_deadline_its_warning_and_whether_it_was_met() -> None:
    opened = datetime(2026, 6, 1, 0, tzinfo=UTC)
    facts = [
        Fact(opened, "opened", {"targets": targets(H, 4 * H, Calendar())}),
        Fact(opened + timedelta(minutes=30), "accepted"),  # respond: stopped short of its warning
        Fact(opened + timedelta(hours=5), "resolved"),  # resolve: stopped after its deadline
    ]
    out = explain(facts, opened + timedelta(days=2))
    respond, resolve = out["respond"], out["resolve"]
    assert respond["state"] == "met" and respond["met"] is True
    assert respond["deadline"] == (opened + timedelta(hours=1)).isoformat()
    assert respond["warning_at"] == (opened + timedelta(minutes=45)).isoformat()
    assert resolve["state"] == "breached" and resolve["met"] is False
    assert resolve["deadline"] == (opened + timedelta(hours=4)).isoformat()
    assert resolve["warning_at"] == (opened + timedelta(hours=3)).isoformat()
    assert explain(facts[:1], opened)["respond"]["met"] is None  # still running: not decided yet


def test_a_clock_stopped_on_a_business_calendar_keeps_the_deadline_that_held() -> None:
    business = Calendar("business", always=False)
    friday_16 = datetime(2026, 6, 5, 16, tzinfo=UTC)
    facts = [
        Fact(friday_16, "opened", {"targets": targets(H, 10 * H, business)}),
        Fact(friday_16 + timedelta(minutes=20), "accepted"),
        Fact(datetime(2026, 6, 5, 17, tzinfo=UTC), "paused", {"kind": "held", "reason": "parts"}),
        Fact(datetime(2026, 6, 8, 9, tzinfo=UTC), "withdrawn", {"reason": "request cancelled"}),
    ]
    resolve = explain(facts, datetime(2026, 6, 10, tzinfo=UTC))["resolve"]
    # 1 h ran on Friday; 9 h more from the stop (Monday 09:00) would have been due Monday 18:00
    assert resolve["elapsed_seconds"] == H and resolve["met"] is True
    assert resolve["deadline"] == datetime(2026, 6, 8, 18, tzinfo=UTC).isoformat()
    assert resolve["warning_at"] == datetime(2026, 6, 8, 15, 30, tzinfo=UTC).isoformat()
