"""Property-based API tests with schemathesis, against both of intake's OpenAPI documents.

* the TMF621 facade's document (TM Forum's v5.0.1 OAS trimmed to what is implemented), called
  with a registered channel's credential;
* intake's native document (``/openapi.json``, the ``/v1`` routes), called as an administrator, and its
  request routes again as a registered channel (the role that submits), so their success bodies are met.

For every generated request: no 5xx, a status code the document declares, a declared content type,
and a body that matches the declared schema, success bodies included: every native route declares its
answer (``response_model``), which the first test holds true. Examples per operation: ``TSOP_SCHEMATHESIS_EXAMPLES``
(default 25).
"""

from __future__ import annotations

import os
from importlib import resources
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.e2e.client import Platform
from tsop_events.launchers.stack import Stack

EXAMPLES = int(os.environ.get("TSOP_SCHEMATHESIS_EXAMPLES", "25"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
TMF_BASE = "/tmf-api/troubleTicket/v5"
TMF_DOCUMENT = resources.files("tsop_intake").joinpath("tmf/openapi/tmf621-facade.json")


@pytest.fixture(scope="session")
def channel_headers(platform: Platform) -> dict[str, str]:
    r = platform.http.post(
        platform.url("intake", "/v1/channels"),
        json={"name": "schemathesis", "kind": "web"},
        headers=platform.auth("admin"),
    )
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['credential']['token']}"}


@pytest.fixture(scope="session")
def tmf_schema(stack: Stack) -> Any:
    return schemathesis.openapi.from_path(str(TMF_DOCUMENT))


@pytest.fixture(scope="session")
def native_schema(stack: Stack) -> Any:
    document = httpx.get(stack.url("intake") + "/openapi.json", timeout=10).json()
    document["paths"] = {p: v for p, v in document["paths"].items() if p.startswith("/v1/")}
    return schemathesis.openapi.from_dict(document)


tmf = schemathesis.pytest.from_fixture("tmf_schema")
native = schemathesis.pytest.from_fixture("native_schema")
fuzz = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
)


def test_every_native_route_declares_its_success_body(native_schema: Any) -> None:
    undeclared = []
    for path, operations in native_schema.raw_schema["paths"].items():
        for method, operation in operations.items():
            answers = {code: r for code, r in operation["responses"].items() if code.startswith("2") and code != "204"}
            if not answers or not all(r.get("content", {}).get("application/json", {}).get("schema")
                                      for r in answers.values()):
                undeclared.append(f"{method.upper()} {path}")
    assert not undeclared, f"no declared success body: {undeclared}"


@tmf.parametrize()
@fuzz
def test_the_tmf621_facade_keeps_its_document(case: Any, stack: Stack, channel_headers: dict[str, str]) -> None:
    case.call_and_validate(base_url=stack.url("intake") + TMF_BASE, headers=channel_headers, checks=CHECKS)


@native.parametrize()
@fuzz
def test_the_native_api_keeps_its_document(case: Any, stack: Stack, platform: Platform) -> None:
    case.call_and_validate(base_url=stack.url("intake"), headers=platform.auth("admin"), checks=CHECKS)


@native.include(path_regex="^/v1/requests").parametrize()
@fuzz
def test_the_native_request_routes_keep_their_document_for_a_channel(
    case: Any, stack: Stack, channel_headers: dict[str, str]
) -> None:
    case.call_and_validate(base_url=stack.url("intake"), headers=channel_headers, checks=CHECKS)
