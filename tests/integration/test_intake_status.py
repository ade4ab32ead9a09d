"""Intake's status projection on real PostgreSQL: a request's status only ever moves forward."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from tsop_events import schemas as wire
from tsop_events.batched import Statements
from tsop_events.consumer import OFFSETS_DDL, Incoming
from tsop_events.envelope import wrap
from tsop_events.settings import ServiceSettings
from tsop_events.store import ensure_database
from tsop_intake.projection import RequestStatusProjection, current_status

NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)


def incoming(event: wire.TicketEvent, at: datetime, offset: int) -> Incoming:
    env = wrap(event, event_id=f"{event.ticket_id}-{offset}", source="test", time=at)
    return Incoming("tsop.tickets", 0, offset, event.ticket_id, env, event)


async def status_projection(
    pg: tuple[str, int],
) -> tuple[asyncpg.Pool, RequestStatusProjection, list[tuple[str, uuid.UUID]]]:
    """A status projection on a database of its own, and the callbacks it made (finished, reopened)."""
    settings = ServiceSettings(service_name=f"status_it_{uuid.uuid4().hex[:8]}", pg_host=pg[0], pg_port=pg[1])
    await ensure_database(settings, (*RequestStatusProjection.ddl, OFFSETS_DDL))
    pool = await asyncpg.create_pool(settings.pg_dsn(), min_size=1, max_size=2)
    calls: list[tuple[str, uuid.UUID]] = []

    def note(what: str) -> Callable[[uuid.UUID], None]:
        return lambda x: calls.append((what, x))

    return pool, RequestStatusProjection(pool, on_finished=note("finished"), on_reopened=note("reopened")), calls


async def test_a_late_feedback_sent_never_moves_a_closed_or_archived_request_back(pg: tuple[str, int]) -> None:
    settings = ServiceSettings(service_name=f"status_it_{uuid.uuid4().hex[:8]}", pg_host=pg[0], pg_port=pg[1])
    await ensure_database(settings, RequestStatusProjection.ddl)
    pool = await asyncpg.create_pool(settings.pg_dsn(), min_size=1, max_size=2)
    finished: list[uuid.UUID] = []
    projection = RequestStatusProjection(pool, on_finished=finished.append)
    t = str(uuid.uuid4())
    s = NOW
    events = [
        wire.Resolved(ticket_id=t, work_order_id="wo", technician_id="x", resolution_code="ok", summary="done",
                      resolved_at=s),
        wire.Rated(ticket_id=t, score=5, rated_at=s + timedelta(seconds=1)),
        wire.Closed(ticket_id=t, reason="rated", closed_at=s + timedelta(seconds=1)),
        wire.Archived(ticket_id=t, dossier_hash="h", event_count=3, last_event_id="c",
                      archived_at=s + timedelta(seconds=2)),
        # a delivery outcome recorded after the seal (what older feedback instances published)
        wire.FeedbackSent(ticket_id=t, channel="webhook", attempts=3, status_code=204,
                          rating_due_at=s + timedelta(days=1), sent_at=s + timedelta(seconds=3)),
    ]
    try:
        async with pool.acquire() as conn, conn.transaction():
            for i, e in enumerate(events):
                await projection.apply(conn, incoming(e, s + timedelta(seconds=i), i))
            # a re-delivery of an older event changes nothing either
            await projection.apply(conn, incoming(events[0], s, 0))
        status = await pool.fetchval("SELECT status FROM request_status WHERE ticket_id = $1", uuid.UUID(t))
        history = await pool.fetch(
            "SELECT event_type, status FROM request_history WHERE ticket_id = $1 ORDER BY at", uuid.UUID(t)
        )
        assert status == "archived"
        assert [r["status"] for r in history] == ["resolved", "rated", "closed", "archived", "archived"]
        assert history[-1]["event_type"] == wire.FeedbackSent.event_type  # kept in the history, without regress
        assert len(finished) == 5 and set(finished) == {uuid.UUID(t)}  # a redelivery calls nothing again
    finally:
        await pool.close()


async def test_a_reopened_request_shows_as_reopened_then_moves_on_and_is_open_again(pg: tuple[str, int]) -> None:
    settings = ServiceSettings(service_name=f"status_it_{uuid.uuid4().hex[:8]}", pg_host=pg[0], pg_port=pg[1])
    await ensure_database(settings, RequestStatusProjection.ddl)
    pool = await asyncpg.create_pool(settings.pg_dsn(), min_size=1, max_size=2)
    finished: list[uuid.UUID] = []
    reopened: list[uuid.UUID] = []
    projection = RequestStatusProjection(pool, on_finished=finished.append, on_reopened=reopened.append)
    t = str(uuid.uuid4())
    s = NOW

    async def status_and_view() -> tuple[str, str | None]:
        status = await pool.fetchval("SELECT status FROM request_status WHERE ticket_id = $1", uuid.UUID(t))
        rows = await pool.fetch(
            "SELECT event_type, status, at FROM request_history WHERE ticket_id = $1 ORDER BY at", uuid.UUID(t)
        )
        return status, current_status([dict(r) for r in rows])

    again = wire.Reopened(ticket_id=t, reason_code="not_solved", reason="still down", requested_by="customer",
                          reopen_count=1, reopened_at=s + timedelta(seconds=10))
    try:
        async with pool.acquire() as conn, conn.transaction():
            for i, e in enumerate([
                wire.Resolved(ticket_id=t, work_order_id="wo", technician_id="x", resolution_code="ok",
                              summary="done", resolved_at=s),
                wire.Rated(ticket_id=t, score=1, rated_at=s + timedelta(seconds=1)),
                wire.Closed(ticket_id=t, reason="rated", closed_at=s + timedelta(seconds=2)),
            ]):
                await projection.apply(conn, incoming(e, s + timedelta(seconds=i), i))
        assert await status_and_view() == ("closed", "closed")
        async with pool.acquire() as conn, conn.transaction():
            await projection.apply(conn, incoming(again, s + timedelta(seconds=10), 3))
        assert await status_and_view() == ("reopened", "reopened")
        assert reopened == [uuid.UUID(t)]  # back in the open-request index (a duplicate target again)
        async with pool.acquire() as conn, conn.transaction():
            # a late outcome of the earlier round leaves it reopened (and does not finish it)
            late = wire.FeedbackSent(ticket_id=t, channel="webhook", attempts=2, status_code=204,
                                     rating_due_at=s + timedelta(days=1), sent_at=s + timedelta(seconds=3))
            await projection.apply(conn, incoming(late, s + timedelta(seconds=3), 4))
            await projection.apply(conn, incoming(again, s + timedelta(seconds=10), 3))  # a redelivery
        assert await status_and_view() == ("reopened", "reopened")
        assert len(finished) == 3 and reopened == [uuid.UUID(t)]
        async with pool.acquire() as conn, conn.transaction():  # worked again: the status moves on
            await projection.apply(conn, incoming(
                wire.Assigned(ticket_id=t, work_order_id="wo", technician_id="y", reason="best", candidates=[],
                              assigned_at=s + timedelta(seconds=20)),
                s + timedelta(seconds=20), 5))
        assert await status_and_view() == ("assigned", "assigned")
    finally:
        await pool.close()


async def test_a_batch_moves_the_status_and_calls_back_as_its_records_one_by_one_would(pg: tuple[str, int]) -> None:
    """One batch (``RequestStatusProjection`` is a ``BatchedSink``: its statements go as one pipelined run): the
    same status, history and callbacks as one record at a time, a redelivery inside the batch included."""
    topic = "tsop.tickets"
    t, u = str(uuid.uuid4()), str(uuid.uuid4())
    s = NOW
    events: list[tuple[wire.TicketEvent, str]] = [
        (wire.Resolved(ticket_id=t, work_order_id="wo", technician_id="x", resolution_code="ok", summary="done",
                       resolved_at=s), "t-res"),
        (wire.Rated(ticket_id=t, score=1, rated_at=s + timedelta(seconds=1)), "t-rated"),
        (wire.Resolved(ticket_id=t, work_order_id="wo", technician_id="x", resolution_code="ok", summary="done",
                       resolved_at=s), "t-res"),  # redelivered in the same batch: calls nothing again
        (wire.Closed(ticket_id=t, reason="rated", closed_at=s + timedelta(seconds=2)), "t-closed"),
        (wire.Reopened(ticket_id=t, reason_code="not_solved", reason="down", requested_by="customer",
                       reopen_count=1, reopened_at=s + timedelta(seconds=10)), "t-reopened"),
        (wire.FeedbackSent(ticket_id=t, channel="webhook", attempts=2, status_code=204,
                           rating_due_at=s + timedelta(days=1), sent_at=s + timedelta(seconds=3)), "t-late"),
        (wire.Assigned(ticket_id=u, work_order_id="wo2", technician_id="y", reason="best", candidates=[],
                       assigned_at=s), "u-assigned"),
    ]
    at = [0, 1, 0, 2, 10, 3, 0]  # the late outcome (3 s) comes from before the reopening (10 s)
    records = [Incoming(topic, 0, i, e.ticket_id, wrap(e, event_id=eid, source="test",
                                                       time=s + timedelta(seconds=at[i])), e)
               for i, (e, eid) in enumerate(events)]
    seen = []
    for batched in (False, True):
        pool, projection, calls = await status_projection(pg)
        try:
            if batched:
                await projection.process("ep", topic, 0, records, records[-1].offset)
            else:
                for r in records:
                    await projection.process("ep", topic, 0, [r], r.offset)
            status = await pool.fetch("SELECT ticket_id, status, since FROM request_status ORDER BY ticket_id")
            history = await pool.fetch("SELECT event_id, status FROM request_history ORDER BY event_id")
            seen.append(([tuple(r) for r in status], [tuple(r) for r in history], calls))
        finally:
            await pool.close()
    assert seen[1] == seen[0]
    status, history, calls = seen[1]
    assert dict((str(k), v) for k, v, _ in status) == {t: "reopened", u: "assigned"}
    assert dict(history) == {"t-res": "resolved", "t-rated": "rated", "t-closed": "closed", "t-reopened": "reopened",
                             "t-late": "reopened", "u-assigned": "assigned"}
    tid = uuid.UUID(t)
    assert calls == [("finished", tid), ("finished", tid), ("finished", tid), ("reopened", tid)]


async def test_a_batch_of_many_tickets_is_one_statement_with_the_effect_of_its_records_one_by_one(
    pg: tuple[str, int], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tickets that appear once in a batch are moved with one statement for them all (``projection.MANY``); a
    ticket that appears twice still with a statement per record. The status, ``since``, history and callbacks are
    those of the records applied one at a time: a move forward, a late outcome that moves nothing (its history
    keeps the status it leaves), a redelivery of an event applied in an earlier batch (no entry, no callback), a
    newer reopening, a first event."""
    topic = "tsop.tickets"
    s = NOW
    a, b, c, d, e, f = (str(uuid.uuid4()) for _ in range(6))

    def resolved(t: str, at: datetime) -> wire.Resolved:
        return wire.Resolved(ticket_id=t, work_order_id="wo", technician_id="x", resolution_code="ok", summary="ok",
                             resolved_at=at)

    def sent(t: str, at: datetime) -> wire.FeedbackSent:
        return wire.FeedbackSent(ticket_id=t, channel="webhook", attempts=1, status_code=204,
                                 rating_due_at=at + timedelta(days=1), sent_at=at)

    before: list[tuple[wire.TicketEvent, str, int]] = [
        (resolved(a, s), "a-res", 0),
        (resolved(b, s), "b-res", 0), (wire.Closed(ticket_id=b, reason="rated", closed_at=s), "b-closed", 1),
        (resolved(c, s), "c-res", 0),
        (resolved(d, s), "d-res", 0), (wire.Closed(ticket_id=d, reason="rated", closed_at=s), "d-closed", 2),
    ]
    batch: list[tuple[wire.TicketEvent, str, int]] = [
        (sent(a, s), "a-sent", 3),  # moves on
        (sent(b, s), "b-sent", 3),  # late: b stays closed
        (resolved(c, s), "c-res", 0),  # applied in an earlier batch
        (wire.Reopened(ticket_id=d, reason_code="not_solved", reason="down", requested_by="customer",
                       reopen_count=1, reopened_at=s + timedelta(seconds=10)), "d-reopened", 10),
        (wire.Assigned(ticket_id=e, work_order_id="wo", technician_id="y", reason="best", candidates=[],
                       assigned_at=s), "e-assigned", 0),  # a first event
        (wire.Assigned(ticket_id=f, work_order_id="wo", technician_id="y", reason="best", candidates=[],
                       assigned_at=s), "f-assigned", 0),  # f twice: a statement each
        (resolved(f, s), "f-res", 5),
    ]
    records = [Incoming(topic, 0, i, ev.ticket_id, wrap(ev, event_id=eid, source="test",
                                                       time=s + timedelta(seconds=sec)), ev)
               for i, (ev, eid, sec) in enumerate([*before, *batch])]
    first, rest = records[:len(before)], records[len(before):]
    one_by_one: list[str] = []
    original = RequestStatusProjection._status

    def counted(self: RequestStatusProjection, statements: Statements, incoming: Incoming) -> None:
        one_by_one.append(incoming.envelope.id)
        original(self, statements, incoming)

    monkeypatch.setattr(RequestStatusProjection, "_status", counted)
    seen = []
    for batched in (False, True):
        pool, projection, calls = await status_projection(pg)
        try:
            for r in first:
                await projection.process("ep", topic, 0, [r], r.offset)
            calls.clear()
            one_by_one.clear()
            if batched:
                await projection.process("ep", topic, 0, rest, rest[-1].offset)
            else:
                for r in rest:
                    await projection.process("ep", topic, 0, [r], r.offset)
            status = await pool.fetch("SELECT ticket_id, status, rank, updated_at, since FROM request_status "
                                      "ORDER BY ticket_id")
            history = await pool.fetch("SELECT * FROM request_history ORDER BY event_id")
            seen.append(([tuple(r) for r in status], [tuple(r) for r in history], sorted(calls)))
        finally:
            await pool.close()
    assert one_by_one == ["f-assigned", "f-res"]  # the batched run's: every other record in the one statement
    assert seen[1] == seen[0]
    status, history, calls = seen[1]
    assert {str(r[0]): r[1] for r in status} == {a: "feedback_sent", b: "closed", c: "resolved", d: "reopened",
                                                 e: "assigned", f: "resolved"}
    assert {r[0]: r[3] for r in history if r[0] in ("b-sent", "d-reopened")} == {"b-sent": "closed",
                                                                               "d-reopened": "reopened"}
    ids = {x: uuid.UUID(x) for x in (a, b, c, d, e, f)}
    assert calls == sorted([("finished", ids[a]), ("finished", ids[b]), ("reopened", ids[d]),
                            ("finished", ids[f])])
