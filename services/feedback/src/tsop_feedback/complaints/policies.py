"""What other services' events open in the complaints context, and the worker that opens it.

``QualitySignals`` follows the tickets, complaints and incidents topics. It keeps ``quality_tickets`` (see
``projection``) and notes in the inbox, in the same transaction as its offset:

- a Rated with a score at or below the policy's ``low_score`` whose customer said the problem was solved
  (``solved`` true: "solved but unhappy") → a complaint (a low score *not* solved reopens the ticket instead:
  that is the rating's own business);
- a RequestSubmitted whose TMF621 ``ticketType`` (or service type) the policy maps to a complaint type → a
  complaint linked to that ticket (a channel files a complaint through TMF621 without a new endpoint);
- a low score that makes ``low_score_pattern.count`` low scores within its period for one technician,
  service type or team → a corrective improvement action (one per subject and period);
- an incident's post-incident review (``tsop.incident.review-published.v1``) → one improvement action per
  item of its ``improvement_actions``.

``drain`` runs the commands for the inbox and empties it; each command is idempotent by a derived id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, ClassVar, Literal

import asyncpg
from pydantic import BaseModel, ConfigDict

from tsop_events import schemas as wire
from tsop_events.consumer import Incoming, ProjectionSink
from tsop_events.errors import DomainError
from tsop_events.runtime import Service
from tsop_events.schemas import WireEvent
from tsop_events.topics import Topic
from tsop_feedback.commands import FeedbackApp
from tsop_feedback.complaints import commands, projection
from tsop_feedback.complaints.domain import Policy, densest_window

log = logging.getLogger(__name__)

REVIEW_PUBLISHED = "tsop.incident.review-published.v1"


class PlannedAction(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    title: str
    kind: Literal["corrective", "preventive"]
    owner: str
    due: date


class ReviewPublished(WireEvent):
    """Incident's post-incident review as far as complaints need it, read tolerantly (the incident service owns
    the event; fields added there do not break this reader). Not in the catalogue: incident publishes it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    incident_id: str
    improvement_actions: list[PlannedAction] = []

    def key(self) -> str:
        return self.incident_id


PATTERN_LOCK = "SELECT pg_advisory_xact_lock(hashtext('tsop-feedback-low-score-pattern'))"

# the batch's plain ratings (above the low score), written together at the first of them (``QualitySignals``)
_PLAIN_RATINGS: ContextVar[PlainRatings | None] = ContextVar("plain_ratings", default=None)


@dataclass
class PlainRatings:
    ratings: dict[str, wire.Rated]
    written: bool = False
    low: bool = False  # the batch holds a low score: it takes the pattern lock before anything else
    serialised: bool = False  # the pattern lock is held (to the commit)
    records: Sequence[Incoming] = ()
    upserted: set[int] | None = None  # offsets of the records the batch's upserts wrote (``upserts``), once known


# the kinds of record whose row write is an upsert of columns no other kind writes or reads (``upserts``)
_UPSERTED = (wire.RequestSubmitted, wire.Assigned, wire.TicketAssessed)


@dataclass
class Upserts:
    """What ``upserts`` found may be written together, by kind, and the offsets of those records."""

    submitted: list[wire.RequestSubmitted]
    assigned: list[wire.Assigned]
    assessed: list[wire.TicketAssessed]
    offsets: set[int]


def upserts(records: Sequence[Incoming], low_score: int) -> Upserts:
    """The records of ``records`` that may be written together, one statement per kind: a ticket's submission,
    assignment and assessment each set their own columns, so a ticket whose records in the batch are only those, at
    most one of each kind, ends as record by record whatever the order. A ticket with anything else in the batch (an
    update, a resolution, a low rating: they write or read the columns of the others) or twice the same kind stays
    on the record-by-record path, all of its records; a plain rating (its own columns) does not hold it back."""
    kinds: dict[str, list[Incoming]] = {}
    mixed: set[str] = set()
    for rec in records:
        ev = rec.event
        ticket = getattr(ev, "ticket_id", None)
        if not isinstance(ticket, str):
            continue
        if isinstance(ev, _UPSERTED):
            kinds.setdefault(ticket, []).append(rec)
        elif not (isinstance(ev, wire.Rated) and ev.score > low_score):
            mixed.add(ticket)
    out = Upserts([], [], [], set())
    for ticket, recs in kinds.items():
        if ticket in mixed or len({type(r.event) for r in recs}) < len(recs):
            continue
        for rec in recs:
            ev = rec.event
            if isinstance(ev, wire.RequestSubmitted):
                out.submitted.append(ev)
            elif isinstance(ev, wire.Assigned):
                out.assigned.append(ev)
            elif isinstance(ev, wire.TicketAssessed):
                out.assessed.append(ev)
            out.offsets.add(rec.offset)
    return out


def plain_ratings(records: Sequence[Incoming], low_score: int) -> dict[str, wire.Rated]:
    """The last rating of each ticket rated in ``records`` above ``low_score`` and never at or below it there: its
    row is all such a rating writes (a low one also reads the projection and notes complaints and patterns, in
    order, so a ticket with one stays on the record-by-record path)."""
    out: dict[str, wire.Rated] = {}
    low: set[str] = set()
    for rec in records:
        ev = rec.event
        if isinstance(ev, wire.Rated):
            if ev.score <= low_score:
                low.add(ev.ticket_id)
            out[ev.ticket_id] = ev
    return {t: ev for t, ev in out.items() if t not in low}


class QualitySignals(ProjectionSink):
    name: ClassVar[str] = "feedback-complaint-signals"
    topics: ClassVar[tuple[Topic, ...]] = (Topic.tickets, Topic.complaints, Topic.incidents)
    event_types: ClassVar[frozenset[str] | None] = frozenset({
        wire.RequestSubmitted.event_type, wire.RequestUpdated.event_type, wire.Assigned.event_type,
        wire.Resolved.event_type, wire.Rated.event_type, wire.TicketAssessed.event_type, REVIEW_PUBLISHED,
    })
    ddl: ClassVar[tuple[str, ...]] = projection.DDL
    # the review read tolerantly; every other type as the catalogue reads it (decoded once for the process's sinks)
    own_models: ClassVar[Mapping[str, type[WireEvent]]] = {REVIEW_PUBLISHED: ReviewPublished}

    def __init__(self, pool: asyncpg.Pool, policy: Policy) -> None:
        super().__init__(pool)
        self.policy = policy

    @classmethod
    def of(cls, svc: Service[FeedbackApp]) -> QualitySignals:
        return cls(svc.pool, commands.desk(svc).policy)

    async def process(
        self, epoch: str, topic: str, partition: int, records: Sequence[Incoming], last_offset: int
    ) -> None:
        """As every projection, in one transaction with the offset; the batch's plain ratings (a customer's score
        above the low one: one row each, nothing else read or noted) in one statement, not one each."""
        low = any(isinstance(r.event, wire.Rated) and r.event.score <= self.policy.low_score for r in records)
        token = _PLAIN_RATINGS.set(PlainRatings(plain_ratings(records, self.policy.low_score), low=low,
                                                records=records))
        try:
            await super().process(epoch, topic, partition, records, last_offset)
        finally:
            _PLAIN_RATINGS.reset(token)

    async def apply(self, conn: asyncpg.Connection, incoming: Incoming) -> None:
        plain = _PLAIN_RATINGS.get()
        if plain is not None and plain.low:  # the first lock of the batch's transaction (see ``_serialise``)
            await self._serialise(conn, plain)
        ev = incoming.event
        if plain is not None and isinstance(ev, _UPSERTED):
            if plain.upserted is None:  # the first applied: it and those after it (a batch may begin with some done)
                plain.upserted = await self._upsert(conn, [r for r in plain.records if r.offset >= incoming.offset])
            if incoming.offset in plain.upserted:
                if isinstance(ev, wire.RequestSubmitted):
                    await self._note_complaint_ticket(conn, ev)
                return
        if isinstance(ev, wire.RequestSubmitted):
            await self._submitted(conn, ev)
        elif isinstance(ev, wire.RequestUpdated):
            changes = {k: v for k, v in ev.changes.items() if k in ("customer_id", "region") and isinstance(v, str)}
            if changes:
                await conn.execute(
                    "UPDATE quality_tickets SET customer_id = COALESCE($2, customer_id), region = COALESCE($3, region) "
                    "WHERE ticket_id = $1", ev.ticket_id, changes.get("customer_id"), changes.get("region"))
        elif isinstance(ev, wire.Assigned):
            await conn.execute(
                "INSERT INTO quality_tickets (ticket_id, technician_id) VALUES ($1, $2) "
                "ON CONFLICT (ticket_id) DO UPDATE SET technician_id = EXCLUDED.technician_id",
                ev.ticket_id, ev.technician_id)
        elif isinstance(ev, wire.Resolved):
            # the team: the policy's for the technician, else the ticket's region (Policy.team_of), in one write
            await conn.execute(
                """INSERT INTO quality_tickets (ticket_id, technician_id, resolved_at, sampled, team)
                   VALUES ($1, $2, $3, $4, $5)
                   ON CONFLICT (ticket_id) DO UPDATE SET technician_id = EXCLUDED.technician_id,
                     resolved_at = EXCLUDED.resolved_at, sampled = EXCLUDED.sampled,
                     team = COALESCE(EXCLUDED.team, NULLIF(quality_tickets.region, ''))""",
                ev.ticket_id, ev.technician_id, ev.resolved_at, self.policy.sampled(ev.ticket_id),
                self.policy.teams.get(ev.technician_id))
        elif isinstance(ev, wire.Rated):
            plain = _PLAIN_RATINGS.get()
            if plain is None or ev.ticket_id not in plain.ratings:
                await self._rated(conn, ev)
            elif not plain.written:  # the first plain rating of the batch writes them all (an idempotent upsert
                # of each ticket's last rating in the batch; its columns no other event writes)
                ratings = plain.ratings
                await conn.execute(
                    "INSERT INTO quality_tickets (ticket_id, score, solved, rated_at) "
                    "SELECT * FROM unnest($1::text[], $2::int[], $3::boolean[], $4::timestamptz[]) "
                    "ON CONFLICT (ticket_id) DO UPDATE SET score = EXCLUDED.score, solved = EXCLUDED.solved, "
                    "rated_at = EXCLUDED.rated_at",
                    list(ratings), [r.score for r in ratings.values()], [r.solved for r in ratings.values()],
                    [r.rated_at for r in ratings.values()])
                plain.written = True
        elif isinstance(ev, wire.TicketAssessed):
            await conn.execute(
                "INSERT INTO quality_tickets (ticket_id, internal_score, assessed_at) VALUES ($1, $2, $3) "
                "ON CONFLICT (ticket_id) DO UPDATE SET internal_score = EXCLUDED.internal_score, "
                "assessed_at = EXCLUDED.assessed_at",
                ev.ticket_id, ev.score, ev.assessed_at)
        elif isinstance(ev, ReviewPublished):
            for i, planned in enumerate(ev.improvement_actions):
                await projection.note(conn, f"review:{ev.incident_id}:{i}", "review", {
                    "incident_id": ev.incident_id, "index": i, "title": planned.title, "kind": planned.kind,
                    "owner": planned.owner, "due": planned.due.isoformat()})

    @staticmethod
    async def _serialise(conn: asyncpg.Connection, plain: PlainRatings | None) -> None:
        """The pattern counts other tickets' low scores, applied by other partitions' transactions (another instance
        of feedback, at the same time): one low score's check at a time, to its commit, so the later of two
        concurrent ones sees the earlier's score (read before it committed, neither saw the other's and a pattern
        went unnoticed). A low score is rare: they wait on each other, nothing else does.

        Taken before the batch locks any row (``process`` says whether the batch holds a low score; its first
        record takes it): a batch that held a ticket's row while it waited for the lock could wait on its holder
        while the holder waited, through a complaints-topic batch (TicketAssessed of tickets of both partitions),
        on that row, a deadlock."""
        if plain is not None and plain.serialised:
            return
        await conn.execute(PATTERN_LOCK)
        if plain is not None:
            plain.serialised = True

    async def _upsert(self, conn: asyncpg.Connection, records: Sequence[Incoming]) -> set[int]:
        """Write the submissions, assignments and assessments ``upserts`` allows in one statement per kind, as their
        records one by one would; the offsets written."""
        found = upserts(records, self.policy.low_score)
        if submitted := found.submitted:
            await conn.execute(
                """INSERT INTO quality_tickets (ticket_id, customer_id, channel_id, service_type, region, ticket_type)
                   SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
                   ON CONFLICT (ticket_id) DO UPDATE SET customer_id = EXCLUDED.customer_id,
                     channel_id = EXCLUDED.channel_id, service_type = EXCLUDED.service_type,
                     region = EXCLUDED.region, ticket_type = EXCLUDED.ticket_type""",
                [e.ticket_id for e in submitted], [e.customer_id for e in submitted],
                [e.channel_id for e in submitted], [e.service_type for e in submitted],
                [e.region for e in submitted], [_ticket_type(e) for e in submitted])
        if assigned := found.assigned:
            await conn.execute(
                "INSERT INTO quality_tickets (ticket_id, technician_id) "
                "SELECT * FROM unnest($1::text[], $2::text[]) "
                "ON CONFLICT (ticket_id) DO UPDATE SET technician_id = EXCLUDED.technician_id",
                [e.ticket_id for e in assigned], [e.technician_id for e in assigned])
        if assessed := found.assessed:
            await conn.execute(
                "INSERT INTO quality_tickets (ticket_id, internal_score, assessed_at) "
                "SELECT * FROM unnest($1::text[], $2::float8[], $3::timestamptz[]) "
                "ON CONFLICT (ticket_id) DO UPDATE SET internal_score = EXCLUDED.internal_score, "
                "assessed_at = EXCLUDED.assessed_at",
                [e.ticket_id for e in assessed], [e.score for e in assessed], [e.assessed_at for e in assessed])
        return found.offsets

    async def _submitted(self, conn: asyncpg.Connection, ev: wire.RequestSubmitted) -> None:
        ticket_type = _ticket_type(ev)
        await conn.execute(
            """INSERT INTO quality_tickets (ticket_id, customer_id, channel_id, service_type, region, ticket_type)
               VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (ticket_id) DO UPDATE SET customer_id = EXCLUDED.customer_id,
                 channel_id = EXCLUDED.channel_id, service_type = EXCLUDED.service_type, region = EXCLUDED.region,
                 ticket_type = EXCLUDED.ticket_type""",
            ev.ticket_id, ev.customer_id, ev.channel_id, ev.service_type, ev.region, ticket_type)
        await self._note_complaint_ticket(conn, ev)

    async def _note_complaint_ticket(self, conn: asyncpg.Connection, ev: wire.RequestSubmitted) -> None:
        """A ticket of a type the policy maps to a complaint: note the complaint to open."""
        ticket_type = _ticket_type(ev)
        complaint_type = self.policy.complaint_type_for_ticket(ticket_type)
        if complaint_type is None:
            complaint_type = self.policy.complaint_type_for_ticket(ev.service_type)
        if complaint_type is not None:
            await projection.note(conn, f"ticket:{ev.ticket_id}", "ticket", {
                "ticket_id": ev.ticket_id, "customer_id": ev.customer_id, "channel_id": ev.channel_id,
                "complaint_type": complaint_type, "description": ev.description,
                "at": ev.submitted_at.isoformat()})

    async def _rated(self, conn: asyncpg.Connection, ev: wire.Rated) -> None:
        await conn.execute(
            "INSERT INTO quality_tickets (ticket_id, score, solved, rated_at) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (ticket_id) DO UPDATE SET score = EXCLUDED.score, solved = EXCLUDED.solved, "
            "rated_at = EXCLUDED.rated_at",
            ev.ticket_id, ev.score, ev.solved, ev.rated_at)
        if ev.score > self.policy.low_score:
            return
        await self._serialise(conn, _PLAIN_RATINGS.get())
        row = await projection.ticket_fact(conn, ev.ticket_id) or {}
        if ev.solved is True:
            await projection.note(conn, f"rating:{ev.ticket_id}", "rating", {
                "ticket_id": ev.ticket_id, "customer_id": row.get("customer_id") or "",
                "channel_id": row.get("channel_id"), "score": ev.score, "comment": ev.comment,
                "tags": list(ev.tags), "at": ev.rated_at.isoformat()})
        pattern = self.policy.low_score_pattern
        period = timedelta(days=pattern.within_days)
        for kind in pattern.by:
            column = projection.SUBJECT_COLUMN[kind]
            subject = row.get(column)
            if not subject:
                continue
            times = await projection.low_score_times(
                conn, column, subject, self.policy.low_score, ev.rated_at - period, ev.rated_at + period)
            count, last = densest_window(times, ev.rated_at, period)
            if count >= pattern.count:
                await projection.note(conn, f"pattern:{kind}:{subject}:{ev.ticket_id}", "pattern", {
                    "subject_kind": kind, "subject": subject, "count": count, "at": last.isoformat()})


def _ticket_type(ev: wire.RequestSubmitted) -> str:
    return str(ev.attributes.get("ticketType") or ev.service_type)


def _due(day: str) -> datetime:
    return datetime.combine(date.fromisoformat(day), time(23, 59, 59), UTC)


def rating_description(payload: dict[str, Any]) -> str:
    tags = ", ".join(payload.get("tags") or []) or "none"
    comment = payload.get("comment") or "no comment"
    return f"Rated {payload['score']} of 5 although the problem was solved (tags: {tags}): {comment}"


async def open_one(svc: Service[FeedbackApp], kind: str, p: dict[str, Any]) -> None:
    """Run the command one inbox entry asks for (idempotent)."""
    if kind == "rating":
        await commands.receive_from_bus(
            svc, f"rating:{p['ticket_id']}", customer_id=p["customer_id"], channel_id=p["channel_id"],
            source="rating", complaint_type=commands.desk(svc).policy.rating_complaint_type,
            description=rating_description(p), ticket_id=p["ticket_id"], at=datetime.fromisoformat(p["at"]),
            rating_score=p["score"])
    elif kind == "ticket":
        await commands.receive_from_bus(
            svc, f"ticket:{p['ticket_id']}", customer_id=p["customer_id"], channel_id=p["channel_id"],
            source="ticket", complaint_type=p["complaint_type"], description=p["description"],
            ticket_id=p["ticket_id"], at=datetime.fromisoformat(p["at"]))
    elif kind == "pattern":
        await commands.open_action_from_pattern(
            svc, p["subject_kind"], p["subject"], count=p["count"], at=datetime.fromisoformat(p["at"]))
    elif kind == "review":
        await commands.open_action_from_review(
            svc, p["incident_id"], p["index"], title=p["title"], kind=p["kind"], owner=p["owner"], due=_due(p["due"]))
    else:
        raise ValueError(f"unknown inbox entry {kind!r}")


async def drain_once(svc: Service[FeedbackApp]) -> int:
    """Open what the inbox holds; how many entries were done."""
    count = 0
    entries = await projection.inbox(svc.pool)
    # an entry that failed here and that another instance has done since no longer fails here
    svc.faults.only("complaints inbox entry ", {f"complaints inbox entry {key}" for key, _, _ in entries})
    for key, kind, payload in entries:
        try:
            await open_one(svc, kind, payload)
        except DomainError as exc:  # refused for good (e.g. a complaint type the policy no longer has): set aside
            log.error("complaints inbox entry %s refused and dropped: %s", key, exc)
        except Exception as exc:  # noqa: BLE001 - the entry stays and is tried again; the others go on
            svc.faults.failed(f"complaints inbox entry {key}", exc)  # logged once while it lasts, in /readyz
            continue
        svc.faults.ok(f"complaints inbox entry {key}")
        await projection.done(svc.pool, key)
        count += 1
    return count


async def drain(svc: Service[FeedbackApp], every: float = 0.25) -> None:
    """The inbox worker: what the bus asked for, opened soon after it was read."""
    while True:
        if not await drain_once(svc):
            await asyncio.sleep(every)
