"""The statistics' HTTP routes (§7.3): the report, technicians' scorecards, exports, and the page of charts.

Supervisors and auditors (and admins) read figures. The page itself (``/stats``) is a shell with no figure
in it: it asks for a bearer token, keeps it in the tab's ``sessionStorage`` only, and fetches the report
with an ``Authorization`` header like any other client. The token never travels in a URL (no logs, no
history, no Referer) and no cookie carries it (no cross-site request can spend it).
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field

from tsop_archive.commands import ArchiveApp
from tsop_archive.stats import projection
from tsop_archive.stats.domain import (
    Compliance,
    Durations,
    Figures,
    Filters,
    Granularity,
    Question,
    Report,
    Scorecard,
    floor,
    step,
)
from tsop_events.auth import Principal, Role, requires
from tsop_events.errors import Invalid
from tsop_events.http import service_dependency
from tsop_events.runtime import Service
from tsop_events.schemas import Channel

router = APIRouter(tags=["statistics"])

Svc = Annotated[Service[ArchiveApp], Depends(service_dependency(ArchiveApp))]
Reader = Annotated[Principal, Depends(requires(Role.supervisor, Role.auditor))]
FILTERS = ("channel", "service_type", "region", "priority")
RANGE = ("from", "to", "granularity")


def only(*names: str) -> Callable[[Request], None]:
    """Refuse a query parameter the route does not know (a misspelt filter would silently filter nothing)."""

    def check(request: Request) -> None:
        for name in request.query_params:
            if name not in names:
                raise Invalid(f"unknown query parameter; known: {', '.join(names)}", name)

    return check


EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def bounded(name: str, t: datetime) -> datetime:
    """A date the reports can step through: 1970 to 9000 (beyond, a period's end overflows the calendar)."""
    if not EARLIEST <= t <= LATEST:
        raise Invalid(f"must lie between {EARLIEST.date().isoformat()} and {LATEST.date().isoformat()}", name)
    return t


def _question(
    svc: Svc, start: datetime | None, end: datetime | None, granularity: Granularity, channel: Channel | None,
    service_type: str | None, region: str | None, priority: int | None, periods: bool,
) -> Question:
    def utc(t: datetime) -> datetime:
        return t if t.tzinfo else t.replace(tzinfo=UTC)

    if start is not None:
        bounded("from", utc(start))
    to = bounded("to", utc(end)) if end is not None else step(floor(svc.app.clock.now(), "day"), "day")
    frm = utc(start) if start is not None else bounded("to", to - timedelta(days=30))
    filters = Filters(None if channel is None else channel.value, service_type, region, priority)
    return Question(frm, to, granularity, filters, periods=periods)


def _asker(periods: bool) -> Callable[..., Question]:
    """The question's dependency: with ``periods``, a report's series of days, weeks or months (at most
    ``MAX_BUCKETS``); without, a whole range (an export, the scorecards): any length the bounds allow."""

    def question(
        svc: Svc, caller: Reader,
        start: Annotated[datetime | None, Query(alias="from", description="ISO 8601; without a zone, UTC. "
                                                "Default: 30 days before `to`")] = None,
        end: Annotated[datetime | None, Query(alias="to", description="ISO 8601, exclusive. Default: the end of "
                                              "today (UTC)")] = None,
        granularity: Granularity = "day",
        channel: Channel | None = None,
        service_type: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
        region: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
        priority: Annotated[int | None, Query(ge=1, le=5)] = None,
    ) -> Question:
        return _question(svc, start, end, granularity, channel, service_type, region, priority, periods)

    return question


Asked = Annotated[Question, Depends(_asker(periods=True))]
Whole = Annotated[Question, Depends(_asker(periods=False))]


class DurationsAnswer(BaseModel):
    """Seconds; exact over every ticket counted (p50 and p90 interpolate between the nearest two)."""

    count: int
    mean: float | None
    p50: float | None
    p90: float | None

    @classmethod
    def of(cls, d: Durations) -> DurationsAnswer:
        return cls(count=d.count, mean=d.mean, p50=d.p50, p90=d.p90)


class ComplianceAnswer(BaseModel):
    measured: int = Field(description="Tickets whose clock was decided: stopped in time, or breached")
    met: int
    rate: float | None

    @classmethod
    def of(cls, c: Compliance) -> ComplianceAnswer:
        return cls(measured=c.measured, met=c.met, rate=c.rate)


class FiguresAnswer(BaseModel):
    """The figures of a period: tickets by the period of their submission; complaints by filing, incidents by
    declaration, the backlog at the period's end."""

    start: str = Field(description="ISO 8601, UTC")
    submitted: int
    accepted: int
    rejected: int
    cancelled: int
    linked: int
    resolved: int
    closed: int
    acceptance_rate: float | None
    self_service: int = Field(description="Submitted through the online platform (web, app)")
    manual: int = Field(description="Submitted through the hotline or on site")
    self_service_share: float | None = Field(description="The standard expects about 0.7 (§2.1)")
    by_channel: dict[str, int]
    by_service_type: dict[str, int]
    by_region: dict[str, int]
    by_priority: dict[str, int]
    rejections_by_reason: dict[str, int]
    time_to_assign: DurationsAnswer
    time_to_resolve: DurationsAnswer
    sla_respond: ComplianceAnswer
    sla_resolve: ComplianceAnswer
    rating_asked: int
    rated: int
    rating_response_rate: float | None
    mean_score: float | None
    scores: dict[str, int] = Field(description="How many ratings gave each score, 1 to 5")
    reopened: int
    reopen_rate: float | None
    first_time_fixed: int
    first_time_fix_rate: float | None
    complaints: int
    complaint_rate: float | None = Field(description="Complaints filed per ticket submitted")
    backlog: int = Field(description="Tickets open at the period's end")
    incidents_declared: int
    time_to_restore: DurationsAnswer

    @classmethod
    def of(cls, f: Figures) -> FiguresAnswer:
        plain = {k: v for k, v in vars(f).items() if not isinstance(v, Durations | Compliance | datetime)}
        return cls(
            **plain, start=f.start.isoformat(), acceptance_rate=f.acceptance_rate,
            self_service_share=f.self_service_share, time_to_assign=DurationsAnswer.of(f.time_to_assign),
            time_to_resolve=DurationsAnswer.of(f.time_to_resolve), sla_respond=ComplianceAnswer.of(f.sla_respond),
            sla_resolve=ComplianceAnswer.of(f.sla_resolve), rating_response_rate=f.rating_response_rate,
            reopen_rate=f.reopen_rate, first_time_fix_rate=f.first_time_fix_rate, complaint_rate=f.complaint_rate,
            time_to_restore=DurationsAnswer.of(f.time_to_restore),
        )


class FiltersAnswer(BaseModel):
    channel: str | None
    service_type: str | None
    region: str | None
    priority: int | None


class ReportAnswer(BaseModel):
    start: str = Field(alias="from")
    end: str = Field(alias="to")
    granularity: Granularity
    filters: FiltersAnswer
    total: FiguresAnswer
    series: list[FiguresAnswer]

    @classmethod
    def of(cls, r: Report) -> ReportAnswer:
        q = r.question
        return cls.model_validate({
            "from": q.start.isoformat(), "to": q.end.isoformat(), "granularity": q.granularity,
            "filters": vars(q.filters), "total": FiguresAnswer.of(r.total),
            "series": [FiguresAnswer.of(f) for f in r.series],
        })


class ScorecardAnswer(BaseModel):
    """A technician over the range (§4.2, §6.3)."""

    technician_id: str
    assignments: int = Field(description="Work orders assigned within the range")
    declined: int
    resolved: int = Field(description="Work orders they resolved within the range")
    time_to_resolve: DurationsAnswer = Field(description="Their assignment → their resolution")
    rated: int
    mean_score: float | None
    first_time_fixed: int
    reopened: int
    busy_seconds: float
    capacity: int
    utilisation: float | None = Field(description="Time work orders were held / (capacity x the range)")

    @classmethod
    def of(cls, s: Scorecard) -> ScorecardAnswer:
        return cls(**{**vars(s), "time_to_resolve": DurationsAnswer.of(s.time_to_resolve)})


@router.get("/v1/stats/report", response_model=ReportAnswer, response_model_by_alias=True,
            dependencies=[Depends(only(*RANGE, *FILTERS))])
async def stats_report(q: Asked, svc: Svc, caller: Reader) -> ReportAnswer:
    """The figures of §7.3 over the range and for each day, week or month of it, filtered by channel,
    service type, region and priority."""
    return ReportAnswer.of(await projection.report(svc.pool, q))


@router.get("/v1/stats/technicians", response_model=list[ScorecardAnswer],
            dependencies=[Depends(only("from", "to", *FILTERS))])
async def stats_technicians(q: Whole, svc: Svc, caller: Reader) -> list[ScorecardAnswer]:
    """Each technician's scorecard and utilisation over the range."""
    return [ScorecardAnswer.of(s) for s in await projection.scorecards(svc.pool, q, svc.app.clock.now())]


class ExportRow(BaseModel):
    """One ticket's facts, as the statistics hold them (no personal data)."""

    ticket_id: str
    channel: str | None
    service_type: str | None
    region: str | None
    priority: int | None
    submitted_at: str | None
    accepted_at: str | None
    rejected_at: str | None
    cancelled_at: str | None
    linked_at: str | None
    first_assigned_at: str | None
    responded_at: str | None
    resolved_at: str | None
    ended_at: str | None
    closed_at: str | None
    feedback_sent_at: str | None
    rated_at: str | None
    reject_reason: str | None
    resolutions: int
    reopens: int
    respond_breached: bool
    resolve_breached: bool
    score: int | None
    first_fix: bool
    resolved_by: str | None
    assign_seconds: float | None
    resolve_seconds: float | None


Format = Literal["csv", "json", "parquet"]
MEDIA = {"csv": "text/csv; charset=utf-8", "json": "application/json", "parquet": "application/vnd.apache.parquet"}


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


FORMULA = ("=", "+", "-", "@", "\t", "\r")
"""A CSV cell starting with one of these is a formula to a spreadsheet (CSV injection): a channel's free text
(a region, a reason) could run one on an analyst's machine."""


def csv_cell(value: Any) -> Any:
    """A cell as the CSV export writes it: a text that a spreadsheet would take for a formula is quoted with a
    leading apostrophe (OWASP's advice), so it opens as the text it is; numbers are left as they are."""
    if value is None:
        return ""
    value = _plain(value)
    if isinstance(value, str) and value.startswith(FORMULA):
        return "'" + value
    return value


async def _csv(chunks: AsyncIterator[Sequence[Any]]) -> AsyncIterator[bytes]:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(projection.EXPORT_COLUMNS)
    async for rows in chunks:
        writer.writerows([[csv_cell(v) for v in r] for r in rows])
        yield out.getvalue().encode()
        out.seek(0)
        out.truncate()
    if out.tell():
        yield out.getvalue().encode()


async def _json(chunks: AsyncIterator[Sequence[Any]]) -> AsyncIterator[bytes]:
    first = True
    yield b"["
    async for rows in chunks:
        body = b",".join(orjson.dumps(dict(zip(projection.EXPORT_COLUMNS, r, strict=True))) for r in rows)
        yield body if first else b"," + body
        first = False
    yield b"]"


class _Drain(io.RawIOBase):
    """A file that hands on what is written to it."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self.parts.append(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def take(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


async def _parquet(chunks: AsyncIterator[Sequence[Any]]) -> AsyncIterator[bytes]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    times = set(projection.TIMES)
    kinds = {"priority": pa.int32(), "resolutions": pa.int32(), "reopens": pa.int32(), "score": pa.int32(),
             "respond_breached": pa.bool_(), "resolve_breached": pa.bool_(), "first_fix": pa.bool_(),
             "assign_seconds": pa.float64(), "resolve_seconds": pa.float64()}
    schema = pa.schema([
        (c, pa.timestamp("us", tz="UTC") if c in times else kinds.get(c, pa.string()))
        for c in projection.EXPORT_COLUMNS
    ])
    drain = _Drain()
    writer = pq.ParquetWriter(drain, schema)
    async for rows in chunks:
        columns: list[list[Any]] = [[r[i] for r in rows] for i in range(len(projection.EXPORT_COLUMNS))]
        writer.write_batch(pa.record_batch(columns, schema=schema))
        yield drain.take()
    writer.close()
    yield drain.take()


WRITERS = {"csv": _csv, "json": _json, "parquet": _parquet}


@router.get("/v1/stats/export", response_model=list[ExportRow],
            responses={200: {"content": {MEDIA["csv"]: {}, MEDIA["parquet"]: {}}}},
            dependencies=[Depends(only("from", "to", "format", *FILTERS))])
async def stats_export(q: Whole, svc: Svc, caller: Reader, format: Format = "csv") -> Response:  # noqa: A002
    """Every ticket submitted in the range that the filters admit, with its facts, streamed: CSV, JSON or
    Parquet, with no row cap. The statistics hold no personal data, so no export carries any."""
    name = f"tsop-stats-{q.start.date().isoformat()}-{q.end.date().isoformat()}.{format}"
    return StreamingResponse(
        WRITERS[format](projection.export_rows(svc.pool, q)), media_type=MEDIA[format],
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


# the page: a shell with no figure, its script and style from the package (no CDN: it works offline)
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PAGE_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                "Cache-Control": "no-store"}


def _asset(name: str) -> bytes:
    return resources.files("tsop_archive.stats").joinpath("page", name).read_bytes()


@router.get("/stats", include_in_schema=False)
async def stats_page() -> Response:
    """The statistics page (no figures until the reader gives a token with the role)."""
    return Response(_asset("index.html"), media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


@router.get("/stats/app.js", include_in_schema=False)
async def stats_script() -> Response:
    return Response(_asset("app.js"), media_type="text/javascript; charset=utf-8", headers=PAGE_HEADERS)


@router.get("/stats/app.css", include_in_schema=False)
async def stats_style() -> Response:
    return Response(_asset("app.css"), media_type="text/css; charset=utf-8", headers=PAGE_HEADERS)
