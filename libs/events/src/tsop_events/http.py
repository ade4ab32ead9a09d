"""The HTTP face every service shares: problem+json errors, health, metrics."""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

import orjson
from fastapi import APIRouter, FastAPI, HTTPException, Request, params
from fastapi import routing as fastapi_routing
from fastapi.datastructures import DefaultPlaceholder
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import request_body_to_args, request_params_to_args
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.utils import is_body_allowed_for_status_code
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic_core import PydanticUndefined as Undefined
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tsop_events.auth import AuthError
from tsop_events.errors import DomainError
from tsop_events.inbound import EdgeError, check_json, check_query
from tsop_events.metrics import HTTP_LATENCY, HTTP_REQUESTS
from tsop_events.personal import Keyring, keyring_of
from tsop_events.runtime import Runtime, Service
from tsop_events.settings import ServiceSettings
from tsop_events.store import EventStoreApp, IntegrityError, recorded_in_this_request, watch_recording

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


class EdgeRoute(APIRoute):
    """A route answered by a leaner handler than FastAPI's generic one, with the same outcome.

    FastAPI solves a route's dependencies by walking its dependency graph at every request: for each
    dependency a recursive solve, its cache key, four parameter sets (path, query, headers, cookies) looked at
    even when empty. Every route of every service has the same shape: leaf dependencies that take only the
    ``Request`` (the service, ``requires(...)`` for the roles), path and query parameters, a JSON body, a
    response model. For that shape this handler does the same steps in the same order (the body read, each
    dependency awaited in declaration order, so an unauthenticated caller is refused before its parameters
    are judged; then the parameters and the body validated by FastAPI's own functions, every error reported
    at once as a ``RequestValidationError``; the sub-``Response`` a route sets its status or headers on; the
    answer serialised by FastAPI's own ``serialize_response``), without the walk. Any other shape (a
    dependency with a yield, parameters or dependencies of its own, security scopes, background tasks, a
    form, a stream), a body whose content type is not plain ``application/json`` and any request while
    dependency overrides are set are answered by FastAPI's own handler. The OpenAPI document is unchanged:
    it is made from the route's declaration, which is not touched.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        generic = super().get_route_handler()
        # the same route state FastAPI's handler is built from: the route's own, or, for a route included from
        # a router, the inclusion's (prefix, the router's dependencies and response class)
        context_var = getattr(fastapi_routing, "_effective_route_context_var", None)
        context = context_var.get() if context_var is not None else None
        route: Any = context if context is not None and getattr(context, "original_route", None) is self else self
        try:
            return _lean_handler(route, generic) or generic
        except AttributeError:  # another FastAPI's route state: its own handler
            return generic


def _leaf(dep: Dependant) -> bool:
    """A dependency that takes only the Request, is a plain coroutine function and has nothing of its own."""
    return (
        dep.request_param_name is not None
        and not (dep.path_params or dep.query_params or dep.header_params or dep.cookie_params or dep.body_params)
        and not dep.dependencies
        and dep.websocket_param_name is None
        and dep.http_connection_param_name is None
        and dep.response_param_name is None
        and dep.background_tasks_param_name is None
        and dep.security_scopes_param_name is None
        and not dep.own_oauth_scopes
        and not dep.parent_oauth_scopes
        and dep.concurrency is None
        and dep.name is not None
        and inspect.iscoroutinefunction(dep.call)
    )


def _lean_handler(
    route: Any, generic: Callable[[Request], Coroutine[Any, Any, Response]]
) -> Callable[[Request], Coroutine[Any, Any, Response]] | None:
    dependant: Dependant = route.dependant
    call = dependant.call
    body_field = route.body_field
    if (
        call is None
        or not inspect.iscoroutinefunction(call)
        or not all(_leaf(d) for d in dependant.dependencies)
        or dependant.websocket_param_name is not None
        or dependant.background_tasks_param_name is not None
        or dependant.security_scopes_param_name is not None
        or dependant.own_oauth_scopes
        or dependant.parent_oauth_scopes
        or (body_field is not None and isinstance(body_field.field_info, params.Form))
        or route.stream_item_field is not None
        or route.is_json_stream
    ):
        return None
    leaves: list[tuple[str, Callable[..., Any], str, bool]] = []
    for d in dependant.dependencies:
        assert d.name is not None and d.call is not None and d.request_param_name is not None  # ``_leaf``
        leaves.append((d.name, d.call, d.request_param_name, d.use_cache))
    response_class = route.response_class
    dump_json = route.response_field is not None and isinstance(response_class, DefaultPlaceholder)
    actual_class: type[Response] = (
        response_class.value if isinstance(response_class, DefaultPlaceholder) else response_class
    )
    overrides = route.dependency_overrides_provider
    embed = route._embed_body_fields
    status_code = route.status_code
    path_params, query_params = dependant.path_params, dependant.query_params
    header_params, cookie_params, body_params = dependant.header_params, dependant.cookie_params, dependant.body_params
    request_name, response_name = dependant.request_param_name, dependant.response_param_name
    connection_name = dependant.http_connection_param_name
    serialize = {
        "field": route.response_field,
        "include": route.response_model_include,
        "exclude": route.response_model_exclude,
        "by_alias": route.response_model_by_alias,
        "exclude_unset": route.response_model_exclude_unset,
        "exclude_defaults": route.response_model_exclude_defaults,
        "exclude_none": route.response_model_exclude_none,
        "dump_json": dump_json,
    }

    async def handler(request: Request) -> Response:
        if overrides is not None and getattr(overrides, "dependency_overrides", None):
            return await generic(request)
        body: Any = Undefined
        if body_field is not None:
            raw = await request.body()
            if raw:
                if request.headers.get("content-type") != "application/json":
                    return await generic(request)  # the body is read and kept: FastAPI's handler reads it again
                try:
                    body = orjson.loads(raw)  # the edge let through only what both parsers read alike
                except orjson.JSONDecodeError:
                    return await generic(request)  # FastAPI's own parser and its error
        values: dict[str, Any] = {}
        solved: dict[Any, Any] = {}
        for name, dep, param, use_cache in leaves:
            if use_cache and dep in solved:
                values[name] = solved[dep]
                continue
            value = await dep(**{param: request})
            solved.setdefault(dep, value)
            values[name] = value
        errors: list[Any] = []
        if path_params:
            found, errs = request_params_to_args(path_params, request.path_params)
            values.update(found)
            errors += errs
        if query_params:
            found, errs = request_params_to_args(query_params, request.query_params)
            values.update(found)
            errors += errs
        if header_params:
            found, errs = request_params_to_args(header_params, request.headers)
            values.update(found)
            errors += errs
        if cookie_params:
            found, errs = request_params_to_args(cookie_params, request.cookies)
            values.update(found)
            errors += errs
        if body_params:
            found, errs = await request_body_to_args(body_fields=body_params, received_body=body,
                                                     embed_body_fields=embed)
            values.update(found)
            errors.extend(errs)
        if errors:
            raise RequestValidationError(errors, body=None if body is Undefined else body)
        if request_name:
            values[request_name] = request
        if connection_name:
            values[connection_name] = request
        sub = Response()
        del sub.headers["content-length"]
        sub.status_code = None  # type: ignore[assignment]  # as FastAPI's: unset until the route sets it
        if response_name:
            values[response_name] = sub
        raw_response = await call(**values)
        if isinstance(raw_response, Response):
            return raw_response
        args: dict[str, Any] = {}
        current = status_code if status_code else sub.status_code
        if current is not None:
            args["status_code"] = current
        if sub.status_code:
            args["status_code"] = sub.status_code
        content = await fastapi_routing.serialize_response(response_content=raw_response, **serialize)
        if dump_json:
            response = Response(content=content, media_type="application/json", **args)
        else:
            response = actual_class(content, **args)
        if not is_body_allowed_for_status_code(response.status_code):
            response.body = b""
        response.headers.raw.extend(sub.headers.raw)
        return response

    return handler


def _lean_routes(routers: Sequence[APIRouter]) -> None:
    """The services' routes (plain ``APIRoute``s, declared by their routers) answered by ``EdgeRoute``'s
    handler: the class is swapped before the routers are included, when FastAPI builds their handlers."""
    for router in routers:
        for route in router.routes:
            if type(route) is APIRoute:
                route.__class__ = EdgeRoute


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

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": runtime.settings.service_name}

    @app.get("/readyz", tags=["operations"])
    async def readyz() -> Response:
        checks = runtime.readiness()
        ok = all(checks.values())
        body: dict[str, Any] = {"ready": ok, "checks": checks}
        if degraded := runtime.degraded():  # ready, but an operator is needed (see Runtime.degraded)
            body["degraded"] = degraded
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["operations"])
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    _lean_routes(routers)
    for router in routers:
        app.include_router(router)
    foreign = tuple(prefix for prefix, _ in error_renderers)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_problems(
                get_openapi(title=app.title, version=app.version, routes=app.routes), foreign
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


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


def serve(app: FastAPI, host: str, port: int, log_level: str = "info") -> None:
    import uvicorn

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # uvloop and httptools (dependencies of this library) named, not left to uvicorn's "auto": a missing one
    # fails at the start instead of silently serving on the slower pure-Python loop and parser
    uvicorn.run(app, host=host, port=port, log_level=log_level.lower(), access_log=False, lifespan="on",
                loop="uvloop", http="httptools")
