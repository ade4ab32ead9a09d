"""A 500 says whether the change was recorded, so a caller knows whether to repeat the request."""

from __future__ import annotations

import asyncio

from eventsourcing.domain import Aggregate
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tsop_events.http import Edge, _unexpected
from tsop_events.store import EventStoreApp, GroupCommit


class Thing(Aggregate):
    pass


def make() -> tuple[TestClient, EventStoreApp]:
    store = EventStoreApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    committer: list[GroupCommit] = []
    app = FastAPI()
    app.add_exception_handler(Exception, _unexpected)
    app.add_middleware(Edge, limit=4096)

    @app.post("/sync-save-then-fail")
    def sync_save_then_fail() -> None:
        store.save(Thing())
        raise RuntimeError("the answer could not be built")

    @app.post("/group-save-then-fail")
    async def group_save_then_fail() -> None:
        if not committer:
            committer.append(GroupCommit(store))
        await committer[0].save(Thing())
        raise RuntimeError("the answer could not be built")

    @app.post("/fail-before-save")
    async def fail_before_save() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("refused before any write")

    return TestClient(app, raise_server_exceptions=False), store


def test_an_error_after_a_save_says_it_was_recorded() -> None:
    client, _ = make()
    for path in ("/sync-save-then-fail", "/group-save-then-fail"):
        r = client.post(path)
        assert r.status_code == 500
        assert r.json()["recorded"] is True, path
        assert "recorded" in r.json()["title"].lower()


def test_an_error_before_any_save_says_nothing_changed() -> None:
    client, store = make()
    client.post("/group-save-then-fail")  # another request's save must not mark this one
    r = client.post("/fail-before-save")
    assert r.status_code == 500
    assert r.json()["recorded"] is False
    assert "nothing was changed" in r.json()["detail"]
    assert store.recorder.max_notification_id() == 1


def test_domain_errors_are_mapped_once_to_problems() -> None:
    from tsop_events.errors import DomainError, Forbidden, NotYet, TooMany
    from tsop_events.http import _domain

    app = FastAPI()
    app.add_exception_handler(DomainError, _domain)
    raised: list[DomainError] = [
        Forbidden("this ticket belongs to another channel", "ticket_id"),
        NotYet("the ticket is not resolved yet", retry_after=0.3),
        TooMany("over 10 requests a minute", retry_after=12.5),
    ]

    @app.get("/{i}")
    async def fail(i: int) -> None:
        raise raised[i]

    client = TestClient(app)
    r = client.get("/0")
    assert (r.status_code, r.headers["content-type"]) == (403, "application/problem+json")
    assert r.json()["errors"] == [{"field": "ticket_id", "reason": "this ticket belongs to another channel"}]
    r = client.get("/1")
    assert (r.status_code, r.headers["retry-after"]) == (409, "1")
    r = client.get("/2")
    assert (r.status_code, r.headers["retry-after"]) == (429, "13")
