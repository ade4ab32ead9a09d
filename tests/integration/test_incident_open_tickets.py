"""Incident's open-ticket read model on real PostgreSQL: a batch (one pipelined run of upserts) leaves the rows a
record at a time would, stages moving forward and a reopening taking a ticket back to open."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from tsop_events import schemas as wire
from tsop_events.consumer import OFFSETS_DDL, Incoming
from tsop_events.envelope import wrap
from tsop_events.settings import ServiceSettings
from tsop_events.store import ensure_database
from tsop_incident.projection import OpenTickets, open_tickets_in

NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
TOPIC = "tsop.tickets"


async def test_a_batch_leaves_the_rows_its_records_one_by_one_would(pg: tuple[str, int]) -> None:
    t, u = str(uuid.uuid4()), str(uuid.uuid4())
    accepted = wire.RequestAccepted(ticket_id=t, service_type="broadband.fault_repair", region="north", priority=2,
                                    customer_tier="gold", accepted_at=NOW)
    events: list[tuple[wire.TicketEvent, int]] = [  # each with its envelope's time, in seconds after NOW
        (wire.RequestSubmitted(ticket_id=t, channel="web", customer_id="c1", customer_tier="gold", region="north",
                               service_type="broadband.fault_repair", description="down",
                               time_requirement=wire.TimeRequirement(), submitted_at=NOW), 0),
        (accepted, 1),
        (wire.Resolved(ticket_id=t, work_order_id="wo", technician_id="x", resolution_code="ok", summary="ok",
                       resolved_at=NOW), 5),
        (accepted, 1),  # redelivered: never moves the stage back
        (wire.Reopened(ticket_id=t, reason_code="not_solved", reason="down", requested_by="customer",
                       reopen_count=1, reopened_at=NOW), 10),
        (wire.Resolved(ticket_id=t, work_order_id="wo", technician_id="x", resolution_code="ok", summary="ok",
                       resolved_at=NOW), 5),  # from before the reopening: leaves it open
        (wire.RequestAccepted(ticket_id=u, service_type="broadband.fault_repair", region="north", priority=3,
                              customer_tier="gold", accepted_at=NOW), 2),
    ]
    records = [Incoming(TOPIC, 0, i, e.ticket_id, wrap(e, event_id=f"e{i}", source="test",
                                                       time=NOW + timedelta(seconds=at)), e)
               for i, (e, at) in enumerate(events)]
    seen = []
    for batched in (False, True):
        settings = ServiceSettings(service_name=f"open_it_{uuid.uuid4().hex[:8]}", pg_host=pg[0], pg_port=pg[1])
        await ensure_database(settings, (*OpenTickets.ddl, OFFSETS_DDL))
        pool = await asyncpg.create_pool(settings.pg_dsn(), min_size=1, max_size=2)
        sink = OpenTickets(pool)
        try:
            if batched:
                await sink.process("ep", TOPIC, 0, records, records[-1].offset)
            else:
                for r in records:
                    await sink.process("ep", TOPIC, 0, [r], r.offset)
            rows = await pool.fetch("SELECT * FROM tickets ORDER BY ticket_id")
            scope = (["north"], ["broadband.fault_repair"])
            seen.append(([tuple(r) for r in rows], await open_tickets_in(pool, scope)))
        finally:
            await pool.close()
    assert seen[1] == seen[0]
    rows, open_now = seen[1]
    assert sorted(open_now) == sorted([t, u])
    by_id = {str(r[0]): r for r in rows}
    assert by_id[t][4:6] == (2, "reopened") and by_id[u][4:6] == (1, "open")
