"""TMF621's read model applied a batch at a time (real PostgreSQL): one statement per table for the whole batch,
and the same rows as record by record — the tickets, their status history, the X-Total-Count rows, the ids applied.
While a listener is registered, a batch goes record by record: each notification shows the ticket as its own event
left it. A ticket's step that comes before its submission (after a broker change) is kept and applied in its turn."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from tsop_events import schemas as wire
from tsop_events.consumer import OFFSETS_DDL, Incoming
from tsop_events.envelope import wrap
from tsop_events.settings import ServiceSettings
from tsop_events.store import ensure_database
from tsop_intake.tmf import hub
from tsop_intake.tmf.projection import DDL, TmfTicketProjection

NOW = datetime(2026, 6, 1, 9, tzinfo=UTC)
TOPIC = "tsop.tickets"


def submitted(t: str, severity: str | None = None) -> wire.RequestSubmitted:
    return wire.RequestSubmitted(
        ticket_id=t, channel=wire.Channel("web"), channel_id="portal", customer_id="c1",
        customer_tier=wire.CustomerTier.gold, region="north", service_type="broadband.fault_repair",
        description="no line", time_requirement=wire.TimeRequirement(),
        submitted_at=NOW, attributes={"severity": severity} if severity else {},
    )


def accepted(t: str, minutes: int) -> wire.RequestAccepted:
    return wire.RequestAccepted(ticket_id=t, service_type="broadband.fault_repair", region="north", priority=2,
                                customer_tier=wire.CustomerTier.gold, accepted_at=NOW + timedelta(minutes=minutes))


def resolved(t: str, minutes: int) -> wire.Resolved:
    return wire.Resolved(ticket_id=t, work_order_id="wo", technician_id="x", resolution_code="fixed",
                         summary="line up", resolved_at=NOW + timedelta(minutes=minutes))


def assignment(t: str, minutes: int) -> wire.AssignmentAccepted:
    return wire.AssignmentAccepted(ticket_id=t, work_order_id="wo", technician_id="x",
                                   accepted_at=NOW + timedelta(minutes=minutes))


def record(offset: int, ev: wire.TicketEvent, event_id: str, minutes: int) -> Incoming:
    env = wrap(ev, event_id=event_id, source="test", time=NOW + timedelta(minutes=minutes))
    return Incoming(TOPIC, 0, offset, ev.ticket_id, env, ev)


def scenario() -> tuple[list[tuple[wire.TicketEvent, str, int]], list[tuple[wire.TicketEvent, str, int]]]:
    """(applied before the batch, the batch): one ticket's whole working life in the batch, a reopening and a
    closure of a ticket resolved before, a ticket never seen submitted, a redelivery of an event applied before
    and an event twice in the batch, tickets submitted in the batch (one with a severity), steps that came before
    their ticket's submission (one kept before the batch, one in it; one still waiting for its turn after it)."""
    t1, t3, t4, t5, t6, t7, t8, t9 = (str(uuid.uuid4()) for _ in range(8))
    before = [
        (submitted(t1), "t1-sub", 0),
        (submitted(t3), "t3-sub", 0), (accepted(t3, 1), "t3-acc", 1), (resolved(t3, 5), "t3-res", 5),
        (submitted(t5), "t5-sub", 0),
        (assignment(t8, 2), "t8-aa", 2),  # before its submission (a broker change): kept
    ]
    batch: list[tuple[wire.TicketEvent, str, int]] = [
        (accepted(t1, 1), "t1-acc", 1),
        (wire.AssignmentAccepted(ticket_id=t1, work_order_id="wo", technician_id="x",
                                 accepted_at=NOW + timedelta(minutes=2)), "t1-aa", 2),
        (submitted(t6, "High"), "t6-sub", 2),
        (wire.WorkStarted(ticket_id=t1, work_order_id="wo", technician_id="x", mode="on_site",
                          started_at=NOW + timedelta(minutes=3)), "t1-ws", 3),
        (wire.Reopened(ticket_id=t3, reason_code="not_solved", reason="still down", requested_by="portal",
                       reopen_count=1, reopened_at=NOW + timedelta(minutes=6)), "t3-reo", 6),
        (wire.WorkPaused(ticket_id=t1, work_order_id="wo", technician_id="x", kind="held", reason="outage",
                         paused_at=NOW + timedelta(minutes=4)), "t1-wp", 4),
        (accepted(t4, 1), "t4-acc", 1),  # never seen submitted: kept, not shown
        (resolved(t8, 5), "t8-res", 5),  # before its submission too
        (submitted(t8), "t8-sub", 0),  # applied; its kept steps wait for their turn (acknowledged)
        (assignment(t9, 2), "t9-aa", 2),
        (submitted(t9), "t9-sub", 0),  # t9's kept step still waits after the batch (not acknowledged)
        (accepted(t8, 1), "t8-acc", 1),  # t8's kept steps applied after it, in order: resolved
        (submitted(t5), "t5-sub", 0),  # applied before
        (accepted(t5, 1), "t5-acc", 1),
        (accepted(t5, 1), "t5-acc", 1),  # twice in the batch: applied at its first
        (resolved(t1, 7), "t1-res", 7),
        (submitted(t7), "t7-sub", 7),
        (resolved(t3, 8), "t3-res2", 8),
        (wire.Closed(ticket_id=t3, reason="rated", closed_at=NOW + timedelta(minutes=9)), "t3-closed", 9),
    ]
    return before, batch


async def read_model(pool: asyncpg.Pool) -> dict[str, Any]:
    return {
        "tickets": [tuple(r) for r in await pool.fetch(
            "SELECT ticket_id, status, status_change_date, status_change_reason, severity, ticket_type, priority_name, "
            "channel_id, customer_id, external_id, creation_date, last_update, deleted, doc::text FROM tmf_ticket "
            "ORDER BY ticket_id")],
        "history": [tuple(r) for r in await pool.fetch("SELECT * FROM tmf_status_change ORDER BY ticket_id, seq")],
        "counts": [tuple(r) for r in await pool.fetch("SELECT * FROM tmf_ticket_counts ORDER BY 1, 2, 3, 4, 5, 6")],
        "applied": [r[0] for r in await pool.fetch("SELECT event_id FROM tmf_applied ORDER BY 1")],
        "deliveries": [tuple(r) for r in await pool.fetch(
            "SELECT event_id, ticket_id, event_name, payload::text FROM tmf_hub_delivery ORDER BY event_id")],
        "early": [tuple(r) for r in await pool.fetch(
            "SELECT ticket_id, event_id, event_type, source, at, subject, correlation_id, causation_id, data "
            "FROM tmf_early ORDER BY ticket_id, seq")],
    }


async def run(pg: tuple[str, int], batched: bool, listener: bool, between: Callable[[], None]) -> dict[str, Any]:
    before, batch = scenario.cache  # type: ignore[attr-defined]
    settings = ServiceSettings(service_name=f"tmf_it_{uuid.uuid4().hex[:8]}", pg_host=pg[0], pg_port=pg[1])
    await ensure_database(settings, (OFFSETS_DDL, *DDL, *hub.DDL))
    pool = await asyncpg.create_pool(settings.pg_dsn(), min_size=1, max_size=2)
    try:
        if listener:
            await pool.execute("INSERT INTO tmf_hub (id, callback, owner, created_at) VALUES ($1, $2, $3, $4)",
                               uuid.uuid4(), "http://127.0.0.1:9/hub", "portal", NOW)
        projection = TmfTicketProjection(pool, hub.Outbox())
        records = [record(i, ev, eid, m) for i, (ev, eid, m) in enumerate([*before, *batch])]
        first, rest = records[:len(before)], records[len(before):]
        for r in first:
            await projection.process("ep", TOPIC, 0, [r], r.offset)
        between()
        if batched:
            await projection.process("ep", TOPIC, 0, rest, rest[-1].offset)
        else:
            for r in rest:
                await projection.process("ep", TOPIC, 0, [r], r.offset)
        return await read_model(pool)
    finally:
        await pool.close()


@pytest.mark.parametrize("listener", [False, True], ids=["no-listener", "listener"])
async def test_a_batch_leaves_the_read_model_as_its_records_one_by_one_do(
    pg: tuple[str, int], monkeypatch: pytest.MonkeyPatch, listener: bool,
) -> None:
    scenario.cache = scenario()  # type: ignore[attr-defined]  # the same tickets in both databases
    one_by_one: list[str] = []
    original = TmfTicketProjection._apply_one

    async def counted(self: TmfTicketProjection, conn: asyncpg.Connection, incoming: Incoming) -> None:
        one_by_one.append(incoming.envelope.id)
        await original(self, conn, incoming)

    monkeypatch.setattr(TmfTicketProjection, "_apply_one", counted)
    alone = await run(pg, batched=False, listener=listener, between=one_by_one.clear)
    together = await run(pg, batched=True, listener=listener, between=one_by_one.clear)
    batch = scenario.cache[1]  # type: ignore[attr-defined]
    # without a listener the batch's statements are one per table; with one, record by record
    assert one_by_one == ([eid for _, eid, _ in batch] if listener else [])
    assert together == alone
    # what the scenario is about, so that equal is not equally empty
    statuses = {str(t[0]): t[1] for t in together["tickets"]}
    assert len(statuses) == 7 and "resolved" in statuses.values() and "closed" in statuses.values()
    t4, t8, t9 = (uuid.UUID(next(ev.ticket_id for ev, eid, _ in batch if eid == f"{t}-aa" or eid == f"{t}-acc"))
                  for t in ("t4", "t8", "t9"))
    assert statuses[str(t8)] == "resolved" and statuses[str(t9)] is None and str(t4) not in statuses
    assert [(e[0], e[1]) for e in together["early"]] == sorted([(t4, "t4-acc"), (t9, "t9-aa")])
    assert len(together["history"]) >= 8 and any(n == 0 for *_, n in together["counts"])
    assert bool(together["deliveries"]) == listener


async def test_a_listener_registered_while_a_batch_is_applied_waits_for_it_to_commit(pg: tuple[str, int]) -> None:
    """The batch decides once whether a listener exists; one registered after that decision and committed before
    the batch would be told of none of the batch's changes. So a registration waits until the batch commits (and
    is then told of what follows), never slipping in between the check and the commit."""
    before, batch = scenario()
    settings = ServiceSettings(service_name=f"tmf_it_{uuid.uuid4().hex[:8]}", pg_host=pg[0], pg_port=pg[1])
    await ensure_database(settings, (OFFSETS_DDL, *DDL, *hub.DDL))
    pool = await asyncpg.create_pool(settings.pg_dsn(), min_size=2, max_size=2)
    try:
        projection = TmfTicketProjection(pool, hub.Outbox())
        records = [record(i, ev, eid, m) for i, (ev, eid, m) in enumerate([*before, *batch])]
        async with pool.acquire() as applying, pool.acquire() as registering:
            async with applying.transaction():
                await projection.apply_batch(applying, records)
                await registering.execute("SET lock_timeout = '300ms'")
                with pytest.raises(asyncpg.LockNotAvailableError):
                    await registering.execute(
                        "INSERT INTO tmf_hub (id, callback, owner, created_at) VALUES ($1, $2, $3, $4)",
                        uuid.uuid4(), "http://127.0.0.1:9/hub", "portal", NOW)
            await registering.execute("INSERT INTO tmf_hub (id, callback, owner, created_at) VALUES ($1, $2, $3, $4)",
                                      uuid.uuid4(), "http://127.0.0.1:9/hub", "portal", NOW)
        assert await pool.fetchval("SELECT count(*) FROM tmf_ticket") > 0
    finally:
        await pool.close()


def lives() -> tuple[list[tuple[wire.TicketEvent, str, int]], list[tuple[wire.TicketEvent, str, int]],
                     list[tuple[wire.TicketEvent, str, int]]]:
    """(two tickets' events in the order they happened; as they come after a broker change: before the batch, the
    batch). After the change each service's relay publishes its outbox again on its own: dispatch's and feedback's
    steps come before intake's submission and acceptance they followed, or between them."""
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    ev = {
        "a-sub": (submitted(a), 0), "a-acc": (accepted(a, 1), 1), "a-aa": (assignment(a, 2), 2),
        "a-ws": (wire.WorkStarted(ticket_id=a, work_order_id="wo", technician_id="x", mode="on_site",
                                  started_at=NOW + timedelta(minutes=3)), 3),
        "a-res": (resolved(a, 5), 5),
        "a-closed": (wire.Closed(ticket_id=a, reason="rated", closed_at=NOW + timedelta(minutes=9)), 9),
        "b-sub": (submitted(b, "Major"), 0), "b-acc": (accepted(b, 1), 1), "b-aa": (assignment(b, 2), 2),
        "b-wp": (wire.WorkPaused(ticket_id=b, work_order_id="wo", technician_id="x", kind="held", reason="outage",
                                 paused_at=NOW + timedelta(minutes=4)), 4),
        "b-res": (resolved(b, 7), 7),
    }

    def of(*ids: str) -> list[tuple[wire.TicketEvent, str, int]]:
        return [(ev[i][0], i, ev[i][1]) for i in ids]

    in_order = of("a-sub", "a-acc", "a-aa", "a-ws", "a-res", "a-closed", "b-sub", "b-acc", "b-aa", "b-wp", "b-res")
    before = of("a-closed", "a-aa", "a-ws", "b-aa", "a-aa")  # (a redelivery of a kept step: kept once)
    batch = of("a-res", "a-sub", "b-aa", "a-acc", "b-sub", "b-wp", "b-acc", "b-res")
    return in_order, before, batch


@pytest.mark.parametrize("batched", [False, True], ids=["one-by-one", "batched"])
@pytest.mark.parametrize("listener", [False, True], ids=["no-listener", "listener"])
async def test_steps_that_came_before_their_submission_end_as_if_they_had_come_in_order(
    pg: tuple[str, int], batched: bool, listener: bool,
) -> None:
    """Before, a step of a ticket not submitted yet was recorded as applied and dropped: the ticket showed the
    wrong status for ever (acknowledged, not closed), with no status history and no notification of those steps."""
    in_order, before, batch = lives()
    scenario.cache = (in_order, [])  # type: ignore[attr-defined]
    expected = await run(pg, batched=False, listener=listener, between=lambda: None)
    scenario.cache = (before, batch)  # type: ignore[attr-defined]
    got = await run(pg, batched=batched, listener=listener, between=lambda: None)
    assert got["early"] == [] and got == expected
    assert sorted(t[1] for t in got["tickets"]) == ["closed", "resolved"]
    assert len(got["history"]) == 8 and bool(got["deliveries"]) == listener


@pytest.mark.parametrize("batched", [False, True], ids=["one-by-one", "batched"])
@pytest.mark.parametrize("listener", [False, True], ids=["no-listener", "listener"])
async def test_a_closure_after_a_rating_that_came_first_waits_for_the_resolution(
    pg: tuple[str, int], batched: bool, listener: bool,
) -> None:
    """After a broker change feedback's relay (the smallest outbox) republishes first, then intake's, then
    dispatch's: the ticket's Closed (rated) is kept, then its submission and acceptance come, then dispatch's steps.
    A closure after a rating follows the ticket's resolution: it waits for it, though acknowledged → closed is a
    valid move (a complaint ticket's). Before, it was applied right after the acceptance: dispatch's assignment and
    resolution then found the ticket closed, and its status history lacked inProgress and resolved."""
    in_order, _, _ = lives()
    a = [(ev, eid, m) for ev, eid, m in in_order if eid.startswith("a-")]
    of = {eid: (ev, eid, m) for ev, eid, m in a}
    scenario.cache = (a, [])  # type: ignore[attr-defined]
    expected = await run(pg, batched=False, listener=listener, between=lambda: None)
    scenario.cache = ([of["a-closed"]], [of[e] for e in ("a-sub", "a-acc", "a-aa", "a-ws", "a-res")])  # type: ignore[attr-defined]
    got = await run(pg, batched=batched, listener=listener, between=lambda: None)
    assert [h[2] for h in got["history"]] == [h[2] for h in expected["history"]]
    assert got["early"] == [] and got == expected
    assert [t[1] for t in got["tickets"]] == ["closed"] and len(got["history"]) == 4
