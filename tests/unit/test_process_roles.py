"""Process roles (``TSOP_ROLE``): which parts of a service a process starts, what it serves, when it is ready.

The runtime's I/O (PostgreSQL, the broker, the relay, the consumers) is replaced by recorders here, so the test
sees exactly what ``Runtime.start`` wires for each role; tests/integration/test_process_roles.py runs an api and
a worker process of feedback on real PostgreSQL and the embedded broker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, ClassVar

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient

from tsop_events import runtime as runtime_module
from tsop_events.auth import Principal
from tsop_events.consumer import Sink
from tsop_events.http import create_app
from tsop_events.runtime import ErasureListener, Parts, Runtime
from tsop_events.settings import ProcessRole, ServiceSettings
from tsop_events.topics import Topic


class FakeRecorder:
    channel_name = None  # a store that cannot NOTIFY: the saves listener has nothing to hear


class FakeApp:
    def __init__(self) -> None:
        self.recorder = FakeRecorder()
        self.saved: list[Callable[[], None]] = []

    def on_saved(self, call: Callable[[], None]) -> None:
        self.saved.append(call)

    def close(self) -> None:
        pass

    def forget_erased(self, customers: set[str]) -> None:
        pass


class FakePool:
    async def close(self) -> None:
        pass


class FakeProducer:
    def __init__(self, **_: Any) -> None:
        pass

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


class FakeEpoch:
    def __init__(self, *_: Any) -> None:
        self.epoch: str | None = "epoch-1"

    async def run(self) -> None:
        await asyncio.sleep(3600)

    async def close(self) -> None:
        pass

    def subscribe(self, listener: Any) -> None:
        pass


class FakeRelay:
    def __init__(self, name: str, *_: Any) -> None:
        self.name, self.running, self.set_aside = name, False, 0
        self.on_published: Any = None

    def wake(self) -> None:
        pass

    def on_epoch(self, *_: Any) -> None:
        pass

    async def run(self) -> None:
        self.running = True
        await asyncio.sleep(3600)


class FakeRunner:
    def __init__(self, sink: Sink, *_: Any, **__: Any) -> None:
        self.sink, self.running = sink, False
        self.set_up = False
        self.news: Any = None

    async def run(self) -> None:
        self.running = True
        await asyncio.sleep(3600)


class FakeGroup:
    """The Kafka consumer grouped sinks share (``ConsumerGroup``): runs its runners."""

    def __init__(self, runners: list[FakeRunner], *_: Any) -> None:
        self.runners, self.news = runners, None
        self.group_id = "+".join(sorted(r.sink.name for r in runners))

    async def run(self) -> None:
        for r in self.runners:
            r.running = True
        await asyncio.sleep(3600)


class Tickets(Sink):
    name: ClassVar[str] = "svc-tickets"
    topics: ClassVar[tuple[Topic, ...]] = (Topic.tickets,)

    def __init__(self, tables: list[str]) -> None:
        self.tables = tables

    async def setup(self) -> None:
        self.tables.append(self.name)

    async def position(self, epoch: str, topic: str, partition: int) -> int | None:
        return None

    async def process(self, *_: Any) -> None:
        pass


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The runtime with no PostgreSQL and no broker: every dependency a recorder."""

    async def nothing(*_: Any, **__: Any) -> None:
        return None

    async def pool(*_: Any, **__: Any) -> FakePool:
        return FakePool()

    @contextlib.asynccontextmanager
    async def lock(*_: Any) -> AsyncIterator[None]:
        yield

    async def unreachable(*_: Any, **__: Any) -> None:
        raise OSError("no PostgreSQL in unit tests")

    monkeypatch.setattr(runtime_module, "ensure_database", nothing)
    monkeypatch.setattr(runtime_module, "create_pool", pool)
    monkeypatch.setattr(runtime_module, "schema_lock", lock)
    monkeypatch.setattr(runtime_module, "AIOKafkaProducer", FakeProducer)
    monkeypatch.setattr(runtime_module, "EpochWatcher", FakeEpoch)
    monkeypatch.setattr(runtime_module, "Relay", FakeRelay)
    monkeypatch.setattr(runtime_module, "ConsumerRunner", FakeRunner)
    monkeypatch.setattr(runtime_module, "ConsumerGroup", FakeGroup)
    monkeypatch.setattr(runtime_module, "GroupCommit", lambda *a, **k: object())
    monkeypatch.setattr(runtime_module, "Commands", lambda *a, **k: object())
    monkeypatch.setattr(runtime_module.asyncpg, "connect", unreachable)  # the news channel: retried, quietly
    monkeypatch.setattr(runtime_module, "SAFETY_NET_SECONDS", 3600)
    yield


def service(role: ProcessRole, ran: list[str], tables: list[str]) -> Runtime:
    async def timer(_: Runtime) -> None:
        ran.append("timer")
        await asyncio.sleep(3600)

    async def follow_view(_: Runtime) -> None:
        ran.append("follow_view")
        await asyncio.sleep(3600)

    def credentials(_: Runtime) -> Callable[[str], Any]:
        async def resolve(token_hash: str) -> Principal | None:
            return None

        ran.append("credentials")
        return resolve

    return Runtime(
        ServiceSettings(service_name="svc", role=role),
        app_factory=lambda _: FakeApp(),  # type: ignore[arg-type,return-value]
        mapper=lambda e: None,
        sinks=[lambda _: Tickets(tables)],
        tasks=[timer],
        followers=[follow_view],
        token_resolvers=[credentials],  # type: ignore[list-item]
    )


async def started(rt: Runtime) -> dict[str, Any]:
    await rt.start()
    await asyncio.sleep(0.05)  # the spawned loops begin
    try:
        return {
            "tasks": sorted(t.get_name() for t in rt._tasks),
            "consumers": sorted(r.sink.name for r in rt.runners),
            "relay": rt.relay is not None,
            "resolvers": len(rt._resolvers),
            "readiness": rt.readiness(),
        }
    finally:
        await rt.stop()


@pytest.mark.parametrize(
    ("role", "tasks", "consumers", "relay", "ran"),
    [
        ("all", ["epoch", "follow_view", "publish news", "relay", "saves listener", "timer"],
         ["svc-erasure", "svc-tickets"], True, ["credentials", "follow_view", "timer"]),
        ("api", ["epoch", "follow_view", "publish news", "saves listener"],
         ["svc-erasure"], False, ["credentials", "follow_view"]),
        ("worker", ["epoch", "publish news", "relay", "saves listener", "timer"],
         ["svc-erasure", "svc-tickets"], True, ["timer"]),
    ],
)
def test_each_role_starts_its_own_parts(
    offline: None, role: ProcessRole, tasks: list[str], consumers: list[str], relay: bool, ran: list[str],
) -> None:
    did: list[str] = []
    tables: list[str] = []
    got = asyncio.run(started(service(role, did, tables)))
    assert got["tasks"] == sorted([*tasks, *("consumer " + c for c in consumers)])
    assert got["consumers"] == consumers
    assert got["relay"] is relay
    assert got["resolvers"] == (0 if role == "worker" else 1)
    assert sorted(did) == ran
    # every role creates the sinks' tables: an api process's routes read them before any worker has started
    assert tables == ["svc-tickets"]


def test_readiness_per_role(offline: None) -> None:
    """A worker (like ``all``) is ready when the broker's epoch is known and its relay and consumers run; an api
    process when its database is (it hears the others' saves), whatever the broker does."""

    async def check() -> tuple[dict[str, bool], dict[str, bool], dict[str, bool], dict[str, bool]]:
        worker = service("worker", [], [])
        await worker.start()
        await asyncio.sleep(0.05)
        worker_ready = worker.readiness()
        worker.epoch.epoch = None  # the broker is away
        worker_away = worker.readiness()
        await worker.stop()
        api = service("api", [], [])
        await api.start()
        await asyncio.sleep(0.05)
        api.epoch.epoch = None
        api.saves_heard = True  # as the saves listener sets it once its LISTEN connection is open
        api_ready = api.readiness()
        api.saves_heard = False  # the connection dropped: not ready until it is open again
        api_down = api.readiness()
        await api.stop()
        return worker_ready, worker_away, api_ready, api_down

    worker_ready, worker_away, api_ready, api_down = asyncio.run(check())
    assert worker_ready == {"broker_epoch": True, "relay": True, "consumer:svc-tickets": True}
    assert worker_away["broker_epoch"] is False
    assert api_ready == {"database": True}
    assert api_down == {"database": False}


def test_parts_of_each_role() -> None:
    assert Parts.of("all") == Parts(routes=True, work=True)
    assert Parts.of("api") == Parts(routes=True, work=False)
    assert Parts.of("worker") == Parts(routes=False, work=True)


def test_the_role_setting_refuses_an_unknown_role(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TSOP_ROLE", "api")
    assert ServiceSettings().role == "api"
    monkeypatch.setenv("TSOP_ROLE", "frontend")
    with pytest.raises(ValueError, match="role"):
        ServiceSettings()


def http_app(role: ProcessRole) -> tuple[TestClient, Runtime]:
    rt: Runtime = Runtime(ServiceSettings(service_name="svc", role=role))
    rt.epoch = FakeEpoch()  # type: ignore[assignment]
    router = APIRouter()

    @router.post("/v1/things/{thing}")
    async def change(thing: str) -> dict[str, str]:
        return {"changed": thing}

    return TestClient(create_app(rt, "svc", [router])), rt  # no lifespan: the runtime is not started


def test_an_api_process_serves_the_routes() -> None:
    client, rt = http_app("api")
    assert client.post("/v1/things/a").json() == {"changed": "a"}
    rt.saves_heard = True
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"ready": True, "role": "api", "checks": {"database": True}}
    rt.saves_heard = False
    assert client.get("/readyz").status_code == 503


def test_a_worker_answers_every_route_421_and_serves_the_operations_endpoints() -> None:
    client, _ = http_app("worker")
    for method, path in [("POST", "/v1/things/a"), ("GET", "/v1/things/a"), ("DELETE", "/anything/else")]:
        r = client.request(method, path)
        assert r.status_code == 421, (method, path)
        assert r.headers["content-type"] == "application/problem+json"
        body = r.json()
        assert body["title"] == "Misdirected request" and body["role"] == "worker"
        assert "TSOP_ROLE=worker" in body["detail"] and "api" in body["detail"]
    assert client.get("/healthz").json() == {"status": "ok", "service": "svc", "role": "worker"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["role"] == "worker"
    assert ready.json()["checks"] == {"broker_epoch": True}
    assert client.get("/metrics").status_code == 200
    assert "/v1/things/{thing}" not in client.get("/openapi.json").json()["paths"]


def test_every_service_declares_the_followers_its_routes_need() -> None:
    """The views the routes read for credentials are followed in an api process (which runs no timers)."""
    from tsop_dispatch.main import bootstrap as dispatch
    from tsop_feedback.main import bootstrap as feedback
    from tsop_intake.main import bootstrap as intake

    names = {name: [f.__name__ for f in svc.followers] for name, svc in
             [("intake", intake()), ("dispatch", dispatch()), ("feedback", feedback())]}
    assert names == {"intake": ["follow_log"], "dispatch": ["follow_board"], "feedback": ["follow_channels"]}
    assert all(svc.token_resolvers for svc in (intake(), dispatch(), feedback()))
    assert "follow_channels" not in [t.__name__ for t in feedback().tasks]


def test_the_erasure_listener_runs_in_every_role(offline: None) -> None:
    async def listeners(role: ProcessRole) -> list[bool]:
        rt = service(role, [], [])
        await rt.start()
        try:
            return [isinstance(r.sink, ErasureListener) for r in rt.runners]
        finally:
            await rt.stop()

    for role in ("all", "api", "worker"):
        assert any(asyncio.run(listeners(role))), role


@pytest.mark.parametrize("role", ["all", "api", "worker"])
def test_the_operations_endpoints_answer_head_and_a_trailing_slash_alike_in_every_role(role: ProcessRole) -> None:
    """A load balancer's or an orchestrator's probe may use HEAD, or the path with a slash: the answer must not
    depend on the process's role (before: 421 from a worker, 405 elsewhere for HEAD)."""
    client, rt = http_app(role)
    rt.saves_heard = True
    for path in ("/healthz", "/readyz", "/metrics"):
        assert client.head(path).status_code == 200, (role, path)
        slashed = client.get(path + "/", follow_redirects=False)
        assert slashed.status_code == 307 and slashed.headers["location"].endswith(path), (role, path, slashed)
        assert client.get(path + "/").status_code == 200, (role, path)
