"""The complaints context's inbound bodies are strict: each refusal names the field, nothing odd reaches an event."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from tsop_events.inbound import EdgeError, check_json
from tsop_feedback.complaints.api import Assess, FileComplaint, OpenAction, Reassign, Verify

GOOD = {"customer_id": "c1", "complaint_type": "billing", "description": "charged twice"}


def refusal(model: type[BaseModel], body: dict[str, Any] | str) -> str:
    raw = body if isinstance(body, str) else json.dumps(body)
    try:
        replaced = check_json(raw.encode())
    except EdgeError as exc:
        return exc.field
    with pytest.raises(ValidationError) as refused:
        model.model_validate(json.loads(replaced or raw))
    return ".".join(str(p) for p in refused.value.errors()[0]["loc"])


@pytest.mark.parametrize(("change", "field"), [
    ({"description": ""}, "description"),
    ({"description": "bell \u0007"}, "description"),
    ({"description": "x" * 4001}, "description"),
    ({"customer_id": 42}, "customer_id"),
    ({"complaint_type": "Billing!"}, "complaint_type"),
    ({"ticket_ids": ["not-a-uuid"]}, "ticket_ids.0"),
    ({"ticket_ids": [str(i) for i in range(21)]}, "ticket_ids"),
    ({"surprise": True}, "surprise"),
])
def test_a_bad_complaint_is_refused_naming_the_field(change: dict[str, Any], field: str) -> None:
    assert refusal(FileComplaint, {**GOOD, **change}) == field
    assert FileComplaint.model_validate(GOOD).complaint_type == "billing"


def test_a_nul_in_a_complaint_is_refused_at_the_edge() -> None:
    assert refusal(FileComplaint, '{"customer_id": "c1", "complaint_type": "billing", "description": "a\\u0000b"}') \
        == "description"


@pytest.mark.parametrize("value", ['"true"', "1", "null"])
def test_checklist_answers_and_verification_are_booleans(value: str) -> None:
    assert refusal(Assess, f'{{"checks": {{"log_complete": {value}}}}}') == "checks.log_complete"
    assert refusal(Verify, f'{{"effective": {value}, "note": "n"}}') == "effective"


def test_an_action_needs_a_due_date_with_its_offset() -> None:
    body = {"title": "t", "kind": "corrective", "owner": "o", "due": "2026-07-01T00:00:00"}
    assert refusal(OpenAction, body) == "due"
    assert refusal(OpenAction, {**body, "due": "2026-07-01T00:00:00Z", "kind": "cosmetic"}) == "kind"
    assert refusal(Reassign, {"due": "soon"}) == "due"
    assert OpenAction.model_validate({**body, "due": "2026-07-01T00:00:00+08:00"}).due.utcoffset() is not None
