"""A channel, technicians and customers, as the end-to-end tests and the benchmark drive them."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

SERVICE_TYPE = "broadband.fault_repair"


def wait_for(fn: Callable[[], Any], timeout: float = 60.0, what: str = "condition", every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = fn()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


class Platform:
    def __init__(self, urls: dict[str, str], tokens: dict[str, str] | None = None, timeout: float = 10.0) -> None:
        self.urls = urls
        self.tokens = tokens or {}  # role → bearer token (the stack's dev staff tokens)
        self.technician_tokens: dict[str, str] = {}  # technician id → the credential dispatch issued
        self.http = httpx.Client(timeout=timeout)
        self.channel_token = ""  # a registered channel system's credential (register_channel)

    def auth(self, role: str) -> dict[str, str]:
        """The Authorization header of a caller holding ``role``."""
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def register_channel(self, name: str = "e2e portal", kind: str = "app", **settings: Any) -> dict[str, Any]:
        """Register a channel system as admin; the first one's token becomes ``channel_token``."""
        body = {"name": name, "kind": kind, **settings}
        r = self.http.post(self.url("intake", "/v1/channels"), json=body, headers=self.auth("admin"))
        r.raise_for_status()
        channel: dict[str, Any] = r.json()
        self.channel_token = self.channel_token or channel["credential"]["token"]
        return channel

    def as_channel(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.channel_token}"}

    def url(self, service: str, path: str) -> str:
        return self.urls[service] + path

    def tech_auth(self, technician_id: str) -> dict[str, str]:
        """The Authorization header of a technician (their own credential, issued at registration)."""
        return {"Authorization": f"Bearer {self.technician_tokens[technician_id]}"}

    def register_technician(self, capacity: int = 50, region: str = "north") -> str:
        r = self.http.post(
            self.url("dispatch", "/v1/technicians"),
            json={"name": "Tech", "service_types": [SERVICE_TYPE], "regions": [region], "capacity": capacity},
            headers=self.auth("supervisor"),
        )
        r.raise_for_status()
        self.technician_tokens[r.json()["id"]] = r.json()["token"]
        return str(r.json()["id"])

    def submit(self, callback_url: str | None = None, key: str | None = None, region: str = "north") -> httpx.Response:
        body = {
            "channel": "app",
            "customer": {"id": f"cust-{key or uuid.uuid4().hex[:8]}", "tier": "gold"},
            "region": region,
            "service_type": SERVICE_TYPE,
            "description": "No internet since this morning",
            "location": {"address": f"{key or uuid.uuid4().hex[:8]} Main Street"},
            "callback_url": callback_url,
        }
        headers = {"Idempotency-Key": key} if key else {}
        return self.http.post(self.url("intake", "/v1/requests"), json=body, headers={**headers, **self.as_channel()})

    def found(self, service: str, path: str, headers: dict[str, str] | None = None) -> dict[str, Any] | None:
        """The resource, or None while it does not exist (yet)."""
        r = self.http.get(self.url(service, path), headers=headers)
        return r.json() if r.status_code == 200 else None

    def wait_until(
        self,
        service: str,
        path: str,
        ready: Callable[[dict[str, Any]], bool],
        what: str,
        timeout: float,
        every: float = 0.05,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        def fetch() -> dict[str, Any] | None:
            found = self.found(service, path, headers)
            return found if found and ready(found) else None

        result: dict[str, Any] = wait_for(fetch, timeout, what, every=every)
        return result

    def work_order(self, ticket: str) -> dict[str, Any] | None:
        return self.found("dispatch", f"/v1/tickets/{ticket}/work-order", self.auth("supervisor"))

    def wait_assigned(self, ticket: str, timeout: float = 60.0) -> dict[str, Any]:
        path = f"/v1/tickets/{ticket}/work-order"
        return self.wait_until(
            "dispatch",
            path,
            lambda wo: bool(wo["technician_id"]),
            f"assignment of {ticket}",
            timeout,
            headers=self.auth("supervisor"),
        )

    def work(self, wo: dict[str, Any], step: str, body: dict[str, Any] | None = None) -> httpx.Response:
        """One step of the assigned technician's work (accept, start, log, pause, resume, resolve), as them."""
        return self.http.post(
            self.url("dispatch", f"/v1/work-orders/{wo['id']}/{step}"),
            json=body,
            headers=self.tech_auth(wo["technician_id"]),
        )

    def work_and_resolve(self, wo: dict[str, Any]) -> None:
        """Accept, start, log and resolve, from whatever step the work order is at (a retry resumes)."""
        if wo["status"] == "assigned":
            self.work(wo, "accept").raise_for_status()
            wo = {**wo, "status": "accepted"}
        if wo["status"] == "accepted":
            self.work(wo, "start", {"mode": "on_site"}).raise_for_status()
            wo = {**wo, "status": "in_progress"}
        if wo["status"] == "in_progress" and not wo["operation_log"]:
            self.work(wo, "log", {"action": "replaced the ONT", "mode": "on_site"}).raise_for_status()
        if wo["status"] != "resolved":
            body = {"resolution_code": "hw_replaced", "summary": "ONT replaced, line OK"}
            self.work(wo, "resolve", body).raise_for_status()

    def feedback(self, ticket: str) -> dict[str, Any] | None:
        return self.found("feedback", f"/v1/tickets/{ticket}/feedback", self.auth("supervisor"))

    def wait_notified(self, ticket: str, timeout: float = 60.0) -> dict[str, Any]:
        path = f"/v1/tickets/{ticket}/feedback"
        return self.wait_until(
            "feedback", path, lambda f: bool(f["notified"]), f"feedback for {ticket}", timeout,
            headers=self.auth("supervisor"),
        )

    def rate(self, ticket: str, score: int = 5) -> httpx.Response:
        """The customer's rating, as a hotline agent records it (any channel's ticket)."""
        return self.http.post(
            self.url("feedback", f"/v1/tickets/{ticket}/rating"), json={"score": score}, headers=self.auth("agent")
        )

    def dossier(self, ticket: str) -> dict[str, Any] | None:
        return self.found("archive", f"/v1/tickets/{ticket}/dossier", self.auth("auditor"))

    def wait_archived(self, ticket: str, timeout: float = 60.0) -> dict[str, Any]:
        def sealed(d: dict[str, Any]) -> bool:
            return bool(d["seal"]) and any(e["type"] == "tsop.ticket.archived.v1" for e in d["events"])

        path = f"/v1/tickets/{ticket}/dossier"
        return self.wait_until(
            "archive", path, sealed, f"archive of {ticket}", timeout, every=0.1, headers=self.auth("auditor")
        )

    def complete(self, ticket: str, timeout: float = 60.0) -> dict[str, Any]:
        """Drive one accepted ticket to its sealed dossier."""
        self.work_and_resolve(self.wait_assigned(ticket, timeout))
        self.wait_notified(ticket, timeout)
        r = self.rate(ticket)
        assert r.status_code in (201, 409), r.text  # 409: rated already (a retry after a crash)
        return self.wait_archived(ticket, timeout)


class WebhookReceiver:
    """The applicant's side of the callback: records what feedback delivers."""

    def __init__(self) -> None:
        self.deliveries: list[dict[str, Any]] = []
        received = self.deliveries

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                received.append(
                    {
                        "raw": body,
                        "body": json.loads(body),
                        "signature": self.headers.get("X-TSOP-Signature"),
                        "delivery": self.headers.get("X-TSOP-Delivery"),
                    }
                )
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/callback"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def complete_despite_failures(platform: Platform, ticket: str, timeout: float = 180.0) -> dict[str, Any]:
    """What a patient technician and customer do: retry every step until the dossier is sealed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return platform.complete(ticket, timeout=max(1.0, deadline - time.monotonic()))
        except (httpx.HTTPError, AssertionError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
