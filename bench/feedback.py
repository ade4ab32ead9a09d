"""Feedback alone on the embedded stack, driven with real events: shared by ``bench.notifications`` and
``bench.ratings``.

``feedback_stack`` is the embedded stack (PostgreSQL, Tansu) with only the feedback process; ``Events``
publishes wire events on its topics as intake and dispatch would (a channel system with its credential on
``channels``, tickets' steps on ``tickets``), so feedback's own consumers, commands, relay and delivery
workers do all of their usual work.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from tsop_devstack.stack import Stack, die_with_parent

from bench.__main__ import free_port
from bench.lifecycle import commit
from bench.news import News
from tsop_events import schemas as wire
from tsop_events.envelope import wrap

SERVICE_TYPE = "broadband.fault_repair"
PREFIX = "tsop."
RESULTS = Path(__file__).parent / "results"


def feedback_stack(prefix: str, env: dict[str, str] | None = None, instances: int = 1) -> Stack:
    """The embedded stack with feedback alone, on free ports, in a fresh folder; with ``instances`` > 1 the
    stack's feedback is instance 0 of that many (``more_instances`` starts the others)."""
    shards = {"TSOP_SHARD_INDEX": "0", "TSOP_SHARD_COUNT": str(instances)} if instances > 1 else {}
    return Stack(
        Path(tempfile.mkdtemp(prefix=prefix)),
        pg_port=free_port(),
        broker_port=free_port(),
        ports={"feedback": free_port()},
        env={"TSOP_LOG_LEVEL": "WARNING", **(env or {}), **shards},
        services=("feedback",),
    )


def more_instances(stack: Stack, instances: int, api: int = 0, workers: int = 0) -> list[str]:
    """Start feedback instances 1 … ``instances`` - 1 beside the stack's own (same database and broker, a port
    each, one share of the deliveries each: ``TSOP_SHARD_INDEX`` of ``TSOP_SHARD_COUNT``), wait until they are
    ready; the names of the instances that serve the routes (``feedback``, ``feedback-1`` …). They are stopped with
    the stack and their CPU is counted like the others'.

    With process roles (``api`` or ``workers`` > 0; the stack's own ``feedback`` then has ``TSOP_ROLE=api``, see
    ``feedback_stack``): ``api`` - 1 more api processes (``feedback-api-1`` …) and ``workers`` worker processes
    (``feedback-worker-0`` …), the deliveries shared among the workers; the names returned are the api processes'
    only (the workers answer routes 421)."""
    names = ["feedback"]
    started: list[str] = []

    def start(name: str, more: dict[str, str]) -> None:
        stack.ports[name] = free_port()
        env = {**stack.service_env("feedback"), "TSOP_HTTP_PORT": str(stack.ports[name]), **more}
        with (stack.logs / f"{name}.log").open("ab") as log:
            stack.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "tsop_feedback.main"], env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent(signal.SIGTERM),
            )
        started.append(name)

    if api or workers:
        for i in range(1, api):
            start(f"feedback-api-{i}", {"TSOP_ROLE": "api"})
            names.append(f"feedback-api-{i}")
        for i in range(workers):
            start(f"feedback-worker-{i}", {"TSOP_ROLE": "worker", "TSOP_SHARD_INDEX": str(i),
                                           "TSOP_SHARD_COUNT": str(workers)})
    else:
        for i in range(1, instances):
            start(f"feedback-{i}", {"TSOP_SHARD_INDEX": str(i), "TSOP_SHARD_COUNT": str(instances)})
            names.append(f"feedback-{i}")
    if started:
        stack.wait_ready(180, services=tuple(started))
    return names


def feedback_total(cpu: dict[str, float]) -> float:
    """The CPU of all feedback instances together (``cpu_per``'s figures of ``feedback``, ``feedback-1`` …)."""
    return round(sum(v for k, v in cpu.items() if k == "feedback" or k.startswith("feedback-")), 3)


def write(name: str, measured: dict[str, Any], **settings: Any) -> None:
    """The run's result (when, commit, the settings used, the figures), printed and written to bench/results."""
    result = {"when": datetime.now(UTC).isoformat(), "commit": commit(), **settings, **measured}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"\nwritten: {out}")


class Events:
    """Publishes wire events as the other services would (keyed, CloudEvents headers)."""

    def __init__(self, bootstrap: str, pg_dsn: str) -> None:
        """``pg_dsn``: the stack's ``postgres`` database, where what the broker acknowledged is announced (as the
        services' relays do, see bench.news)."""
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                         max_batch_size=256 * 1024)
        self.news = News(pg_dsn)

    async def start(self) -> None:
        await self.producer.start()
        await self.news.start()

    async def stop(self) -> None:
        await self.producer.stop()
        await self.news.stop()

    async def publish(self, events: Sequence[wire.WireEvent], at: datetime | None = None) -> None:
        """Queue ``events`` in order (one key keeps them on one partition, in order); ``flush`` waits."""
        for e in events:
            env = wrap(e, event_id=str(uuid.uuid4()), source="bench", time=at or datetime.now(UTC))
            sent = await self.producer.send(e.topic.qualified(PREFIX), env.data, key=e.key().encode(),
                                            headers=env.headers())
            sent.add_done_callback(self.news.on_ack(e.topic.qualified(PREFIX)))

    async def flush(self) -> None:
        await self.producer.flush()

    async def channel(self, name: str = "bench portal") -> tuple[str, str]:
        """A channel system and one credential, as intake announces them: (channel id, its token)."""
        channel_id, token = str(uuid.uuid4()), uuid.uuid4().hex
        now = datetime.now(UTC)
        await self.publish([
            wire.ChannelRegistered(channel_id=channel_id, name=name, kind="app", registered_at=now),
            wire.ChannelCredentialIssued(channel_id=channel_id, credential_id=str(uuid.uuid4()),
                                         token_sha256=hashlib.sha256(token.encode()).hexdigest(), issued_at=now),
        ])
        await self.flush()
        return channel_id, token


def submitted(ticket: str, channel_id: str, callback_url: str | None, at: datetime) -> wire.RequestSubmitted:
    return wire.RequestSubmitted(
        ticket_id=ticket, channel=wire.Channel("app"), channel_id=channel_id, customer_id=f"c-{ticket[:8]}",
        customer_tier=wire.CustomerTier.standard, region="north", service_type=SERVICE_TYPE,
        description="No internet since this morning", time_requirement=wire.TimeRequirement(),
        callback_url=callback_url, submitted_at=at,
    )


def accepted(ticket: str, at: datetime) -> wire.RequestAccepted:
    return wire.RequestAccepted(ticket_id=ticket, service_type=SERVICE_TYPE, region="north", priority=3,
                                customer_tier=wire.CustomerTier.standard, resolve_by=at + timedelta(hours=4),
                                accepted_at=at)


def assigned(ticket: str, at: datetime) -> wire.Assigned:
    return wire.Assigned(ticket_id=ticket, work_order_id=f"wo-{ticket[:8]}", technician_id="tech-1", reason="bench",
                         candidates=[], assigned_at=at)


def resolved(ticket: str, at: datetime) -> wire.Resolved:
    return wire.Resolved(ticket_id=ticket, work_order_id=f"wo-{ticket[:8]}", technician_id="tech-1",
                         resolution_code="hw_replaced", summary="ONT replaced, line OK", resolved_at=at)
