"""Process roles on real PostgreSQL and the embedded broker: an ``api`` and a ``worker`` process of one service.

Feedback runs as two OS processes (``python -m tsop_feedback.main``) on one database: ``TSOP_ROLE=api`` serves
the routes and runs no consumer and no relay; ``TSOP_ROLE=worker`` runs them and answers routes 421. A ticket's
submission and resolution reach feedback only through the worker's consumer; a rating accepted by the api
process is saved in the shared event store, and the worker's relay publishes its Rated and Closed. The api
process's saves wake the worker's relay through the event store's NOTIFY (checked in-process below).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import infra
from tests.integration.conftest import eventually
from tests.integration.test_bus_contract import STAFF, read_topic, request_fields
from tests.integration.test_complaints import publish, ticket_events
from tsop_events.auth import token_table_json
from tsop_events.relay import Relay
from tsop_events.runtime import Runtime
from tsop_events.settings import ServiceSettings
from tsop_events.topics import Topic
from tsop_intake import commands as intake_service
from tsop_intake.commands import IntakeApp
from tsop_intake.wire import WIRE as intake_wire

pytestmark = pytest.mark.parametrize("bus", ["tansu"], indirect=True)

AGENT_TOKEN = "agent-token-roles"


class Process:
    """One feedback process of the given role, on the fixture's PostgreSQL and broker."""

    def __init__(self, settings: ServiceSettings, name: str, role: str, log: Path) -> None:
        self.port = infra.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "TSOP_ROLE": role,
            "TSOP_SERVICE_NAME": name,
            "TSOP_HTTP_PORT": str(self.port),
            "TSOP_PG_HOST": settings.pg_host,
            "TSOP_PG_PORT": str(settings.pg_port),
            "TSOP_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "TSOP_TOPIC_PREFIX": settings.topic_prefix,
            "TSOP_TOPIC_PARTITIONS": str(settings.topic_partitions),
            "TSOP_EPOCH_CHECK_SECONDS": "0.5",
            "TSOP_LOG_LEVEL": "WARNING",
            "TSOP_AUTH_TOKENS": token_table_json([(AGENT_TOKEN, "agent-1", ["agent"])]),
        }
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "tsop_feedback.main"], env=env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    async def ready(self, http: httpx.AsyncClient, timeout: float = 90.0) -> dict[str, object]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                r = await http.get(self.url + "/readyz")
                if r.status_code == 200:
                    body: dict[str, object] = r.json()
                    return body
            except httpx.HTTPError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"not ready in {timeout}s: {self.log.read_text()[-3000:]}")
            await asyncio.sleep(0.25)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for p in started:
        p.stop()


async def test_a_rating_accepted_by_the_api_process_is_relayed_and_acted_on_by_the_worker(
    settings: ServiceSettings, processes: list[Process], tmp_path: Path,
) -> None:
    name = settings.service_name + "_fb"
    auth = {"Authorization": f"Bearer {AGENT_TOKEN}"}
    async with httpx.AsyncClient(timeout=10) as http:
        api = Process(settings, name, "api", tmp_path / "api.log")
        processes.append(api)
        ready = await api.ready(http)
        assert ready["role"] == "api" and ready["checks"] == {"database": True}  # no relay, no consumer

        ticket = str(uuid.uuid4())
        await publish(settings, ticket_events(ticket, "c1", "t1"))  # submitted, assigned, resolved
        await asyncio.sleep(3.0)  # an api process consumes nothing: feedback has not heard of the ticket
        r = await http.get(f"{api.url}/v1/tickets/{ticket}/feedback", headers=auth)
        assert r.status_code == 404, r.text

        worker = Process(settings, name, "worker", tmp_path / "worker.log")
        processes.append(worker)
        ready = await worker.ready(http)
        assert ready["role"] == "worker"
        checks = ready["checks"]
        assert isinstance(checks, dict) and checks["relay"] and checks["consumer:feedback-cases"]

        async def window_open() -> bool:  # the worker's consumer opened the case; the api process reads it
            r = await http.get(f"{api.url}/v1/tickets/{ticket}/feedback", headers=auth)
            return r.status_code == 200 and bool(r.json().get("rating_due_at"))

        await eventually(window_open, 60, "the worker opened the rating window")

        # the worker serves no domain route: a rating sent to it changes nothing
        wrong = await http.post(f"{worker.url}/v1/tickets/{ticket}/rating", headers=auth, json={"score": 5})
        assert wrong.status_code == 421 and wrong.json()["role"] == "worker"

        rated = await http.post(f"{api.url}/v1/tickets/{ticket}/rating", headers=auth,
                                json={"score": 5, "tags": ["on_time"]})
        assert rated.status_code == 201, rated.text

        # the worker's relay published what the api process saved: Rated, then Closed (basis rated)
        async def published() -> bool:
            records = await read_topic(settings, Topic.tickets, 6, timeout=2)
            types = [dict(r.headers)["ce_type"].decode() for r in records  # type: ignore[attr-defined]
                     if r.key.decode() == ticket and dict(r.headers)["ce_source"] == name.encode()]  # type: ignore[attr-defined]
            return types[-2:] == ["tsop.ticket.rated.v1", "tsop.ticket.closed.v1"]

        await eventually(published, 60, "Rated and Closed on the tickets topic")
        view = (await http.get(f"{api.url}/v1/tickets/{ticket}/feedback", headers=auth)).json()
        assert view["score"] == 5 and view["closed"]

        # the api process published nothing itself: its metrics name no relay as leading
        metrics = (await http.get(f"{api.url}/metrics")).text
        assert f'tsop_relay_leader{{relay="{name}"}} 1.0' not in metrics
        assert f'tsop_relay_leader{{relay="{name}"}} 1.0' in (await http.get(f"{worker.url}/metrics")).text


async def test_an_api_process_s_saves_wake_the_worker_s_relay(
    settings: ServiceSettings, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The event store NOTIFYs on every insert and a leading relay LISTENs: a save in another process wakes it
    at once (not only at its one-second safety net)."""
    woken: list[int] = []
    notified = Relay._notified

    def counting(self: Relay, *args: object) -> None:
        woken.append(1)
        notified(self, *args)

    monkeypatch.setattr(Relay, "_notified", counting)
    api_settings = settings.model_copy(update={"role": "api"})
    worker_settings = settings.model_copy(update={"role": "worker"})
    worker = Runtime(worker_settings, app_factory=lambda s: IntakeApp(s), mapper=intake_wire)
    api = Runtime(api_settings, app_factory=lambda s: IntakeApp(s), mapper=intake_wire)
    await worker.start()
    await api.start()
    try:
        assert api.relay is None and worker.relay is not None
        relay = worker.relay

        async def leading() -> bool:
            return relay.leader

        await eventually(leading, 30, "the worker's relay leads")
        await asyncio.sleep(1.0)  # its LISTEN is set up in its first round
        before = len(woken)
        await intake_service.submit(api, request_fields(1), STAFF, None)  # saved by the api process only

        async def heard() -> bool:
            return len(woken) > before

        await eventually(heard, 10, "the worker's relay heard the api process's save")
        records = await read_topic(settings, Topic.tickets, 2, timeout=30)
        assert len(records) == 2  # submitted and accepted, published by the worker's relay
    finally:
        await api.stop()
        await worker.stop()


SERVICES = ("intake", "dispatch", "feedback", "incident", "archive")


@pytest.mark.parametrize("service", SERVICES)
async def test_every_service_starts_as_an_api_and_a_worker_process(
    settings: ServiceSettings, service: str, tmp_path: Path,
) -> None:
    """Each of the five services, from its own ``bootstrap``, as an api and a worker runtime on one database:
    both become ready, the api runtime with no relay and no consumer but the erasure listener, the worker with its
    relay and every consumer."""
    import importlib

    main = importlib.import_module(f"tsop_{service}.main")
    cls = next(v for k, v in vars(main).items() if k.endswith("Settings") and k != "ServiceSettings")
    extra = {"archive_signing_key_file": tmp_path / "signing.pem"} if service == "archive" else {}
    base = {**settings.model_dump(), "service_name": f"{settings.service_name}_{service}", **extra}
    runtimes = {role: main.bootstrap(cls(**{**base, "role": role})) for role in ("api", "worker")}
    for rt in runtimes.values():
        await rt.start()
    try:
        for role, rt in runtimes.items():

            async def ready(rt: Runtime = rt) -> bool:
                return all(rt.readiness().values())

            await eventually(ready, 60, f"{service} {role} ready")
        api, worker = runtimes["api"], runtimes["worker"]
        assert api.relay is None and worker.relay is not None
        assert [type(r.sink).__name__ for r in api.runners] == ["ErasureListener"]
        assert len(worker.runners) == len(worker.sinks) + 1
        assert set(api.readiness()) == {"database"}
        assert {"broker_epoch", "relay"} <= set(worker.readiness())
    finally:
        for rt in runtimes.values():
            await rt.stop()
