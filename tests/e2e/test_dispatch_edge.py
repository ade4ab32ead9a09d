"""Dispatch's edge over HTTP: what it accepts is recorded whole and flows on; what it refuses is a clear 4xx."""

from __future__ import annotations

import uuid
from typing import Any

from tests.e2e.client import SERVICE_TYPE, Platform, wait_for


def register(platform: Platform, body: dict[str, Any]) -> Any:
    return platform.http.post(
        platform.url("dispatch", "/v1/technicians"), json=body, headers=platform.auth("supervisor")
    )


def test_a_qualification_without_valid_from_is_registered_and_its_events_keep_flowing(platform: Platform) -> None:
    """The issue's example answered 500 after saving and stopped dispatch's event stream for good."""
    region = f"vf{uuid.uuid4().hex[:6]}"
    r = register(
        platform,
        {"name": "Q", "qualifications": [{"service_type": SERVICE_TYPE, "certificate": "C"}], "regions": [region]},
    )
    assert r.status_code == 201, r.text
    tech = r.json()
    assert tech["token"] and tech["qualifications"][0]["valid_from"]  # valid from the moment of registration
    platform.technician_tokens[tech["id"]] = tech["token"]
    me = platform.http.get(
        platform.url("dispatch", f"/v1/technicians/{tech['id']}"), headers=platform.tech_auth(tech["id"])
    )
    assert me.status_code == 200  # the credential shown once works
    # the relay is not stuck behind it: a ticket in the region is assigned to this technician and worked
    ticket = platform.submit(region=region).json()["id"]
    wo = platform.wait_assigned(ticket)
    assert wo["technician_id"] == tech["id"]
    ready = platform.http.get(platform.url("dispatch", "/readyz"))
    assert ready.status_code == 200 and "degraded" not in ready.json(), ready.text


def test_what_no_event_can_carry_is_refused_with_a_named_field(platform: Platform) -> None:
    base = {"name": "Strict", "service_types": [SERVICE_TYPE], "regions": ["north"]}
    for capacity in ("5", True, 5.5):
        r = register(platform, {**base, "capacity": capacity})
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "capacity", r.text
    r = register(platform, {**base, "service_types": ["fax.repair"]})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "service_types.0", r.text
    r = register(platform, {**base, "qualifications": [{"service_type": "fax.repair", "certificate": "C"}]})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "qualifications.0.service_type", r.text
    tid = platform.register_technician(capacity=1, region=f"q{uuid.uuid4().hex[:6]}")
    grant = platform.url("dispatch", f"/v1/technicians/{tid}/qualifications")
    r = platform.http.post(
        grant, json={"service_type": "fax.repair", "certificate": "C"}, headers=platform.auth("supervisor")
    )
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "service_type", r.text
    r = platform.http.post(
        grant,
        json={"service_type": SERVICE_TYPE, "certificate": "C", "level": "3"},
        headers=platform.auth("supervisor"),
    )
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "level", r.text
    r = platform.http.put(
        platform.url("dispatch", f"/v1/technicians/{tid}/capacity"),
        json={"capacity": True},
        headers=platform.auth("supervisor"),
    )
    assert r.status_code == 422, r.text


def test_a_stopped_clock_still_shows_the_deadline_that_held(platform: Platform) -> None:
    region = f"sla{uuid.uuid4().hex[:6]}"
    platform.register_technician(capacity=1, region=region)
    ticket = platform.submit(region=region).json()["id"]
    wo = platform.wait_assigned(ticket)
    assert platform.work(wo, "accept").status_code == 200
    r = platform.work(wo, "start", {"mode": "remote"})
    assert r.status_code == 200
    r = platform.work(wo, "log", {"action": "measured", "mode": "remote", "measurements": {"snr": "NaN"}})
    assert r.status_code == 201  # a text reading is fine; a NaN number is not (below)
    bad = b'{"action": "measured", "mode": "remote", "measurements": {"snr": NaN}}'
    r = platform.http.post(
        platform.url("dispatch", f"/v1/work-orders/{wo['id']}/log"),
        content=bad,
        headers={**platform.tech_auth(wo["technician_id"]), "content-type": "application/json"},
    )
    assert 400 <= r.status_code < 500, r.text
    sla = wait_for(
        lambda: (
            s := platform.http.get(
                platform.url("dispatch", f"/v1/tickets/{ticket}/sla"), headers=platform.auth("supervisor")
            ).json()
        )["clocks"]["respond"]["stopped_at"]
        and s,
        what="the respond clock stopped",
    )
    respond = sla["clocks"]["respond"]
    assert respond["state"] == "met" and respond["met"] is True
    assert respond["deadline"] and respond["warning_at"] and respond["deadline"] > respond["stopped_at"]


def test_a_work_log_retried_with_its_idempotency_key_is_logged_once(platform: Platform) -> None:
    """The chaos run found it: a log sent again after a lost answer was recorded twice."""
    platform.register_technician()
    ticket = platform.submit().json()["id"]
    wo = platform.wait_assigned(ticket)
    platform.work(wo, "accept").raise_for_status()
    platform.work(wo, "start", {"mode": "on_site"}).raise_for_status()
    url = platform.url("dispatch", f"/v1/work-orders/{wo['id']}/log")
    key = {"Idempotency-Key": f"log-{uuid.uuid4().hex}", **platform.tech_auth(wo["technician_id"])}
    entry = {"action": "replaced the ONT", "mode": "on_site", "notes": "serial 123"}
    first = platform.http.post(url, json=entry, headers=key)
    assert first.status_code == 201, first.text
    again = platform.http.post(url, json=entry, headers=key)
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert len(again.json()["operation_log"]) == len(first.json()["operation_log"])
    other = platform.http.post(url, json={**entry, "notes": "serial 456"}, headers=key)
    assert other.status_code == 422 and other.json()["errors"][0]["field"] == "Idempotency-Key"
    plain = platform.http.post(url, json=entry, headers=platform.tech_auth(wo["technician_id"]))
    assert plain.status_code == 201  # without a key, a second entry is a second step of the work
    logged = platform.work_order(ticket)
    assert logged is not None
    assert sum(e.get("notes") == "serial 123" for e in logged["operation_log"]) == 2


def test_a_registration_retried_with_its_idempotency_key_registers_once(platform: Platform) -> None:
    """A technician or a resource registered again after a lost answer is the one registered first."""
    region = f"ik{uuid.uuid4().hex[:6]}"
    body = {"name": "Retried", "service_types": [SERVICE_TYPE], "regions": [region], "capacity": 2}
    headers = {"Idempotency-Key": f"tech-{uuid.uuid4().hex}", **platform.auth("supervisor")}
    url = platform.url("dispatch", "/v1/technicians")
    first = platform.http.post(url, json=body, headers=headers)
    assert first.status_code == 201 and first.json()["token"], first.text
    again = platform.http.post(url, json=body, headers=headers)
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true", again.text
    assert again.json()["id"] == first.json()["id"] and "token" not in again.json()  # shown once, never again
    other = platform.http.post(url, json={**body, "capacity": 3}, headers=headers)
    assert other.status_code == 422 and other.json()["errors"][0]["field"] == "Idempotency-Key"
    tech = first.json()["id"]
    platform.technician_tokens[tech] = first.json()["token"]
    me = platform.http.get(platform.url("dispatch", f"/v1/technicians/{tech}"), headers=platform.tech_auth(tech))
    assert me.status_code == 200 and me.json()["capacity"] == 2  # the first credential still works
    # one technician, not two: the region's work goes to the one registered
    ticket = platform.submit(region=region).json()["id"]
    assert platform.wait_assigned(ticket)["technician_id"] == tech

    resources = platform.url("dispatch", "/v1/resources")
    r_headers = {"Idempotency-Key": f"res-{uuid.uuid4().hex}", **platform.auth("supervisor")}
    r_body = {"kind": "van", "name": "Van 7", "region": region}
    made = platform.http.post(resources, json=r_body, headers=r_headers)
    assert made.status_code == 201, made.text
    replayed = platform.http.post(resources, json=r_body, headers=r_headers)
    assert replayed.status_code == 200 and replayed.json() == made.json(), replayed.text
