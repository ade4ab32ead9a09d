"""The service-type catalogue: operator data, validated once at start.

The file (``TSOP_SERVICE_TYPES_FILE``, JSON; the built-in default is
``tsop_events/service_types.json``, shared with dispatch) holds:

* ``types``: per service type ``default_priority`` (1 = most urgent … 5),
  ``resolve_hours``, ``regions`` (``"*"`` = everywhere), ``required`` (field
  paths an application of this type must carry, e.g. ``location.address``,
  ``time_requirement.window``, ``details.new_address``), optionally
  ``completion_hours`` and ``review`` (``manual``, ``manual_tiers``,
  ``min_lead_hours``, ``max_horizon_days``);
* ``completion_hours``: how long an application may stay *pending information*;
* ``limits``: abuse limits (``channel_per_minute``: absent or null = no limit, a channel's own limit
  overrides it, over it a submission is answered 429 before anything is recorded; ``customer_per_day``,
  ``customer_limit_action``: ``review`` or ``reject``);
* ``priority``: ``tiers`` (customer tier → boost), ``urgent_within_hours`` and
  ``urgency_boost``: priority = type default - tier boost - urgency boost, in 1…5;
* ``reason_codes``: ``accept``, ``reject`` and ``cancel`` codes → their meaning;
  agents must pick one of these;
* ``ticket_types`` (optional): the operator's own TMF621 ``ticketType`` names →
  catalogue service types (matched without regard to case), e.g.
  ``{"Broadband Fault": "broadband.fault_repair"}``; a ticket keeps and shows
  the name it was sent with.

A malformed file stops the service at start with a message naming the entry.
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

TIERS = ("standard", "gold", "vip", "enterprise")
FIXED_PATHS = frozenset(
    {
        "location",
        "location.address",
        "location.postcode",
        "location.site_id",
        "time_requirement",
        "time_requirement.deadline",
        "time_requirement.window",
        "special_needs",
        "channel_request_ref",
        "callback_url",
    }
)
DETAIL_PATH = re.compile(r"^details\.[a-z][a-z0-9_]{0,63}$")
TYPE_NAME = re.compile(r"^[a-z]+\.[a-z_]+$")


class CatalogueError(ValueError):
    """The catalogue file is unusable; the message names the entry and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReviewRules(_Strict):
    manual: bool = Field(default=False, description="Every application of this type goes to an agent.")
    manual_tiers: tuple[Literal["standard", "gold", "vip", "enterprise"], ...] = ()
    min_lead_hours: Annotated[float, Field(ge=0)] = 0
    max_horizon_days: Annotated[float, Field(gt=0)] = 365


class ServiceType(_Strict):
    name: str = ""
    default_priority: Annotated[int, Field(ge=1, le=5)]
    resolve_hours: Annotated[float, Field(gt=0)]
    regions: Annotated[tuple[Annotated[str, Field(min_length=1)], ...], Field(min_length=1)]
    required: tuple[str, ...] = ()
    completion_hours: Annotated[float, Field(gt=0)] | None = None
    review: ReviewRules = ReviewRules()
    handled_by: Literal["dispatch", "complaints"] = Field(
        default="dispatch", description="Who works an accepted request: dispatch sends a technician; `complaints`: "
        "feedback's complaint desk handles it as a complaint, dispatch opens no work order, and the ticket closes "
        "when its complaint does.")

    @field_validator("required")
    @classmethod
    def _known_paths(cls, paths: tuple[str, ...]) -> tuple[str, ...]:
        for p in paths:
            if p not in FIXED_PATHS and not DETAIL_PATH.match(p):
                known = [*sorted(FIXED_PATHS), "details.<name>"]
                raise ValueError(f"{p!r} is not a field an application has (known: {known})")
        return paths

    def offered_in(self, region: str) -> bool:
        return "*" in self.regions or region in self.regions


class Limits(_Strict):
    channel_per_minute: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="Submissions per channel and minute; None = no limit (a channel's own wins)."
    )
    customer_per_day: Annotated[int, Field(ge=1)] = 10
    customer_limit_action: Literal["review", "reject"] = "review"


class PriorityRules(_Strict):
    tiers: dict[str, Annotated[int, Field(ge=0, le=4)]] = Field(
        default_factory=lambda: {"standard": 0, "gold": 1, "vip": 2, "enterprise": 2}
    )
    urgent_within_hours: Annotated[float, Field(ge=0)] = 4
    urgency_boost: Annotated[int, Field(ge=0, le=4)] = 1

    @field_validator("tiers")
    @classmethod
    def _all_tiers(cls, tiers: dict[str, int]) -> dict[str, int]:
        unknown = set(tiers) - set(TIERS)
        if unknown:
            raise ValueError(f"unknown customer tiers {sorted(unknown)}; the tiers are {list(TIERS)}")
        return {t: tiers.get(t, 0) for t in TIERS}


class ReasonCodes(_Strict):
    accept: dict[str, str]
    reject: dict[str, str]
    cancel: dict[str, str]

    @model_validator(mode="after")
    def _non_empty(self) -> ReasonCodes:
        for kind in ("accept", "reject", "cancel"):
            if not getattr(self, kind):
                raise ValueError(f"reason_codes.{kind} needs at least one code")
        return self


class Catalogue(_Strict):
    types: dict[str, ServiceType]
    completion_hours: Annotated[float, Field(gt=0)] = 72
    limits: Limits = Limits()
    priority: PriorityRules = PriorityRules()
    reason_codes: ReasonCodes
    ticket_types: dict[Annotated[str, Field(min_length=1, max_length=64)], str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _ticket_types_known(self) -> Catalogue:
        seen: dict[str, str] = {}
        for name, target in self.ticket_types.items():
            if target not in self.types:
                raise ValueError(f"ticket_types: {name!r} maps to {target!r}, which is not a service type")
            if name.lower() in seen:
                raise ValueError(f"ticket_types: {name!r} and {seen[name.lower()]!r} differ only in case")
            seen[name.lower()] = name
        return self

    def service_type_for(self, ticket_type: str) -> str | None:
        """The service type a TMF621 ``ticketType`` names: a catalogue name, or an operator's name for one."""
        if ticket_type in self.types:
            return ticket_type
        wanted = ticket_type.lower()
        return next((t for name, t in self.ticket_types.items() if name.lower() == wanted), None)

    @field_validator("types")
    @classmethod
    def _names(cls, types: dict[str, ServiceType]) -> dict[str, ServiceType]:
        if not types:
            raise ValueError("the catalogue needs at least one service type")
        for name in types:
            if not TYPE_NAME.match(name):
                raise ValueError(f"service type {name!r} must look like family.kind (e.g. broadband.fault_repair)")
        return {name: t.model_copy(update={"name": name}) for name, t in types.items()}

    def get(self, name: str) -> ServiceType | None:
        return self.types.get(name)

    def completion_hours_of(self, st: ServiceType) -> float:
        return st.completion_hours or self.completion_hours

    @classmethod
    def parse(cls, raw: str, source: str = "catalogue") -> Catalogue:
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise CatalogueError(f"{source}: not valid JSON: {exc}") from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()
            )
            raise CatalogueError(f"{source}: {problems}") from None

    @classmethod
    def load(cls, path: Path | None = None) -> Catalogue:
        """The operator's file, or the built-in default; CatalogueError names what is wrong."""
        if path is None:
            return cls.parse(resources.files("tsop_events").joinpath("service_types.json").read_text(), "built-in")
        try:
            raw = path.read_text()
        except OSError as exc:
            raise CatalogueError(f"TSOP_SERVICE_TYPES_FILE {path}: {exc.strerror or exc}") from None
        return cls.parse(raw, str(path))
