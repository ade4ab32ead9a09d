"""The archive as evidence through HTTP, on the whole platform: a ticket's past states (``as_of``), the
backlog as it stood, ``verify`` over the whole archive with its signed checkpoints, legal holds and the
retention periods; roles and problem+json on every one of these routes."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from tests.e2e.client import Platform, wait_for


def get(platform: Platform, path: str, role: str = "auditor") -> Any:
    return platform.http.get(platform.url("archive", path), headers=platform.auth(role))


def at(t: datetime) -> str:
    return quote(t.isoformat())


def test_a_ticket_as_it_stood_and_the_backlog_then(platform: Platform) -> None:
    ticket = platform.submit().json()["id"]
    dossier = platform.complete(ticket)
    times = {e["type"]: datetime.fromisoformat(e["time"]) for e in dossier["events"]}
    accepted = times["tsop.ticket.request-accepted.v1"]
    submitted = times["tsop.ticket.request-submitted.v1"]

    before = get(platform, f"/v1/tickets/{ticket}/state?as_of={at(submitted - timedelta(seconds=1))}")
    assert before.status_code == 404 and before.headers["content-type"].startswith("application/problem+json")
    then = get(platform, f"/v1/tickets/{ticket}/state?as_of={at(accepted)}").json()
    assert then["status"] in {"accepted", "assigned"} and then["open"] is True
    assert then["fields"]["service_type"] == "broadband.fault_repair"
    now = get(platform, f"/v1/tickets/{ticket}/state?as_of={at(times['tsop.ticket.archived.v1'])}").json()
    assert now["status"] == "closed" and now["open"] is False and now["events"] == len(dossier["events"])

    open_then = get(platform, f"/v1/backlog?as_of={at(accepted)}&limit=10000").json()
    assert ticket in {t["ticket_id"] for t in open_then["tickets"]}
    open_after = get(platform, f"/v1/backlog?as_of={at(times['tsop.ticket.closed.v1'])}&limit=10000").json()
    assert ticket not in {t["ticket_id"] for t in open_after["tickets"]}


def test_the_whole_archive_verifies_with_signed_checkpoints(platform: Platform) -> None:
    ticket = platform.submit().json()["id"]
    platform.complete(ticket)

    def verified() -> dict[str, Any] | None:
        v = get(platform, "/v1/archive/verify").json()
        return v if v["ok"] and v["checked"] >= 10 and v["checkpoints"] >= 1 else None

    v = wait_for(verified, what="the archive's chain verified up to a signed checkpoint")
    assert v["broken"] is None and v["intact"] == v["checked"]
    assert v["to_seq"] < 2**40  # the last position checked, not the open end of the range
    cps = get(platform, "/v1/archive/checkpoints").json()
    keys = {k["key_id"]: k for k in get(platform, "/v1/archive/keys").json()}
    assert cps and all(c["key_id"] in keys for c in cps)
    # an auditor checks a checkpoint offline with the published key
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    c = cps[-1]
    Ed25519PublicKey.from_public_bytes(bytes.fromhex(keys[c["key_id"]]["public_key_hex"])).verify(
        bytes.fromhex(c["signature"]), c["message"].encode()
    )
    start = min(2, c["upto_seq"])  # a range from the middle starts from the stored link before it
    part = get(platform, f"/v1/archive/verify?from={start}&to={c['upto_seq']}")
    assert part.status_code == 200, part.text
    assert part.json()["ok"] and part.json()["to_seq"] == c["upto_seq"]
    # held to the checkpoint an auditor kept: it is there, alike; a link that differs fails
    kept = get(platform, f"/v1/archive/verify?expect={c['number']}:{c['link']}").json()
    assert kept["ok"], kept
    other = get(platform, f"/v1/archive/verify?expect={c['number']}:{'00' * 32}").json()
    assert not other["ok"] and "auditor holds" in other["broken"]["reason"]


def test_legal_holds_and_retention_periods_are_recorded_decisions(platform: Platform) -> None:
    ticket = platform.submit().json()["id"]
    path = f"/v1/legal-holds/ticket/{ticket}"
    body = {"reason": "regulator's inquiry 2026/4"}
    r = platform.http.post(platform.url("archive", path), json=body, headers=platform.auth("auditor"))
    assert r.status_code == 201 and r.json()["active"] is True
    again = platform.http.post(platform.url("archive", path), json=body, headers=platform.auth("supervisor"))
    assert again.status_code == 409
    released = platform.http.post(platform.url("archive", f"{path}/release"), json={"reason": "inquiry closed"},
                                  headers=platform.auth("supervisor"))
    assert released.status_code == 200 and [h["action"] for h in released.json()["history"]] == ["placed", "released"]

    r = platform.http.put(platform.url("archive", "/v1/retention/work_logs"),
                          json={"days": 800, "reason": "work logs kept longer"}, headers=platform.auth("supervisor"))
    assert r.status_code == 200 and r.json()["periods"]["work_logs"] == 800
    assert get(platform, "/v1/retention").json()["periods"]["work_logs"] == 800


def test_bad_input_and_roles_on_the_records_routes(platform: Platform) -> None:
    def problem(r: Any, status: int, field: str | None = None) -> None:
        assert r.status_code == status, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        if field is not None:
            assert field in r.text

    ticket = "6f1c1a2e-0000-4000-8000-000000000001"
    problem(get(platform, f"/v1/tickets/{ticket}/state?as_of=2026-01-01T00:00:00"), 422, "as_of")
    problem(get(platform, f"/v1/tickets/{ticket}/state?as_of=yesterday"), 422, "as_of")
    for extreme in ("0001-01-01T00:00%2B01:00", "9999-12-31T23:00Z"):  # beyond the calendar: a 422, not a 500
        problem(get(platform, f"/v1/tickets/{ticket}/state?as_of={extreme}"), 422, "as_of")
        problem(get(platform, f"/v1/backlog?as_of={extreme}"), 422, "as_of")
    problem(get(platform, f"/v1/tickets/{ticket}/state"), 422, "as_of")
    problem(get(platform, f"/v1/tickets/{ticket}/state?as_of=2026-01-01T00:00:00Z"), 404)
    problem(get(platform, "/v1/backlog?as_of=2026-01-01T00:00:00Z&limit=-1"), 422, "limit")
    problem(get(platform, "/v1/archive/verify?from=0"), 422, "from")
    problem(get(platform, "/v1/archive/verify?from=5&to=4"), 422, "to")
    problem(get(platform, "/v1/archive/verify?expect=one:abc"), 422, "expect")
    put = platform.http.put
    problem(put(platform.url("archive", "/v1/retention/work_logs"), json={"days": 0, "reason": "none"},
                headers=platform.auth("auditor")), 422, "days")
    problem(put(platform.url("archive", "/v1/retention/diaries"), json={"days": 5, "reason": "none"},
                headers=platform.auth("auditor")), 422, "record_class")
    problem(platform.http.post(platform.url("archive", "/v1/legal-holds/planet/x"), json={"reason": "because"},
                               headers=platform.auth("auditor")), 422, "kind")
    # any customer id intake takes can be held (spaces, +, non-ASCII); a control character cannot
    odd = f"ACME 42+{uuid.uuid4().hex[:6]}-客户"
    held = platform.http.post(platform.url("archive", f"/v1/legal-holds/customer/{quote(odd)}"),
                              json={"reason": "litigation"}, headers=platform.auth("auditor"))
    assert held.status_code == 201 and held.json()["subject"] == odd, held.text
    assert get(platform, f"/v1/legal-holds/customer/{quote(odd)}").json()["active"] is True
    problem(platform.http.post(platform.url("archive", "/v1/legal-holds/customer/a%07b"),
                               json={"reason": "bell in the id"}, headers=platform.auth("auditor")), 422, "subject")
    never = uuid.uuid4()
    problem(platform.http.post(platform.url("archive", f"/v1/legal-holds/ticket/{never}/release"),
                               json={"reason": "never placed"}, headers=platform.auth("auditor")), 404)
    # a ticket's (an incident's) id is a UUID, held in its one written form: another spelling would hold nothing
    problem(platform.http.post(platform.url("archive", "/v1/legal-holds/ticket/x"),
                               json={"reason": "not an id"}, headers=platform.auth("auditor")), 422, "subject")
    upper = platform.http.post(platform.url("archive", f"/v1/legal-holds/incident/{str(never).upper()}"),
                               json={"reason": "spelt upper-case"}, headers=platform.auth("auditor"))
    assert upper.status_code == 201 and upper.json()["subject"] == str(never), upper.text
    for path in ("/v1/archive/verify", "/v1/archive/checkpoints", "/v1/archive/keys", "/v1/retention",
                 "/v1/backlog?as_of=2026-01-01T00:00:00Z"):
        problem(get(platform, path, role="agent"), 403)
        problem(platform.http.get(platform.url("archive", path)), 401)
