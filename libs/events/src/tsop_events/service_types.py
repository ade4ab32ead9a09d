"""The service-type catalogue file: operator data that more than one service reads.

The file is ``TSOP_SERVICE_TYPES_FILE`` (JSON), else the built-in
``service_types.json`` next to this module. Intake owns its meaning (review
rules, priorities, reason codes; see ``tsop_intake.catalogue``); other services
only need to know which service types the operator offers, e.g. dispatch refuses
a qualification for a type the catalogue does not have. Reading the same file
keeps every service on one list without any service reading another's database.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

BUILT_IN = "built-in"


class ServiceTypesFileError(ValueError):
    """The file cannot be read or has no ``types`` object; the message names the file and the reason."""


def catalogue_text(path: Path | None = None) -> tuple[str, str]:
    """The catalogue file's text and where it came from (the path, or ``built-in``)."""
    if path is None:
        return resources.files("tsop_events").joinpath("service_types.json").read_text(), BUILT_IN
    try:
        return path.read_text(), str(path)
    except OSError as exc:
        raise ServiceTypesFileError(f"TSOP_SERVICE_TYPES_FILE {path}: {exc.strerror or exc}") from None


def _types(path: Path | None) -> dict[str, Any]:
    raw, source = catalogue_text(path)
    try:
        types = json.loads(raw).get("types")
    except (ValueError, AttributeError):
        raise ServiceTypesFileError(f"{source}: not a JSON object") from None
    if not isinstance(types, dict) or not types:
        raise ServiceTypesFileError(f"{source}: needs a non-empty 'types' object")
    return types


def service_type_names(path: Path | None = None) -> frozenset[str]:
    """The names of the service types the operator offers."""
    return frozenset(str(name) for name in _types(path))


def complaint_types(path: Path | None = None) -> frozenset[str]:
    """The service types the complaint desk works (``"handled_by": "complaints"``): dispatch sends nobody to
    them, and feedback closes such a ticket when its complaint closes."""
    return frozenset(str(name) for name, t in _types(path).items()
                     if isinstance(t, dict) and t.get("handled_by") == "complaints")
