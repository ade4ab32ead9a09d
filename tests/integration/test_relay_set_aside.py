"""One bad record never stops the others: the relay sets aside what it cannot publish and goes on.

Real PostgreSQL and a real broker (see conftest). A poisoned notification sits
between good ones: the good ones are all published in order, the bad one is in
``tsop_relay_set_aside`` and on the dead-letter topic, readiness names it, one
log line is written (not one per poll), and once the mapper is fixed a
republish (asked for from the command line, or at the next start) publishes it.
Transient broker failures are retried, never set aside.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka.errors import KafkaConnectionError
from eventsourcing.persistence import OperationalError
from prometheus_client import REGISTRY

from tests.integration.conftest import eventually
from tests.integration.test_bus_contract import STAFF, read_topic, request_fields
from tsop_events import relay as relay_module
from tsop_events.http import create_app
from tsop_events.relay import Outgoing
from tsop_events.runtime import Runtime
from tsop_events.settings import ServiceSettings
from tsop_events.topics import Topic
from tsop_intake import commands as intake_service
from tsop_intake.commands import IntakeApp
from tsop_intake.wire import WIRE as intake_wire

SET_ASIDE_LINE = "set aside notification"


def poisoning_mapper(poison: dict[str, str]) -> Any:
    """Intake's mapper, broken for the submissions of the customers named in ``poison``.

    ``raise``: the mapper fails (a bug, or a stored event the wire model refuses);
    ``huge``: the record is larger than the producer may send (a permanent broker refusal).
    """

    def mapper(e: Any) -> Outgoing | None:
        out = intake_wire(e)
        mode = poison.get(getattr(e, "customer_id", ""))  # only Submitted events carry the customer
        if mode == "raise":
            raise ValueError("cannot map this stored event (a bug in the mapper)")
        if mode == "huge" and out is not None:
            big = out.event.model_copy(update={"attributes": {"blob": "x" * 1_200_000}})
            return Outgoing(big, out.causation_id, out.correlation_id)
        return out

    return mapper


def metric(name: str, relay: str) -> float:
    value = REGISTRY.get_sample_value(name, {"relay": relay})
    return 0.0 if value is None else value


async def set_aside_rows(settings: ServiceSettings) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(settings.pg_dsn())
    try:
        return list(
            await conn.fetch(
                "SELECT * FROM tsop_relay_set_aside WHERE name = $1 ORDER BY notification_id", settings.service_name
            )
        )
    finally:
        await conn.close()


def set_aside_lines(caplog: pytest.LogCaptureFixture) -> int:
    return sum(SET_ASIDE_LINE in r.getMessage() for r in caplog.records)


async def test_a_poisoned_notification_is_set_aside_and_republished_after_a_fix(
    settings: ServiceSettings,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger="tsop_events.relay")
    # no safety-net round within the test: the idle relay acts only on news (saves, the republish request)
    settings = settings.model_copy(update={"relay_idle_seconds": 120.0})
    name = settings.service_name
    poison = {"c3": "raise", "c6": "huge"}
    runtime = Runtime(settings, app_factory=lambda s: IntakeApp(s), mapper=poisoning_mapper(poison))
    await runtime.start()
    try:
        ids = [str((await intake_service.submit(runtime, request_fields(i), STAFF, None))[0].id) for i in range(10)]
        bad = {ids[3]: "ValueError", ids[6]: "MessageSizeTooLargeError"}
        # every good event is published, in order per ticket; the two poisoned submissions are not
        records = await read_topic(settings, Topic.tickets, 18)
        per_ticket: dict[str, list[str]] = {}
        for r in records:
            per_ticket.setdefault(r.key.decode(), []).append(dict(r.headers)["ce_type"].decode())  # type: ignore[attr-defined]
        assert len(records) == 18
        for tid in ids:
            expected = ["tsop.ticket.request-submitted.v1", "tsop.ticket.request-accepted.v1"]
            assert per_ticket[tid] == (expected[1:] if tid in bad else expected)

        # set aside where an operator sees it: the table, the dead-letter topic, the metrics, readiness
        rows = await set_aside_rows(settings)
        assert [(r["originator_id"], r["originator_version"]) for r in rows] == [(ids[3], 1), (ids[6], 1)]
        for r in rows:
            assert r["republished_at"] is None
            assert r["subject"] == r["originator_id"]
            assert r["error"].startswith(bad[r["originator_id"]])
            form = json.loads(r["stored_form"])
            assert form["originator_id"] == r["originator_id"] and form["state"]["customer_id"] in ("c3", "c6")
        letters = await read_topic(settings, Topic.deadletter, 2)
        assert len(letters) == 2
        bodies = [json.loads(letter.value) for letter in letters]  # type: ignore[attr-defined]
        assert {b["source_key"] for b in bodies} == set(bad)
        assert {b["consumer"] for b in bodies} == {f"relay:{name}"}
        assert all(b["error"].startswith(bad[b["source_key"]]) for b in bodies)
        assert all(json.loads(b["source_value"])["notification_id"] == b["source_offset"] for b in bodies)
        assert {dict(x.headers)["ce_subject"].decode() for x in letters} == set(bad)  # type: ignore[attr-defined]
        assert runtime.degraded()["relay_set_aside"]["count"] == 2
        assert all(runtime.readiness().values())
        assert metric("tsop_relay_set_aside_pending", name) == 2
        assert metric("tsop_relay_set_aside_total", name) == 2
        await eventually(lambda: _is(metric("tsop_relay_backlog", name), 0), 10, "backlog 0")
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(runtime, "t", [])), base_url="http://t"
        ) as client:
            ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["degraded"]["relay_set_aside"]["count"] == 2

        # one log line per record, not one per poll
        await asyncio.sleep(2.5)
        assert set_aside_lines(caplog) == 2

        # a new broker epoch: everything is published again, the set-aside ones are not logged again
        assert runtime.relay is not None
        runtime.relay.epoch = "an older incarnation"
        await runtime.relay.on_epoch("an older incarnation")  # as the epoch watcher tells it of a change
        again = await read_topic(settings, Topic.tickets, 36, timeout=30)
        assert len(again) == 36
        assert Counter(dict(r.headers)["ce_id"] for r in again).most_common(1)[0][1] == 2  # type: ignore[attr-defined]
        assert set_aside_lines(caplog) == 2
        assert len(await set_aside_rows(settings)) == 2

        # the operator's command line lists them (with the service's own settings) ...
        monkeypatch.setenv("TSOP_PG_HOST", settings.pg_host)
        monkeypatch.setenv("TSOP_PG_PORT", str(settings.pg_port))
        capsys.readouterr()
        assert await asyncio.to_thread(relay_module.main, ["list", "--service", name]) == 0
        listed = capsys.readouterr().out
        assert f"relay {name}: 2 notification(s) set aside" in listed and "MessageSizeTooLargeError" in listed

        # ... and, once the mapper is fixed, asks for a republish, which the running relay picks up
        poison.clear()
        assert await asyncio.to_thread(relay_module.main, ["republish", "--service", name, "--wait", "30"]) == 0
        assert capsys.readouterr().out.count(": republished") == 2
        rows = await set_aside_rows(settings)
        assert all(r["republished_at"] is not None for r in rows)
        final = await read_topic(settings, Topic.tickets, 38, timeout=30)
        submitted = Counter(
            r.key.decode()  # type: ignore[attr-defined]
            for r in final
            if dict(r.headers)["ce_type"] == b"tsop.ticket.request-submitted.v1"  # type: ignore[attr-defined]
        )
        assert {submitted[t] for t in bad} == {1}
        await eventually(lambda: _is(metric("tsop_relay_set_aside_pending", name), 0), 10, "set-aside gauge 0")
        assert runtime.degraded() == {}
    finally:
        await runtime.stop()

    # a record set aside before a restart is published when the relay starts again (after a fix)
    poison["c10"] = "raise"
    runtime = Runtime(settings, app_factory=lambda s: IntakeApp(s), mapper=poisoning_mapper(poison))
    await runtime.start()
    try:
        late = str((await intake_service.submit(runtime, request_fields(10), STAFF, None))[0].id)

        async def kept() -> bool:
            rows = await set_aside_rows(settings)
            return any(r["originator_id"] == late and r["republished_at"] is None for r in rows)

        await eventually(kept, 30, "the late submission set aside")
    finally:
        await runtime.stop()
    poison.clear()
    runtime = Runtime(settings, app_factory=lambda s: IntakeApp(s), mapper=poisoning_mapper(poison))
    await runtime.start()
    try:

        async def republished() -> bool:
            return all(r["republished_at"] is not None for r in await set_aside_rows(settings))

        await eventually(republished, 30, "the set-aside submission republished at start")
        assert runtime.degraded() == {}
    finally:
        await runtime.stop()
    records = await read_topic(settings, Topic.tickets, 40, timeout=10)
    assert any(r.key.decode() == late and dict(r.headers)["ce_type"] == b"tsop.ticket.request-submitted.v1"  # type: ignore[attr-defined]
               for r in records)


async def test_transient_broker_and_database_errors_are_retried_never_set_aside(
    settings: ServiceSettings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    runtime = Runtime(settings, app_factory=lambda s: IntakeApp(s), mapper=intake_wire)
    await runtime.start()
    try:
        producer = runtime.producer
        real_send = producer.send
        failures = {"left": 4}

        async def flaky_send(topic: str, *args: Any, **kwargs: Any) -> Any:
            if topic.endswith(Topic.tickets.value) and failures["left"] > 0:
                failures["left"] -= 1
                raise KafkaConnectionError("the broker is down")
            return await real_send(topic, *args, **kwargs)

        producer.send = flaky_send  # type: ignore[method-assign]
        recorder: Any = runtime.app.recorder
        real_max = recorder.max_notification_id
        db_failures = {"left": 2}

        def flaky_max() -> int | None:  # the relay's PostgreSQL away for a moment
            if db_failures["left"] > 0:
                db_failures["left"] -= 1
                raise OperationalError("connection to the database lost")
            return real_max()  # type: ignore[no-any-return]

        recorder.max_notification_id = flaky_max
        ids = [str((await intake_service.submit(runtime, request_fields(i), STAFF, None))[0].id) for i in range(3)]
        records = await read_topic(settings, Topic.tickets, 6)
        assert failures["left"] == 0
        await eventually(lambda: _is(db_failures["left"], 0), 10, "the database failures met")
        assert {r.key.decode() for r in records} == set(ids)  # type: ignore[attr-defined]
        assert len({dict(r.headers)["ce_id"] for r in records}) == 6  # type: ignore[attr-defined]
        assert await set_aside_rows(settings) == []
        assert runtime.degraded() == {}
        retried = [r.getMessage() for r in caplog.records if r.name == "tsop_events.relay"]
        assert any("the broker is down" in m for m in retried) and any("database lost" in m for m in retried)
        assert not any("crashed" in r.getMessage() for r in caplog.records)  # handled by the relay, not restarted
    finally:
        await runtime.stop()


async def _is(value: float, expected: float) -> bool:
    return value == expected
