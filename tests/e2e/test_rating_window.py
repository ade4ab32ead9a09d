"""The rating window is a durable timer: it closes an unrated ticket even across a crash."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tsop_devstack.stack import SERVICES, Stack

from tests import infra
from tests.e2e.client import Platform, wait_for

WINDOW_SECONDS = 12  # longer than a restart, so the restarted process is the one that closes


@pytest.fixture(scope="module")
def short_window(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Platform]]:
    s = Stack(
        Path(tmp_path_factory.mktemp("window")),
        pg_port=infra.free_port(),
        broker_port=infra.free_port(),
        ports={name: infra.free_port() for name in SERVICES},
        env={
            "TSOP_TOPIC_PARTITIONS": "3",
            "TSOP_LOG_LEVEL": "WARNING",
            "TSOP_RATING_WINDOW_SECONDS": str(WINDOW_SECONDS),
        },
    )
    try:
        s.start(timeout=180)
    except Exception as exc:  # noqa: BLE001
        s.stop()
        infra.unavailable(f"the embedded stack did not start: {exc}")
    platform = Platform({name: s.url(name) for name in SERVICES}, s.tokens)
    platform.register_channel()
    platform.register_technician(capacity=10)
    yield s, platform
    s.stop()


def test_an_unrated_ticket_closes_when_the_window_ends_even_if_feedback_crashed(
    short_window: tuple[Stack, Platform],
) -> None:
    stack, platform = short_window
    ticket = platform.submit().json()["id"]
    platform.work_and_resolve(platform.wait_assigned(ticket))
    platform.wait_notified(ticket)

    stack.kill("feedback", signal.SIGKILL)  # the timer lives in the event store, not in the process
    killed = datetime.now(UTC)
    stack.start_service("feedback")
    stack.wait_ready(120, ("feedback",))

    dossier = wait_for(
        lambda: (d := platform.dossier(ticket)) and d["seal"] and d,
        timeout=90,
        what="the expired ticket's dossier",
    )
    closed = [e for e in dossier["events"] if e["type"] == "tsop.ticket.closed.v1"]
    assert [e["data"]["reason"] for e in closed] == ["rating_window_expired"]
    assert datetime.fromisoformat(closed[0]["data"]["closed_at"]) > killed, "closed by the restarted process"
    assert not [e for e in dossier["events"] if e["type"] == "tsop.ticket.rated.v1"]
    late = platform.rate(ticket)
    assert late.status_code == 409 and late.json()["title"] == "Ticket closed"
