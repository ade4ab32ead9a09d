"""The configuration reference, generated from the settings classes.

``python -m tsop_events.configref --write`` regenerates ``docs/configuration.md``;
without ``--write`` it fails when the committed file and the settings classes
disagree (``make lint`` runs it), so the reference cannot drift from the code.
Each service's settings class is found by name in ``tsop_<service>.main``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic.fields import FieldInfo

from tsop_events.settings import ServiceSettings

SERVICES = ("intake", "dispatch", "feedback", "incident", "archive")
DEFAULT_FILE = Path(__file__).resolve().parents[4] / "docs" / "configuration.md"


def _default(info: FieldInfo) -> str:
    value: Any = info.get_default(call_default_factory=True)
    if value is None or value == "":
        return "—"
    return f"`{value}`"


def _kind(info: FieldInfo) -> str:
    if get_origin(info.annotation) is Literal:
        return "one of " + ", ".join(f"`{v}`" for v in get_args(info.annotation))
    text = getattr(info.annotation, "__name__", None) or str(info.annotation)
    return text.replace("typing.", "").replace("pathlib.", "").replace("NoneType", "None").replace(" | ", " or ")


def _row(name: str, info: FieldInfo, default: str | None = None) -> str:
    description = " ".join((info.description or "").split())
    return f"| `TSOP_{name.upper()}` | {_kind(info)} | {default or _default(info)} | {description} |"


def settings_classes() -> dict[str, type[ServiceSettings]]:
    found: dict[str, type[ServiceSettings]] = {}
    for service in SERVICES:
        module = importlib.import_module(f"tsop_{service}.main")
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, ServiceSettings) and value is not ServiceSettings:
                found[service] = value
    return found


def render() -> str:
    head = "| variable | type | default | meaning |\n|---|---|---|---|"
    lines = [
        "# Configuration reference",
        "",
        "Generated from the settings classes by `python -m tsop_events.configref --write`; `make lint` fails",
        "when this file and the code disagree. Every variable is read from the environment, with the same name",
        "in every mode (`make run`, the tests, docker-compose).",
        "",
        "## Every service",
        "",
        head,
    ]
    common = ServiceSettings.model_fields
    lines += [_row(name, info) for name, info in common.items()]
    for service, cls in settings_classes().items():
        lines += ["", f"## {service}", "", head]
        for name, info in cls.model_fields.items():
            if name not in common:
                lines.append(_row(name, info))
            elif _default(info) != _default(common[name]):
                lines.append(_row(name, common[name], f"{_default(info)} (here)"))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE)
    args = parser.parse_args()
    text = render()
    if args.write:
        args.file.parent.mkdir(parents=True, exist_ok=True)
        args.file.write_text(text)
        return
    if not args.file.exists() or args.file.read_text() != text:
        print(f"{args.file} is out of date: run `make catalogue`", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
