"""``python -m bench.edge``: the CPU of the HTTP edge every service shares, in process, without a network.

Builds an app with ``tsop_events.http.create_app`` (the same middlewares, exception handlers, routing and
dependencies as every service) around a stand-in for feedback's rating route: the same signature (a UUID path
parameter, feedback's ``Rating`` body, the ``Response`` parameter, the service and ``requires(agent,
channel)`` dependencies, ``response_model=CaseView`` with ``exclude_unset``), answering a ``CaseView`` built
without any I/O. Requests are handed to the ASGI app directly (no socket, no HTTP parser), one at a time, and
the process CPU per request is reported. A GET with the same dependencies and an unauthenticated request (401)
are measured too. What it leaves out (uvicorn's parsing, the command itself) is the same before and after a
change to the edge, so the difference is the edge's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from typing import Any

from fastapi import APIRouter, Response

from tsop_events.auth import Principal, Role, hash_token
from tsop_events.http import create_app
from tsop_events.settings import ServiceSettings
from tsop_feedback.api import CaseView, Rater, Rating, Svc
from tsop_feedback.commands import FeedbackApp

TOKEN = "bench-token"


class _Runtime:
    """What ``create_app`` and the route dependencies use of a ``Runtime``."""

    def __init__(self) -> None:
        self.settings = ServiceSettings(service_name="edge-bench")
        self.app = FeedbackApp.__new__(FeedbackApp)  # only its type is looked at (service_dependency)
        self.principal = Principal("channel-1", frozenset({Role.channel}), channel_id="c1")

    async def authenticate(self, token_hash: str) -> Principal | None:
        return self.principal if token_hash == hash_token(TOKEN) else None

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def build() -> Any:
    router = APIRouter(prefix="/v1/tickets")

    @router.post("/{ticket_id}/rating", status_code=201, response_model=CaseView, response_model_exclude_unset=True,
                 responses={202: {"model": CaseView, "description": "Kept"}})
    async def rate(ticket_id: uuid.UUID, body: Rating, response: Response, svc: Svc, caller: Rater) -> CaseView:
        view = CaseView(ticket_id=str(ticket_id), resolution=None, notified=True, notification_failed=None,
                        rating_due_at="2026-12-03T10:00:00+00:00", score=body.score, tags=list(body.tags),
                        closed=True, closed_reason="rated", closed_basis="rated")
        if body.score == 2:
            response.status_code = 202
        return view

    @router.get("/{ticket_id}/feedback", response_model=CaseView, response_model_exclude_unset=True)
    async def get_feedback(ticket_id: uuid.UUID, svc: Svc, caller: Rater) -> CaseView:
        return CaseView(ticket_id=str(ticket_id), resolution=None, notified=True, notification_failed=None,
                        rating_due_at=None, score=None, closed=False, closed_reason=None)

    return create_app(_Runtime(), "edge-bench", [router])  # type: ignore[arg-type]


async def call(app: Any, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> int:
    status = 0
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": headers, "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
             "state": {}}
    await app(scope, receive, send)
    return status


async def measure(app: Any, n: int) -> dict[str, Any]:
    body = json.dumps({"score": 5, "tags": ["on_time", "solved"], "comment": "quick and friendly"}).encode()
    auth = (b"authorization", f"Bearer {TOKEN}".encode())
    post_headers = [(b"host", b"127.0.0.1"), auth, (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())]
    get_headers = [(b"host", b"127.0.0.1"), auth]
    cases = {
        "POST rating (201)": ("POST", "/v1/tickets/{}/rating", post_headers, body, 201),
        "GET feedback (200)": ("GET", "/v1/tickets/{}/feedback", get_headers, b"", 200),
        "POST without token (401)": ("POST", "/v1/tickets/{}/rating", post_headers[:1] + post_headers[2:], body,
                                     401),
    }
    out: dict[str, Any] = {}
    for name, (method, path, headers, payload, expected) in cases.items():
        for _ in range(200):  # warm-up
            await call(app, method, path.format(uuid.uuid4()), headers, payload)
        paths = [path.format(uuid.uuid4()) for _ in range(n)]
        c0 = time.process_time()
        for p in paths:
            status = await call(app, method, p, headers, payload)
            if status != expected:
                raise RuntimeError(f"{name}: answered {status}")
        out[name] = round((time.process_time() - c0) / n * 1e6, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000, help="requests per case")
    parser.add_argument("--runs", type=int, default=3, help="repeats; the lowest CPU per case is reported")
    args = parser.parse_args()
    app = build()

    async def runs() -> dict[str, float]:
        async with app.router.lifespan_context(app):
            results = [await measure(app, args.requests) for _ in range(args.runs)]
        return {k: min(r[k] for r in results) for k in results[0]}

    best = asyncio.run(runs())
    print(json.dumps({"cpu_per_request_us": best, "requests": args.requests, "runs": args.runs}, indent=2))


if __name__ == "__main__":
    main()
