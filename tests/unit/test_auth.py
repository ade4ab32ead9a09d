"""Bearer tokens → principals → roles, as every endpoint checks them."""

from __future__ import annotations

from typing import Annotated

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from tsop_events.auth import AuthError, Principal, Role, hash_token, parse_token_table, requires, token_table_json
from tsop_events.http import _auth


class FakeRuntime:
    def __init__(self, table: dict[str, Principal]) -> None:
        self.table = table

    async def authenticate(self, token_hash: str) -> Principal | None:
        return self.table.get(token_hash)


def client() -> TestClient:
    app = FastAPI()
    app.state.runtime = FakeRuntime(
        parse_token_table(
            token_table_json([("agent-token", "alice", ["agent"]), ("root", "ops", ["admin"])])
        )
    )
    app.state.error_renderers = ()
    app.add_exception_handler(AuthError, _auth)

    @app.get("/review")
    async def review(who: Annotated[Principal, Depends(requires(Role.agent, Role.supervisor))]) -> dict[str, str]:
        return {"subject": who.subject}

    @app.delete("/ticket")
    async def delete(who: Annotated[Principal, Depends(requires(Role.admin))]) -> dict[str, str]:
        return {"subject": who.subject}

    return TestClient(app)


def test_no_token_is_401_with_a_challenge() -> None:
    r = client().get("/review")
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.headers["content-type"] == "application/problem+json"
    assert "Authorization" in r.json()["detail"]


def test_unknown_token_is_401() -> None:
    r = client().get("/review", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    assert "unknown or revoked" in r.json()["detail"]


def test_wrong_role_is_403_naming_the_role() -> None:
    c = client()
    r = c.delete("/ticket", headers={"Authorization": "Bearer agent-token"})
    assert r.status_code == 403
    assert "admin" in r.json()["detail"]
    assert c.get("/review", headers={"Authorization": "Bearer agent-token"}).json() == {"subject": "alice"}


def test_admin_holds_every_role() -> None:
    r = client().get("/review", headers={"Authorization": "Bearer root"})
    assert r.status_code == 200


def test_only_the_hash_is_configured() -> None:
    raw = token_table_json([("s3cret", "bob", ["auditor"])])
    assert "s3cret" not in raw
    assert parse_token_table(raw)[hash_token("s3cret")].roles == {Role.auditor}


@pytest.mark.parametrize(
    "raw, complaint",
    [
        ("{", "not valid JSON"),
        ("[]", "JSON object"),
        ('{"abc": {"subject": "x", "roles": []}}', "SHA-256"),
        ('{"' + "a" * 64 + '": {"subject": "x", "roles": ["wizard"]}}', "wizard"),
    ],
)
def test_a_bad_token_table_is_refused_with_the_reason(raw: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_token_table(raw)


def test_issued_tokens_are_unique_and_only_their_hash_is_returned() -> None:
    from tsop_events.auth import issue_token

    (t1, h1), (t2, h2) = issue_token("ch"), issue_token("ch")
    assert t1 != t2 and t1.startswith("ch_")
    assert h1 == hash_token(t1) and h2 == hash_token(t2) and t1 not in h1


def test_a_followed_resolver_reads_newer_events_on_a_miss_but_never_floods() -> None:
    import asyncio

    from tsop_events.auth import followed_resolver

    known: dict[str, Principal] = {}
    reads: list[int] = []

    def refresh() -> None:  # what following the log brings: a credential issued elsewhere
        reads.append(1)
        known["h-new"] = Principal("ch-2", frozenset({Role.channel}), channel_id="ch-2")

    async def go() -> None:
        resolve = followed_resolver(known.get, refresh, min_interval=60)
        assert (await resolve("h-new")) is not None and len(reads) == 1  # a miss reads the log once
        forged = await asyncio.gather(*(resolve(f"forged-{i}") for i in range(50)))
        assert forged == [None] * 50 and len(reads) == 1  # made-up tokens do not reach the database

    asyncio.run(go())


def test_a_lost_write_race_is_a_409_to_retry_not_a_500() -> None:
    from tsop_events.http import _conflict
    from tsop_events.store import IntegrityError

    app = FastAPI()
    app.state.error_renderers = ()
    app.add_exception_handler(IntegrityError, _conflict)

    @app.post("/save")
    async def save() -> None:
        raise IntegrityError("version conflict")

    r = TestClient(app).post("/save")
    assert r.status_code == 409 and r.json()["title"] == "Concurrent change"
