"""The quality read model and the complaints inbox, in feedback's own database.

``quality_tickets`` keeps per ticket what quality is judged by: who it was for (customer, channel), what it
was (service type, region), who worked it (technician, team), when it was resolved, the customer's rating
and the internal assessment's score. ``complaint_inbox`` holds what the bus asked the complaints context to
open (a complaint from a low rating or a complaint-type ticket, an action from a pattern of low scores or
an incident review): written with the consumer's offset in one transaction, emptied by ``policies.drain``
once the command that opens the thing is saved; the commands are idempotent, so a crash in between opens
nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg
import orjson

DDL: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS quality_tickets (
        ticket_id text PRIMARY KEY, customer_id text NOT NULL DEFAULT '', channel_id text,
        service_type text, region text, ticket_type text, technician_id text, team text,
        resolved_at timestamptz, sampled boolean NOT NULL DEFAULT false,
        score int, solved boolean, rated_at timestamptz, internal_score double precision, assessed_at timestamptz)""",
    "CREATE INDEX IF NOT EXISTS quality_tickets_resolved ON quality_tickets (resolved_at)",
    "CREATE INDEX IF NOT EXISTS quality_tickets_low ON quality_tickets (rated_at) WHERE score IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS complaint_inbox (
        key text PRIMARY KEY, kind text NOT NULL, payload jsonb NOT NULL,
        noted_at timestamptz NOT NULL DEFAULT now())""",
)

Subject = Literal["ticket", "technician", "team", "service_type"]
Bucket = Literal["day", "week", "month", "all"]
SUBJECT_COLUMN: dict[str, str] = {
    "ticket": "ticket_id", "technician": "technician_id", "team": "team", "service_type": "service_type"}


async def note(conn: asyncpg.Connection, key: str, kind: str, payload: dict[str, Any]) -> None:
    """Put a request to open something in the inbox (once per key)."""
    await conn.execute(
        "INSERT INTO complaint_inbox (key, kind, payload) VALUES ($1, $2, $3::jsonb) ON CONFLICT DO NOTHING",
        key, kind, orjson.dumps(payload).decode(),
    )


async def inbox(pool: asyncpg.Pool, limit: int = 100) -> list[tuple[str, str, dict[str, Any]]]:
    rows = await pool.fetch(
        "SELECT key, kind, payload::text AS payload FROM complaint_inbox ORDER BY noted_at, key LIMIT $1", limit)
    return [(r["key"], r["kind"], orjson.loads(r["payload"])) for r in rows]


async def done(pool: asyncpg.Pool, key: str) -> None:
    await pool.execute("DELETE FROM complaint_inbox WHERE key = $1", key)


async def ticket_fact(conn: asyncpg.Connection | asyncpg.Pool, ticket_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow("SELECT * FROM quality_tickets WHERE ticket_id = $1", ticket_id)
    return None if row is None else dict(row)


async def low_score_times(
    conn: asyncpg.Connection, column: str, value: str, low: int, since: datetime, until: datetime
) -> list[datetime]:
    """When the subject's low scores were given, between ``since`` and ``until``."""
    assert column in SUBJECT_COLUMN.values()
    rows = await conn.fetch(
        f"SELECT rated_at FROM quality_tickets WHERE {column} = $1 AND score <= $2 "
        "AND rated_at BETWEEN $3 AND $4",
        value, low, since, until,
    )
    return [r["rated_at"] for r in rows]


@dataclass(frozen=True)
class QualityRow:
    subject: str | None
    period: datetime | None
    tickets: int
    rated: int
    average_rating: float | None
    assessed: int
    average_internal: float | None
    combined: float | None


async def quality(
    pool: asyncpg.Pool, by: Subject, bucket: Bucket, weights: dict[str, float], since: datetime, until: datetime,
    subject: str | None = None, limit: int = 1000,
) -> list[QualityRow]:
    """The combined quality score per subject and period, over the tickets resolved between since and until."""
    column = SUBJECT_COLUMN[by]
    period = "NULL::timestamptz" if bucket == "all" else f"date_trunc('{bucket}', resolved_at, 'UTC')"
    rows = await pool.fetch(
        f"""WITH t AS (
              SELECT {column} AS subject, {period} AS period, score, internal_score,
                CASE WHEN score IS NOT NULL AND internal_score IS NOT NULL
                       THEN ($1::float8 * (score - 1) * 25.0 + $2::float8 * internal_score)
                            / ($1::float8 + $2::float8)
                     WHEN score IS NOT NULL THEN (score - 1) * 25.0
                     ELSE internal_score END AS combined
              FROM quality_tickets
              WHERE resolved_at >= $3 AND resolved_at < $4 AND ($5::text IS NULL OR {column} = $5))
            SELECT subject, period, count(*) AS tickets, count(score) AS rated, avg(score) AS average_rating,
                   count(internal_score) AS assessed, avg(internal_score) AS average_internal,
                   avg(combined) AS combined
            FROM t GROUP BY subject, period ORDER BY period NULLS FIRST, subject NULLS FIRST LIMIT $6""",
        float(weights.get("customer", 0.0)), float(weights.get("internal", 0.0)), since, until, subject, limit,
    )

    def r2(v: Any) -> float | None:
        return None if v is None else round(float(v), 2)

    return [QualityRow(r["subject"], r["period"], r["tickets"], r["rated"], r2(r["average_rating"]), r["assessed"],
                       r2(r["average_internal"]), r2(r["combined"])) for r in rows]


async def sample(pool: asyncpg.Pool, limit: int) -> list[dict[str, Any]]:
    """Resolved tickets in the assessment sample that no supervisor has assessed yet, latest first."""
    rows = await pool.fetch(
        """SELECT ticket_id, service_type, technician_id, team, resolved_at, score FROM quality_tickets
           WHERE sampled AND resolved_at IS NOT NULL AND assessed_at IS NULL
           ORDER BY resolved_at DESC, ticket_id LIMIT $1""",
        limit,
    )
    return [dict(r) for r in rows]
