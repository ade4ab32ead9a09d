"""Every route of the archive's records and statistics (§7) is for auditors and supervisors only: a stranger
gets 401 and any other role 403, as problem+json, before anything is read — checked route by route from the
service's own OpenAPI document, so a route added later is held to it too (no database needed: refused first)."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from tsop_archive.commands import ArchiveApp
from tsop_archive.main import ArchiveSettings, build
from tsop_events.auth import token_table_json

OPEN = {"/v1/stats/page", "/v1/stats/page/{asset}"}  # the page's shell and assets: no figure in them
TICKET = "6f1c1a2e-0000-4000-8000-000000000001"


@pytest.fixture(scope="module")
def client() -> TestClient:
    settings = ArchiveSettings(service_name="roles", auth_tokens=token_table_json(
        [("agent-token", "agent-1", ["agent"]), ("tech-token", "tech-1", ["technician"])]))
    app = build(settings)
    # never started: no database, no broker. The service dependency needs an app of the right class; a route
    # that reaches it (or the pool) before refusing the caller fails this test with a 500
    app.state.runtime.app = object.__new__(ArchiveApp)
    return TestClient(app, raise_server_exceptions=False)


def routes(client: TestClient) -> list[tuple[str, str]]:
    doc = client.get("/openapi.json").json()
    found = []
    for path, ops in doc["paths"].items():
        if not path.startswith("/v1/") or path in OPEN:
            continue
        concrete = re.sub(r"\{[^}]+\}", lambda m: "ticket" if m.group(0) == "{kind}" else TICKET, path)
        found += [(method.upper(), concrete) for method in ops if method in ("get", "post", "put", "delete")]
    return found


def test_every_records_and_statistics_route_refuses_strangers_and_other_roles(client: TestClient) -> None:
    checked = routes(client)
    assert len(checked) >= 15  # the records and statistics routes are all there
    for method, path in checked:
        for headers, status in (({}, 401), ({"Authorization": "Bearer agent-token"}, 403),
                                ({"Authorization": "Bearer tech-token"}, 403)):
            r = client.request(method, path, headers=headers, json={"reason": "x"} if method != "GET" else None)
            assert r.status_code == status, (method, path, headers, r.status_code, r.text)
            assert r.headers["content-type"].startswith("application/problem+json"), (method, path)
