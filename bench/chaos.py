"""``make chaos``: complete lifecycles on a real 3-broker Apache Kafka cluster while processes die.

The platform runs as it would in production, only on loopback: a three-node Apache Kafka
(KRaft) cluster, topics with replication 3 and ``min.insync.replicas=2``, idempotent producers
with ``acks=all``, embedded PostgreSQL, and N instances (default two) of each of the five
services as separate processes, every client call going to any live instance.

Simulated channels, technicians and customers drive lifecycles over HTTP (submit, accept, start,
log, resolve with the technician's own credential, rate, wait for the sealed dossier), each
step retried until it is answered, as a patient client would. Meanwhile:

* every few seconds a random service process is SIGKILLed (cycling through the five services,
  a random instance of each) and started again;
* one Kafka broker is SIGKILLed and, after a while, started again on its data;
* PostgreSQL is SIGKILLed (the whole process group: a crash) and started again.

After the load phase the faults stop and the driver waits for quiescence: every accepted request
sealed in its dossier. The report reads the ``tickets`` topic from the start and the archive:

* ``completed``: lifecycles whose dossier is sealed, verified and holds the whole lifecycle;
* ``lost``: accepted requests without such a dossier (must be 0);
* ``duplicated``: tickets with a once-only lifecycle event recorded twice (two ``ce_id`` of one
  type on the topic, or a type twice in the dossier), plus technicians over capacity at any
  moment (replaying Assigned/Resolved by their times) (must be 0). WorkLogged is additive (a
  technician may log many entries), so its repeats are counted apart;
* ``longest_stall_s``: the longest interval in which no lifecycle event was recorded (the
  events' own ``ce_time``), between the first submission and the last Archived.

Results: a summary on stdout and ``bench/results/chaos.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from tsop_devstack.apache_kafka import KafkaCluster
from tsop_devstack.ports import free_port, free_port_block
from tsop_devstack.postgres import EmbeddedPostgres
from tsop_devstack.stack import SERVICES, dev_tokens

from tsop_events.auth import token_table_json

RESULTS = Path(__file__).parent / "results"
WORK_LOGGED = "tsop.ticket.work-logged.v1"
SERVICE_TYPE = "broadband.fault_repair"
PREFIX = "tsop."
LIFECYCLE = (
    "tsop.ticket.request-submitted.v1",
    "tsop.ticket.request-accepted.v1",
    "tsop.ticket.assigned.v1",
    "tsop.ticket.assignment-accepted.v1",
    "tsop.ticket.work-started.v1",
    "tsop.ticket.work-logged.v1",
    "tsop.ticket.resolved.v1",
    "tsop.ticket.feedback-sent.v1",
    "tsop.ticket.rated.v1",
    "tsop.ticket.closed.v1",
    "tsop.ticket.archived.v1",
)


@dataclass
class Config:
    duration: float = 300.0  # seconds of load with faults
    instances: int = 2  # processes per service
    workers: int = 4  # lifecycles in flight (closed loop)
    technicians: int = 3
    capacity: int = 2  # per technician: fewer slots than workers, so work queues
    kill_every: float = 5.0  # seconds between service SIGKILLs (after the previous one is ready again)
    broker_at: float = 0.25  # fraction of the duration at which a broker is killed
    broker_down: float = 20.0  # seconds it stays down
    postgres_at: float = 0.6  # fraction of the duration at which PostgreSQL is killed
    postgres_down: float = 2.0
    quiesce_timeout: float = 300.0  # after the load phase, for every accepted request to be sealed
    partitions: int = 3
    seed: int | None = None
    out: Path | None = RESULTS / "chaos.json"



# --------------------------------------------------------------------------------- processes


class Cluster:
    """PostgreSQL, a 3-broker Kafka cluster and ``instances`` processes of each service."""

    def __init__(self, data_dir: Path, cfg: Config) -> None:
        self.data_dir = data_dir.resolve()
        self.logs = self.data_dir / "logs"
        self.cfg = cfg
        self.pg = EmbeddedPostgres(self.data_dir / "postgres" / "data", port=free_port())
        self.kafka = KafkaCluster(self.data_dir / "kafka", brokers=3, base_port=free_port_block(3))
        self.tokens = dev_tokens(self.data_dir / "tokens.json")
        self.instances = {f"{svc}-{i}": svc for svc in SERVICES for i in range(cfg.instances)}
        self.ports = {name: free_port() for name in self.instances}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.lock = threading.Lock()

    def urls(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        for name, svc in self.instances.items():
            out[svc].append(f"http://127.0.0.1:{self.ports[name]}")
        return dict(out)

    def env(self, name: str) -> dict[str, str]:
        svc, index = self.instances[name], int(name.rsplit("-", 1)[1])
        env = dict(os.environ)
        own = [*self.ports.values(), self.pg.port]
        own += [p for i in range(3) for p in (self.kafka.client_port(i), self.kafka.controller_port(i))]
        env.update(
            {
                "TSOP_PLATFORM_ENDPOINTS": ",".join(str(p) for p in sorted(own)),  # no callback may reach them
                "TSOP_SERVICE_NAME": svc,
                "TSOP_HTTP_PORT": str(self.ports[name]),
                "TSOP_PG_PORT": str(self.pg.port),
                "TSOP_KAFKA_BOOTSTRAP": self.kafka.bootstrap,
                "TSOP_KAFKA_IDEMPOTENCE": "true",
                "TSOP_TOPIC_REPLICATION": "3",
                "TSOP_TOPIC_MIN_INSYNC_REPLICAS": "2",
                "TSOP_TOPIC_PARTITIONS": str(self.cfg.partitions),
                "TSOP_EPOCH_CHECK_SECONDS": "1",
                "TSOP_LOG_LEVEL": "WARNING",
                "TSOP_CORRELATION_RULES_FILE": str(Path(__file__).with_name("incident_rules.json")),
                "TSOP_PG_POOL_SIZE": "4",
                "TSOP_SHARD_INDEX": str(index),
                "TSOP_SHARD_COUNT": str(self.cfg.instances),
                "TSOP_AUTH_TOKENS": token_table_json(
                    (token, f"chaos-{role}", [role]) for role, token in self.tokens.items()
                ),
            }
        )
        return env

    def start_instance(self, name: str) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        with self.lock:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", f"tsop_{self.instances[name]}.main"],
                env=self.env(name),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill_instance(self, name: str) -> None:
        with self.lock:
            proc = self.procs[name]
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def ready(self, name: str) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.ports[name]}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, names: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = set(names)
        while pending:
            for name in sorted(pending):
                code = self.procs[name].poll()
                if code is not None:
                    raise RuntimeError(f"{name} exited with {code}; see {self.logs / (name + '.log')}")
                if self.ready(name):
                    pending.discard(name)
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"not ready after {timeout}s: {sorted(pending)}")
            if pending:
                time.sleep(0.25)

    def start(self) -> dict[str, float]:
        """Start everything; return how long each part took."""
        took: dict[str, float] = {}
        self.logs.mkdir(parents=True, exist_ok=True)
        t = time.monotonic()
        self.pg.start()
        took["postgres_s"] = round(time.monotonic() - t, 1)
        t = time.monotonic()
        self.kafka.start()
        took["kafka_3_brokers_s"] = round(time.monotonic() - t, 1)
        t = time.monotonic()
        # the first instance of each service creates its database and the topics; then the others join
        for i in range(self.cfg.instances):
            batch = [f"{svc}-{i}" for svc in SERVICES]
            for name in batch:
                self.start_instance(name)
            self.wait_ready(batch, 240)
        took["services_s"] = round(time.monotonic() - t, 1)
        return took

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.kafka.stop()
        self.pg.stop()

    def crash_postgres(self) -> None:
        """SIGKILL the postmaster and every backend at once: a crash, recovered from the WAL at start."""
        proc = self.pg.proc
        assert proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# ------------------------------------------------------------------------------------ client


class Unanswered(Exception):
    """A request that is not safe to repeat was sent, and whether it took effect is unknown."""


class Client:
    """Calls any live instance of a service: a refused connection, a timeout or a 5xx tries the next."""

    def __init__(self, urls: dict[str, list[str]], timeout: float = 5.0, tally: Tally | None = None) -> None:
        self.urls = urls
        self.tally = tally
        self.http = httpx.Client(timeout=timeout)
        self.turn = itertools.count()

    def call(
        self,
        service: str,
        method: str,
        path: str,
        *,
        headers: dict[str, str],
        body: dict[str, Any] | None = None,
        deadline: float,
        retry_unanswered: bool = True,
    ) -> httpx.Response:
        """The first answer below 500. A call that was sent but not answered (a timeout, a connection
        closed by a killed process, a 5xx) is sent again only if ``retry_unanswered``: a request that
        is not safe to repeat raises :class:`Unanswered`, and the caller reads the state before trying
        again, as a careful client would."""
        urls = self.urls[service]
        while True:
            first = next(self.turn)
            for k in range(len(urls)):
                url = urls[(first + k) % len(urls)] + path
                try:
                    r = self.http.request(method, url, headers=headers, json=body)
                except httpx.HTTPError as exc:
                    if self.tally is not None:
                        self.tally.error(f"{service}: {type(exc).__name__}")
                    if not retry_unanswered and not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                        raise Unanswered(f"{method} {service}{path}: {type(exc).__name__}") from exc
                    continue
                if r.status_code < 500:
                    return r
                if self.tally is not None:
                    self.tally.error(f"{service}: {r.status_code}")
                if not retry_unanswered:
                    raise Unanswered(f"{method} {service}{path}: {r.status_code}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{method} {service}{path}: no instance answered")
            time.sleep(0.2)

    def close(self) -> None:
        self.http.close()


# ---------------------------------------------------------------------------------- the load


@dataclass
class Tally:
    accepted: list[str] = field(default_factory=list)
    sealed: set[str] = field(default_factory=set)
    rejected: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    submit_times: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def error(self, what: str) -> None:
        with self.lock:
            self.errors[what] += 1


class Actors:
    """A channel, a supervisor, technicians and customers, as the platform's users."""

    def __init__(self, urls: dict[str, list[str]], tokens: dict[str, str]) -> None:
        self.urls, self.tokens = urls, tokens
        self.channel_token = ""
        self.tech_tokens: dict[str, str] = {}
        self.capacity: dict[str, int] = {}

    def staff(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def setup(self, technicians: int, capacity: int) -> None:
        c = Client(self.urls)
        deadline = time.monotonic() + 60
        r = c.call(
            "intake", "POST", "/v1/channels", headers=self.staff("admin"),
            body={"name": "chaos portal", "kind": "app"}, deadline=deadline,
        )
        r.raise_for_status()
        self.channel_token = r.json()["credential"]["token"]
        for i in range(technicians):
            r = c.call(
                "dispatch", "POST", "/v1/technicians", headers=self.staff("supervisor"),
                body={"name": f"Tech {i}", "service_types": [SERVICE_TYPE], "regions": ["north"], "capacity": capacity},
                deadline=deadline,
            )
            r.raise_for_status()
            self.tech_tokens[r.json()["id"]] = r.json()["token"]
            self.capacity[r.json()["id"]] = capacity
        c.close()


@dataclass
class Deadline:
    """When the drivers give up: none during the load phase, then the quiescence timeout."""

    at: float = float("inf")


def lifecycle(c: Client, actors: Actors, tally: Tally, key: str, dl: Deadline) -> None:
    """One request from submission to its sealed dossier, every step retried until it is answered."""
    body = {
        "channel": "app",
        "customer": {"id": f"cust-{key}", "tier": "gold"},
        "region": "north",
        "service_type": SERVICE_TYPE,
        "description": "No internet since this morning",
        "location": {"address": f"{key} Main Street"},
    }
    channel = {"Authorization": f"Bearer {actors.channel_token}", "Idempotency-Key": key}
    while True:  # the same Idempotency-Key: a retry after a lost answer is the same request
        r = c.call("intake", "POST", "/v1/requests", headers=channel, body=body, deadline=dl.at)
        if r.status_code in (200, 201):
            break
        tally.error(f"submit {r.status_code}")
        time.sleep(0.3)
    ticket = str(r.json()["id"])
    if r.json()["review"]["decision"] != "accepted":
        with tally.lock:
            tally.rejected += 1
        return
    with tally.lock:
        tally.accepted.append(ticket)
        tally.submit_times.append(time.time())

    sup = actors.staff("supervisor")
    while True:  # the technician's work, from wherever the work order is
        r = c.call("dispatch", "GET", f"/v1/tickets/{ticket}/work-order", headers=sup, deadline=dl.at)
        wo = r.json() if r.status_code == 200 else None
        if wo is None or not wo.get("technician_id"):
            _pause(dl.at)
            continue
        status = wo["status"]
        if status == "resolved":
            break
        step, step_body = {
            "assigned": ("accept", None),
            "accepted": ("start", {"mode": "on_site"}),
            "in_progress": ("resolve", {"resolution_code": "hw_replaced", "summary": "ONT replaced, line OK"})
            if wo["operation_log"]
            else ("log", {"action": "replaced the ONT", "mode": "on_site"}),
        }.get(status, (None, None))
        if step is None:
            tally.error(f"work order {status}")
            _pause(dl.at)
            continue
        tech = {"Authorization": f"Bearer {actors.tech_tokens[wo['technician_id']]}"}
        # accept, start and resolve are transitions (a repeat answers 409); a work-log entry is not, so an
        # unanswered log is not sent again before the work order shows whether it was recorded
        try:
            r = c.call("dispatch", "POST", f"/v1/work-orders/{wo['id']}/{step}", headers=tech, body=step_body,
                       deadline=dl.at, retry_unanswered=step != "log")
        except Unanswered:
            _pause(dl.at)
            continue
        if r.status_code >= 300:
            tally.error(f"{step} {r.status_code}")  # 409: done already (an answer lost to a crash), or stale view
            _pause(dl.at)

    agent = actors.staff("agent")
    auditor = actors.staff("auditor")
    while True:  # the customer rates once feedback has heard of the resolution, then the archive seals
        r = c.call("feedback", "GET", f"/v1/tickets/{ticket}/feedback", headers=sup, deadline=dl.at)
        if r.status_code != 200 or not r.json().get("notified"):
            _pause(dl.at)
            continue
        r = c.call("feedback", "POST", f"/v1/tickets/{ticket}/rating", headers=agent, body={"score": 5},
                   deadline=dl.at)
        if r.status_code not in (201, 409):
            tally.error(f"rate {r.status_code}")
            _pause(dl.at)
            continue
        waited = time.monotonic() + 30  # a 409 may mean the rating is recorded, or is not yet possible
        while time.monotonic() < waited:
            r = c.call("archive", "GET", f"/v1/tickets/{ticket}/dossier", headers=auditor, deadline=dl.at)
            d = r.json() if r.status_code == 200 else None
            if d and d.get("seal") and any(e["type"] == LIFECYCLE[-1] for e in d["events"]):
                with tally.lock:
                    tally.sealed.add(ticket)
                return
            _pause(dl.at)


def _pause(deadline: float, seconds: float = 0.2) -> None:
    if time.monotonic() > deadline:
        raise TimeoutError("past the quiescence deadline")
    time.sleep(seconds)


def worker(actors: Actors, tally: Tally, run_id: str, index: int, stop: threading.Event, deadline: Deadline) -> None:
    c = Client(actors.urls, tally=tally)
    try:
        for n in itertools.count():
            if stop.is_set():
                return
            try:
                lifecycle(c, actors, tally, f"{run_id}-{index}-{n}", deadline)
            except TimeoutError:
                return
    finally:
        c.close()


# ---------------------------------------------------------------------------------- the faults


@dataclass
class Fault:
    at_s: float
    kind: str
    target: str
    recovered_after_s: float | None = None


class Faults:
    def __init__(self, cluster: Cluster, cfg: Config, t0: float, rng: random.Random) -> None:
        self.cluster, self.cfg, self.t0, self.rng = cluster, cfg, t0, rng
        self.log: list[Fault] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.restarting: set[str] = set()

    def note(self, kind: str, target: str) -> Fault:
        f = Fault(round(time.monotonic() - self.t0, 1), kind, target)
        with self.lock:
            self.log.append(f)
        print(f"  [{f.at_s:6.1f}s] {kind} {target}", flush=True)
        return f

    def services(self) -> None:
        """Every few seconds SIGKILL a random instance of the next service (the five in turn, shuffled),
        start it again half a second later, and note when it answers ready (in the background: the
        next kill does not wait, so both instances of a service can be down at once)."""
        order: list[str] = []
        restarts: list[threading.Thread] = []
        while not self.stop.wait(self.cfg.kill_every * self.rng.uniform(0.6, 1.4)):
            for _ in range(len(SERVICES)):
                if not order:
                    order = list(SERVICES)
                    self.rng.shuffle(order)
                svc = order.pop()
                with self.lock:
                    names = [f"{svc}-{i}" for i in range(self.cfg.instances)]
                    candidates = [n for n in names if n not in self.restarting]
                if candidates:
                    name = self.rng.choice(candidates)
                    with self.lock:
                        self.restarting.add(name)
                    th = threading.Thread(target=self._crash_and_restart, args=(name,), daemon=True)
                    th.start()
                    restarts.append(th)
                    break
        for th in restarts:
            th.join(300)

    def _crash_and_restart(self, name: str) -> None:
        f = self.note("sigkill", name)
        started = time.monotonic()
        try:
            self.cluster.kill_instance(name)
            time.sleep(0.5)
            self.cluster.start_instance(name)
            try:
                self.cluster.wait_ready([name], 240)
                f.recovered_after_s = round(time.monotonic() - started, 1)
            except (TimeoutError, RuntimeError) as exc:
                print(f"  {name} did not come back: {exc}; starting it again", flush=True)
                self.cluster.kill_instance(name)
                self.cluster.start_instance(name)
        finally:
            with self.lock:
                self.restarting.discard(name)

    def infrastructure(self) -> None:
        """One broker crash (and its return), then one PostgreSQL crash (and its restart)."""
        plan = sorted([(self.cfg.broker_at, "broker"), (self.cfg.postgres_at, "postgres")])
        for at, what in plan:  # each happens once, even if the one before took longer than planned
            time.sleep(max(0.0, self.t0 + at * self.cfg.duration - time.monotonic()))
            if what == "broker":
                node = self.rng.randrange(3)
                f = self.note("sigkill", f"kafka broker {node}")
                started = time.monotonic()
                self.cluster.kafka.kill_node(node)
                time.sleep(self.cfg.broker_down)
                self.cluster.kafka.start_node(node, timeout=180)
                f.recovered_after_s = round(time.monotonic() - started, 1)
            else:
                f = self.note("sigkill", "postgresql (postmaster and backends)")
                started = time.monotonic()
                self.cluster.crash_postgres()
                time.sleep(self.cfg.postgres_down)
                self.cluster.pg.start()
                f.recovered_after_s = round(time.monotonic() - started, 1)


# ---------------------------------------------------------------------------------- the report


@dataclass
class Recorded:
    ce_id: str
    type: str
    time: datetime
    body: dict[str, Any]


async def read_tickets(bootstrap: str, partitions: int) -> dict[str, list[Recorded]]:
    """Every record of the ``tickets`` topic, from the start, by ticket (the record key)."""
    topic = f"{PREFIX}tickets"
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, request_timeout_ms=15000)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        end = await consumer.end_offsets(parts)
        out: dict[str, list[Recorded]] = defaultdict(list)
        while [tp for tp in parts if await consumer.position(tp) < end[tp]]:
            batch = await consumer.getmany(*parts, timeout_ms=1000, max_records=5000)
            for records in batch.values():
                for rec in records:
                    h = {k: v.decode() for k, v in rec.headers or ()}
                    at = datetime.fromisoformat(h["ce_time"])
                    body = json.loads(rec.value or b"{}")
                    out[(rec.key or b"").decode()].append(Recorded(h["ce_id"], h["ce_type"], at, body))
        return dict(out)
    finally:
        await consumer.stop()


async def topic_settings(bootstrap: str) -> dict[str, Any]:
    """What the cluster says about the tickets topic: replicas per partition and min.insync.replicas."""
    topic = f"{PREFIX}tickets"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
        replicas = sorted({len(p["replicas"]) for t in described for p in t["partitions"]})
        configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        value, origin = None, None
        for resp in configs:
            for res in resp.resources:
                for entry in res[4]:
                    if entry[0] == "min.insync.replicas":
                        value, source = entry[1], entry[3]  # v0: is_default; v1+: config_source
                        on_topic = (source is False) if isinstance(source, bool) else source == 1
                        origin = "topic" if on_topic else "broker"
        return {
            "topic": topic,
            "replicas": replicas,
            "min.insync.replicas": value,
            "min.insync.replicas_set_on": origin,
        }
    finally:
        await admin.close()


def over_capacity(records: dict[str, list[Recorded]], capacity: dict[str, int]) -> list[dict[str, Any]]:
    """Replay Assigned/Resolved by time: any moment a technician held more work orders than allowed."""
    changes: list[tuple[datetime, int, str, str]] = []
    seen: set[str] = set()
    for events in records.values():
        for e in events:
            if e.ce_id in seen or e.type not in ("tsop.ticket.assigned.v1", "tsop.ticket.resolved.v1"):
                continue
            seen.add(e.ce_id)
            delta = 1 if e.type.endswith("assigned.v1") else -1
            changes.append((e.time, delta, e.body["technician_id"], e.body["work_order_id"]))
    changes.sort(key=lambda c: (c[0], c[1]))  # at one instant, a release before a take
    held: dict[str, set[str]] = defaultdict(set)
    violations = []
    for at, delta, tech, wo in changes:
        if delta > 0:
            held[tech].add(wo)
            if len(held[tech]) > capacity.get(tech, 0):
                violations.append({"technician": tech, "at": at.isoformat(), "held": len(held[tech])})
        else:
            held[tech].discard(wo)
    return violations


def analyse(
    records: dict[str, list[Recorded]],
    dossiers: dict[str, dict[str, Any] | None],
    tally: Tally,
    capacity: dict[str, int],
) -> dict[str, Any]:
    completed, lost, duplicated = [], [], {}
    repeats_logged = 0  # WorkLogged is additive: a technician may log any number of entries
    for ticket in tally.accepted:
        d = dossiers.get(ticket)
        kinds = Counter(e["type"] for e in d["events"]) if d else Counter()
        on_topic = Counter(e.type for e in {e.ce_id: e for e in records.get(ticket, [])}.values())
        both = on_topic | kinds
        repeats_logged += max(0, both[WORK_LOGGED] - 1)
        twice = {t: n for t, n in both.items() if n > 1 and t != WORK_LOGGED}
        if twice:
            duplicated[ticket] = twice
        if d and d.get("seal") and d["seal"].get("verified") and set(kinds) >= set(LIFECYCLE):
            completed.append(ticket)
        else:
            lost.append(ticket)
    capacity_violations = over_capacity(records, capacity)
    # the longest interval without a lifecycle event, between the first submission and the last Archived
    distinct = [{x.ce_id: x for x in records.get(t, [])} for t in tally.accepted]
    times = sorted(e.time.timestamp() for events in distinct for e in events.values())
    stall, stall_at = 0.0, None
    if len(times) > 1:
        gaps = [(b - a, a) for a, b in itertools.pairwise(times)]
        stall, stall_at = max(gaps)
    return {
        "accepted": len(tally.accepted),
        "completed": len(completed),
        "lost": len(lost),
        "lost_tickets": lost[:20],
        "duplicated": len(duplicated) + len(capacity_violations),
        "duplicated_tickets": dict(list(duplicated.items())[:20]),
        "over_capacity": capacity_violations[:20],
        "work_log_entries_repeated": repeats_logged,
        "longest_stall_s": round(stall, 2),
        "longest_stall_started_at": stall_at,
        "topic_records": sum(len(v) for v in records.values()),
        "topic_distinct_events": sum(len({e.ce_id for e in v}) for v in records.values()),
    }


def fetch_dossiers(actors: Actors, tickets: list[str]) -> dict[str, dict[str, Any] | None]:
    c = Client(actors.urls)
    out: dict[str, dict[str, Any] | None] = {}
    try:
        for t in tickets:
            r = c.call("archive", "GET", f"/v1/tickets/{t}/dossier", headers=actors.staff("auditor"),
                       deadline=time.monotonic() + 60)
            out[t] = r.json() if r.status_code == 200 else None
    finally:
        c.close()
    return out


# -------------------------------------------------------------------------------------- run


@contextlib.contextmanager
def _data_dir(path: Path | None) -> Iterator[Path]:
    if path is not None:  # emptied first: every run starts a fresh cluster; its logs stay for reading
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="tsop-chaos-") as tmp:
        yield Path(tmp)


def run(cfg: Config, data_dir: Path | None = None) -> dict[str, Any]:
    rng = random.Random(cfg.seed)
    with _data_dir(data_dir) as where:
        cluster = Cluster(where, cfg)
        print(f"chaos: starting PostgreSQL, 3 Kafka brokers and {cfg.instances}x5 services in {where} ...", flush=True)
        try:
            startup = cluster.start()
            print(f"  up: {startup}", flush=True)
            return _run_started(cluster, cfg, rng, startup)
        finally:
            cluster.stop()


def _run_started(cluster: Cluster, cfg: Config, rng: random.Random, startup: dict[str, float]) -> dict[str, Any]:
    actors = Actors(cluster.urls(), cluster.tokens)
    actors.setup(cfg.technicians, cfg.capacity)
    tally = Tally()
    run_id = uuid.uuid4().hex[:8]
    t0 = time.monotonic()
    started_at = time.time()
    stop_load = threading.Event()
    hard_deadline = Deadline()
    workers = [
        threading.Thread(target=worker, args=(actors, tally, run_id, i, stop_load, hard_deadline), daemon=True)
        for i in range(cfg.workers)
    ]
    faults = Faults(cluster, cfg, t0, rng)
    fault_threads = [threading.Thread(target=faults.services, daemon=True),
                     threading.Thread(target=faults.infrastructure, daemon=True)]
    print(f"chaos: {cfg.duration:.0f}s of lifecycles ({cfg.workers} in flight) under faults", flush=True)
    for th in [*workers, *fault_threads]:
        th.start()
    # the load phase lasts the duration, and longer if the broker and PostgreSQL crashes are not over yet
    while (left := t0 + cfg.duration - time.monotonic()) > 0 or fault_threads[1].is_alive():
        time.sleep(min(15.0, left) if left > 0 else 5.0)
        at = time.monotonic() - t0
        print(f"  [{at:6.1f}s] accepted {len(tally.accepted)}, sealed {len(tally.sealed)}", flush=True)
    stop_load.set()
    faults.stop.set()
    for th in fault_threads:
        th.join(300)
    load_s = time.monotonic() - t0
    print(f"chaos: faults over after {load_s:.0f}s; waiting for every accepted request to be sealed", flush=True)
    hard_deadline.at = time.monotonic() + cfg.quiesce_timeout
    for th in workers:
        th.join(max(1.0, hard_deadline.at - time.monotonic()))
    quiesced_s = time.monotonic() - t0
    # every instance up again, for the reading below
    for name, proc in cluster.procs.items():
        if proc.poll() is not None:
            cluster.start_instance(name)
    cluster.wait_ready(list(cluster.procs), 180)

    dossiers = fetch_dossiers(actors, list(tally.accepted))
    records = asyncio.run(read_tickets(cluster.kafka.bootstrap, cfg.partitions))
    topic = asyncio.run(topic_settings(cluster.kafka.bootstrap))
    report = analyse(records, dossiers, tally, actors.capacity)
    kills = [f for f in faults.log if f.target.rsplit("-", 1)[0] in SERVICES]
    recover = [f.recovered_after_s for f in kills if f.recovered_after_s is not None]
    report.update(
        {
            "started_at": datetime.fromtimestamp(started_at).isoformat(timespec="seconds"),
            "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
            "startup": startup,
            "load_phase_s": round(load_s, 1),
            "quiesced_after_s": round(quiesced_s, 1),
            "lifecycles_per_minute": round(len(tally.sealed) / (quiesced_s / 60), 1) if quiesced_s else None,
            "rejected_at_review": tally.rejected,
            "retried_calls": dict(tally.errors),
            "service_kills": len(kills),
            "service_restart_to_ready_s": {
                "max": max(recover) if recover else None,
                "mean": round(sum(recover) / len(recover), 1) if recover else None,
            },
            "faults": [asdict(f) for f in faults.log],
            "topic": topic,
            "machine": {"cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg()},
        }
    )
    if report["longest_stall_started_at"] is not None:
        report["longest_stall_started_at_s"] = round(report.pop("longest_stall_started_at") - started_at, 1)
    return report


def summary(report: dict[str, Any]) -> str:
    lines = [
        "chaos summary",
        f"  lifecycles completed   {report['completed']} of {report['accepted']} accepted "
        f"({report['lifecycles_per_minute']}/min over {report['quiesced_after_s']}s)",
        f"  lost                   {report['lost']}",
        f"  duplicated effects     {report['duplicated']} (over capacity: {len(report['over_capacity'])}); "
        f"work-log entries repeated by a client retry: {report['work_log_entries_repeated']}",
        f"  longest stall          {report['longest_stall_s']}s"
        f" (from {report.get('longest_stall_started_at_s')}s)",
        f"  faults                 {report['service_kills']} service SIGKILLs, "
        + ", ".join(f"{f['target']} at {f['at_s']}s" for f in report["faults"] if "-" not in f["target"]),
        f"  restart to ready       max {report['service_restart_to_ready_s']['max']}s, "
        f"mean {report['service_restart_to_ready_s']['mean']}s",
        f"  topic {report['topic']['topic']}: replicas {report['topic']['replicas']}, "
        f"min.insync.replicas {report['topic']['min.insync.replicas']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    d = Config()
    parser.add_argument("--duration", type=float, default=d.duration, help="seconds of load under faults")
    parser.add_argument("--instances", type=int, default=d.instances, help="processes per service")
    parser.add_argument("--workers", type=int, default=d.workers, help="lifecycles in flight")
    parser.add_argument("--kill-every", type=float, default=d.kill_every)
    parser.add_argument("--broker-down", type=float, default=d.broker_down)
    parser.add_argument("--quiesce-timeout", type=float, default=d.quiesce_timeout)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="data and logs here, emptied first (default: a temp dir)"
    )
    parser.add_argument("--out", type=Path, default=d.out)
    args = parser.parse_args(argv)
    cfg = Config(
        duration=args.duration, instances=args.instances, workers=args.workers, kill_every=args.kill_every,
        broker_down=args.broker_down, quiesce_timeout=args.quiesce_timeout, seed=args.seed, out=args.out,
    )
    report = run(cfg, args.data_dir)
    print(summary(report), flush=True)
    if cfg.out is not None:
        cfg.out.parent.mkdir(parents=True, exist_ok=True)
        cfg.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"  written to {cfg.out}", flush=True)
    return 0 if report["lost"] == 0 and report["duplicated"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
