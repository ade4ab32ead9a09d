"""Dispatch's timer round (``views.tick``) under a large or failing incident resolution: each round resolves one chunk
per resolving incident, more only within its time budget, and every other timer still runs in it; a step or an
incident chunk that fails is logged once while it lasts, never stops the other steps or incidents, and the work
resumes once it passes (in memory, with the injectable clock)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

import pytest

from tests.dispatch_sync import SyncDispatch
from tests.unit.test_dispatch_incident_flow import Incidents, linked, resolved
from tests.unit.test_dispatch_reopen import NOW, Feed, accepted, new_app
from tsop_dispatch import policies, views
from tsop_dispatch.commands import work_order_id
from tsop_dispatch.policies import IncidentHolds, record_id
from tsop_events.errors import NotFound
from tsop_events.faults import Faults

STEPS = ("drain_queue", "expire_acceptances", "check_clocks", "auto_peak")


def two_resolved_incidents(app: SyncDispatch, a: int, b: int) -> None:
    """``a`` work orders held by incA and ``b`` by incB, both incidents resolved (nothing resolved yet)."""
    feed, inc = Feed(app), Incidents(IncidentHolds(app.app))  # no timer: resolution is left to the tick
    for name, count in (("incA", a), ("incB", b)):
        for i in range(count):
            feed(accepted(f"{name}-{i}"))
            inc(linked(f"{name}-{i}", incident=name))
    inc(resolved(NOW + timedelta(minutes=1), incident="incA"))
    inc(resolved(NOW + timedelta(minutes=1), incident="incB"))


def status(app: SyncDispatch, ticket: str) -> str:
    return str(app.load(work_order_id(ticket)).status)


def spy_steps(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every other timer step the round runs (each still does its work)."""
    ran: list[str] = []
    for name in STEPS:
        real = getattr(views, name)

        def spy(*args: Any, _real: Callable[..., Coroutine[Any, Any, Any]] = real, _name: str = name) -> Any:
            ran.append(_name)
            return _real(*args)

        monkeypatch.setattr(views, name, spy)
    return ran


def test_a_round_resolves_one_chunk_per_incident_and_every_other_timer_runs_in_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app, _ = new_app()
    two_resolved_incidents(app, 5, 3)
    monkeypatch.setattr(views, "RESOLVE_CHUNK", 2)
    monkeypatch.setattr(views, "RESOLVE_BUDGET_SECONDS", 0.0)  # its budget spent: one chunk per incident
    ran = spy_steps(monkeypatch)
    faults = Faults("dispatch timer", views.log)
    rounds = [app.tick(faults)["resolved_by_incidents"] for _ in range(4)]
    assert rounds == [4, 3, 1, 0]  # two of each, then two of incA and the last of incB, then incA's last
    assert ran == list(STEPS) * 4  # the other timers ran in every round, not after the whole resolution
    assert all(status(app, f"incA-{i}") == "resolved" for i in range(5))
    assert all(status(app, f"incB-{i}") == "resolved" for i in range(3))
    assert app.app.repository.get(record_id("incA")).done and app.app.repository.get(record_id("incB")).done
    assert app.app.repository.get(record_id("incA")).count == 5
    assert faults.current == {}


def test_within_its_budget_a_round_goes_on_with_the_next_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    app, _ = new_app()
    two_resolved_incidents(app, 5, 3)
    monkeypatch.setattr(views, "RESOLVE_CHUNK", 2)
    monkeypatch.setattr(views, "RESOLVE_BUDGET_SECONDS", 60.0)  # an idle machine: chunks are quick
    assert app.tick()["resolved_by_incidents"] == 8  # throughput kept: no round per chunk
    assert app.app.repository.get(record_id("incA")).done and app.app.repository.get(record_id("incB")).done


def test_a_failing_incident_chunk_is_logged_once_and_stops_neither_other_incidents_nor_other_timers(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    app, _ = new_app()
    two_resolved_incidents(app, 2, 3)
    monkeypatch.setattr(views, "RESOLVE_CHUNK", 2)
    real = policies.resolve_chunk

    def broken(uow: Any, incident_id: str, *args: Any) -> int | None:
        if incident_id == "incA":
            raise NotFound("technician gone", "technician")
        return real(uow, incident_id, *args)

    monkeypatch.setattr(policies, "resolve_chunk", broken)
    ran = spy_steps(monkeypatch)
    faults = Faults("dispatch timer", views.log)
    with caplog.at_level(logging.INFO, logger=views.log.name):
        for _ in range(4):
            app.tick(faults)  # never raises
    assert ran == list(STEPS) * 4
    assert all(status(app, f"incB-{i}") == "resolved" for i in range(3))  # the other incident went on
    assert app.app.repository.get(record_id("incB")).done
    assert all(status(app, f"incA-{i}") == "waiting" for i in range(2))  # left as it was: the cursor is intact
    assert list(faults.current) == ["resolve_held:incA"] and "NotFound" in faults.current["resolve_held:incA"]
    failures = [r for r in caplog.records if "resolve_held:incA" in r.getMessage() and r.levelno >= logging.ERROR]
    assert len(failures) == 1  # once, not every round
    monkeypatch.setattr(policies, "resolve_chunk", real)  # fixed: it goes on from what is still held
    with caplog.at_level(logging.INFO, logger=views.log.name):
        assert app.tick(faults)["resolved_by_incidents"] == 2
        app.tick(faults)
    assert all(status(app, f"incA-{i}") == "resolved" for i in range(2))
    assert app.app.repository.get(record_id("incA")).done and faults.current == {}
    assert any("resolve_held:incA works again" in r.getMessage() for r in caplog.records)


def test_a_failing_step_is_logged_once_and_the_other_steps_still_run(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    app, _ = new_app()
    two_resolved_incidents(app, 1, 1)
    ran = spy_steps(monkeypatch)

    async def down(*args: Any) -> int:
        raise ConnectionError("database unreachable")

    monkeypatch.setattr(views, "drain_queue", down)
    faults = Faults("dispatch timer", views.log)
    with caplog.at_level(logging.INFO, logger=views.log.name):
        outs = [app.tick(faults) for _ in range(3)]
    assert outs[0]["resolved_by_incidents"] == 2 and all(o["assigned"] == 0 for o in outs)
    assert ran == [s for _ in range(3) for s in STEPS if s != "drain_queue"]  # the steps after it ran each round
    assert list(faults.current) == ["drain_queue"]
    assert sum("drain_queue failed" in r.getMessage() for r in caplog.records) == 1
