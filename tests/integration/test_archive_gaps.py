"""The archive never seals a known gap, on real PostgreSQL and the embedded broker.

The archive runs in-process; the test plays the other services on the bus: it
publishes a ticket's events (one with a NUL, one schema-invalid), and the dead
letters a relay and a projection would publish when they fail on one of them.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.conftest import eventually
from tsop_archive.main import ArchiveSettings, build
from tsop_events import schemas as wire
from tsop_events.auth import token_table_json
from tsop_events.envelope import Envelope, wrap
from tsop_events.news import announce
from tsop_events.runtime import Runtime
from tsop_events.settings import ServiceSettings
from tsop_events.topics import Topic

NOW = datetime(2026, 6, 1, 9, tzinfo=UTC)
AUDITOR = {"authorization": "Bearer auditor-token"}
pytestmark = pytest.mark.parametrize("bus", ["tansu"], indirect=True)


def lifecycle(ticket: str, description: str) -> list[Envelope]:
    """Submitted … Closed of one ticket, each caused by the one before."""
    events: list[wire.WireEvent] = [
        wire.RequestSubmitted(
            ticket_id=ticket, channel="web", customer_id="c1", customer_tier="gold", region="north",
            service_type="broadband.fault_repair", description=description, time_requirement=wire.TimeRequirement(),
            submitted_at=NOW,
        ),
        wire.RequestAccepted(ticket_id=ticket, service_type="broadband.fault_repair", region="north", priority=2,
                             customer_tier="gold", accepted_at=NOW),
        wire.WorkLogged(ticket_id=ticket, work_order_id="wo", technician_id="tech", action="replaced the ONT",
                        mode="on_site", logged_at=NOW),
        wire.Resolved(ticket_id=ticket, work_order_id="wo", technician_id="tech", resolution_code="hw_replaced",
                      summary="ONT replaced", resolved_at=NOW),
        wire.Closed(ticket_id=ticket, reason="rated", closed_at=NOW),
    ]
    out: list[Envelope] = []
    for i, e in enumerate(events):
        out.append(wrap(e, event_id=f"{ticket}-{i}", source="test", time=NOW,
                        causation_id=out[-1].id if out else None))
    return out


def dead_letter(consumer: str, failed: Envelope, ticket: str, offset: int, topic: str) -> Envelope:
    letter = wire.DeadLettered(
        consumer=consumer, source_topic=topic,
        source_partition=-1 if consumer.startswith("relay:") else 0, source_offset=offset, source_key=ticket,
        source_headers={k: v.decode() for k, v in failed.headers()}, source_value=failed.data.decode(),
        error="UntranslatableCharacterError: unsupported Unicode escape sequence", failed_at=NOW,
    )
    return wrap(letter, event_id=str(uuid.uuid4()), source=consumer.removeprefix("relay:"))


class Bus:
    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")

    async def send(self, topic: Topic, env: Envelope, key: str) -> None:
        """Every record to partition 0: a letter can name the position of the record that failed."""
        await self.producer.send_and_wait(
            topic.qualified(self.settings.topic_prefix), env.data, key=key.encode(), headers=env.headers(),
            partition=0,
        )
        await announce(self.settings, {topic.qualified(self.settings.topic_prefix)})  # as relays do


async def started(settings: ServiceSettings) -> tuple[Runtime, httpx.AsyncClient, Bus]:
    s = ArchiveSettings(
        **{
            **settings.model_dump(),
            "service_name": f"{settings.service_name}_archive",
            "auth_tokens": token_table_json([("auditor-token", "auditor-1", ["auditor"])]),
        }
    )
    app = build(s)
    runtime: Runtime = app.state.runtime
    await runtime.start()

    async def ready() -> bool:
        return all(runtime.readiness().values())

    await eventually(ready, what="the archive is ready")
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://archive")
    bus = Bus(settings)
    await bus.producer.start()
    return runtime, client, bus


async def dossier(client: httpx.AsyncClient, ticket: str) -> dict[str, Any]:
    r = await client.get(f"/v1/tickets/{ticket}/dossier", headers=AUDITOR)
    if r.status_code == 404:  # nothing arrived yet
        return {"events": [], "missing": [], "gaps": [], "seal": None, "status": None}
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_a_dead_lettered_event_blocks_the_seal_until_it_arrives(settings: ServiceSettings) -> None:
    runtime, client, bus = await started(settings)
    tickets_topic = Topic.tickets.qualified(settings.topic_prefix)
    try:
        ticket = str(uuid.uuid4())
        submitted, accepted, logged, resolved, closed = lifecycle(ticket, "No internet\x00 since the storm")
        # intake's projection could not store the NUL of RequestSubmitted (tickets:0:0); the archive may read
        # that letter before the record itself, which must not count as the event arriving again
        await bus.send(Topic.deadletter, dead_letter("intake-tmf", submitted, ticket, 0, tickets_topic), ticket)
        # dispatch's relay could not publish WorkLogged: it sets it aside (a dead letter) and goes on
        for env in (submitted, accepted):
            await bus.send(Topic.tickets, env, ticket)
        await bus.send(Topic.deadletter, dead_letter("relay:dispatch", logged, ticket, 7, tickets_topic), ticket)
        for env in (resolved, closed):
            await bus.send(Topic.tickets, env, ticket)

        async def names_both_gaps() -> bool:
            d = await dossier(client, ticket)
            return len(d["missing"]) == 2 and len(d["events"]) == 4

        await eventually(names_both_gaps, what="the dossier names both gaps")
        await asyncio.sleep(1.5)  # the sealer had its chance: it must not seal
        d = await dossier(client, ticket)
        assert d["seal"] is None and d["status"] == "incomplete" and d["complete"] is False
        missing = {(m["event_id"], m["event_type"], m["consumer"]) for m in d["missing"]}
        assert missing == {
            (logged.id, wire.WorkLogged.event_type, "relay:dispatch"),
            (submitted.id, wire.RequestSubmitted.event_type, "intake-tmf"),
        }
        assert all("UntranslatableCharacterError" in m["error"] for m in d["missing"])
        # the archive kept the NUL faithfully
        assert d["events"][0]["data"]["description"] == "No internet\x00 since the storm"

        # after a fix, the relay publishes WorkLogged and the operator republishes RequestSubmitted
        await bus.send(Topic.tickets, logged, ticket)

        async def one_left() -> bool:
            return [m["event_id"] for m in (await dossier(client, ticket))["missing"]] == [submitted.id]

        await eventually(one_left, what="WorkLogged closes its gap")
        await asyncio.sleep(0.5)
        assert (await dossier(client, ticket))["seal"] is None
        await bus.send(Topic.tickets, submitted, ticket)

        async def sealed() -> bool:
            d = await dossier(client, ticket)
            return bool(d["seal"]) and any(e["type"] == wire.Archived.event_type for e in d["events"])

        await eventually(sealed, what="the dossier is sealed")
        d = await dossier(client, ticket)
        assert d["status"] == "sealed" and d["complete"] is True and d["missing"] == []
        assert d["seal"]["verified"] is True and d["seal"]["complete"] is True and d["seal"]["event_count"] == 5
        assert {e["id"] for e in d["events"]} >= {submitted.id, accepted.id, logged.id, resolved.id, closed.id}
        archived = next(e for e in d["events"] if e["type"] == wire.Archived.event_type)
        assert archived["data"]["complete"] is True and archived["data"]["missing_event_ids"] == []
        assert len(d["gaps"]) == 2 and not any(g["open"] for g in d["gaps"])

        # a ticket whose WorkLogged is lost for good: an auditor seals it as incomplete, with a reason
        lost = str(uuid.uuid4())
        s2, a2, l2, r2, c2 = lifecycle(lost, "No internet since the storm")
        await bus.send(Topic.deadletter, dead_letter("relay:dispatch", l2, lost, 8, "outbox"), lost)
        for env in (s2, a2, r2, c2):
            await bus.send(Topic.tickets, env, lost)

        async def blocked() -> bool:
            d = await dossier(client, lost)
            return len(d["events"]) == 4 and d["status"] == "incomplete"

        await eventually(blocked, what="the second ticket is blocked")
        assert (await client.post(f"/v1/tickets/{lost}/dossier/seal", json={"reason": "lost"})).status_code == 401
        for bad in ({}, {"reason": "lost", "by": "me"}, {"reason": 5}):
            refused = await client.post(f"/v1/tickets/{lost}/dossier/seal", headers=AUDITOR, json=bad)
            assert refused.status_code == 422, refused.text
        assert (await dossier(client, lost))["seal"] is None
        r = await client.post(f"/v1/tickets/{lost}/dossier/seal", headers=AUDITOR, json={"reason": "lost for good"})
        assert r.status_code == 201, r.text
        assert r.json()["seal"]["complete"] is False and r.json()["seal"]["decided_by"] == "auditor-1"
        assert r.json()["status"] == "sealed_incomplete" and r.json()["seal"]["verified"] is True
        again = await client.post(f"/v1/tickets/{lost}/dossier/seal", headers=AUDITOR, json={"reason": "again"})
        assert again.status_code == 409
        nothing = await client.post(f"/v1/tickets/{ticket}/dossier/seal", headers=AUDITOR, json={"reason": "why"})
        assert nothing.status_code == 409

        async def archived_incomplete() -> bool:
            d = await dossier(client, lost)
            a = [e for e in d["events"] if e["type"] == wire.Archived.event_type]
            return bool(a) and a[0]["data"]["complete"] is False and a[0]["data"]["missing_event_ids"] == [l2.id]

        await eventually(archived_incomplete, what="Archived says complete: false")

        # the archive cannot read a record (it fails the schema): it still keeps it, from its own dead letter
        odd = str(uuid.uuid4())
        s3, a3, _, r3, c3 = lifecycle(odd, "No internet since the storm")
        broken = Envelope(a3.id, a3.type, a3.source, a3.time, a3.subject, a3.correlation_id, a3.causation_id,
                          a3.data.replace(b'"priority":2', b'"priority":null'))
        for env in (s3, broken, r3, c3):
            await bus.send(Topic.tickets, env, odd)

        async def sealed_with_recovered() -> bool:
            d = await dossier(client, odd)
            return bool(d["seal"])

        await eventually(sealed_with_recovered, what="the dossier with the recovered event is sealed")
        d = await dossier(client, odd)
        recovered = next(e for e in d["events"] if e["id"] == a3.id)
        assert recovered["data"]["priority"] is None and recovered["recovered_from"]
        assert d["seal"]["verified"] is True and d["seal"]["event_count"] == 4 and d["complete"] is True
        # both of the archive's consumers of tickets (the store and the statistics) refused it; both gaps closed
        gaps = sorted((g["consumer"], g["open"]) for g in d["gaps"])
        assert gaps == [("archive-stats", False), ("archive-store", False)]
        assert all(tickets_topic in g["source"] for g in d["gaps"])

        # the statistics' letter may reach the store after the store took the event back from its own letter:
        # that recovery still closes it (played here by a late letter from the statistics consumer)
        late = str(uuid.uuid4())
        s4, a4, _, r4, c4 = lifecycle(late, "No internet since the storm")
        broken4 = Envelope(a4.id, a4.type, a4.source, a4.time, a4.subject, a4.correlation_id, a4.causation_id,
                           a4.data.replace(b'"priority":2', b'"priority":null'))
        for env in (s4, broken4):
            await bus.send(Topic.tickets, env, late)

        async def recovered() -> bool:
            return any(e["id"] == a4.id and e["recovered_from"] for e in (await dossier(client, late))["events"])

        await eventually(recovered, what="the store takes the event back from its own letter")
        await bus.send(Topic.deadletter, dead_letter("archive-stats", broken4, late, 99, tickets_topic), late)
        for env in (r4, c4):
            await bus.send(Topic.tickets, env, late)

        async def late_sealed() -> bool:
            return bool((await dossier(client, late))["seal"])

        await eventually(late_sealed, what="the dossier is sealed though the statistics' letter came late")
        assert not any(g["open"] for g in (await dossier(client, late))["gaps"])
    finally:
        await client.aclose()
        await bus.producer.stop()
        await runtime.stop()
