"""The one shape: every service keeps each role in the module of the same name (issue 9).

A newcomer answers "where is X?" with one rule; this test keeps the rule true. A module for a role the
table does not name must be listed in ``EXTRA`` with its reason, so a second home for commands, timers,
views or wire mapping cannot appear unnoticed.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("intake", "dispatch", "feedback", "incident", "archive")
ROLES = {"__init__", "domain", "commands", "views", "wire", "policies", "projection", "api", "main"}
EXTRA = {
    "intake/catalogue": "operator data: the service-type catalogue, parsed by pydantic models",
    "dispatch/sla": "the SLA policy and its calendars: pure domain rules, too many for domain.py",
    "intake/tmf/model": "the TMF621 resource shapes and their mapping from the read model",
    "intake/tmf/inbound": "the TMF621 edge: a TMF body parsed into intake's inbound model",
    "intake/tmf/hub": "TMF621 listeners: their registry, the notification outbox and its delivery",
}
IO = {"asyncpg", "httpx", "aiokafka", "fastapi", "psycopg", "psycopg_pool", "requests", "socket", "subprocess"}


def modules(service: str) -> list[str]:
    base = ROOT / "services" / service / "src" / f"tsop_{service}"
    return sorted(str(p.relative_to(base).with_suffix("")) for p in base.rglob("*.py"))


@pytest.mark.parametrize("service", SERVICES)
def test_each_role_lives_in_its_module(service: str) -> None:
    for name in modules(service):
        if f"{service}/{name}" in EXTRA:
            continue
        assert name.split("/")[-1] in ROLES, f"tsop_{service}/{name}.py is no role of the one shape (see README)"


@pytest.mark.parametrize("service", SERVICES)
def test_domain_modules_do_no_io(service: str) -> None:
    base = ROOT / "services" / service / "src" / f"tsop_{service}"
    for path in [base / "domain.py", *(base / f"{e.split('/', 1)[1]}.py" for e in EXTRA if e == f"{service}/sla")]:
        if not path.exists():
            continue
        tree = ast.parse(path.read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not imported & IO, f"{path.name} of {service} imports {imported & IO}"


@pytest.mark.parametrize("service", SERVICES)
def test_main_bootstraps_a_typed_service_and_every_route_declares_its_answer(service: str) -> None:
    main = importlib.import_module(f"tsop_{service}.main")
    assert callable(getattr(main, "bootstrap", None)), f"tsop_{service}.main has no bootstrap()"
    app = main.build()
    routes = list(api_routes(app.routes))
    assert any(path.startswith("/v1/") for path, _ in routes), f"{service}: no /v1 route found (is the walk right?)"
    for path, route in routes:
        if path.endswith("/openapi.json"):
            continue  # a published OpenAPI document, served as it is
        if path.startswith(("/v1/", "/tmf-api/")) and route.status_code != 204 and not streams(route):
            assert route.response_model is not None, f"{service}: {route.methods} {path} declares no answer"


def api_routes(routes: Iterable[BaseRoute], prefix: str = "") -> Iterator[tuple[str, APIRoute]]:
    """Every APIRoute with its full path, also inside included routers (newer FastAPI keeps them nested)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield prefix + route.path, route
        inner = getattr(route, "original_router", None)
        if inner is not None:
            context = getattr(route, "include_context", None)
            yield from api_routes(inner.routes, prefix + str(getattr(context, "prefix", "") or ""))


def streams(route: APIRoute) -> bool:
    """A route that answers a document or a stream (HTML, Markdown, CSV, Parquet) declares its media type instead."""
    cls = getattr(route.response_class, "value", route.response_class)
    return isinstance(cls, type) and cls.__name__ in {"HTMLResponse", "PlainTextResponse", "StreamingResponse",
                                                      "Response", "FileResponse"}


@pytest.mark.parametrize("service", ["intake", "dispatch", "feedback", "incident", "archive"])
def test_the_wire_mapping_is_a_table(service: str) -> None:
    from tsop_events.wiremap import WireMap

    wire = importlib.import_module(f"tsop_{service}.wire")
    assert any(isinstance(v, WireMap) for v in vars(wire).values()), f"tsop_{service}.wire has no WireMap"
