"""Property-based API tests with schemathesis: intake's two OpenAPI documents, dispatch's, feedback's,
incident's and archive's.

* the TMF621 facade's document (TM Forum's v5.0.1 OAS trimmed to what is implemented), called
  with a registered channel's credential;
* intake's native document (``/openapi.json``, the ``/v1`` routes), called as an administrator, and its
  request routes again as a registered channel (the role that submits), so their success bodies are met;
* dispatch's document (the ``/v1`` routes, each declaring its success body), called as an administrator.
  What it registers stays in a region of its own, so the other tests' work is never given to a
  technician they hold no credential for; the SLA policy is put back as it was (one example, below),
  not fuzzed, since it would change every open work order's targets.
* feedback's document, called as an agent; random ids find no case, so its success bodies (201, 202
  and the case view) are also checked on real tickets;
* incident's document, called as a supervisor (its summary answers 200 to any valid query);
* the archive's document, called as an auditor; random ids find no dossier, so its success bodies
  are also checked on real tickets' dossiers, open and sealed.

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
from tsop_devstack.stack import Stack

from tests.e2e.client import Platform

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


def service_schema(stack: Stack, service: str) -> Any:
    document = httpx.get(stack.url(service) + "/openapi.json", timeout=10).json()
    document["paths"] = {p: v for p, v in document["paths"].items() if p.startswith("/v1/")}
    return schemathesis.openapi.from_dict(document)


@pytest.fixture(scope="session")
def feedback_schema(stack: Stack) -> Any:
    return service_schema(stack, "feedback")


@pytest.fixture(scope="session")
def incident_schema(stack: Stack) -> Any:
    return service_schema(stack, "incident")


feedback = schemathesis.pytest.from_fixture("feedback_schema")
incident = schemathesis.pytest.from_fixture("incident_schema")


@feedback.parametrize()
@fuzz
def test_the_feedback_api_keeps_its_document(case: Any, stack: Stack, platform: Platform) -> None:
    case.call_and_validate(base_url=stack.url("feedback"), headers=platform.auth("agent"), checks=CHECKS)


@incident.parametrize()
@fuzz
def test_the_incident_api_keeps_its_document(case: Any, stack: Stack, platform: Platform) -> None:
    case.call_and_validate(base_url=stack.url("incident"), headers=platform.auth("supervisor"), checks=CHECKS)


def test_feedbacks_answers_match_its_document(feedback_schema: Any, stack: Stack, platform: Platform) -> None:
    """Feedback's success bodies on real tickets: a rating kept (202), one recorded (201), and both cases."""
    rating = feedback_schema["/v1/tickets/{ticket_id}/rating"]["POST"]
    view = feedback_schema["/v1/tickets/{ticket_id}/feedback"]["GET"]
    base, agent = stack.url("feedback"), platform.auth("agent")
    waiting = platform.submit().json()["id"]  # not resolved: a rating is kept until it is
    platform.wait_until("feedback", f"/v1/tickets/{waiting}/feedback", lambda f: True, f"a case for {waiting}", 60,
                        headers=agent)
    kept = rating.Case(path_parameters={"ticket_id": waiting}, body={"score": 3, "comment": "kept"})
    r = kept.call_and_validate(base_url=base, headers=agent, checks=CHECKS)
    assert r.status_code == 202, r.text
    assert r.json()["rating_kept"]["score"] == 3 and r.json()["resolution"] is None
    done = platform.submit().json()["id"]
    platform.work_and_resolve(platform.wait_assigned(done))
    platform.wait_notified(done)
    r = rating.Case(path_parameters={"ticket_id": done}, body={"score": 5}).call_and_validate(
        base_url=base, headers=agent, checks=CHECKS
    )
    assert r.status_code == 201, r.text
    assert "rating_kept" not in r.json() and r.json()["closed_reason"] == "rated"
    for ticket in (waiting, done):
        r = view.Case(path_parameters={"ticket_id": ticket}).call_and_validate(
            base_url=base, headers=agent, checks=CHECKS
        )
        assert r.status_code == 200 and "rating_kept" not in r.json(), r.text
    assert r.json()["score"] == 5 and r.json()["resolution"]["summary"]


def test_incidents_summary_matches_its_document(incident_schema: Any, stack: Stack, platform: Platform) -> None:
    """The summary's success body with open tickets in it."""
    summary = incident_schema["/v1/open-tickets/summary"]["GET"]
    platform.submit(region="schema-east")
    platform.wait_until("incident", "/v1/open-tickets/summary?region=schema-east", lambda s: s["total"] >= 1,
                        "the ticket counted", 60, headers=platform.auth("supervisor"))
    r = summary.Case(query={"region": "schema-east"}).call_and_validate(
        base_url=stack.url("incident"), headers=platform.auth("supervisor"), checks=CHECKS
    )
    assert r.status_code == 200 and r.json()["groups"][0]["region"] == "schema-east", r.text


@pytest.fixture(scope="session")
def archive_schema(stack: Stack) -> Any:
    return service_schema(stack, "archive")


archive = schemathesis.pytest.from_fixture("archive_schema")


@archive.parametrize()
@fuzz
def test_the_archive_api_keeps_its_document(case: Any, stack: Stack, platform: Platform) -> None:
    case.call_and_validate(base_url=stack.url("archive"), headers=platform.auth("auditor"), checks=CHECKS)


def test_the_archives_dossiers_match_its_document(archive_schema: Any, stack: Stack, platform: Platform) -> None:
    """The success bodies of the archive, checked on a dossier still open and on a sealed one."""
    dossier = archive_schema["/v1/tickets/{ticket_id}/dossier"]["GET"]
    opened = platform.submit().json()["id"]
    platform.wait_until("archive", f"/v1/tickets/{opened}/dossier", lambda d: bool(d["events"]),
                        f"the archive holds {opened}", 60, headers=platform.auth("auditor"))
    sealed = platform.submit().json()["id"]
    platform.complete(sealed)
    answers = {}
    for ticket in (opened, sealed):
        r = dossier.Case(path_parameters={"ticket_id": ticket}).call_and_validate(
            base_url=stack.url("archive"), headers=platform.auth("auditor"), checks=CHECKS
        )
        assert r.status_code == 200, r.text
        answers[ticket] = r.json()
    assert answers[opened]["seal"] is None and answers[opened]["status"] in ("open", "awaiting_seal")
    assert answers[sealed]["status"] == "sealed" and answers[sealed]["seal"]["verified"] is True


# --- dispatch ------------------------------------------------------------------------------------------

FUZZ_REGION = "schemathesis"  # nobody else's work is in it


@pytest.fixture(scope="session")
def dispatch_schema(stack: Stack) -> Any:
    document = httpx.get(stack.url("dispatch") + "/openapi.json", timeout=10).json()
    paths = {p: v for p, v in document["paths"].items() if p.startswith("/v1/")}
    for operation in paths.values():
        for method, spec in operation.items():
            assert "200" in spec["responses"] or "201" in spec["responses"], f"{method} has no success"
    paths["/v1/sla-policy"].pop("put")  # adopted by example below, not fuzzed
    document["paths"] = paths
    return schemathesis.openapi.from_dict(document)


dispatch = schemathesis.pytest.from_fixture("dispatch_schema")


@dispatch.parametrize()
@fuzz
def test_dispatch_keeps_its_document(case: Any, stack: Stack, platform: Platform) -> None:
    if isinstance(case.body, dict):
        if "regions" in case.body:
            case.body["regions"] = [FUZZ_REGION]
        if "region" in case.body:
            case.body["region"] = FUZZ_REGION
        if case.path == "/v1/peak-mode":
            case.body["on"] = False  # peak mode would stretch the other tests' targets
    case.call_and_validate(base_url=stack.url("dispatch"), headers=platform.auth("admin"), checks=CHECKS)


def test_dispatch_answers_an_adopted_policy_as_its_document_says(stack: Stack, platform: Platform) -> None:
    url, admin = stack.url("dispatch") + "/v1/sla-policy", platform.auth("admin")
    document = httpx.get(stack.url("dispatch") + "/openapi.json", timeout=10).json()
    declared = document["paths"]["/v1/sla-policy"]["put"]["responses"]["200"]["content"]["application/json"]
    assert declared["schema"]["$ref"].endswith("/PolicyAdopted")
    policy = httpx.get(url, headers=admin, timeout=10).json()
    r = httpx.put(url, json=policy, headers=admin, timeout=10)  # the policy in force, adopted again
    assert r.status_code == 200, r.text
    assert r.json() == {"version": policy["version"], "work_orders_recalculated": 0}
