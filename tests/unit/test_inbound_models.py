"""The native inbound models of intake, feedback and incident are strict: what they accept, every event can carry.

Each body crosses the edge as over HTTP: ``check_json`` (the ``Edge`` middleware), then the route's model
validating the parsed JSON (what FastAPI does). The examples are issue 8's, and their relatives.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from tsop_events.inbound import EdgeError, check_json
from tsop_feedback.api import Rating
from tsop_intake.api import CancelRequest, ChangeChannel, RegisterChannel, ReviewDecision, SubmitRequest
from tsop_intake.service import ChangesIn

VALID: dict[str, Any] = {
    "customer": {"id": "c1", "tier": "gold"},
    "region": "north",
    "service_type": "broadband.fault_repair",
    "description": "No internet since the storm",
    "location": {"address": "1 Main Street"},
}


def cross(model: type[BaseModel], raw: str) -> tuple[int, str] | BaseModel:
    """The model a route would get, or (status, field) of the refusal."""
    try:
        replaced = check_json(raw.encode())
    except EdgeError as exc:
        return exc.status, exc.field
    try:
        return model.model_validate(json.loads(replaced or raw))
    except ValidationError as exc:
        return 422, ".".join(str(p) for p in exc.errors()[0]["loc"])


def refused(model: type[BaseModel], raw: str) -> str:
    out = cross(model, raw)
    assert isinstance(out, tuple), f"{raw} was accepted as {out!r}"
    status, field = out
    assert status in (400, 422)
    return field


def submit(**change: Any) -> str:
    return json.dumps({**VALID, **change})


@pytest.mark.parametrize("score", ['"5"', "true", "5.0", "0", "6", "null", "NaN", "1e400", "9223372036854775808"])
def test_a_rating_score_is_an_integer_from_1_to_5(score: str) -> None:
    refused(Rating, f'{{"score": {score}}}')
    ok = cross(Rating, '{"score": 5, "comment": "Fine"}')
    assert isinstance(ok, Rating) and ok.score == 5 and type(ok.score) is int


@pytest.mark.parametrize("comment", ["a\\u0000b", "\\ud800", "bell \\u0007", "esc \\u001b[31m", "del \\u007f"])
def test_a_comment_holds_no_control_character_nul_or_lone_surrogate(comment: str) -> None:
    assert refused(Rating, f'{{"score": 4, "comment": "{comment}"}}') in ("comment", "body", "comment.0")


def test_text_is_normalised_and_may_keep_tabs_and_newlines() -> None:
    ok = cross(Rating, '{"score": 4, "comment": "cafe\\u0301\\tgood\\nthanks \\ud83d\\ude00"}')
    assert isinstance(ok, Rating) and ok.comment == "caf\u00e9\tgood\nthanks \U0001f600"


@pytest.mark.parametrize("limit", ['"5"', "true", "5.0", "0", "1000001", "18446744073709551616"])
def test_a_rate_limit_is_an_integer_in_range(limit: str) -> None:
    assert refused(RegisterChannel, f'{{"name": "shop", "kind": "web", "rate_limit_per_minute": {limit}}}') in (
        "rate_limit_per_minute", "body")
    assert refused(ChangeChannel, f'{{"rate_limit_per_minute": {limit}}}') in ("rate_limit_per_minute", "body")
    ok = cross(ChangeChannel, '{"rate_limit_per_minute": 60}')
    assert isinstance(ok, ChangeChannel) and ok.rate_limit_per_minute == 60


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (submit(description="broken\u0000line"), "description"),
        (submit(description="broken \ud800 line"), "description"),
        (submit(description="bell \u0007 in it"), "description"),
        (submit(special_needs="\u0000"), "special_needs"),
        (submit(customer={"id": "c\u0000"}), "customer.id"),
        (submit(region="north\u001b"), "region"),
        (submit(location={"address": "1 Main\u0000 St"}), "location.address"),
        (submit(details={"n": float("nan")}), "body"),  # NaN is not JSON
        (submit(details={"n": float("inf")}), "body"),
        (submit(details={"n": 2**70}), "body"),  # the edge's integer parser: beyond 64 bits
        (submit(details={"n": 1e19}), "details.n"),  # jsonb gives it back as an integer beyond 64 bits
        (submit(details={"n": 1e308}), "details.n"),
        (submit(details={"n": "a\u0000"}), "details.n"),
        (submit(details={"n": [1]}), "details.n"),
        (submit(attributes={"deep": json.loads("[" * 300 + "]" * 300)}), "attributes.deep"),
        (submit(attributes=json.loads('{"a":' * 9 + "1" + "}" * 9)), "attributes"),
        (submit(attributes={"k\u0000": 1}), "attributes.k\u0000"),
        (submit(attributes={"n": list(range(1001))}), "attributes"),
        (submit(attributes={"n": 1e300}), "attributes.n"),
        (submit(time_requirement={"deadline": "2026-06-02T10:00:00"}), "time_requirement.deadline"),
        (submit(time_requirement={"deadline": "9999-12-31T23:00:00-14:00"}), "time_requirement.deadline"),
        (submit(time_requirement={"deadline": "0001-01-01T00:00:00+14:00"}), "time_requirement.deadline"),
        (submit(time_requirement={"deadline": "2026-06-02T10:00:00+23:00"}), "time_requirement.deadline"),
        (submit(customer={"id": "c1", "tier": "gold", "vip": True}), "customer.vip"),
        (submit(description=5), "description"),
        (submit(priority=1), "priority"),
    ],
)
def test_a_submission_no_event_could_carry_is_refused_naming_the_field(raw: str, field: str) -> None:
    got = refused(SubmitRequest, raw)
    assert got == field or got.startswith(field + "."), (got, field)


def test_the_same_holds_for_changes() -> None:
    assert refused(ChangesIn, '{"attributes": {"x": "\\u0000"}}').startswith("attributes")
    assert refused(ChangesIn, '{"details": {"n": true, "m": 9223372036854775808}}') == "body"
    assert refused(ChangesIn, '{"details": {"n": true, "m": 9.3e18}}') == "details.m"
    assert refused(ChangesIn, '{"description": "a\\u0001 b c d e f g"}') == "description"
    ok = cross(ChangesIn, '{"details": {"n": true, "m": 5, "x": 2.5, "s": "5"}, "attributes": {"a": [1, {"b": null}]}}')
    assert isinstance(ok, ChangesIn) and ok.details == {"n": True, "m": 5, "x": 2.5, "s": "5"}


def test_what_a_submission_keeps_is_exactly_what_was_sent_in_nfc() -> None:
    ok = cross(SubmitRequest, submit(description="Cafe\u0301 \U0001f469\u200d\U0001f4bb line\tdown\n",
                                     details={"floor": 3, "code": "007", "ok": False, "ratio": 0.5},
                                     time_requirement={"deadline": "2026-06-02T10:00:00+14:00"}))
    assert isinstance(ok, SubmitRequest)
    assert ok.description == "Caf\u00e9 \U0001f469\u200d\U0001f4bb line\tdown\n"
    assert ok.details == {"floor": 3, "code": "007", "ok": False, "ratio": 0.5}
    assert ok.time_requirement.deadline is not None and ok.time_requirement.deadline.utcoffset() is not None
    assert ok.time_requirement.deadline.isoformat() == "2026-06-02T10:00:00+14:00"  # kept as given


@pytest.mark.parametrize("model", [CancelRequest, ReviewDecision])
def test_reasons_and_codes_are_text(model: type[BaseModel]) -> None:
    decision = '"decision": "accept", ' if model is ReviewDecision else ""
    assert refused(model, f'{{{decision}"reason_code": "x\\u0000"}}') in ("reason_code", "body")
    assert refused(model, f'{{{decision}"reason_code": "ok", "reason": "\\u001b"}}') == "reason"
    assert refused(model, f'{{{decision}"reason_code": 5}}') == "reason_code"
    assert isinstance(cross(model, f'{{{decision}"reason_code": "ok", "reason": "ça va"}}'), model)


@pytest.mark.parametrize(
    "name", ["customer_tier", "region", "service_type", "description", "time_requirement", "details", "attributes"]
)
def test_a_change_may_not_remove_what_every_request_keeps(name: str) -> None:
    # found by the edge invariant: {"customer_tier": null} was saved, then the RequestAccepted of the review
    # that followed could not be mapped to its wire form (CustomerTier(None)), stopping intake's relay
    assert refused(ChangesIn, f'{{"{name}": null}}') == name
    assert "null" not in json.dumps(ChangesIn.model_json_schema()["properties"][name])
    removable = ("special_needs", "location", "callback_url", "channel_request_ref")
    ok = cross(ChangesIn, json.dumps(dict.fromkeys(removable)))
    assert isinstance(ok, ChangesIn) and ok.model_dump(exclude_unset=True) == dict.fromkeys(removable)
