"""The services' edge in one middleware: the metrics, the edge's checks and the opening of personal data in one
layer; ``check_json`` parses with orjson first and judges as the standard library's parser does.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any
from uuid import UUID

import pytest
from fastapi import APIRouter, Depends, Header, Query, Response
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from pydantic import BaseModel, Field

from tsop_events.auth import Principal, Role, hash_token, requires
from tsop_events.http import create_app, service_dependency
from tsop_events.inbound import EdgeError, Inbound, Int, Text, _check_json_exactly, check_json
from tsop_events.personal import MemoryKeyring
from tsop_events.settings import ServiceSettings
from tsop_events.store import EventStoreApp


class _App(EventStoreApp):
    pass


class _Runtime:
    def __init__(self) -> None:
        self.settings = ServiceSettings(service_name="lean-test", max_body_bytes=4096)
        self.app = _App.__new__(_App)  # only its type is looked at
        self.tokens = {
            hash_token("chan"): Principal("chan-1", frozenset({Role.channel}), channel_id="c1"),
            hash_token("tech"): Principal("tech-1", frozenset({Role.technician})),
            hash_token("root"): Principal("ops", frozenset({Role.admin})),
        }

    async def authenticate(self, token_hash: str) -> Principal | None:
        return self.tokens.get(token_hash)

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


Svc = Annotated[Any, Depends(service_dependency(_App))]
Caller = Annotated[Principal, Depends(requires(Role.channel, Role.agent))]


class Rating(Inbound):
    score: Annotated[Int, Field(ge=1, le=5)]
    comment: Annotated[Text, Field(max_length=20)] | None = None


class View(BaseModel):
    ticket_id: str
    score: int | None
    comment: str | None = None
    kept: bool = False


async def _yielded() -> AsyncIterator[str]:
    yield "yielded"


def _router() -> APIRouter:
    router = APIRouter(prefix="/v1/tickets", tags=["t"])

    @router.post("/{ticket_id}/rating", status_code=201, response_model=View, response_model_exclude_unset=True)
    async def rate(ticket_id: UUID, body: Rating, response: Response, svc: Svc, caller: Caller) -> View:
        view = View(ticket_id=str(ticket_id), score=body.score)
        if body.comment is not None:
            view.comment = body.comment
        if body.score == 2:
            response.status_code = 202
            response.headers["X-Kept"] = "yes"
            view.kept = True
        return view

    @router.get("/{ticket_id}", response_model=View, response_model_exclude_none=True)
    async def read(ticket_id: UUID, caller: Caller, svc: Svc, limit: Annotated[int, Query(ge=1, le=10)] = 5,
                   since: UUID | None = None, x_trace: Annotated[str | None, Header()] = None) -> View:
        return View(ticket_id=str(ticket_id), score=limit, comment=x_trace or (str(since) if since else None))

    @router.delete("/{ticket_id}", status_code=204)
    async def drop(ticket_id: UUID, caller: Caller) -> None:
        return None

    @router.get("/{ticket_id}/raw")
    async def raw(ticket_id: UUID, caller: Caller) -> Response:
        return Response(b"raw", media_type="text/plain", headers={"X-Raw": "1"})

    @router.get("/{ticket_id}/yielded")
    async def with_yield(ticket_id: UUID, caller: Caller, got: Annotated[str, Depends(_yielded)]) -> dict[str, str]:
        return {"got": got}

    return router


def _client() -> TestClient:
    return TestClient(create_app(_Runtime(), "lean", [_router()]))  # type: ignore[arg-type]


T = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
CHAN, TECH = {"Authorization": "Bearer chan"}, {"Authorization": "Bearer tech"}
JSON = {"Content-Type": "application/json"}

def test_the_openapi_document_is_the_one_fastapi_makes() -> None:
    from fastapi import FastAPI
    from fastapi.openapi.utils import get_openapi

    lean = create_app(_Runtime(), "lean", [_router()])  # type: ignore[arg-type]
    plain = FastAPI()
    plain.include_router(_router())
    doc = lean.openapi()
    reference = get_openapi(title="lean", version="1.0.0", routes=plain.routes)
    for path, operations in reference["paths"].items():
        for verb, operation in operations.items():
            mine = doc["paths"][path][verb]
            assert mine["parameters" if "parameters" in operation else "operationId"] == \
                operation["parameters" if "parameters" in operation else "operationId"]
            assert mine.get("requestBody") == operation.get("requestBody")
            assert {k: v for k, v in mine["responses"].items() if k != "4XX"} == \
                {k: v for k, v in operation["responses"].items() if k != "422"}


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_metrics_count_every_answer_by_route_even_a_refused_or_rewritten_body() -> None:
    route = "/v1/tickets/{ticket_id}/rating"
    ok = {"method": "POST", "route": route, "status": "201"}
    refused = {"method": "POST", "route": "unmatched", "status": "422"}
    too_large = {"method": "POST", "route": "unmatched", "status": "413"}
    before = [_sample("tsop_http_requests_total", labels) for labels in (ok, refused, too_large)]
    seconds = _sample("tsop_http_request_seconds_count", {"method": "POST", "route": route})
    with _client() as client:
        assert client.post(f"/v1/tickets/{T}/rating", headers={**CHAN, **JSON}, content=b'{"score": 5}').status_code \
            == 201
        # text the edge rewrites in NFC: still named by its route
        assert client.post(f"/v1/tickets/{T}/rating", headers={**CHAN, **JSON},
                           content=b'{"score": 5, "comment": "cafe\\u0301"}').json()["comment"] == "caf\u00e9"
        assert client.post(f"/v1/tickets/{T}/rating", headers={**CHAN, **JSON},
                           content=b'{"score": 1e400}').status_code == 422  # the edge's own refusal
        assert client.post(f"/v1/tickets/{T}/rating", headers={**CHAN, **JSON},
                           content=b'{"c": "' + b"x" * 5000 + b'"}').status_code == 413
    after = [_sample("tsop_http_requests_total", labels) for labels in (ok, refused, too_large)]
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 1, 1]
    assert _sample("tsop_http_request_seconds_count", {"method": "POST", "route": route}) - seconds == 2


def test_answers_through_the_one_middleware_open_personal_data(monkeypatch: pytest.MonkeyPatch) -> None:
    ring = MemoryKeyring()
    token = ring.seal("t", "c", "Flat 3")
    monkeypatch.setattr("tsop_events.http.keyring_of", lambda settings: ring)
    router = APIRouter()

    @router.get("/doc")
    async def doc(caller: Caller) -> dict[str, Any]:
        return {"description": token, "n": 1}

    @router.get("/plain")
    async def plain(caller: Caller) -> dict[str, Any]:
        return {"description": "nothing sealed"}

    with TestClient(create_app(_Runtime(), "lean", [router])) as client:  # type: ignore[arg-type]
        r = client.get("/doc", headers=CHAN)
        assert r.json() == {"description": "Flat 3", "n": 1}
        assert int(r.headers["content-length"]) == len(r.content)
        r = client.get("/plain", headers=CHAN)
        assert r.json() == {"description": "nothing sealed"}
        assert int(r.headers["content-length"]) == len(r.content)


BODIES = [
    b'{"a": 1}', b"  [1, 2.5, -0, -0.0, 1E5, 0.1]  ", b'"caf\\u00e9"', b'"cafe\\u0301"', b'{"a": "cafe\\u0301"}',
    b"9223372036854775807", b"-9223372036854775808", b"9223372036854775808", b"-9223372036854775809",
    b"18446744073709551615", b"18446744073709551616", b'{"a": [1, 99999999999999999999999]}',
    b"1e308", b"1e400", b"-1e400", b"9.3e18", b"-9.3e18", b"NaN", b'{"a": Infinity}', b"-Infinity",
    b'"\\ud800"', b'"\\udc00\\ud800"', b'"\xed\xa0\x80"', b'"\\u0000"', b'{"\\u0000": 1}', b'"pd1.abc"',
    b'{"a": 1, "a": 2}', b'\xef\xbb\xbf{"a": 1}', '{"a": "é"}'.encode("utf-16"), b'"\xff"', b"[" * 40 + b"]" * 40,
    b"[" * 2000 + b"]" * 2000, b'{"a": "\x01"}', b"[1,]", b"tru", b"", b"   ", b'{"a": 1}x', b'"\x7f"',
    b'{"a": {"b": [{"c": "cafe\\u0301", "d": 18446744073709551616}]}}',
]


@pytest.mark.parametrize("body", BODIES)
def test_check_json_judges_as_the_standard_library_does(body: bytes) -> None:
    def judged(check: Any) -> Any:
        try:
            return "passes", check(body)
        except EdgeError as exc:
            return "refused", exc.status, exc.field, exc.reason

    assert judged(check_json) == judged(_check_json_exactly)


def test_reference_cases_cover_both_outcomes() -> None:
    """The differential tests above would pass vacuously if everything were refused or everything passed."""
    outcomes = {json.dumps(_outcome(b)) for b in BODIES}
    assert any('"passes"' in o for o in outcomes) and any('"refused"' in o for o in outcomes)


def _outcome(body: bytes) -> Iterator[str] | list[str]:
    try:
        check_json(body)
    except EdgeError:
        return ["refused"]
    return ["passes"]
