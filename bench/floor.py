"""``python -m bench.floor``: the floor of the stack, the CPU each minimal layer operation costs on this machine.

Issues 11 and 12 name figures (2,000 notification deliveries/s; 100,000 tickets linked and resolved in 60 s) whose
budget on this 2-core machine is about 1.0 and 1.2 ms of CPU per unit for everything on it. This module measures,
with the libraries and settings the services use and nothing of the services' logic, what each irreducible step of
such a unit costs: a Kafka record produced with the relay's producer settings, a record fetched and decoded by one
consumer group, a stored event inserted by the project's event store (eventsourcing's PostgreSQL recorder, a
tracking row per transaction, batched as the sinks do) and read back as the relay and the log followers read it,
an HMAC signature, a POST to a local receiver (httpx through the outbound guard, the services' lean client, a bare
asyncio client) and the receiver's own CPU per request.

Every figure is **process CPU time** (user + system, all threads), not wall time: the Python side from this
process's own counters, PostgreSQL (postmaster and every backend, the benchmark keeps its connections open so none
takes its CPU with it), Tansu and the receiver process from psutil. The external processes' idle CPU, measured
before the layers run, is subtracted per layer (``net``). Each layer is measured ``--runs`` times (default 3); the
report gives the least, the median and the greatest per-item cost of the runs.

It starts its own embedded PostgreSQL and Tansu on free ports in a fresh folder (``tsop_devstack``), as the other
benches do. Results: bench/results/floor-*.json; the per-unit sums are printed from ``UNITS`` (counts per delivery
and per ticket taken from the running system, see bench/RESULTS.md, "The floor of the stack").
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from eventsourcing.persistence import Tracking
from tsop_devstack.postgres import EmbeddedPostgres
from tsop_devstack.stack import die_with_parent
from tsop_devstack.tansu import EmbeddedBroker

from bench.__main__ import free_port
from bench.feedback import assigned, resolved
from bench.lifecycle import commit
from tsop_events import outbound
from tsop_events.envelope import header_value, unwrap, wrap
from tsop_events.settings import ServiceSettings
from tsop_events.store import EventStoreApp, ensure_database
from tsop_feedback.domain import Notification

RESULTS = Path(__file__).parent / "results"
SECRET = "floor-secret"
PARTITIONS = 6

# Counts per unit of the two figures (bench/RESULTS.md, "The floor of the stack", says where each comes from):
# layer -> how many of it one unit needs. "as built": what the services do now (consumer groups from the sinks'
# declared types, stored rows from PostgreSQL's counters in bench.incident, events per ticket from the archive);
# "floor, this architecture": the least the spec asks of an event-sourced service per step (a stored event per
# decision, a relay read per published event, one consumer group per service that must react);
# "floor, no event store on the path": the least any design on Kafka + PostgreSQL + Python could do.
UNITS: dict[str, dict[str, dict[str, float]]] = {
    "delivery (issue 11)": {
        "as built": {
            "kafka_produce": 1.5,  # the driver's step events: Submitted, Accepted, Assigned per 2 notifications
            "kafka_consume_decode": 2.5,  # feedback-cases decodes all 3, feedback-complaint-signals 2 of 3
            "kafka_consume_skip": 0.5,  # feedback-complaint-signals skips Accepted
            "store_insert_b100": 2.0,  # the consumer's batch: Queued, and the case's Opened and ExpectedBy per 2
            "store_insert_b10": 1.1,  # Attempted x 1.1 (5 % fail twice), recorded a few at a time
            "store_read": 6.2,  # each read by the relay and by the shared log reader
            "http_lean": 1.1,  # outbound.send through the guard with the lean client (signs too), 1.1 attempts
            "receiver_asgi": 1.1,  # the bench's receiver is a uvicorn ASGI app
        },
        "floor, this architecture": {
            "kafka_produce": 1.5,
            "kafka_consume_decode": 1.5,  # one group decodes each step event
            "store_insert_b100": 2.0,  # Notification.Queued, Notification.Attempted (batched)
            "store_read": 2.0,  # the notifier learns of the queued notification from the log
            "http_raw": 1.1,  # the least a Python client can do (it signs each body: hmac_sign is in it)
            "receiver_raw": 1.1,  # the least a Python receiver can do (parse, verify the HMAC, answer)
        },
        "floor, this architecture with a COPY recorder": {
            "kafka_produce": 1.5,
            "kafka_consume_decode": 1.5,
            "lean_store_insert_b500": 2.0,
            "lean_store_read": 2.0,
            "http_raw": 1.1,
            "receiver_raw": 1.1,
        },
        "floor, no event store on the path": {
            "kafka_produce": 1.5,
            "kafka_consume_decode": 1.5,
            "http_raw": 1.1,
            "receiver_raw": 1.1,
            "asyncpg_copy_b500": 1.0,  # one row per outcome (the offset is the queue; retries in a table)
        },
    },
    "ticket (issue 12)": {
        "as built": {
            "kafka_produce": 3.0,  # Held, Resolved, FeedbackSent (TicketsLinked: 1 per 2,000)
            "kafka_consume_decode": 11.0,  # Held 1 group, Resolved 7, FeedbackSent 3 (TicketsLinked 4 / 2,000)
            "kafka_consume_skip": 16.0,  # the other groups on `tickets` fetch those records and skip them
            "store_insert_b500": 6.0,  # dispatch Held + Resolved, feedback 2, incident's TicketLink 2
            "asyncpg_copy_b500": 17.0,  # archive 6, intake 5 rows inserted, ~6.5 updated (PostgreSQL's counters)
            "store_read": 12.0,  # each stored event read by its relay and its shared log reader
        },
        "floor, this architecture": {
            "kafka_produce": 2.0,  # Held, Resolved (the link is one event per 2,000)
            "kafka_consume_decode": 4.0,  # Held: archive; Resolved: rating loop, archive, intake status
            "store_insert_b500": 3.0,  # dispatch Held, Resolved; feedback's rating window
            "asyncpg_copy_b500": 3.0,  # archive's copies of Held and Resolved (chained), intake's status row
            "store_read": 4.0,  # dispatch's relay reads what it publishes; its work order read to hold, to resolve
        },
        "floor, this architecture with a COPY recorder": {
            "kafka_produce": 2.0,
            "kafka_consume_decode": 4.0,
            "lean_store_insert_b500": 3.0,
            "asyncpg_copy_b500": 3.0,
            "lean_store_read": 4.0,
        },
        "floor, no event store on the path": {
            "kafka_produce": 2.0,
            "kafka_consume_decode": 4.0,
            "asyncpg_copy_b500": 5.0,  # dispatch's two, feedback's window, archive's copy, intake's status
        },
    },
}


# ---------------------------------------------------------------- measuring


def own_cpu() -> float:
    return time.process_time()  # every thread of this process (the recorder's run in worker threads)


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and its children (PostgreSQL's backends)."""
    try:
        p = psutil.Process(pid)
        total = 0.0
        for x in [p, *p.children(recursive=True)]:
            try:
                t = x.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total
    except psutil.Error:
        return 0.0


@dataclass
class Others:
    """The external processes whose CPU a layer costs too, and their idle rates (CPU-s per s)."""

    pids: dict[str, int]
    idle: dict[str, float] = field(default_factory=dict)

    def cpu(self) -> dict[str, float]:
        return {name: tree_cpu(pid) for name, pid in self.pids.items()}

    async def measure_idle(self, seconds: float = 3.0) -> None:
        c0, t0 = self.cpu(), time.monotonic()
        await asyncio.sleep(seconds)
        c1, dt = self.cpu(), time.monotonic() - t0
        self.idle = {k: (c1[k] - c0[k]) / dt for k in c0}


@dataclass
class Sample:
    layer: str
    n: int
    wall: float
    python_us: float
    others_us: dict[str, float]  # net of idle

    def row(self) -> dict[str, Any]:
        return {"layer": self.layer, "n": self.n, "wall_s": round(self.wall, 3),
                "items_per_wall_s": round(self.n / self.wall, 1), "python_us": round(self.python_us, 2),
                **{f"{k}_us": round(v, 2) for k, v in self.others_us.items()}}


async def timed(layer: str, n: int, others: Others, work: Callable[[], Awaitable[None]]) -> Sample:
    o0, p0, t0 = others.cpu(), own_cpu(), time.monotonic()
    await work()
    o1, p1, wall = others.cpu(), own_cpu(), time.monotonic() - t0
    ext = {k: 1e6 * max(0.0, o1[k] - o0[k] - others.idle.get(k, 0.0) * wall) / n for k in o0}
    sample = Sample(layer, n, wall, 1e6 * (p1 - p0) / n, ext)
    print(f"  {layer:<24} n={n:<7} wall {wall:7.2f} s  python {sample.python_us:8.1f} µs  "
          + "  ".join(f"{k} {v:7.1f} µs" for k, v in ext.items()), flush=True)
    return sample


# ---------------------------------------------------------------- the layers


def sample_envelopes(n: int) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    """``n`` records as the relays publish them: key, CloudEvents body and headers of real wire events."""
    at = datetime.now(UTC)
    out = []
    for i in range(n):
        ticket = str(uuid.uuid4())
        ev = resolved(ticket, at) if i % 2 else assigned(ticket, at)
        env = wrap(ev, event_id=str(uuid.uuid4()), source="floor", time=at, causation_id=str(uuid.uuid4()))
        out.append((ev.key().encode(), env.data, env.headers()))
    return out


async def layer_wire(n: int, others: Others) -> list[Sample]:
    """Encoding a wire event to its record (the relay's ``wrap``) and decoding it (a consumer's ``unwrap`` +
    pydantic validation), in process."""
    at = datetime.now(UTC)
    events = [resolved(str(uuid.uuid4()), at) for _ in range(n)]
    records: list[tuple[list[tuple[str, bytes]], bytes]] = []

    async def encode() -> None:
        for ev in events:
            env = wrap(ev, event_id=str(uuid.uuid4()), source="floor", time=at)
            records.append((env.headers(), env.data))

    async def decode() -> None:
        for headers, value in records:
            unwrap(headers, value).event()

    return [await timed("wire_encode", n, others, encode), await timed("wire_decode", n, others, decode)]


def hmac_layer(n: int, body: bytes) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        for _ in range(n):
            outbound.sign(SECRET, body)

    return run


async def layer_kafka(bootstrap: str, n: int, groups: int, others: Others, run: int) -> list[Sample]:
    """Produce ``n`` records with the relay's producer settings (send each, await the batch of 500, as
    ``Relay.publish_once``), then fetch them all ``groups`` times, each like one consumer group: decoded (``unwrap``
    and the pydantic model), or only their ``ce_type`` read (a group that skips them)."""
    topic = f"floor.t{run}.{uuid.uuid4().hex[:6]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    records = sample_envelopes(n)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=5,
                                max_batch_size=256 * 1024, request_timeout_ms=15000)
    await producer.start()
    samples = []
    try:
        await producer.send_and_wait(topic, b"warm", key=b"warm")  # metadata, connection

        async def produce() -> None:
            for i in range(0, n, 500):
                futures = [await producer.send(topic, value=v, key=k, headers=h) for k, v, h in records[i:i + 500]]
                await asyncio.gather(*futures)

        samples.append(await timed("kafka_produce", n, others, produce))
    finally:
        await producer.stop()

    async def consume(decode: bool) -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                    auto_offset_reset="earliest", max_poll_records=500, fetch_max_wait_ms=50,
                                    consumer_timeout_ms=1000)
        await consumer.start()
        try:
            consumer.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
            await consumer.seek_to_beginning()
            seen = 0
            while seen < n + 1:
                batch = await consumer.getmany(timeout_ms=1000, max_records=500)
                for recs in batch.values():
                    for r in recs:
                        seen += 1
                        if r.key == b"warm":
                            continue
                        if decode:
                            unwrap(r.headers, r.value).event()  # type: ignore[arg-type]
                        else:
                            header_value(r.headers, "ce_type")  # type: ignore[arg-type]
        finally:
            await consumer.stop()

    for g in range(groups):
        decode = g % 2 == 0
        name = "kafka_consume_decode" if decode else "kafka_consume_skip"
        samples.append(await timed(name, n, others, lambda decode=decode: consume(decode)))  # type: ignore[misc]
    return samples


class FloorApp(EventStoreApp):
    """The project's event store with feedback's ``Notification`` aggregate: what the notifier stores."""


def notification(at: datetime) -> Notification:
    ticket = str(uuid.uuid4())
    return Notification(
        id=uuid.uuid4(), ticket_id=ticket, step="assigned", url="http://127.0.0.10:9000/hook", template="app",
        language="en", text="Your request has been assigned to a technician; they will contact you shortly.",
        payload={"ticket_id": ticket, "work_order_id": f"wo-{ticket[:8]}", "state": "assigned"}, queued_at=at,
    )


async def layer_store(app: FloorApp, batches: dict[int, int], others: Others, run: int) -> list[Sample]:
    """Insert stored events with the project's recorder (eventsourcing's PostgreSQL process recorder, the
    notification log's table lock and a tracking row per transaction, as a consumer sink saves a batch), ``batch``
    new aggregates of one event each per transaction; then read them back from the notification log and decode
    them, as the relay and the shared log reader do (1,000 per query)."""
    samples = []
    at = datetime.now(UTC)
    first = await asyncio.to_thread(app.recorder.max_notification_id) or 0
    total = 0
    for batch, n in batches.items():
        aggregates = [notification(at) for _ in range(n)]
        position = [run * 10_000_000 + batch * 100_000]

        def save(aggs: list[Notification] = aggregates, size: int = batch, pos: list[int] = position) -> None:
            for i in range(0, len(aggs), size):
                pos[0] += 1
                app.save_tracked(aggs[i:i + size], Tracking(f"floor-b{size}", pos[0]))

        async def run_save(save: Callable[[], None] = save) -> None:
            await asyncio.to_thread(save)

        samples.append(await timed(f"store_insert_b{batch}", n, others, run_save))
        total += n

    def read() -> None:
        start = first + 1
        while True:
            got = app.recorder.select_notifications(start, 1000)
            if not got:
                return
            for stored in got:
                app.mapper.to_domain_event(stored)
            start = got[-1].id + 1

    async def run_read() -> None:
        await asyncio.to_thread(read)

    samples.append(await timed("store_read", total, others, run_read))
    return samples


async def layer_asyncpg(dsn: str, n: int, others: Others) -> list[Sample]:
    """The least PostgreSQL can be asked for a stored event: a row of the recorder's shape (``bigserial``, a unique
    (originator, version)) by ``COPY`` over asyncpg, 500 per transaction, no table lock, no tracking row."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS floor_raw (id bigserial PRIMARY KEY, originator_id uuid NOT NULL, "
            "originator_version int NOT NULL, topic text NOT NULL, state bytea, "
            "UNIQUE (originator_id, originator_version))")
        state = orjson.dumps({"ticket_id": str(uuid.uuid4()), "text": "x" * 120, "payload": {"a": "b" * 60}})
        rows = [(uuid.uuid4(), 1, "tsop_feedback.domain:Notification.Queued", state) for _ in range(n)]

        async def copy() -> None:
            for i in range(0, n, 500):
                async with conn.transaction():
                    await conn.copy_records_to_table(
                        "floor_raw", records=rows[i:i + 500],
                        columns=["originator_id", "originator_version", "topic", "state"])

        return [await timed("asyncpg_copy_b500", n, others, copy)]
    finally:
        await conn.close()


async def layer_lean_store(dsn: str, n: int, others: Others) -> list[Sample]:
    """What a recorder of the project's own could cost (not the project's code): the same ``Notification`` events,
    collected from their aggregates, their state encoded by orjson and written by asyncpg ``COPY`` under the
    notification log's table lock with a tracking row, 500 a transaction; then read back (state decoded by orjson)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS floor_es (notification_id bigserial PRIMARY KEY, originator_id uuid NOT NULL, "
            "originator_version int NOT NULL, topic text NOT NULL, state bytea NOT NULL, "
            "UNIQUE (originator_id, originator_version));"
            "CREATE TABLE IF NOT EXISTS floor_tracking (application_name text, notification_id bigint, "
            "PRIMARY KEY (application_name, notification_id))")
        first = await conn.fetchval("SELECT coalesce(max(notification_id), 0) FROM floor_es")
        at = datetime.now(UTC)
        aggregates = [notification(at) for _ in range(n)]
        skip = {"originator_id", "originator_version"}

        async def write() -> None:
            for i in range(0, n, 500):
                rows = []
                for a in aggregates[i:i + 500]:
                    for e in a.collect_events():
                        rows.append((e.originator_id, e.originator_version,
                                     f"{type(e).__module__}:{type(e).__qualname__}",
                                     orjson.dumps({k: v for k, v in e.__dict__.items() if k not in skip})))
                async with conn.transaction():
                    await conn.execute("LOCK TABLE floor_es IN EXCLUSIVE MODE")
                    await conn.copy_records_to_table(
                        "floor_es", records=rows, columns=["originator_id", "originator_version", "topic", "state"])
                    await conn.execute("INSERT INTO floor_tracking VALUES ($1, $2)", "floor", first + i + 1)

        async def read() -> None:
            start = first
            while True:
                got = await conn.fetch("SELECT notification_id, originator_id, originator_version, topic, state "
                                       "FROM floor_es WHERE notification_id > $1 ORDER BY notification_id LIMIT 1000",
                                       start)
                if not got:
                    return
                for row in got:
                    orjson.loads(row["state"])
                start = got[-1]["notification_id"]

        return [await timed("lean_store_insert_b500", n, others, write),
                await timed("lean_store_read", n, others, read)]
    finally:
        await conn.close()


# ---------------------------------------------------------------- HTTP


class RawReceiver(asyncio.Protocol):
    """The least a receiver does: read one request at a time, check its HMAC, answer 200 (keep-alive)."""

    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1").lower()
            length, signature = 0, ""
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name == "content-length":
                    length = int(value)
                elif name == "x-tsop-signature":
                    signature = value.strip()
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4:end + 4 + length]
            self.buf = self.buf[end + 4 + length:]
            good = hmac.compare_digest(signature, outbound.sign(SECRET, body))
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" if good
                                 else b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")


async def asgi_receiver(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                        send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    """A minimal ASGI receiver under uvicorn (httptools), like bench.notifications': read, verify, answer 200."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    signature = next((v.decode() for k, v in scope["headers"] if k == b"x-tsop-signature"), "")
    good = hmac.compare_digest(signature, outbound.sign(SECRET, body))
    await send({"type": "http.response.start", "status": 200 if good else 401,
                "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


def serve(kind: str, port: int) -> None:
    if kind == "asgi":
        import uvicorn

        uvicorn.run(asgi_receiver, host="127.0.0.1", port=port, log_level="warning", access_log=False,
                    http="httptools", loop="asyncio", lifespan="off")
        return

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(RawReceiver, "127.0.0.1", port, backlog=1024)
        await server.serve_forever()

    asyncio.run(main())


def start_receiver(kind: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.floor", "--receiver", kind, "--port", str(port)],
                            start_new_session=True, preexec_fn=die_with_parent(signal.SIGTERM))
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1.0)
            return proc, port
        except httpx.HTTPError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"receiver {kind} did not start") from None
            time.sleep(0.1)


def delivery_body(i: int) -> bytes:
    return orjson.dumps({"ticket_id": str(uuid.uuid4()), "step": "assigned", "template": "app", "language": "en",
                         "text": "Your request has been assigned to a technician; they will contact you shortly.",
                         "work_order_id": f"wo-{i:08d}", "state": "assigned"})


async def raw_post(stream: tuple[asyncio.StreamReader, asyncio.StreamWriter], port: int, body: bytes,
                   headers: dict[str, str]) -> int:
    """The least a Python client does: write the request, read the status line, headers and body."""
    reader, writer = stream
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(f"POST /hook HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{head}Content-Length: {len(body)}\r\n\r\n"
                 .encode("latin-1") + body)
    answer = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in answer.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return int(answer[9:12])


async def layer_http(n: int, concurrency: int, others_base: dict[str, int], idle: dict[str, float],
                     clients: tuple[str, ...], receiver: str) -> list[Sample]:
    """POST ``n`` signed notification bodies over ``concurrency`` kept-alive connections to a receiver process:
    the client's CPU per request (this process) and the receiver's (its process)."""
    proc, port = start_receiver(receiver)
    others = Others({**others_base, f"receiver_{receiver}": proc.pid})
    await others.measure_idle(2.0)
    others.idle = {**idle, **{k: v for k, v in others.idle.items() if k.startswith("receiver")}}
    url = f"http://127.0.0.1:{port}/hook"
    guard = outbound.OutboundGuard(allow=outbound.parse_rules("127.0.0.1"))
    bodies = [delivery_body(i) for i in range(n)]
    samples = []
    try:
        for kind in clients:
            failures: list[str] = []
            shared: httpx.AsyncClient | outbound.Connections | None = None
            streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
            if kind == "httpx":  # one client for every receiver, as a service holds it
                shared = outbound.client(5.0, max_connections=concurrency)
            elif kind == "lean":
                shared = outbound.Connections(5.0)
            else:
                streams = [await asyncio.open_connection("127.0.0.1", port) for _ in range(concurrency)]

            async def post(k: int, i: int, kind: str = kind, failures: list[str] = failures,
                           shared: httpx.AsyncClient | outbound.Connections | None = shared,
                           streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = streams) -> None:
                body = bodies[i]
                headers = {"X-TSOP-Delivery": str(i), "X-TSOP-Step": "assigned"}
                if shared is not None:
                    sent = await outbound.send(guard, shared, url, body, purpose="floor", headers=headers,
                                               secret=SECRET, timeout=5.0)
                    if not sent.ok:
                        failures.append(str(sent.error))
                else:
                    headers = {"content-type": "application/json", **headers,
                               "X-TSOP-Signature": outbound.sign(SECRET, body)}
                    status = await raw_post(streams[k], port, body, headers)
                    if status != 200:
                        failures.append(f"HTTP {status}")

            async def warm(post: Callable[[int, int], Awaitable[None]] = post) -> None:
                await asyncio.gather(*(post(k, k) for k in range(concurrency)))  # every connection opened once

            async def run(post: Callable[[int, int], Awaitable[None]] = post) -> None:
                async def worker(k: int) -> None:
                    for i in range(k, n, concurrency):
                        await post(k, i)

                await asyncio.gather(*(worker(k) for k in range(concurrency)))

            try:
                await warm()
                sample = await timed(f"http_{kind}->{receiver}", n, others, run)
            finally:
                if shared is not None:
                    await shared.aclose()
                for _, writer in streams:
                    writer.close()
            if failures:
                raise RuntimeError(f"{len(failures)} of {n} POSTs failed ({kind} to {receiver}): {failures[0]}")
            samples.append(sample)
    finally:
        proc.terminate()
        proc.wait(10)
    return samples


# ---------------------------------------------------------------- the run


def summarise(runs: list[list[Sample]]) -> list[dict[str, Any]]:
    """Per layer: least, median and greatest per-item CPU over the runs, for Python and each other process."""
    by: dict[str, list[Sample]] = {}
    for run in runs:
        for s in run:
            by.setdefault(s.layer, []).append(s)
    out = []
    for layer, samples in by.items():
        row: dict[str, Any] = {"layer": layer, "n": samples[0].n, "runs": len(samples)}
        series = {"python": [s.python_us for s in samples]}
        for s in samples:
            for k, v in s.others_us.items():
                series.setdefault(k, []).append(v)
        for k, vals in series.items():
            row[k] = {"min": round(min(vals), 2), "median": round(statistics.median(vals), 2),
                      "max": round(max(vals), 2)}
        row["total_median_us"] = round(sum(v["median"] for k, v in row.items() if isinstance(v, dict)), 2)
        row["items_per_wall_s_median"] = round(statistics.median(s.n / s.wall for s in samples), 1)
        out.append(row)
    return out


def unit_sums(table: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The per-unit floor: each layer's median total CPU (µs, all processes) times its count per unit."""
    cost: dict[str, float] = {}
    for row in table:
        layer = row["layer"]
        cost[layer] = row["total_median_us"]
        if layer.startswith("http_"):  # split client and receiver: "http_raw->raw" gives http_raw, receiver_raw
            client, _, receiver = layer[len("http_"):].partition("->")
            rec = row.get(f"receiver_{receiver}", {}).get("median", 0.0)
            cost.setdefault(f"http_{client}", row["python"]["median"])
            cost.setdefault(f"receiver_{receiver}", rec)  # the first row of that receiver (the bare client)
    out: dict[str, dict[str, Any]] = {}
    for unit, variants in UNITS.items():
        for variant, counts in variants.items():
            parts = {layer: round(k * cost[layer], 1) for layer, k in counts.items() if layer in cost}
            missing = [layer for layer in counts if layer not in cost]
            out[f"{unit}, {variant}"] = {"us": round(sum(parts.values()), 1), "parts_us": parts, "missing": missing}
    return out


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="tsop-floor-"))
    pg = EmbeddedPostgres(folder / "pg", port=free_port())
    broker = EmbeddedBroker(port=free_port(), log_path=folder / "broker.log")
    pg.preexec = die_with_parent(signal.SIGINT)
    broker.preexec = die_with_parent(signal.SIGTERM)
    pg.start()
    broker.start()
    try:
        assert pg.proc is not None and broker.proc is not None
        others = Others({"postgres": pg.proc.pid, "broker": broker.proc.pid})
        settings = ServiceSettings(service_name="floor", pg_port=pg.port, pg_pool_size=2)
        await ensure_database(settings)
        app = await asyncio.to_thread(FloorApp, settings)
        await asyncio.sleep(2.0)
        await others.measure_idle(3.0)
        print(f"idle CPU (share of a core): {json.dumps({k: round(v, 4) for k, v in others.idle.items()})}")
        load0 = os.getloadavg()
        runs: list[list[Sample]] = []
        for run in range(args.runs):
            print(f"run {run + 1} of {args.runs} (load average {os.getloadavg()[0]:.2f})", flush=True)
            samples: list[Sample] = []
            if "cpu" in args.layers:
                samples.append(await timed("hmac_sign", args.n * 5, others, hmac_layer(args.n * 5, delivery_body(0))))
                samples += await layer_wire(args.n, others)
            if "kafka" in args.layers:
                samples += await layer_kafka(broker.bootstrap, args.n, 2, others, run)
            if "pg" in args.layers:
                batches = {1: args.n // 40, 10: args.n // 4, 100: args.n, 500: args.n}
                samples += await layer_store(app, batches, others, run)
                samples += await layer_asyncpg(pg.dsn(settings.database), args.n, others)
                samples += await layer_lean_store(pg.dsn(settings.database), args.n, others)
            if "http" in args.layers:
                samples += await layer_http(args.http, args.concurrency, others.pids, others.idle,
                                            ("raw", "lean"), "raw")
                samples += await layer_http(args.httpx, args.concurrency, others.pids, others.idle, ("httpx",), "raw")
                samples += await layer_http(args.http, args.concurrency, others.pids, others.idle, ("lean",), "asgi")
            runs.append(samples)
        table = summarise(runs)
        return {"when": datetime.now(UTC).isoformat(), "commit": commit(), "cores": psutil.cpu_count(),
                "load_average_start": [round(x, 2) for x in load0],
                "load_average_end": [round(x, 2) for x in os.getloadavg()],
                "idle_share_of_core": {k: round(v, 4) for k, v in others.idle.items()},
                "settings": vars(args), "layers": table, "units": unit_sums(table),
                "runs": [[s.row() for s in run] for run in runs]}
    finally:
        broker.stop()
        pg.stop()


def report(result: dict[str, Any]) -> str:
    lines = ["| layer | n | Python µs | PostgreSQL µs | broker µs | receiver µs | total µs (medians) | items/s wall |",
             "|---|---|---|---|---|---|---|---|"]

    def cell(row: dict[str, Any], key: str) -> str:
        v = row.get(key)
        if v is None:
            recs = [x for k, x in row.items() if k.startswith("receiver_")]
            if key != "receiver" or not recs:
                return "-"
            v = recs[0]
        return f"{v['median']:.1f} ({v['min']:.1f} to {v['max']:.1f})"

    for row in result["layers"]:
        lines.append(f"| {row['layer']} | {row['n']} | {cell(row, 'python')} | {cell(row, 'postgres')} | "
                     f"{cell(row, 'broker')} | {cell(row, 'receiver')} | {row['total_median_us']:.1f} | "
                     f"{row['items_per_wall_s_median']:.0f} |")
    lines.append("")
    for unit, s in result["units"].items():
        parts = ", ".join(f"{k} {v:.0f}" for k, v in s["parts_us"].items())
        lines.append(f"{unit}: {s['us'] / 1000:.3f} ms ({parts})" + (f"; missing {s['missing']}" if s["missing"]
                                                                       else ""))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--n", type=int, default=20_000, help="records / stored events per layer and run")
    parser.add_argument("--http", type=int, default=20_000, help="POSTs per client and run")
    parser.add_argument("--httpx", type=int, default=3_000, help="POSTs with httpx per run (it is slow)")
    parser.add_argument("--concurrency", type=int, default=64, help="kept-alive connections in flight")
    parser.add_argument("--layers", nargs="+", default=["cpu", "kafka", "pg", "http"],
                        choices=["cpu", "kafka", "pg", "http"])
    parser.add_argument("--report", type=Path, nargs="+",
                        help="print the report of saved results (their runs together) with today's UNITS")
    parser.add_argument("--receiver", choices=["raw", "asgi"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        serve(args.receiver, args.port)
        return
    if args.report:  # several saved results: their runs together
        saved = [json.loads(path.read_text()) for path in args.report]
        runs = [[Sample(r["layer"], r["n"], r["wall_s"], r["python_us"],
                        {k[:-3]: v for k, v in r.items() if k.endswith("_us") and k != "python_us"})
                 for r in run] for result in saved for run in result["runs"]]
        table = summarise(runs)
        print(report({"layers": table, "units": unit_sums(table)}))
        return
    result = asyncio.run(measure(args))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"floor-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    print()
    print(report(result))
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
