"""Callbacks only where the operator allows, back-pressure before any write, bounded webhook retries."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiokafka import AIOKafkaConsumer
from tsop_devstack.stack import Stack

from tests.e2e.client import SERVICE_TYPE, Platform, wait_for
from tests.e2e.conftest import OUTBOUND_ATTEMPTS
from tests.e2e.test_tmf import HUB, TT, ticket_body
from tsop_events.envelope import derived_id


class FailingReceiver:
    """A webhook receiver that answers 500 to every POST, counting them."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                posts.append({"body": json.loads(body), "delivery": self.headers.get("X-TSOP-Delivery"),
                              "host": self.headers.get("Host")})
                self.send_response(500)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def application(customer: str, callback_url: str | None = None) -> dict[str, Any]:
    return {
        "customer": {"id": customer, "tier": "standard"}, "region": "north", "service_type": SERVICE_TYPE,
        "description": "No internet since this morning", "location": {"address": f"{customer} Main Street"},
        "callback_url": callback_url,
    }


def test_callbacks_to_loopback_link_local_private_or_the_platform_are_refused_and_nothing_is_stored(
    platform: Platform, stack: Stack
) -> None:
    _ch = platform.register_channel("outbound-guard", "web")
    headers = platform.as_channel(_ch["credential"]["token"])
    own = [f"http://127.0.0.1:{stack.ports['intake']}/v1/channels", f"http://localhost:{stack.pg_port}/",
           f"http://2130706433:{stack.ports['dispatch']}/", f"http://[::ffff:127.0.0.1]:{stack.broker_port}/"]
    outside = ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.8/cb", "http://[::1]:9/cb",
               "http://192.168.0.1/cb", "http://100.64.0.1/cb", "http://[fe80::1]/cb", "http://user:pw@1.1.1.1/",
               "ftp://1.1.1.1/cb"]
    for url in own + outside:
        key = f"guard-{uuid.uuid4().hex[:8]}"
        r = platform.http.post(platform.url("intake", "/v1/requests"), json=application(f"g-{key}", url),
                               headers={**headers, "Idempotency-Key": key})
        assert r.status_code == 422, (url, r.text)
        assert r.json()["errors"][0]["field"] == "callback_url", r.text
        # nothing was stored: the same key with an allowed callback is a new request, not a replay
        ok = platform.http.post(platform.url("intake", "/v1/requests"), json=application(f"g-{key}"),
                                headers={**headers, "Idempotency-Key": key})
        assert ok.status_code == 201, ok.text
    assert "platform's own" in platform.http.post(
        platform.url("intake", "/v1/requests"), json=application("g-own", own[0]), headers=headers
    ).json()["detail"]
    # a channel's default callback URL, and a change to it
    r = platform.http.post(platform.url("intake", "/v1/channels"), headers=platform.auth("admin"),
                           json={"name": "metadata-grabber", "kind": "web", "callback_url": outside[0]})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "callback_url"
    listed = platform.http.get(platform.url("intake", "/v1/channels"), headers=platform.auth("admin")).json()
    assert "metadata-grabber" not in {c["name"] for c in listed["items"]}
    r = platform.http.patch(platform.url("intake", f"/v1/channels/{_ch['id']}"), headers=platform.auth("admin"),
                            json={"callback_url": own[1]})
    assert r.status_code == 422
    # a TMF621 hub listener (the facade answers validation errors as TMF 400s naming the attribute)
    for url in (own[0], outside[0]):
        r = platform.http.post(platform.url("intake", HUB), json={"callback": url}, headers=headers)
        assert r.status_code == 400 and r.json()["referenceError"] == "#/callback", r.text
    # an allowed receiver (127.0.0.1 is on the e2e allow-list, on a port that is not the platform's) is fine
    r = platform.http.post(platform.url("intake", HUB), json={"callback": "http://127.0.0.1:9/tmf"}, headers=headers)
    assert r.status_code == 201, r.text
    platform.http.delete(platform.url("intake", f"{HUB}/{r.json()['id']}"), headers=headers)


def test_over_its_limit_a_channel_gets_429_with_retry_after_before_anything_is_written(platform: Platform) -> None:
    ch = platform.register_channel("limited", "app", rate_limit_per_minute=3)
    headers = platform.as_channel(ch["credential"]["token"])
    for i in range(3):
        r = platform.http.post(platform.url("intake", "/v1/requests"), json=application(f"lim-{i}-{ch['id']}"),
                               headers=headers)
        assert r.status_code == 201, r.text
    key = "over-the-limit"
    r = platform.http.post(platform.url("intake", "/v1/requests"), json=application(f"lim-x-{ch['id']}"),
                           headers={**headers, "Idempotency-Key": key})
    assert r.status_code == 429, r.text
    retry_after = int(r.headers["Retry-After"])
    assert 1 <= retry_after <= 60 and r.json()["errors"][0]["field"] == "channel"
    # nothing recorded: the ticket this key would have made does not exist
    ticket = derived_id("request", ch["id"], key)
    missing = platform.http.get(platform.url("intake", f"/v1/requests/{ticket}"), headers=headers)
    assert missing.status_code == 404, missing.text
    # the TMF create is held to the same limit, with a TMF error body
    r = platform.http.post(platform.url("intake", TT), json=ticket_body(), headers=headers)
    assert r.status_code == 429 and re.fullmatch(r"\d+", r.headers["Retry-After"]), r.text
    assert r.json()["@type"] == "Error" and r.json()["code"] == "ERR429"
    # a channel without its own limit has none (the catalogue sets none): 3+ in a burst all pass
    free = platform.register_channel("unlimited", "app")
    fh = platform.as_channel(free["credential"]["token"])
    for i in range(8):
        r = platform.http.post(platform.url("intake", "/v1/requests"), json=application(f"free-{i}-{free['id']}"),
                               headers=fh)
        assert r.status_code == 201, r.text


async def _dead_letters(bootstrap: str, wanted: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer("tsop.deadletter", bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, group_id=None)
    await consumer.start()
    found: list[dict[str, Any]] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while not found and asyncio.get_running_loop().time() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for rec in records:
                    letter = json.loads(rec.value)
                    if letter.get("source_key") == wanted:
                        found.append(letter)
    finally:
        await consumer.stop()
    return found


def test_a_webhook_that_keeps_failing_is_dead_lettered_after_the_bound(platform: Platform, stack: Stack) -> None:
    receiver = FailingReceiver()
    try:
        r = platform.submit(callback_url=receiver.url)
        assert r.status_code == 201, r.text
        ticket = r.json()["id"]
        platform.work_and_resolve(platform.wait_assigned(ticket))
        case = platform.wait_until(
            "feedback", f"/v1/tickets/{ticket}/feedback", lambda f: bool(f["notification_failed"]),
            "the webhook given up", 60, headers=platform.auth("supervisor"),
        )
        failed = case["notification_failed"]
        assert failed["attempts"] == OUTBOUND_ATTEMPTS and failed["status_code"] == 500
        assert not case["notified"]
        ours = [p for p in receiver.posts if p["body"]["ticket_id"] == ticket]
        assert len(ours) == OUTBOUND_ATTEMPTS  # the bound, and nothing after it
        assert ours[0]["host"] == receiver.url.split("/")[2]  # sent with the name it was given
        wait_for(lambda: len([p for p in receiver.posts if p["body"]["ticket_id"] == ticket]) == OUTBOUND_ATTEMPTS,
                 timeout=3, what="no further attempts")
        # the letter (and its metric) follows the recorded abandonment, a moment later
        metrics = wait_for(lambda: (m := platform.http.get(platform.url("feedback", "/metrics")).text) and re.search(
            r'tsop_outbound_deadlettered_total\{purpose="webhook"\} [1-9]', m) and m, timeout=10,
            what="the dead-letter metric")
        assert metrics
        letters = asyncio.run(_dead_letters(stack.bootstrap, str(derived_id("feedback-case", ticket))))
        assert letters and letters[0]["consumer"] == "outbound:webhook"
        assert letters[0]["source_headers"]["ticket_id"] == ticket
        assert letters[0]["source_headers"]["attempts"] == str(OUTBOUND_ATTEMPTS)
        # the customer can still rate, and the ticket closes as usual
        assert platform.rate(ticket).status_code == 201
    finally:
        receiver.close()


class Listener:
    """A TMF621 listener answering ``status`` after ``delay`` seconds, noting when each POST arrived."""

    def __init__(self, status: int = 204, delay: float = 0.0) -> None:
        self.posts: list[tuple[float, str, dict[str, Any]]] = []
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                posts.append((time.monotonic(), self.path, json.loads(body)))
                time.sleep(delay)
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/tmf"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def for_ticket(self, ticket_id: str) -> list[tuple[float, str, dict[str, Any]]]:
        return [p for p in list(self.posts) if p[2]["event"]["troubleTicket"]["id"] == ticket_id]

    def close(self) -> None:
        self.server.shutdown()


def test_hub_listeners_failing_or_slow_are_bounded_and_delay_no_one(platform: Platform) -> None:
    failing, slow, healthy = Listener(status=503), Listener(delay=4.0), Listener()
    ch = platform.register_channel("hub-fairness", "web")
    headers = platform.as_channel(ch["credential"]["token"])
    hubs = []
    try:
        for listener in (failing, slow, healthy):
            r = platform.http.post(platform.url("intake", HUB), headers=headers,
                                   json={"callback": listener.url, "query": "eventType=TroubleTicketCreateEvent"})
            assert r.status_code == 201, r.text
            hubs.append(r.json()["id"])
        tickets = []
        for _ in range(3):
            r = platform.http.post(platform.url("intake", TT), json=ticket_body(), headers=headers)
            assert r.status_code == 201, r.text
            tickets.append((time.monotonic(), r.json()["id"]))
        for created, ticket in tickets:
            (at, _, _), *_ = wait_for(lambda t=ticket: healthy.for_ticket(t), timeout=20, what="healthy delivery")
            assert at - created < 2.0, at - created  # not held up by the slow (4 s) or failing listener
        for _, ticket in tickets:
            wait_for(lambda t=ticket: len(failing.for_ticket(t)) >= OUTBOUND_ATTEMPTS, timeout=30,
                     what="the failing listener's attempts")
        time.sleep(2.0)  # the back-off is at most 1 s in this stack: any attempt past the bound would show
        for _, ticket in tickets:
            assert len(failing.for_ticket(ticket)) == OUTBOUND_ATTEMPTS
            assert len(slow.for_ticket(ticket)) == 1
        metrics = platform.http.get(platform.url("intake", "/metrics")).text
        m = re.search(r'tsop_outbound_deadlettered_total\{purpose="tmf-hub"\} ([0-9.]+)', metrics)
        assert m and float(m.group(1)) >= len(tickets), metrics[-2000:]
    finally:
        for hub_id in hubs:
            platform.http.delete(platform.url("intake", f"{HUB}/{hub_id}"), headers=headers)
        for listener in (failing, slow, healthy):
            listener.close()
