"""deploy/docker-compose.yml against the Compose specification's JSON schema (no Docker engine here).

``deploy/compose-spec.json`` is the compose-spec project's ``schema/compose-spec.json`` (draft-07,
with ``name``, ``include`` and ``models``), vendored as shipped in the npm package ``dclint`` 3.1.0
(``schemas/compose.schema.json``, sha256 46b7d35f…496). To refresh it, replace the file with a newer
copy of the same schema.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "deploy" / "compose-spec.json"
COMPOSE = ROOT / "deploy" / "docker-compose.yml"


def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA.read_text())
    return loaded


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())  # safe_load resolves `<<` merge keys
    return loaded


def errors(doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(schema(), format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc)]


def test_the_vendored_schema_is_the_compose_specification() -> None:
    s = schema()
    jsonschema.Draft7Validator.check_schema(s)
    assert s["title"] == "Compose Specification"
    assert {"name", "services", "volumes", "networks", "include"} <= set(s["properties"])


def test_docker_compose_yml_conforms_to_the_compose_specification() -> None:
    assert errors(compose()) == []


def test_services_refer_only_to_services_and_volumes_that_exist() -> None:
    """What the schema cannot say: names used in depends_on and named volumes are declared."""
    doc = compose()
    services, volumes = set(doc["services"]), set(doc.get("volumes", {}))
    for name, svc in doc["services"].items():
        assert set(svc.get("depends_on", {})) <= services, name
        for mount in svc.get("volumes", []):
            source = mount.split(":", 1)[0] if isinstance(mount, str) else mount.get("source", "")
            if source and not source.startswith((".", "/", "~")):
                assert source in volumes, f"{name}: volume {source} is not declared"
        for port in svc.get("ports", []):
            assert re.fullmatch(r"\d+:\d+", str(port)), f"{name}: port {port}"


@pytest.mark.parametrize(
    ("path", "value", "fragment"),
    [
        (("services", "intake", "restart"), 3, "is not of type"),
        (("services", "intake", "depends_on", "postgres", "condition"), "service_up", "is not valid under any"),
        (("services", "archive", "bogus_key"), True, "does not match any of the regexes"),
        (("services", "intake", "healthcheck", "interval"), [5], "is not of type"),
    ],
)
def test_the_check_catches_a_broken_file(path: tuple[str, ...], value: Any, fragment: str) -> None:
    doc = compose()
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    found = errors(doc)
    assert any(fragment in e for e in found), found
