"""Every service checks who calls: staff roles from configuration, channels and technicians by credential."""

from __future__ import annotations

import uuid

from tests.e2e.client import Platform


def test_each_view_is_for_its_roles(platform: Platform) -> None:
    dossier = platform.url("archive", f"/v1/tickets/{uuid.uuid4()}/dossier")
    assert platform.http.get(dossier).status_code == 401
    assert platform.http.get(dossier, headers=platform.auth("agent")).status_code == 403
    assert platform.http.get(dossier, headers=platform.auth("auditor")).status_code == 404
    summary = platform.url("incident", "/v1/open-tickets/summary")
    assert platform.http.get(summary, headers=platform.auth("technician")).status_code == 403
    assert platform.http.get(summary, headers=platform.auth("incident_manager")).status_code == 200
    rating = platform.url("feedback", f"/v1/tickets/{uuid.uuid4()}/rating")
    assert platform.http.post(rating, json={"score": 5}).status_code == 401
    r = platform.http.post(rating, json={"score": 5}, headers=platform.auth("auditor"))
    assert r.status_code == 403 and "agent" in r.json()["detail"]
    assert platform.http.post(rating, json={"score": 5}, headers=platform.auth("agent")).status_code == 404
