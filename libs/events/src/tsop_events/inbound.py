"""What an edge may accept: only what the wire can carry and every projection can store.

Two layers, so that no endpoint of any service can forget one:

- ``check_json`` runs on every JSON body (and ``check_query`` on every query
  string) before a route sees it, in ``http.create_app``'s edge middleware. It
  refuses what JSON parsers let through but PostgreSQL, the wire or a
  consumer cannot hold: ``NaN``/``Infinity`` and numbers that overflow to
  them, integers beyond 64 bits, NUL characters, lone UTF-16 surrogates and
  nesting deeper than ``MAX_DEPTH``. Text is normalised to Unicode NFC, so the
  same words always compare, hash and de-duplicate alike.
- The types below make inbound models strict field by field: an integer is an
  integer (``"5"`` and ``true`` are refused), a number is finite, text has no
  control characters, a free-form object is bounded.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, Strict

from tsop_events.personal import TOKEN as SEALED

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# a number (written with a fraction or an exponent) beyond ±2⁶³: PostgreSQL's jsonb keeps 1e308 as numeric and gives it
# back as a 309-digit integer, which no 64-bit JSON encoder (orjson) nor client decodes as the number it was
MAX_NUMBER = 2.0**63
MAX_DEPTH = 32  # any JSON body
MAX_OBJECT_DEPTH = 8  # a free-form object inside a body (``JsonObject``)
MAX_OBJECT_NODES = 1000

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # NUL (PostgreSQL text/jsonb refuse it), lone surrogates
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")  # in text fields: all but tab and newlines


class EdgeError(ValueError):
    """Refused at the edge: ``status`` 400 for what is not JSON, 422 for JSON no event can carry."""

    def __init__(self, status: int, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.status, self.field, self.reason = status, field, reason


def _reject_constant(name: str) -> Any:
    raise EdgeError(400, "body", f"{name} is not a JSON number")


def _int(text: str) -> int:
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise EdgeError(422, "body", f"the integer {text[:24]}… does not fit in 64 bits")
    return value


def _path(parts: list[str | int]) -> str:
    return ".".join(str(p) for p in parts) or "body"


def _clean(value: Any, parts: list[str | int], changed: list[bool]) -> Any:
    """Check one parsed value (recursively); return it with its text in NFC."""
    if isinstance(value, str):
        if _UNSTORABLE.search(value):
            raise EdgeError(422, _path(parts), "contains a NUL character or a lone surrogate, which cannot be stored")
        if SEALED.search(value):
            # answers open every token they carry: a token sent in would be opened for whoever sent it
            raise EdgeError(422, _path(parts), "contains a sealed personal-data token (pd1.…), which only the "
                            "platform writes")
        if not value.isascii() and not unicodedata.is_normalized("NFC", value):
            changed[0] = True
            return unicodedata.normalize("NFC", value)
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise EdgeError(422, _path(parts), "is not a finite number")
        if not -MAX_NUMBER < value < MAX_NUMBER:
            raise EdgeError(422, _path(parts), "is a number beyond 64 bits")
        return value
    if isinstance(value, dict | list):
        if len(parts) >= MAX_DEPTH:
            raise EdgeError(422, _path(parts), f"nests deeper than {MAX_DEPTH} levels")
        if isinstance(value, list):
            return [_clean(v, [*parts, i], changed) for i, v in enumerate(value)]
        out = {}
        for k, v in value.items():
            key = _clean(k, [*parts, k], changed)
            out[key] = _clean(v, [*parts, key], changed)
        return out
    return value


def check_json(body: bytes) -> bytes | None:
    """Refuse a body no event can carry (``EdgeError``); return a replacement body when text was normalised.

    The common case (valid UTF-8 JSON that passes) is parsed by orjson; anything else (not JSON for orjson, a
    NaN, a number out of range, a value refused) goes through the standard library's parser, whose answer is
    the reference: the same body is accepted, replaced or refused with the same reason either way."""
    if not body.strip():
        return None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _check_json_exactly(body)
    return None if _plain(parsed, 0) else _check_json_exactly(body)


def _plain(value: Any, depth: int) -> bool:
    """True when a value orjson parsed is surely accepted unchanged by ``_check_json_exactly``; False sends the
    body there (to be refused with its reason, or rewritten in NFC, or accepted after all)."""
    if isinstance(value, str):
        if value.isascii():
            return "\x00" not in value and "pd1." not in value
        return "pd1." not in value and not _UNSTORABLE.search(value) and unicodedata.is_normalized("NFC", value)
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, int):
        return INT64_MIN <= value <= INT64_MAX
    if isinstance(value, float):
        return math.isfinite(value) and -MAX_NUMBER < value < MAX_NUMBER
    if isinstance(value, dict):
        return depth < MAX_DEPTH and all(_plain(k, depth + 1) and _plain(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return depth < MAX_DEPTH and all(_plain(v, depth + 1) for v in value)
    return False


def _check_json_exactly(body: bytes) -> bytes | None:
    try:
        parsed = json.loads(body, parse_constant=_reject_constant, parse_int=_int)
    except EdgeError:
        raise
    except RecursionError:
        raise EdgeError(422, "body", f"nests deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError):
        return None  # not JSON at all: the route's own parser answers 400 with its reason
    changed = [False]
    cleaned = _clean(parsed, [], changed)
    return json.dumps(cleaned, ensure_ascii=False).encode() if changed[0] else None


def check_query(query: str) -> None:
    """Refuse a query string with a NUL or a lone surrogate in a name or value (after percent-decoding)."""
    from urllib.parse import parse_qsl

    try:
        pairs = parse_qsl(query, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise EdgeError(400, "query", "is not valid UTF-8") from None
    for name, value in pairs:
        if _UNSTORABLE.search(name) or _UNSTORABLE.search(value):
            raise EdgeError(422, name if not _UNSTORABLE.search(name) else "query", "contains a NUL character")


# ---------------------------------------------------------------- field types for inbound models


def clean_text(value: str) -> str:
    """Text as a `Text` field takes it: no control characters (tab and newlines allowed), in NFC."""
    if _CONTROL.search(value):
        raise ValueError("contains a control character")
    return value if value.isascii() else unicodedata.normalize("NFC", value)


def _bounded(value: dict[str, Any]) -> dict[str, Any]:
    nodes = 0

    def walk(v: Any, depth: int) -> None:
        nonlocal nodes
        nodes += 1
        if nodes > MAX_OBJECT_NODES:
            raise ValueError(f"has more than {MAX_OBJECT_NODES} values")
        if isinstance(v, dict | list):
            if depth >= MAX_OBJECT_DEPTH:
                raise ValueError(f"nests deeper than {MAX_OBJECT_DEPTH} levels")
            if isinstance(v, dict) and any(_UNSTORABLE.search(k) for k in v):
                raise ValueError("has a name with a NUL character or a lone surrogate")
            for item in v.values() if isinstance(v, dict) else v:
                walk(item, depth + 1)
        elif isinstance(v, str) and _UNSTORABLE.search(v):
            raise ValueError("contains a NUL character")
        elif isinstance(v, float) and not (math.isfinite(v) and -MAX_NUMBER < v < MAX_NUMBER):
            raise ValueError("contains a number that is not finite or beyond 64 bits")
        elif isinstance(v, int) and not isinstance(v, bool) and not INT64_MIN <= v <= INT64_MAX:
            raise ValueError("contains an integer beyond 64 bits")

    walk(value, 0)
    return value


Int = Annotated[int, Strict(), Field(ge=INT64_MIN, le=INT64_MAX)]
"""An integer, and only an integer: ``"5"``, ``5.0`` and ``true`` are refused. Narrow it with ``Field(ge=…)``."""

Number = Annotated[float, Strict(), Field(allow_inf_nan=False, gt=-MAX_NUMBER, lt=MAX_NUMBER)]
"""A finite number within ±2⁶³ (an integer is welcome)."""

Bool = Annotated[bool, Strict()]
"""``true`` or ``false``; not ``1`` or ``"yes"``."""

Text = Annotated[str, Strict(), AfterValidator(clean_text)]
"""Text without control characters (tab and newlines allowed), in NFC. Bound it with ``Field(max_length=…)``."""

TextCheck = AfterValidator(clean_text)
"""``Text``'s content check alone, for text bounded first: ``Annotated[str, Strict(), Field(max_length=…), TextCheck]``
(a bound placed after the check would be reported as "items after validation")."""

MAX_OFFSET = timedelta(hours=18)


def _moment(value: datetime) -> datetime:
    offset = value.utcoffset()
    if offset is None:
        raise ValueError("needs a time zone offset")
    if abs(offset) > MAX_OFFSET:
        raise ValueError("has a time zone offset beyond ±18:00")
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is outside the calendar once converted to UTC") from None
    return value


Moment = Annotated[datetime, AfterValidator(_moment)]
"""A point in time with its offset (kept as given), that the calendar can hold in UTC too."""

JsonObject = Annotated[dict[str, JsonValue], AfterValidator(_bounded)]
"""A free-form object, bounded in depth and size, holding only what JSON and PostgreSQL both carry."""


class Inbound(BaseModel):
    """The base of every inbound body: unknown fields refused, numbers finite."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
