"""A crash or restart loses no accepted request and duplicates no effect."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections import Counter

import httpx
from tsop_devstack.stack import Stack

from tests.e2e.client import Platform, complete_despite_failures, wait_for
from tests.e2e.test_lifecycle import LIFECYCLE


def assert_each_effect_once(platform: Platform, tickets: list[str]) -> None:
    for ticket in tickets:
        dossier = wait_for(
            lambda t=ticket: (d := platform.dossier(t)) and d["seal"] and len(d["events"]) >= len(LIFECYCLE) and d,
            what=f"dossier of {ticket}",
        )
        kinds = Counter(e["type"] for e in dossier["events"])
        assert kinds == Counter(LIFECYCLE), f"{ticket}: {kinds}"
        assert dossier["seal"]["verified"] is True


class Channel(threading.Thread):
    """A channel system submitting a stream of requests, retrying each until it is answered."""

    def __init__(self, platform: Platform, count: int) -> None:
        super().__init__(daemon=True)
        self.platform, self.count = platform, count
        self.run_id = uuid.uuid4().hex[:8]
        self.accepted: list[str] = []

    def run(self) -> None:
        for i in range(self.count):
            while True:
                try:
                    r = self.platform.submit(key=f"{self.run_id}-{i}")
                    if r.status_code in (200, 201):
                        self.accepted.append(r.json()["id"])
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            time.sleep(0.02)


def test_sigkill_every_process_mid_stream_loses_nothing_and_doubles_nothing(stack: Stack, platform: Platform) -> None:
    channel = Channel(platform, 60)
    channel.start()
    wait_for(lambda: len(channel.accepted) >= 15, what="15 accepted requests")
    # technicians and customers at work while the crash happens
    early = list(channel.accepted[:10])
    workers = [threading.Thread(target=complete_despite_failures, args=(platform, t), daemon=True) for t in early]
    for w in workers:
        w.start()
    time.sleep(0.5)

    for name in stack.services:
        stack.kill(name, signal.SIGKILL)
    stack.postgres.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    stack.postgres.proc.wait()  # type: ignore[union-attr]
    time.sleep(1.0)
    stack.postgres.start()
    for name in stack.services:
        stack.start_service(name)
    stack.wait_ready(180)

    channel.join(180)
    assert not channel.is_alive() and len(set(channel.accepted)) == 60
    for w in workers:
        w.join(240)
    for ticket in channel.accepted[10:]:
        complete_despite_failures(platform, ticket)
    assert_each_effect_once(platform, channel.accepted)
    # no technician was booked twice for one work order
    for ticket in channel.accepted:
        wo = platform.work_order(ticket)
        assert wo is not None and wo["status"] == "resolved"


def test_an_empty_broker_after_a_restart_loses_nothing_and_doubles_nothing(stack: Stack, platform: Platform) -> None:
    before = [platform.submit().json()["id"] for _ in range(3)]
    sealed = {t: complete_despite_failures(platform, t)["seal"]["dossier_hash"] for t in before}
    in_flight = [platform.submit().json()["id"] for _ in range(3)]
    for t in in_flight:
        platform.wait_assigned(t)

    stack.broker.kill()
    stack.broker.start()  # memory only: every topic, offset and group is gone

    after = [wait_for(lambda: (r := platform.submit()).status_code == 201 and r.json()["id"]) for _ in range(3)]
    for t in in_flight + after:
        complete_despite_failures(platform, t)
    assert_each_effect_once(platform, before + in_flight + after)
    for t, h in sealed.items():
        d = platform.dossier(t)
        assert d is not None and d["seal"]["dossier_hash"] == h, "a sealed dossier never changes"
