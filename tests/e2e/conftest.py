"""The five services as processes, on embedded PostgreSQL and the embedded broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tsop_devstack.stack import SERVICES, Stack

from tests import infra
from tests.e2e.client import Platform, WebhookReceiver

OUTBOUND_ATTEMPTS = 6
DATA = Path(__file__).with_name("data")


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = Stack(
        tmp_path_factory.mktemp("stack"),
        pg_port=infra.free_port(),
        broker_port=infra.free_port(),
        ports={name: infra.free_port() for name in SERVICES},
        env={"TSOP_TOPIC_PARTITIONS": "3", "TSOP_EPOCH_CHECK_SECONDS": "1", "TSOP_LOG_LEVEL": "WARNING",
             # the tests' webhook receivers and TMF listeners listen on 127.0.0.1; the stack's ports stay refused
             "TSOP_OUTBOUND_ALLOW": "127.0.0.1",
             # bounded retries, short enough to see a dead letter (6 attempts, ~3 s of back-off)
             "TSOP_OUTBOUND_MAX_ATTEMPTS": str(OUTBOUND_ATTEMPTS), "TSOP_OUTBOUND_BACKOFF_BASE_SECONDS": "0.1",
             "TSOP_OUTBOUND_BACKOFF_MAX_SECONDS": "1",
             # incidents: a burst of 4 fault tickets in an `outage-*` region is an outage (other regions stay
             # untouched), and its plan has a step due within 6 seconds
             "TSOP_CORRELATION_RULES_FILE": str(DATA / "incident_rules.json"),
             "TSOP_EMERGENCY_PLANS_FILE": str(DATA / "incident_plans.json")},
    )
    try:
        s.start(timeout=180)
    except Exception as exc:  # noqa: BLE001
        s.stop()
        infra.unavailable(f"the embedded stack did not start: {exc}")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def platform(stack: Stack) -> Platform:
    p = Platform({name: stack.url(name) for name in SERVICES}, stack.tokens)
    p.register_channel()
    p.register_technician(capacity=100)
    return p


@pytest.fixture(scope="session")
def webhook() -> Iterator[WebhookReceiver]:
    w = WebhookReceiver()
    yield w
    w.close()
