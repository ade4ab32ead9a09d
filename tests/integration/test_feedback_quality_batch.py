"""Feedback's quality signals on real PostgreSQL: a batch's submissions, assignments and assessments are written with
one statement per kind, and leave ``quality_tickets`` and the complaints inbox exactly as record by record."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from tsop_events import schemas as wire
from tsop_events.consumer import Incoming
from tsop_events.envelope import wrap
from tsop_events.settings import ServiceSettings
from tsop_events.store import ensure_database
from tsop_feedback.complaints.domain import DEFAULT_POLICY
from tsop_feedback.complaints.policies import QualitySignals
from tsop_feedback.complaints.projection import DDL

NOW = datetime(2026, 6, 1, 9, tzinfo=UTC)
TOPIC = "tsop.tickets"


class Counting(asyncpg.Connection):  # type: ignore[misc]
    statements = 0

    async def execute(self, query: str, *args: Any, **kwargs: Any) -> Any:
        if "quality_tickets" in query or "complaint_inbox" in query:
            type(self).statements += 1
        return await super().execute(query, *args, **kwargs)


@pytest.fixture
async def pools(pg: tuple[str, int]) -> AsyncIterator[list[asyncpg.Pool]]:
    out = []
    for _ in range(2):
        settings = ServiceSettings(service_name=f"quality_it_{uuid.uuid4().hex[:8]}", pg_host=pg[0], pg_port=pg[1])
        await ensure_database(settings)
        pool = await asyncpg.create_pool(settings.pg_dsn(), min_size=1, max_size=2, connection_class=Counting)
        out.append(pool)
    try:
        yield out
    finally:
        for pool in out:
            await pool.close()


def submitted(ticket: str, **kw: Any) -> wire.RequestSubmitted:
    fields: dict[str, Any] = dict(
        ticket_id=ticket, channel="app", channel_id="ch-1", customer_id=f"c-{ticket}", customer_tier="gold",
        region="north", service_type="broadband.fault_repair", description="down",
        time_requirement=wire.TimeRequirement(), submitted_at=NOW)
    fields.update(kw)
    return wire.RequestSubmitted(**fields)


def assigned(ticket: str, tech: str) -> wire.Assigned:
    return wire.Assigned(ticket_id=ticket, work_order_id=f"wo-{ticket}", technician_id=tech, reason="r",
                         candidates=[], assigned_at=NOW)


def records(events: list[wire.WireEvent]) -> list[Incoming]:
    out = []
    for offset, ev in enumerate(events):
        env = wrap(ev, event_id=f"e{offset}", source="test")
        out.append(Incoming(TOPIC, 0, offset, ev.key(), env, ev))
    return out


async def table(pool: asyncpg.Pool) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    rows = [dict(r) for r in await pool.fetch("SELECT * FROM quality_tickets ORDER BY ticket_id")]
    inbox = [(r["key"], r["kind"]) for r in await pool.fetch("SELECT key, kind FROM complaint_inbox ORDER BY key")]
    return rows, inbox


async def test_a_batch_is_written_one_statement_per_kind_with_the_effect_of_its_records_one_by_one(
    pools: list[asyncpg.Pool],
) -> None:
    batched, one_by_one = (QualitySignals(pool, DEFAULT_POLICY) for pool in pools)
    for sink in (batched, one_by_one):
        await sink.setup()
        for stmt in DDL:
            await sink.pool.execute(stmt)
    events: list[wire.WireEvent] = [
        submitted("T1", attributes={"ticketType": "Complaint"}),  # noted for the complaints inbox
        assigned("T1", "tech-1"),
        submitted("T2"),
        wire.RequestUpdated(ticket_id="T2", changes={"region": "south"}, updated_by="agent", updated_at=NOW),
        assigned("T3", "tech-1"),
        assigned("T3", "tech-2"),  # twice: record by record, the later wins
        submitted("T4", region="east"),
        wire.Resolved(ticket_id="T4", work_order_id="wo-T4", technician_id="tech-9", resolution_code="fixed",
                      summary="ok", resolved_at=NOW + timedelta(hours=1)),
        wire.TicketAssessed(ticket_id="T5", checks={"a": True}, score=87.5, assessed_by="qa", assessed_at=NOW),
        wire.Rated(ticket_id="T1", score=5, solved=True, rated_at=NOW + timedelta(hours=2)),
        submitted("T6"),
        assigned("T6", "tech-3"),
        assigned("T7", "tech-4"),
    ]
    recs = records(events)
    Counting.statements = 0
    await batched.process("ep", TOPIC, 0, recs, recs[-1].offset)
    statements = Counting.statements
    async with one_by_one.pool.acquire() as conn, conn.transaction():
        for rec in recs:
            await one_by_one.apply(conn, rec)
    assert await table(batched.pool) == await table(one_by_one.pool)
    rows, inbox = await table(batched.pool)
    assert [r["ticket_id"] for r in rows] == ["T1", "T2", "T3", "T4", "T5", "T6", "T7"]
    assert inbox == [("ticket:T1", "ticket")]
    # T1, T6, T7 (and T5's assessment) in one statement per kind; T2, T3 and T4 record by record (6 records);
    # the complaint noted; the plain rating
    assert statements == 3 + 6 + 1 + 1


async def test_a_batch_beginning_with_records_already_applied_writes_none_of_them_again(
    pools: list[asyncpg.Pool],
) -> None:
    sink = QualitySignals(pools[0], DEFAULT_POLICY)
    await sink.setup()
    recs = records([submitted("T1"), assigned("T1", "tech-1"), submitted("T2"), assigned("T2", "tech-2")])
    await sink.process("ep", TOPIC, 0, recs[:2], 1)
    # something later (another record, already applied) changed T1's row
    await sink.pool.execute("UPDATE quality_tickets SET region = 'changed', technician_id = 'tech-x' "
                            "WHERE ticket_id = 'T1'")
    await sink.process("ep", TOPIC, 0, recs, 3)  # redelivered from the start of the fetch
    rows, _ = await table(sink.pool)
    by_ticket = {r["ticket_id"]: r for r in rows}
    assert (by_ticket["T1"]["region"], by_ticket["T1"]["technician_id"]) == ("changed", "tech-x")
    assert (by_ticket["T2"]["region"], by_ticket["T2"]["technician_id"]) == ("north", "tech-2")
