"""The sweep that links an incident's open tickets (§5.3): the declaration's sweep and the timer's, run at once in
one process, link each ticket once with one pass over the tickets (the second waits and finds nothing left to do);
tickets whose links exist already (freed by a resolved incident) are linked again by a later incident's sweep."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID, uuid4

import pytest

from tests.unit.test_incident_domain import FAULT, sync_app
from tsop_events.commands import UnitOfWork
from tsop_incident import commands
from tsop_incident.commands import link_id
from tsop_incident.domain import Incident, TicketLink


def declare(s: Any, region: str = "south") -> UUID:
    d = commands.Declaration("Outage", "II", "outage", [FAULT], [region], 100, [])
    iid = uuid4()
    uow = UnitOfWork(s.app)
    commands.declare_in(uow, s.app, iid, d, "im")
    s.app.save(*uow.aggregates())
    s.app.board.refresh()
    return iid


def test_two_sweeps_at_once_link_each_ticket_once_in_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    s, _ = sync_app()
    tickets = [str(uuid4()) for _ in range(commands.LINK_BATCH + 5)]  # two chunks

    async def open_in(pool: object, scope: object) -> list[str]:
        return list(tickets)

    monkeypatch.setattr(commands, "open_tickets_in", open_in)
    monkeypatch.setattr(s.svc, "pool", None, raising=False)  # the read model is the function above
    iid = declare(s)
    decisions = 0
    run = s.svc.commands.run

    async def counted(decide: Any, **kw: Any) -> Any:
        nonlocal decisions
        decisions += 1
        return await run(decide, **kw)

    monkeypatch.setattr(s.svc.commands, "run", counted)

    async def both() -> list[int]:
        return list(await asyncio.gather(commands.link_open_tickets(s.svc, iid),
                                         commands.link_open_tickets(s.svc, iid)))

    assert sorted(asyncio.run(both())) == [0, len(tickets)]
    assert decisions == 2  # the first sweep's two chunks; the second had nothing left to decide
    inc: Incident = s.app.repository.get(iid)
    assert set(inc.linked) == set(tickets)
    # each ticket's first link is one event: its record's Started, with the incident
    stored = s.app.recorder.select_notifications(1, 100_000)
    assert not [n for n in stored if n.topic.endswith("TicketLink.Linked")]
    starts = [s.app.mapper.to_domain_event(n) for n in stored if n.topic.endswith("TicketLink.Started")]
    assert len(starts) == len(tickets) and {e.incident_id for e in starts} == {str(iid)}


def test_links_freed_by_a_resolved_incident_are_linked_again_by_the_next_sweep(
        monkeypatch: pytest.MonkeyPatch) -> None:
    s, _ = sync_app()
    tickets = [str(uuid4()) for _ in range(7)]

    async def open_in(pool: object, scope: object) -> list[str]:
        return list(tickets)

    monkeypatch.setattr(commands, "open_tickets_in", open_in)
    monkeypatch.setattr(s.svc, "pool", None, raising=False)  # the read model is the function above
    first = declare(s)
    assert s.link_open_tickets(first) == 7
    inc = s.app.repository.get(first)
    inc.restore("fixed", "im", s.app.clock.now())
    inc.verify("checked", "im", s.app.clock.now())
    s.app.save(inc)
    s.resolve(first, "restored", "ok", None, "im")
    s.app.board.refresh()
    second = declare(s)
    assert s.link_open_tickets(second) == 7
    for t in tickets:
        assert s.app.repository.get(link_id(t)).incident_id == str(second)
        assert isinstance(s.app.repository.get(link_id(t)), TicketLink)
    assert set(s.app.repository.get(second).linked) == set(tickets)


def test_another_incidents_long_sweep_does_not_hold_up_a_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 100,000-ticket sweep takes minutes: a declaration's sweep of another incident (its HTTP answer waits for
    it) and the timer's go on meanwhile."""
    s, _ = sync_app()
    slow, quick = declare(s, "south"), declare(s, "north")
    mine = [str(uuid4()) for _ in range(3)]

    async def both() -> int:
        gate = asyncio.Event()

        async def open_in(pool: object, scope: Any) -> list[str]:
            if "south" in scope[0]:  # (regions, service types)
                await gate.wait()  # the long sweep, still reading its tickets
                return []
            return list(mine)

        monkeypatch.setattr(commands, "open_tickets_in", open_in)
        long_sweep = asyncio.create_task(commands.link_open_tickets(s.svc, slow))
        await asyncio.sleep(0.05)
        try:
            return await asyncio.wait_for(commands.link_open_tickets(s.svc, quick), 10)
        finally:
            gate.set()
            await long_sweep

    monkeypatch.setattr(s.svc, "pool", None, raising=False)
    assert asyncio.run(both()) == len(mine)
    assert set(s.app.repository.get(quick).linked) == set(mine)
