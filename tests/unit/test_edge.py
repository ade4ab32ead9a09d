"""The edge: what no event can carry is refused before any route runs, in every service."""

from __future__ import annotations

import json
from typing import Annotated, Any

import orjson
import pytest
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import Field

from tsop_events.http import Edge, _validation
from tsop_events.inbound import MAX_DEPTH, EdgeError, Inbound, Int, JsonObject, Number, Text, check_json


class Body(Inbound):
    name: Annotated[Text, Field(max_length=50)] = "x"
    score: Annotated[Int, Field(ge=1, le=5)] = 3
    value: Number = 0.0
    attributes: JsonObject = Field(default_factory=dict)


def make_client() -> TestClient:
    app = FastAPI()
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_middleware(Edge, limit=4096)

    @app.post("/things")
    async def post(body: Body) -> dict[str, Any]:
        return body.model_dump()

    @app.get("/things")
    async def get(q: str = "") -> dict[str, str]:
        return {"q": q}

    return TestClient(app)


client = make_client()


def post_raw(raw: bytes | str) -> Any:
    data = raw.encode() if isinstance(raw, str) else raw
    return client.post("/things", content=data, headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    ("raw", "status", "field"),
    [
        ('{"value": NaN}', 400, "body"),
        ('{"value": Infinity}', 400, "body"),
        ('{"value": -Infinity}', 400, "body"),
        ('{"value": 1e400}', 422, "value"),
        ('{"name": "a\\u0000b"}', 422, "name"),
        ('{"attributes": {"k": ["\\u0000"]}}', 422, "attributes.k.0"),
        ('{"attributes": {"\\u0000": 1}}', 422, "attributes.\x00"),
        ('{"name": "\\ud800"}', 422, "name"),
        ('{"score": 123456789012345678901234567890}', 422, "body"),
        # a sealed token (from a topic, a dead letter or the archive) sent in would be opened in the sender's answer
        ('{"name": "pd1.0123456789abcdef.c2VjcmV0LXRleHQ"}', 422, "name"),
        ('{"attributes": {"note": [{"text": "see pd1.0123456789abcdef.c2VjcmV0 please"}]}}', 422,
         "attributes.note.0.text"),
    ],
)
def test_what_no_event_can_carry_is_refused(raw: str, status: int, field: str) -> None:
    r = post_raw(raw)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"][0]["field"] == field


def test_deep_nesting_is_refused_not_a_500() -> None:
    deep = '{"attributes": ' + '{"a": ' * 300 + "1" + "}" * 300 + "}"
    r = post_raw(deep)
    assert r.status_code == 422
    assert "deeper" in r.json()["errors"][0]["reason"]


def test_free_form_objects_are_bounded_by_the_model() -> None:
    r = post_raw(json.dumps({"attributes": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}}}))
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "attributes"


@pytest.mark.parametrize("score", ['"5"', "true", "5.0"])
def test_integers_are_integers(score: str) -> None:
    r = post_raw('{"score": ' + score + "}")
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "score"


def test_control_characters_in_text_are_refused() -> None:
    r = post_raw(json.dumps({"name": "bell\x07"}))
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "name"


def test_text_is_normalised_to_nfc() -> None:
    r = post_raw(json.dumps({"name": "Cafe\u0301", "attributes": {"x": "e\u0301"}}))
    assert r.status_code == 200
    assert r.json()["name"] == "Caf\u00e9"
    assert r.json()["attributes"] == {"x": "\u00e9"}


def test_a_good_body_passes_unchanged() -> None:
    r = post_raw(json.dumps({"name": "Ann", "score": 5, "value": 2, "attributes": {"a": [1, 2.5, None, True]}}))
    assert r.status_code == 200
    assert r.json() == {"name": "Ann", "score": 5, "value": 2.0, "attributes": {"a": [1, 2.5, None, True]}}


def test_query_strings_are_checked() -> None:
    assert client.get("/things", params={"q": "ok"}).json() == {"q": "ok"}
    r = client.get("/things?q=a%00b")
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "q"
    bad = client.get("/things?q=%ff")
    assert (bad.status_code, bad.json()["title"]) == (400, "Malformed query")


def test_streamed_bodies_over_the_limit_get_413() -> None:
    def chunks() -> Any:
        for _ in range(10):
            yield b" " * 1000

    r = client.post("/things", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_whatever_the_edge_passes_postgres_and_orjson_can_hold(value: Any) -> None:
    """The invariant behind the edge: what it lets through serialises, and holds no NUL or non-finite number."""
    try:
        raw = json.dumps(value).encode()
    except ValueError:
        return
    try:
        replaced = check_json(raw)
    except EdgeError:
        return
    body = replaced if replaced is not None else raw
    parsed = json.loads(body)
    encoded = orjson.dumps(parsed)  # raises on lone surrogates and integers beyond 64 bits
    assert b"\\u0000" not in encoded
    assert b"NaN" not in encoded or "NaN" in json.dumps(parsed)


def test_max_depth_is_a_real_bound() -> None:
    ok = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    assert check_json(ok.encode()) is None
    with pytest.raises(EdgeError):
        check_json(("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)).encode())


def test_a_second_content_type_cannot_smuggle_a_body_past_the_edge() -> None:
    r = client.post(
        "/things",
        content=b'{"value": NaN}',
        headers=[("content-type", "application/json"), ("content-type", "text/plain")],  # type: ignore[arg-type]
    )
    assert r.status_code == 400
