"""Step notifications end to end (§2.3): a channel subscribes; its applicant's callback is told of the
acceptance even though it fails four times first (every attempt recorded); one that never answers well is
dead-lettered after the last attempt and listed for an agent."""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.e2e.client import SERVICE_TYPE, Platform, wait_for
from tests.e2e.conftest import OUTBOUND_ATTEMPTS


class FlakyReceiver:
    """Answers 503 to the first ``failures`` posts of each ticket (all of them when None), then 204."""

    def __init__(self, failures: int | None) -> None:
        self.posts: list[dict[str, Any]] = []
        posts, lock = self.posts, threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                with lock:
                    seen = sum(1 for p in posts if (p["ticket_id"], p["step"]) == (body["ticket_id"], body["step"]))
                    ok = failures is not None and seen >= failures
                    posts.append({**body, "ok": ok, "signature": self.headers.get("X-TSOP-Signature")})
                self.send_response(204 if ok else 503)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/notify"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def subscribed_channel(platform: Platform) -> str:
    ch = platform.register_channel(name=f"notify-{uuid.uuid4().hex[:6]}", kind="app")
    token = ch["credential"]["token"]
    body = {"steps": ["accepted", "assigned", "closed"], "template": "app", "language": "en"}
    wait_for(lambda: platform.http.put(platform.url("feedback", f"/v1/channels/{ch['id']}/notifications"),
                                       json=body, headers=platform.as_channel(token)).status_code == 200,
             timeout=30, what="feedback to know the channel")
    return str(token)


def submit(platform: Platform, token: str, callback: str) -> str:
    body = {"channel": "app", "customer": {"id": f"c-{uuid.uuid4().hex[:6]}", "tier": "gold"}, "region": "north",
            "service_type": SERVICE_TYPE, "description": "No internet", "callback_url": callback,
            "location": {"address": f"{uuid.uuid4().hex[:6]} Main Street"}}
    r = platform.http.post(platform.url("intake", "/v1/requests"), json=body, headers=platform.as_channel(token))
    r.raise_for_status()
    return str(r.json()["id"])


def notifications(platform: Platform, ticket: str) -> list[dict[str, Any]]:
    r = platform.http.get(platform.url("feedback", f"/v1/tickets/{ticket}/notifications"),
                          headers=platform.auth("agent"))
    return list(r.json()) if r.status_code == 200 else []


def test_a_notification_survives_a_receiver_that_fails_four_times(platform: Platform) -> None:
    receiver = FlakyReceiver(failures=4)
    try:
        token = subscribed_channel(platform)
        ticket = submit(platform, token, receiver.url)
        accepted = wait_for(
            lambda: next((n for n in notifications(platform, ticket)
                          if n["step"] == "accepted" and n["state"] == "delivered"), None),
            timeout=60, what="the acceptance notification")
        assert accepted["attempts"] == 5 and accepted["language"] == "en" and "Accepted" in accepted["text"]
        mine = [p for p in receiver.posts if p["ticket_id"] == ticket and p["step"] == "accepted"]
        assert [p["ok"] for p in mine][:5] == [False, False, False, False, True]
        assert all(p["signature"].startswith("sha256=") for p in mine)
        # the other steps it subscribed to follow (assigned: a technician is registered in the session)
        wait_for(lambda: any(n["step"] == "assigned" for n in notifications(platform, ticket)), timeout=60,
                 what="the assignment notification")
    finally:
        receiver.close()


def test_after_the_last_attempt_it_is_dead_lettered_and_visible_to_an_agent(platform: Platform) -> None:
    receiver = FlakyReceiver(failures=None)
    try:
        token = subscribed_channel(platform)
        ticket = submit(platform, token, receiver.url)
        dead = wait_for(
            lambda: next((n for n in notifications(platform, ticket) if n["state"] == "dead_lettered"), None),
            timeout=90, what="the dead letter")
        assert dead["attempts"] == OUTBOUND_ATTEMPTS and dead["last_error"].startswith("HTTP 503")
        listed = platform.http.get(platform.url("feedback", "/v1/notifications/dead-lettered"),
                                   headers=platform.auth("agent")).json()
        assert dead["id"] in [n["id"] for n in listed]
    finally:
        receiver.close()
