"""The statistics on real PostgreSQL and the embedded broker: the SQL figures equal the reference definitions.

The archive runs in-process; the test plays the other services, publishing generated lifecycles to the
tickets topic (and technicians to the workforce topic). Halfway, the archive is stopped and started again:
whatever is delivered twice counts once. Then each report (day, week, month; filtered) and the scorecards
answered over HTTP are compared with ``domain.report`` and ``domain.scorecards`` over the same events.
"""

from __future__ import annotations

import csv
import io
import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pyarrow.parquet as pq
import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.conftest import eventually
from tests.stats_data import envelopes, many
from tsop_archive.main import ArchiveSettings, build
from tsop_archive.stats import projection
from tsop_archive.stats.api import FiguresAnswer, ScorecardAnswer
from tsop_archive.stats.domain import Complaint, Filters, Granularity, Incident, Question, fold_all, report, scorecards
from tsop_events import schemas as wire
from tsop_events.auth import token_table_json
from tsop_events.consumer import Incoming
from tsop_events.envelope import Envelope, wrap
from tsop_events.news import announce
from tsop_events.runtime import Runtime
from tsop_events.settings import ServiceSettings
from tsop_events.store import ensure_database
from tsop_events.topics import Topic

D0 = datetime(2026, 5, 25, tzinfo=UTC)
AUDITOR = {"authorization": "Bearer auditor-token"}
SUPERVISOR = {"authorization": "Bearer supervisor-token"}
TECHNICIAN = {"authorization": "Bearer technician-token"}
pytestmark = pytest.mark.parametrize("bus", ["tansu"], indirect=True)


async def start(settings: ServiceSettings) -> tuple[Runtime, httpx.AsyncClient]:
    s = ArchiveSettings(**{
        **settings.model_dump(), "service_name": f"{settings.service_name}_archive",
        "auth_tokens": token_table_json([("auditor-token", "aud", ["auditor"]), ("supervisor-token", "sup",
                                          ["supervisor"]), ("technician-token", "tec", ["technician"])]),
    })
    app = build(s)
    runtime: Runtime = app.state.runtime
    await runtime.start()

    async def ready() -> bool:
        return all(runtime.readiness().values())

    await eventually(ready, what="the archive is ready")
    return runtime, httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://archive")


def close(got: Any, want: Any, path: str = "") -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), (path, got, want)
        for k in want:
            close(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (path, got, want)
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            close(g, w, f"{path}[{i}]")
    elif isinstance(want, float) and isinstance(got, int | float):
        assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-6), (path, got, want)
    else:
        assert got == want, (path, got, want)


async def test_the_figures_streamed_into_postgresql_equal_the_reference(settings: ServiceSettings) -> None:
    lifecycles = many(7, 160, D0, timedelta(days=20))
    raw = [e for lc in lifecycles for e in lc]
    published = envelopes(raw)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    tickets = Topic.tickets.qualified(settings.topic_prefix)
    runtime, client = await start(settings)
    try:
        for tech, cap in (("tech-1", 3), ("tech-2", 2)):
            reg = wire.TechnicianRegistered(technician_id=tech, service_types=["x"], regions=["north"],
                                            capacity=cap, registered_at=D0)
            env = wrap(reg, event_id=f"reg-{tech}", source="test", time=D0)
            await producer.send_and_wait(Topic.workforce.qualified(settings.topic_prefix), env.data,
                                         key=tech.encode(), headers=env.headers())
        half = len(published) // 2
        for key, env in published[:half]:
            await producer.send(tickets, env.data, key=key.encode(), headers=env.headers())
        await producer.flush()
        await announce(settings, {tickets, Topic.workforce.qualified(settings.topic_prefix)})  # as relays do

        async def count(n: int) -> bool:
            folded = await runtime.pool.fetchval("SELECT coalesce(sum(cardinality(seen)), 0) FROM stats_tickets")
            return int(folded) >= n

        await eventually(lambda: count(half // 3), what="some events folded")
        await client.aclose()
        await runtime.stop()  # a crash mid-stream: the rest (and some of the first half again) after a restart
        runtime, client = await start(settings)
        for key, env in published[half - 40:]:
            await producer.send(tickets, env.data, key=key.encode(), headers=env.headers())
        await producer.flush()
        await announce(settings, {tickets, Topic.workforce.qualified(settings.topic_prefix)})  # as relays do
        await eventually(lambda: count(len(published)), what="every event folded")
        assert int(await runtime.pool.fetchval("SELECT sum(cardinality(seen)) FROM stats_tickets")) == len(raw)

        facts = fold_all(raw).values()
        end = D0 + timedelta(days=21)
        questions: list[tuple[Granularity, dict[str, str], Filters]] = [
            ("day", {}, Filters()),
            ("week", {"channel": "web"}, Filters(channel="web")),
            ("month", {"region": "north", "priority": "3"}, Filters(region="north", priority=3)),
            ("day", {"service_type": "mobile.sim_swap"}, Filters(service_type="mobile.sim_swap")),
        ]
        for granularity, params, filters in questions:
            r = await client.get("/v1/stats/report", headers=AUDITOR, params={
                "from": D0.isoformat(), "to": end.isoformat(), "granularity": granularity, **params})
            assert r.status_code == 200, r.text
            want = report(Question(D0, end, granularity, filters), facts)
            body = r.json()
            close(body["total"], json.loads(FiguresAnswer.of(want.total).model_dump_json()), "total")
            close(body["series"], [json.loads(FiguresAnswer.of(f).model_dump_json()) for f in want.series], "series")
        # a range that is not whole UTC days is answered from the tickets, not the per-day cells: alike
        ragged_start, ragged_end = D0 + timedelta(hours=7), end - timedelta(hours=5, minutes=3)
        r = await client.get("/v1/stats/report", headers=AUDITOR, params={
            "from": ragged_start.isoformat(), "to": ragged_end.isoformat(), "granularity": "day"})
        want = report(Question(ragged_start, ragged_end, "day", Filters()), facts)
        close(r.json()["total"], json.loads(FiguresAnswer.of(want.total).model_dump_json()), "ragged total")
        close(r.json()["series"], [json.loads(FiguresAnswer.of(f).model_dump_json()) for f in want.series], "ragged")
        assert await runtime.pool.fetchval("SELECT sum(submitted) FROM stats_daily") == len(lifecycles)
        whole = (await client.get("/v1/stats/report", headers=SUPERVISOR,
                                  params={"from": D0.isoformat(), "to": end.isoformat()})).json()["total"]
        assert whole["submitted"] == len(lifecycles) and whole["time_to_resolve"]["count"] > 20
        assert 0 < whole["self_service_share"] < 1 and sum(whole["scores"].values()) == whole["rated"] > 0

        now = datetime.now(UTC)
        q = Question(D0 + timedelta(days=3), D0 + timedelta(days=15))
        r = await client.get("/v1/stats/technicians", headers=AUDITOR,
                             params={"from": q.start.isoformat(), "to": q.end.isoformat()})
        assert r.status_code == 200, r.text
        want_cards = [json.loads(ScorecardAnswer.of(c).model_dump_json())
                      for c in scorecards(q, facts, {"tech-1": 3, "tech-2": 2}, now)]
        close(r.json(), want_cards, "scorecards")
        assert {c["technician_id"]: c["capacity"] for c in r.json()}["tech-1"] == 3

        # exports: every ticket of the range, streamed, in three formats
        params = {"from": D0.isoformat(), "to": end.isoformat()}
        r = await client.get("/v1/stats/export", headers=AUDITOR, params={**params, "format": "csv"})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(r.text)))
        assert len(rows) == len(lifecycles) and {row["ticket_id"] for row in rows} == {lc[0][0] for lc in lifecycles}
        assert "customer_id" not in rows[0] and "description" not in rows[0]
        r = await client.get("/v1/stats/export", headers=AUDITOR, params={**params, "format": "json",
                                                                            "channel": "hotline"})
        js = r.json()
        assert len(js) == sum(lc[0][3]["channel"] == "hotline" for lc in lifecycles) and all(
            j["channel"] == "hotline" for j in js)
        # no cap on the range either: decades of tickets are one export (and one scorecard), not 1,100 periods
        decades = {"from": "1990-01-01T00:00:00Z", "to": "2090-01-01T00:00:00Z"}
        r = await client.get("/v1/stats/export", headers=AUDITOR, params={**decades, "format": "csv"})
        assert r.status_code == 200, r.text
        assert len(list(csv.DictReader(io.StringIO(r.text)))) == len(lifecycles)
        r = await client.get("/v1/stats/technicians", headers=AUDITOR, params=decades)
        assert r.status_code == 200 and r.json(), r.text
        r = await client.get("/v1/stats/report", headers=AUDITOR, params=decades)  # a series of 36,525 days: no
        assert r.status_code == 422 and "granularity" in r.text
        r = await client.get("/v1/stats/export", headers=AUDITOR, params={**params, "format": "parquet"})
        table = pq.read_table(io.BytesIO(r.content))
        assert table.num_rows == len(lifecycles)
        scores = [s for s in table.column("score").to_pylist() if s is not None]
        assert len(scores) == whole["rated"]

        # roles and bad input: nothing but a problem
        assert (await client.get("/v1/stats/report")).status_code == 401
        # the caller is known before the query is read: a bad date from a stranger is a 401, not a 422
        assert (await client.get("/v1/stats/report", params={"from": "yesterday"})).status_code == 401
        assert (await client.get("/v1/stats/report", headers=TECHNICIAN)).status_code == 403
        assert (await client.get("/v1/stats/export", headers=TECHNICIAN)).status_code == 403
        for bad, field in (({"granularity": "hour"}, "granularity"), ({"chanel": "web"}, "chanel"),
                           ({"from": "2026-06-02T00:00:00Z", "to": "2026-06-01T00:00:00Z"}, "to"),
                           ({"priority": "9"}, "priority"), ({"from": "yesterday"}, "from"),
                           ({"channel": "fax"}, "channel"),
                           # near the ends of the calendar a period's end overflows: refused, not a 500
                           ({"from": "9999-12-01T00:00Z", "to": "9999-12-31T23:00Z"}, "from"),
                           ({"from": "0001-01-01T00:00+05:00"}, "from"),
                           ({"to": "9999-12-31T00:00Z"}, "to")):
            r = await client.get("/v1/stats/report", headers=AUDITOR, params=bad)
            assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json"), r.text
            assert field in r.text, (bad, r.text)
        r = await client.get("/v1/stats/export", headers=AUDITOR, params={"format": "xlsx"})
        assert r.status_code == 422 and "format" in r.text

        # rebuilt from the log: with the archive stopped, the facts are lost or wrong (a bug in the fold, say);
        # the rebuild folds the archived log again, and the consumer goes on from the store's positions
        async def stored() -> bool:  # the archive's own store caught up (its consumer is not the statistics')
            n = await runtime.pool.fetchval("SELECT count(*) FROM archive_events WHERE topic = $1", tickets)
            return int(n) >= len(raw)

        await eventually(stored, what="the archive storing every event")
        before = (await client.get("/v1/stats/report", headers=SUPERVISOR, params=params)).json()
        consumed = int(await runtime.pool.fetchval("SELECT sum(cardinality(seen)) FROM stats_tickets"))
        await client.aclose()
        await runtime.stop()
        pool = await asyncpg.create_pool(runtime.settings.pg_dsn(), min_size=1, max_size=2)
        try:
            # one ticket's submission was purged by retention (its body is gone): its facts cannot be folded
            # again, so the rebuild keeps them as the consumer folded them
            gone = lifecycles[0][0][0]
            kept = await pool.fetchrow("SELECT channel, region, seen FROM stats_tickets WHERE ticket_id = $1", gone)
            async with pool.acquire() as conn:
                await conn.execute("SET session_replication_role = replica")  # past the store's triggers
                purged = await conn.fetchval(
                    "UPDATE archive_events SET data = NULL WHERE key = $1 AND ce_type = $2 RETURNING seq",
                    gone, "tsop.ticket.request-submitted.v1")
                await conn.execute("RESET session_replication_role")
            assert purged is not None and kept["channel"] is not None
            await pool.execute("DELETE FROM stats_tickets WHERE ticket_id IN (SELECT ticket_id FROM stats_tickets "
                               "WHERE ticket_id <> $1 ORDER BY ticket_id LIMIT 50)", gone)
            await pool.execute("UPDATE stats_tickets SET score = 1 WHERE ticket_id <> $1", gone)
            await pool.execute("DELETE FROM stats_daily")
            folded = await projection.rebuild(pool, tickets)
            # every event the consumer had folded, from the log alone (but for the purged ticket's, kept)
            assert folded == consumed - len(kept["seen"]) and consumed >= len(raw)
            assert int(await pool.fetchval("SELECT sum(cardinality(seen)) FROM stats_tickets")) == consumed
            again = await pool.fetchrow("SELECT channel, region, seen FROM stats_tickets WHERE ticket_id = $1", gone)
            assert dict(again) == dict(kept)
        finally:
            await pool.close()
        runtime, client = await start(settings)
        after = (await client.get("/v1/stats/report", headers=SUPERVISOR, params=params)).json()
        close(after, before, "rebuilt")
        # the consumer goes on: a new ticket's events are folded once, next to the rebuilt facts
        extra = many(99, 1, D0 + timedelta(days=2), timedelta(hours=1))
        for key, env in envelopes([e for lc in extra for e in lc]):
            await producer.send(tickets, env.data, key=key.encode(), headers=env.headers())
        await producer.flush()
        await announce(settings, {tickets, Topic.workforce.qualified(settings.topic_prefix)})  # as relays do
        n_extra = sum(len(lc) for lc in extra)
        await eventually(lambda: count(consumed + n_extra), what="the new ticket's events folded")
        folded_now = await runtime.pool.fetchval("SELECT sum(cardinality(seen)) FROM stats_tickets")
        assert int(folded_now) == consumed + n_extra
    finally:
        await client.aclose()
        await producer.stop()
        await runtime.stop()


async def test_complaints_and_incidents_are_read_by_their_names(settings: ServiceSettings) -> None:
    """Types other chapters add (not yet in the catalogue) are folded as soon as they arrive: fed straight to
    the sink here, since the consumer reads only the types the platform knows."""
    await ensure_database(settings)
    pool = await asyncpg.create_pool(settings.pg_dsn(), min_size=1, max_size=4)
    assert pool is not None
    sink = projection.StatsProjection(pool, settings.topic_prefix)
    await sink.setup()
    lifecycles = many(3, 30, D0, timedelta(days=5))
    raw = [e for lc in lifecycles for e in lc]
    placeholder = wire.Closed(ticket_id="x", reason="rated", closed_at=D0)
    offset = 0

    async def feed(topic: Topic, event_type: str, key: str, body: dict[str, Any], at: datetime) -> None:
        nonlocal offset
        env = Envelope(f"{key}-{offset}", event_type, "test", at, key, None, None, json.dumps(body).encode())
        qualified = topic.qualified(settings.topic_prefix)
        await sink.process("e", qualified, 0, [Incoming(qualified, 0, offset, key, env, placeholder)], offset)
        offset += 1

    for ticket, event_id, event_type, body, at in raw:
        env = Envelope(event_id, event_type, "test", at, ticket, None, None, json.dumps(body).encode())
        qualified = Topic.tickets.qualified(settings.topic_prefix)
        await sink.process("e", qualified, 0, [Incoming(qualified, 0, offset, ticket, env, placeholder)], offset)
        offset += 1
    tickets = [lc[0][0] for lc in lifecycles]
    # the real complaint events: ComplaintReceived names its tickets in ``ticket_ids``; a ticket linked later
    # (ComplaintTicketLinked) counts too
    complaints = [Complaint(f"c{i}", (tickets[i],), D0 + timedelta(days=i % 5, hours=3)) for i in range(6)]
    complaints.append(Complaint("c-none", (), D0 + timedelta(hours=5)))
    complaints.append(Complaint("c-linked", (tickets[7],), D0 + timedelta(hours=6)))
    for c in complaints:
        received = wire.ComplaintReceived(
            complaint_id=c.complaint_id, customer_id="cust", source="agent", complaint_type="service_quality",
            description="slow", ticket_ids=[] if c.complaint_id == "c-linked" else list(c.ticket_ids),
            received_by="agent-1", received_at=c.filed_at, acknowledge_by=c.filed_at, answer_by=c.filed_at,
            repeat=False,
        )
        await feed(Topic.complaints, received.event_type, c.complaint_id, received.model_dump(mode="json"),
                   c.filed_at)
    linked = wire.ComplaintTicketLinked(complaint_id="c-linked", ticket_id=tickets[7], linked_by="agent-1",
                                        linked_at=D0 + timedelta(hours=7))
    await feed(Topic.complaints, linked.event_type, "c-linked", linked.model_dump(mode="json"), D0)
    again = wire.ComplaintReceived(
        complaint_id="c0", customer_id="cust", source="agent", complaint_type="service_quality", description="x",
        received_by="agent-1", received_at=D0, acknowledge_by=D0, answer_by=D0, repeat=False,
    )
    await feed(Topic.complaints, again.event_type, "c0", again.model_dump(mode="json"), D0)  # again: once
    north, fault = frozenset({"north"}), frozenset({"broadband.fault_repair"})
    incidents = [Incident("i1", D0 + timedelta(hours=2), D0 + timedelta(hours=7), north, fault),
                 Incident("i2", D0 + timedelta(days=2), None, frozenset({"south", "north"}),
                          frozenset({"mobile.fault_repair", "broadband.fault_repair"})),
                 Incident("i3", D0 + timedelta(days=3, hours=1), D0 + timedelta(days=3, hours=2),
                          frozenset({"south"}), frozenset({"mobile.fault_repair"}))]
    for inc in incidents:
        assert inc.declared_at is not None
        first_region, first_service = sorted(inc.regions)[-1:], sorted(inc.services)[-1:]
        await feed(Topic.incidents, "tsop.incident.declared.v1", inc.incident_id,
                   {"incident_id": inc.incident_id, "declared_at": inc.declared_at.isoformat(),
                    "regions": first_region, "affected_services": first_service}, inc.declared_at)
        if len(inc.regions) > 1:  # its scope widened later: it counts for every region it ever named
            await feed(Topic.incidents, "tsop.incident.severity-changed.v1", inc.incident_id,
                       {"incident_id": inc.incident_id, "regions": sorted(inc.regions),
                        "affected_services": sorted(inc.services)}, inc.declared_at + timedelta(minutes=5))
        if inc.restored_at:  # no time in the body: the envelope's
            await feed(Topic.incidents, "tsop.incident.service-restored.v1", inc.incident_id,
                       {"incident_id": inc.incident_id}, inc.restored_at)
    facts = fold_all(raw).values()
    for granularity, filters in (("day", Filters()), ("week", Filters(channel="web")), ("day", Filters(region="north")),
                                 ("day", Filters(service_type="mobile.fault_repair"))):
        q = Question(D0, D0 + timedelta(days=5), granularity, filters)  # type: ignore[arg-type]
        got, want = await projection.report(pool, q), report(q, facts, complaints, incidents)
        close(json.loads(FiguresAnswer.of(got.total).model_dump_json()),
              json.loads(FiguresAnswer.of(want.total).model_dump_json()), "total")
        close([json.loads(FiguresAnswer.of(f).model_dump_json()) for f in got.series],
              [json.loads(FiguresAnswer.of(f).model_dump_json()) for f in want.series], "series")
    whole = (await projection.report(pool, Question(D0, D0 + timedelta(days=5)))).total
    assert whole.complaints == 8 and whole.incidents_declared == 3
    # with a filter, a complaint counts when one of its tickets passes it (it did not: always 0)
    channel = lifecycles[0][0][3]["channel"]
    admitted = {lc[0][0] for lc in lifecycles if lc[0][3]["channel"] == channel}
    want_n = sum(1 for c in complaints if admitted & set(c.ticket_ids))
    assert want_n > 0
    filtered = (await projection.report(pool, Question(D0, D0 + timedelta(days=5), "day",
                                                       Filters(channel=channel)))).total
    assert filtered.complaints == want_n
    assert whole.time_to_restore.count == 2 and whole.time_to_restore.mean == 3 * 3600
    # incidents under a region or service-type filter: those whose scope named it (channel and priority: all)
    for f, n in ((Filters(region="north"), 2), (Filters(region="south"), 2), (Filters(region="east"), 0),
                 (Filters(service_type="broadband.fault_repair"), 2), (Filters(channel=channel), 3)):
        got_n = (await projection.report(pool, Question(D0, D0 + timedelta(days=5), "day", f))).total
        assert got_n.incidents_declared == n, (f, got_n.incidents_declared)
    await pool.close()


async def test_incidents_counted_before_their_scope_was_kept_get_it_from_the_archived_log(
    settings: ServiceSettings,
) -> None:
    """An upgrade: ``stats_incidents`` rows from before the scope columns have none; the next start fills them
    from the incidents' declarations (and widenings) the archive stores, so region filters count them."""
    from tsop_archive.projection import DDL as STORE_DDL

    await ensure_database(settings, list(STORE_DDL))
    pool = await asyncpg.create_pool(settings.pg_dsn(), min_size=1, max_size=2)
    try:
        await pool.execute("""CREATE TABLE stats_incidents (
            incident_id text PRIMARY KEY, declared_at timestamptz, restored_at timestamptz)""")  # the old shape
        await pool.execute("INSERT INTO stats_incidents VALUES ('i-old', $1, NULL)", D0)
        for n, (ce_type, body) in enumerate((
            ("tsop.incident.declared.v1", {"incident_id": "i-old", "regions": ["north"],
                                           "affected_services": ["broadband.fault_repair"]}),
            ("tsop.incident.severity-changed.v1", {"incident_id": "i-old", "regions": ["north", "south"],
                                                   "affected_services": ["broadband.fault_repair"]}),
        )):
            await pool.execute(
                "INSERT INTO archive_events (ce_id, topic, kafka_partition, kafka_offset, key, ce_type, ce_source, "
                "ce_time, data) VALUES ($1, 'tsop.incidents', 0, $2, 'i-old', $3, 'incident', $4, $5::jsonb)",
                f"e{n}", n, ce_type, D0, json.dumps(body))
        await projection.StatsProjection(pool, settings.topic_prefix).setup()  # the new version starts
        row = await pool.fetchrow("SELECT regions, services FROM stats_incidents WHERE incident_id = 'i-old'")
        assert (row["regions"], row["services"]) == (["north", "south"], ["broadband.fault_repair"])
        q = Question(D0 - timedelta(days=1), D0 + timedelta(days=1), "day", Filters(region="south"))
        assert (await projection.report(pool, q)).total.incidents_declared == 1
    finally:
        await pool.close()
