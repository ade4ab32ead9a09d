"""The HTTP face every service shares: problem+json errors, health, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any, Protocol, TypeVar

import orjson
import uvicorn
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tsop_events.auth import AuthError
from tsop_events.errors import DomainError
from tsop_events.inbound import EdgeError, check_json, check_query
from tsop_events.metrics import HTTP_LATENCY, HTTP_REQUESTS
from tsop_events.personal import Keyring, keyring_of
from tsop_events.runtime import Parts, Runtime, Service
from tsop_events.settings import ServiceSettings
from tsop_events.store import EventStoreApp, IntegrityError, recorded_in_this_request, watch_recording
from tsop_events.wake import wait_event

PROBLEM = "application/problem+json"


class Problem(Exception):
    """An RFC 9457 problem; raise it from a route to answer with it."""

    def __init__(self, status: int, title: str, detail: str = "", **extra: Any) -> None:
        super().__init__(detail or title)
        self.status, self.title, self.detail, self.extra = status, title, detail, extra


def problem_response(
    status: int, title: str, detail: str = "", headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    return Response(orjson.dumps(body), status_code=status, media_type=PROBLEM, headers=headers)


class ErrorRenderer(Protocol):
    """Renders an error in another format for a path prefix (e.g. TMF error bodies under /tmf-api)."""

    def __call__(
        self, status: int, title: str, detail: str, headers: dict[str, str] | None, extra: dict[str, Any]
    ) -> Response: ...


def _render(
    request: Request, status: int, title: str, detail: str = "", headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    renderers: Sequence[tuple[str, ErrorRenderer]] = getattr(request.app.state, "error_renderers", ())
    for prefix, render in renderers:
        if request.url.path.startswith(prefix):
            return render(status, title, detail, headers, extra)
    return problem_response(status, title, detail, headers, **extra)


def _field(loc: Sequence[Any]) -> str:
    return ".".join(str(p) for p in loc if p != "body") or "body"


async def _validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [{"field": _field(e["loc"]), "reason": e["msg"], "type": e["type"]} for e in exc.errors()]
    if any(e["type"] == "json_invalid" for e in errors):
        return _render(request, 400, "Malformed JSON", "The request body is not valid JSON.", errors=errors)
    detail = "; ".join(f"{e['field']}: {e['reason']}" for e in errors)
    return _render(request, 422, "Invalid request", detail, errors=errors)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return _render(request, exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))


async def _unexpected(request: Request, exc: Exception) -> Response:
    """A 500 says whether the request's change was recorded: the caller must know whether to repeat it."""
    logging.getLogger(__name__).exception("unhandled error", exc_info=exc)
    if recorded_in_this_request():
        return _render(
            request,
            500,
            "Recorded, but the answer failed",
            "The change was recorded, but its answer could not be produced; read the resource to see it "
            "and do not repeat the request (a repeat with the same Idempotency-Key is safe).",
            recorded=True,
        )
    return _render(
        request, 500, "Internal error", "The request could not be completed; nothing was changed.", recorded=False
    )


async def _problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return _render(request, exc.status, exc.title, exc.detail, **exc.extra)


async def _domain(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))} if exc.retry_after is not None else None
    detail = str(exc)
    return _render(request, exc.status, exc.title, detail, headers, errors=exc.errors, **exc.extra)


async def _conflict(request: Request, exc: Exception) -> Response:
    """A write lost an optimistic-concurrency race (after any retries): the caller may simply retry."""
    return _render(request, 409, "Concurrent change", "it changed meanwhile; retry")


async def _auth(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AuthError)
    headers = {"WWW-Authenticate": 'Bearer realm="tsop"'} if exc.status == 401 else None
    return _render(request, exc.status, exc.title, exc.detail, headers)


class Edge:
    """The edge every request crosses first: size, then what no event can carry.

    Bodies over ``limit`` bytes get a problem 413, declared or streamed. A JSON
    body (or a body without a content type, which FastAPI reads as JSON) and
    the query string are checked by ``tsop_events.inbound`` before any route
    runs, so no endpoint can accept a NUL, a NaN or a 300-level nesting that
    a projection would later refuse.

    ``create_app`` also has it do, in the same layer (one ASGI hop and one wrapped ``send`` per request instead
    of three), what ``OpenPersonal`` and ``Measure`` do on their own: with ``settings``, sealed personal data in
    JSON answers is opened; with ``measure``, each request is counted and timed per route template.
    """

    def __init__(
        self,
        app: ASGIApp,
        limit: int,
        renderers: Sequence[tuple[str, ErrorRenderer]] = (),
        settings: ServiceSettings | None = None,
        keyring: Keyring | None = None,
        measure: bool = False,
    ) -> None:
        self.app, self.limit, self.renderers = app, limit, renderers
        self.opener = None if settings is None else OpenPersonal(app, settings, keyring)
        self.measure = measure

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.opener is None and not self.measure:
            await self._check(scope, receive, send)
            return
        answer = _Answer(send, self.opener)
        if not self.measure:
            await self._check(scope, receive, answer)
            return
        started = time.perf_counter()
        try:
            await self._check(scope, receive, answer)
        finally:
            _observe(scope, answer.status, time.perf_counter() - started)

    async def _check(self, scope: Scope, receive: Receive, send: Send) -> None:
        watch_recording()
        path: str = scope["path"]
        declared: bytes | None = None
        content_type: bytes | None = None
        for name, value in scope["headers"]:  # the first of repeated headers, as Starlette reads them
            if name == b"content-length":
                if declared is None:
                    declared = value
            elif name == b"content-type" and content_type is None:
                content_type = value
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._too_large(path)(scope, receive, send)
            return
        try:
            if "\x00" in path:
                raise EdgeError(422, "path", "contains a NUL character")
            query = scope.get("query_string", b"")
            if query:
                check_query(query.decode("latin-1"))
        except EdgeError as exc:
            await self._refuse(path, exc)(scope, receive, send)
            return
        if scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS") or (
            content_type and b"json" not in content_type.lower()
        ):
            await self.app(scope, self._counting(receive), send)
            return
        message = await receive()
        body: bytes = message.get("body", b"") if message["type"] == "http.request" else b""
        if len(body) > self.limit:
            await self._too_large(path)(scope, receive, send)
            return
        if message["type"] == "http.request" and message.get("more_body", False):
            chunks = [body]
            seen = len(body)
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    break
                chunk = message.get("body", b"")
                seen += len(chunk)
                if seen > self.limit:
                    await self._too_large(path)(scope, receive, send)
                    return
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
        try:
            replaced = check_json(body)
        except EdgeError as exc:
            await self._refuse(path, exc)(scope, receive, send)
            return
        if replaced is not None:
            body = replaced
            # the scope itself (not a copy): the route the router sets in it is the one the metrics name
            scope["headers"] = [
                (k, str(len(body)).encode() if k == b"content-length" else v) for k, v in scope["headers"]
            ]
        await self.app(scope, _Replay(body, receive), send)

    def _counting(self, receive: Receive) -> Receive:
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                # FastAPI lets HTTP exceptions raised while reading the body through to the handlers
                raise HTTPException(413, "Request body too large")
            return message

        return counting_receive

    def _render(self, path: str, status: int, title: str, detail: str, extra: dict[str, Any]) -> Response:
        for prefix, render in self.renderers:
            if path.startswith(prefix):
                return render(status, title, detail, None, extra)
        return problem_response(status, title, detail, **extra)

    def _too_large(self, path: str) -> Response:
        return self._render(path, 413, "Request body too large", f"The request body exceeds {self.limit} bytes.", {})

    def _refuse(self, path: str, exc: EdgeError) -> Response:
        title = "Invalid request"
        if exc.status == 400:
            title = "Malformed query" if exc.field == "query" else "Malformed JSON"
        errors = [{"field": exc.field, "reason": exc.reason}]
        return self._render(path, exc.status, title, f"{exc.field}: {exc.reason}", {"errors": errors})


class _Replay:
    """A request's ``receive`` once its body was read whole: the body, then whatever the server says next."""

    __slots__ = ("body", "receive")

    def __init__(self, body: bytes, receive: Receive) -> None:
        self.body: bytes | None = body
        self.receive = receive

    async def __call__(self) -> Message:
        body, self.body = self.body, None
        if body is not None:
            return {"type": "http.request", "body": body, "more_body": False}
        return await self.receive()


class OpenPersonal:
    """JSON answers show personal data opened: each sealed token (``tsop_events.personal``) in the body is
    replaced by its plaintext, or by ``[erased]`` once the customer's keys are destroyed. Only the answer is
    changed; what is stored stays sealed. A body without a token passes untouched (one ``in`` test); a streamed
    body (an export) stays streamed, a token cut between two chunks held back until it is whole."""

    def __init__(self, app: ASGIApp, settings: ServiceSettings, keyring: Keyring | None = None) -> None:
        self.app, self.settings = app, settings
        self._keyring = keyring  # None: the service's keyring, opened at the first token

    async def open(self, body: bytes) -> bytes:
        if b"pd1." not in body:
            return body
        if self._keyring is None:
            self._keyring = await asyncio.to_thread(keyring_of, self.settings)
        return await asyncio.to_thread(self._keyring.open_json, body)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, _Answer(send, self))


class _Answer:
    """One request's ``send``: notes the status (for ``Measure``) and, given an ``OpenPersonal``, opens the
    sealed tokens of a JSON answer (the start is held until the first part of the body shows whether it is
    streamed; a whole body without a token is sent as it was)."""

    __slots__ = ("carry", "opener", "send", "start", "status", "streaming")

    def __init__(self, send: Send, opener: OpenPersonal | None) -> None:
        self.send, self.opener = send, opener
        self.status = 500
        self.start: Message | None = None
        self.streaming = False
        self.carry = b""

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            if self.opener is not None:
                content_type = b""
                for name, value in message.get("headers", ()):
                    if name.lower() == b"content-type":
                        content_type = value.lower()
                if b"json" in content_type:
                    self.start = message
                    return
            await self.send(message)
            return
        start, opener = self.start, self.opener
        if start is None or opener is None or message["type"] != "http.response.body":
            await self.send(message)
            return
        body, more = message.get("body", b""), message.get("more_body", False)
        if not self.streaming:
            if not more:  # the whole body at once: opened, with its new length
                if b"pd1." not in body:
                    await self.send(start)
                    await self.send(message)
                    return
                body = await opener.open(body)
                headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
                headers.append((b"content-length", str(len(body)).encode()))
                await self.send({**start, "headers": headers})
                await self.send({"type": "http.response.body", "body": body, "more_body": False})
                return
            self.streaming = True
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            await self.send({**start, "headers": headers})  # streamed: chunked, its length unknown
        ready, self.carry = _unfinished_token(self.carry + body) if more else (self.carry + body, b"")
        await self.send({"type": "http.response.body", "body": await opener.open(ready), "more_body": more})


def _unfinished_token(buf: bytes) -> tuple[bytes, bytes]:
    """(what can be opened now, a token that may continue in the next chunk). A token is a whole JSON string:
    one is finished once its closing quote has arrived."""
    i = buf.rfind(b"pd1.")
    if i != -1 and b'"' not in buf[i:]:
        return buf[:i], buf[i:]
    for k in (3, 2, 1):
        if buf.endswith(b"pd1."[:k]):
            return buf[:-k], buf[-k:]
    return buf, b""


_LATENCY: dict[tuple[str, str], Any] = {}  # the metrics' children per label values, looked up once
_REQUESTS: dict[tuple[str, str, int], Any] = {}
_CACHED = 4096  # label values are route templates, but methods and statuses come from outside: bounded


def _observe(scope: Scope, status: int, seconds: float) -> None:
    method: str = scope["method"]
    path: str = getattr(scope.get("route"), "path", "unmatched")
    latency = _LATENCY.get((method, path))
    if latency is None:
        latency = HTTP_LATENCY.labels(method, path)
        if len(_LATENCY) < _CACHED:
            _LATENCY[method, path] = latency
    latency.observe(seconds)
    count = _REQUESTS.get((method, path, status))
    if count is None:
        count = HTTP_REQUESTS.labels(method, path, str(status))
        if len(_REQUESTS) < _CACHED:
            _REQUESTS[method, path, status] = count
    count.inc()


class Measure:
    """Request counts and latencies per route template (a plain ASGI middleware: cheap)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        answer = _Answer(send, None)
        try:
            await self.app(scope, receive, answer)
        finally:
            _observe(scope, answer.status, time.perf_counter() - started)


A = TypeVar("A", bound=EventStoreApp)


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def service_dependency(cls: type[A]) -> Callable[[Request], Awaitable[Service[A]]]:
    """A route dependency giving the service typed by its application: ``Annotated[Service[X], Depends(…)]``."""

    # async: a plain function would be run in a worker thread, a thread hop on every request of every route
    async def dependency(request: Request) -> Service[A]:
        svc: Service[Any] = request.app.state.runtime
        if not isinstance(svc.app, cls):
            raise TypeError(f"this service runs {type(svc.app).__name__}, not {cls.__name__}")
        return svc  # checked just above

    return dependency


def app_of(request: Request, cls: type[A]) -> A:
    """The service's event-sourced application, typed, for a route."""
    app = runtime_of(request).app
    if not isinstance(app, cls):
        raise TypeError(f"this service runs {type(app).__name__}, not {cls.__name__}")
    return app


def create_app(
    runtime: Runtime,
    title: str,
    routers: Sequence[APIRouter],
    version: str = "1.0.0",
    error_renderers: Sequence[tuple[str, ErrorRenderer]] = (),
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    # the platform's metrics are its own (``Measure``, Prometheus); FastAPI's OpenTelemetry hooks, for which no
    # provider is ever configured, would only ask on every request whether one is
    app = FastAPI(title=title, version=version, lifespan=lifespan,
                  telemetry={"tracing": False, "metrics": False, "logs": False})
    app.state.runtime = runtime
    app.state.error_renderers = tuple(error_renderers)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Problem, _problem)
    app.add_exception_handler(AuthError, _auth)
    app.add_exception_handler(DomainError, _domain)
    app.add_exception_handler(IntegrityError, _conflict)
    app.add_exception_handler(Exception, _unexpected)

    # one layer: the metrics (outermost: they count the edge's own refusals too), the edge's checks, and the
    # opening of personal data in answers
    app.add_middleware(Edge, limit=runtime.settings.max_body_bytes, renderers=tuple(error_renderers),
                       settings=runtime.settings, measure=True)

    # probes may use HEAD: the operations endpoints answer it in every role (a worker's catch-all would say 421)
    @app.head("/healthz", include_in_schema=False)
    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": runtime.settings.service_name, "role": runtime.settings.role}

    @app.head("/readyz", include_in_schema=False)
    @app.get("/readyz", tags=["operations"])
    async def readyz() -> Response:
        checks = runtime.readiness()
        ok = all(checks.values())
        body: dict[str, Any] = {"ready": ok, "role": runtime.settings.role, "checks": checks}
        if degraded := runtime.degraded():  # ready, but an operator is needed (see Runtime.degraded)
            body["degraded"] = degraded
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.head("/metrics", include_in_schema=False)
    @app.get("/metrics", tags=["operations"])
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    if Parts.of(runtime.settings.role).routes:
        for router in routers:
            app.include_router(router)
    else:
        worker_only(app, runtime.settings)
    foreign = tuple(prefix for prefix, _ in error_renderers)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_problems(
                get_openapi(title=app.title, version=app.version, routes=app.routes), foreign
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
PROBE_METHODS = ["GET", "HEAD"]
OPERATIONS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def worker_only(app: FastAPI, settings: ServiceSettings) -> None:
    """A ``worker`` process (``TSOP_ROLE=worker``) serves the operations endpoints only: any other path is answered
    421 Misdirected Request (problem+json, or the path's own error format), which says where to send it. A worker
    is never put behind the load balancer of the service's routes; its /readyz says whether its relay and
    consumers run."""
    detail = (f"this {settings.service_name} process has the worker role (TSOP_ROLE=worker): it serves /healthz, "
              "/readyz and /metrics only; send requests to a process with the api or all role")

    @app.api_route("/{path:path}", methods=ALL_METHODS, include_in_schema=False)
    async def not_here(request: Request, path: str) -> Response:
        # an operations path with a trailing slash is redirected as in every other role (Starlette's
        # redirect_slashes never sees it here: this catch-all matches first)
        if (canonical := "/" + path.rstrip("/")) in OPERATIONS_PATHS and request.method in PROBE_METHODS:
            return RedirectResponse(request.url.replace(path=canonical), status_code=307)
        return _render(request, 421, "Misdirected request", detail, role=settings.role)


PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details; ``errors`` names each field and the reason.",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "reason": {"type": "string"}},
                "required": ["field", "reason"],
            },
        },
    },
}


def document_problems(schema: dict[str, Any], foreign: tuple[str, ...] = ()) -> dict[str, Any]:
    """Say what the routes really answer when they refuse: problem+json for any 4xx (not FastAPI's 422 body)."""
    schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    refused = {
        "description": "Refused: the problem names the field and the reason",
        "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    for path, operations in schema.get("paths", {}).items():
        if foreign and path.startswith(foreign):
            continue
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            responses["4XX"] = refused
    return schema


TICK_SECONDS = 1.0  # uvicorn's housekeeping tick: its Date header is per second anyway


class Server(uvicorn.Server):
    """uvicorn's server, ticking once a second instead of ten times (an idle service woke 10 times a second for
    it). The tick refreshes the Date header (second resolution) and checks whether to exit; an exit signal ends the
    wait at once, so a stop is not delayed by the longer tick."""

    _exiting: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._exiting = asyncio.Event()
        if self.should_exit:
            self._exiting.set()
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 10) % 864000  # uvicorn's on_tick refreshes the headers when counter % 10 == 0
            await wait_event(self._exiting, TICK_SECONDS)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._loop is not None and self._exiting is not None:
            self._loop.call_soon_threadsafe(self._exiting.set)


def serve(app: FastAPI, host: str, port: int, log_level: str = "info") -> None:
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # uvloop and httptools (dependencies of this library) named, not left to uvicorn's "auto": a missing one
    # fails at the start instead of silently serving on the slower pure-Python loop and parser
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level.lower(), access_log=False,
                            lifespan="on", loop="uvloop", http="httptools")
    server = Server(config)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        sys.exit(3)  # uvicorn.run's STARTUP_FAILURE
