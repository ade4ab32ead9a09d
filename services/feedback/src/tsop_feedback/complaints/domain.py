"""Complaints, improvement actions and internal assessments: the rules. No I/O.

A complaint is received (from a channel, an agent, a low rating the customer called solved, or a ticket
whose type the operator counts as a complaint), acknowledged within its type's deadline, investigated with
notes, answered within its deadline, and closed once the customer accepts the answer; a customer who does
not accept it, or a deadline that passes, escalates it. A second complaint of the same customer about the
same cause within the policy's period is flagged as a repeat.

The operator's data (complaint types and their deadlines, the low-score threshold, the pattern that opens
an improvement action, the assessment checklist, the quality weights) is the ``Policy``.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal
from uuid import UUID

from eventsourcing.domain import Aggregate, event
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tsop_events.envelope import derived_id
from tsop_events.errors import Conflict, Invalid

# ---------------------------------------------------------------- the operator's policy


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ComplaintType(_Strict):
    name: str = Field(description="What the operator calls it.")
    acknowledge_hours: Annotated[float, Field(gt=0)] = Field(description="Acknowledge within this long.")
    answer_hours: Annotated[float, Field(gt=0)] = Field(description="Answer within this long of receipt.")
    ticket_types: tuple[str, ...] = Field(
        default=(), description="TMF621 ticketType names (or catalogue service types) whose tickets are complaints "
        "of this type, matched without regard to case.")


class LowScorePattern(_Strict):
    count: Annotated[int, Field(ge=1)] = Field(description="This many low scores …")
    within_days: Annotated[float, Field(gt=0)] = Field(description="… within this many days …")
    by: tuple[Literal["technician", "service_type", "team"], ...] = Field(
        default=("technician", "service_type"), description="… for one technician, service type or team.")


class QualityWeights(_Strict):
    customer: Annotated[float, Field(ge=0)] = Field(default=0.6, description="Weight of the customer's rating.")
    internal: Annotated[float, Field(ge=0)] = Field(default=0.4, description="Weight of the internal assessment.")

    def as_dict(self) -> dict[str, float]:
        return {"customer": self.customer, "internal": self.internal}


DEFAULT_CHECKLIST = {"standard_followed": 1.0, "log_complete": 1.0, "advice_given": 1.0, "time_kept": 1.0}


class Policy(_Strict):
    """The operator's data for complaints, improvement actions and the internal assessment."""

    complaint_types: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")], ComplaintType]
    repeat_within_days: Annotated[float, Field(gt=0)] = 90
    low_score: Annotated[int, Field(ge=1, le=5)] = Field(
        default=2, description="A rating at or below it, with the problem solved, opens a complaint.")
    rating_complaint_type: str = "service_quality"
    low_score_pattern: LowScorePattern = LowScorePattern(count=3, within_days=30)
    action_due_days: Annotated[float, Field(gt=0)] = 14
    action_owner: str = Field(default="quality-team", description="Who owns an action opened automatically.")
    checklist: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")], Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: dict(DEFAULT_CHECKLIST), min_length=1)
    assessment_share: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.1, description="The share of resolved tickets sampled for the internal assessment.")
    quality_weights: QualityWeights = QualityWeights()
    teams: dict[str, str] = Field(default_factory=dict, description="technician id → team (else the region).")

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        if not self.complaint_types:
            raise ValueError("complaint_types needs at least one type")
        if self.rating_complaint_type not in self.complaint_types:
            raise ValueError(f"rating_complaint_type {self.rating_complaint_type!r} is not one of the complaint_types")
        if self.quality_weights.customer + self.quality_weights.internal <= 0:
            raise ValueError("quality_weights must not all be 0")
        return self

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Policy:
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "policy"
            raise Invalid(first["msg"], where) from None

    @classmethod
    def from_json(cls, text: str, source: str) -> Policy:
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{source}: not JSON: {exc}") from None
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "policy"
            raise ValueError(f"{source}: {where}: {first['msg']}") from None

    def type_of(self, code: str, field: str = "complaint_type") -> ComplaintType:
        found = self.complaint_types.get(code)
        if found is None:
            raise Invalid(f"{code!r} is not a complaint type; one of {', '.join(sorted(self.complaint_types))}", field)
        return found

    def complaint_type_for_ticket(self, ticket_type: str) -> str | None:
        """The complaint type a ticket's TMF621 ticketType (or service type) names, if any."""
        wanted = ticket_type.casefold()
        for code, kind in self.complaint_types.items():
            if any(t.casefold() == wanted for t in kind.ticket_types):
                return code
        return None

    def team_of(self, technician_id: str | None, region: str | None) -> str | None:
        if technician_id and technician_id in self.teams:
            return self.teams[technician_id]
        return region or None

    def sampled(self, ticket_id: str) -> bool:
        """Whether the ticket is in the assessment sample: a stable share, the same on every instance."""
        digest = hashlib.sha256(ticket_id.encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.assessment_share

    def score_checks(self, checks: dict[str, bool]) -> float:
        """The internal score (0 to 100) of a checklist answered item by item."""
        missing = sorted(set(self.checklist) - set(checks))
        if missing:
            raise Invalid(f"every checklist item must be answered; missing {', '.join(missing)}",
                          f"checks.{missing[0]}")
        unknown = sorted(set(checks) - set(self.checklist))
        if unknown:
            raise Invalid(f"is not on the checklist ({', '.join(sorted(self.checklist))})", f"checks.{unknown[0]}")
        total = sum(self.checklist.values())
        return round(100.0 * sum(w for item, w in self.checklist.items() if checks[item]) / total, 2)

    def combined(self, rating: int | None, internal: float | None) -> float | None:
        """The combined quality score (0 to 100) of a ticket: the customer's rating and the internal score,
        weighted; with only one of them, that one."""
        parts: list[tuple[float, float]] = []
        if rating is not None:
            parts.append((self.quality_weights.customer, (rating - 1) * 25.0))
        if internal is not None:
            parts.append((self.quality_weights.internal, internal))
        weight = sum(w for w, _ in parts)
        if not parts:
            return None
        if weight <= 0:
            return round(sum(v for _, v in parts) / len(parts), 2)
        return round(sum(w * v for w, v in parts) / weight, 2)


DEFAULT_POLICY = Policy(
    complaint_types={
        "service_quality": ComplaintType(name="Quality of a service visit", acknowledge_hours=4, answer_hours=72,
                                         ticket_types=("Service Complaint", "Complaint", "customer.complaint")),
        "billing": ComplaintType(name="Billing", acknowledge_hours=24, answer_hours=120,
                                 ticket_types=("Bill Dispute", "Billing Complaint")),
        "network": ComplaintType(name="Network quality", acknowledge_hours=8, answer_hours=96,
                                 ticket_types=("Network Complaint",)),
        "staff_conduct": ComplaintType(name="Staff conduct", acknowledge_hours=4, answer_hours=48),
    },
)


# ---------------------------------------------------------------- refusals


class IllegalTransition(Conflict):
    title = "Not allowed in this state"


# ---------------------------------------------------------------- the complaint

Source = Literal["channel", "agent", "rating", "ticket"]
STATUSES = ("received", "acknowledged", "investigating", "answered", "closed")


class Complaint(Aggregate):
    """One customer's complaint, from receipt to closure (§4.3)."""

    class Event(Aggregate.Event):
        pass

    class Received(Aggregate.Created):
        customer_id: str
        channel_id: str | None
        source: str
        complaint_type: str
        description: str
        ticket_ids: list[str]
        received_by: str
        received_at: datetime
        acknowledge_by: datetime
        answer_by: datetime
        repeat_of: list[str]
        rating_score: int | None

    class Acknowledged(Event):
        acknowledged_by: str
        acknowledged_at: datetime

    class Categorised(Event):
        complaint_type: str
        previous_type: str
        categorised_by: str
        categorised_at: datetime
        repeat_of: list[str]

    class TicketLinked(Event):
        ticket_id: str
        linked_by: str
        linked_at: datetime

    class NoteAdded(Event):
        note: str
        noted_by: str
        noted_at: datetime

    class Answered(Event):
        answer: str
        answered_by: str
        answered_at: datetime

    class AnswerRejected(Event):
        reason: str
        rejected_by: str
        rejected_at: datetime
        answer_by: datetime

    class Escalated(Event):
        reason: str
        level: int
        deadline: datetime | None
        escalated_by: str
        escalated_at: datetime

    class Closed(Event):
        basis: str
        note: str | None
        closed_by: str
        closed_at: datetime

    @event(Received)
    def __init__(
        self,
        id: UUID,  # noqa: A002
        customer_id: str,
        channel_id: str | None,
        source: str,
        complaint_type: str,
        description: str,
        ticket_ids: list[str],
        received_by: str,
        received_at: datetime,
        acknowledge_by: datetime,
        answer_by: datetime,
        repeat_of: list[str],
        rating_score: int | None,
    ) -> None:
        self.customer_id = customer_id
        self.channel_id = channel_id
        self.source = source
        self.complaint_type = complaint_type
        self.description = description
        self.ticket_ids = list(ticket_ids)
        self.received_by = received_by
        self.received_at = received_at
        self.acknowledge_by = acknowledge_by
        self.answer_by = answer_by
        self.repeat_of = list(repeat_of)
        self.rating_score = rating_score
        self.status = "received"
        self.acknowledged_at: datetime | None = None
        self.notes: list[dict[str, str]] = []
        self.answer: dict[str, str] | None = None
        self.escalation_level = 0
        self.escalations: list[dict[str, Any]] = []
        self.closed: dict[str, Any] | None = None

    @staticmethod
    def receive(
        cid: UUID,
        policy: Policy,
        *,
        customer_id: str,
        channel_id: str | None,
        source: Source,
        complaint_type: str,
        description: str,
        ticket_ids: list[str],
        by: str,
        at: datetime,
        repeat_of: list[str],
        rating_score: int | None = None,
    ) -> Complaint:
        kind = policy.type_of(complaint_type)
        if not customer_id.strip():
            raise Invalid("must name the customer", "customer_id")
        return Complaint(
            id=cid, customer_id=customer_id, channel_id=channel_id, source=source, complaint_type=complaint_type,
            description=description, ticket_ids=list(dict.fromkeys(ticket_ids)), received_by=by, received_at=at,
            acknowledge_by=at + timedelta(hours=kind.acknowledge_hours),
            answer_by=at + timedelta(hours=kind.answer_hours), repeat_of=repeat_of, rating_score=rating_score,
        )

    @property
    def repeat(self) -> bool:
        return bool(self.repeat_of)

    def _open(self, what: str) -> None:
        if self.status == "closed":
            raise IllegalTransition(f"complaint {self.id} is closed; it cannot be {what}", "status")

    def acknowledge(self, by: str, at: datetime) -> None:
        self._open("acknowledged")
        if self.status != "received":
            raise IllegalTransition(f"complaint {self.id} was already acknowledged", "status")
        self._acknowledged(acknowledged_by=by, acknowledged_at=at)

    @event(Acknowledged)
    def _acknowledged(self, acknowledged_by: str, acknowledged_at: datetime) -> None:
        self.status = "acknowledged"
        self.acknowledged_at = acknowledged_at

    def categorise(self, policy: Policy, complaint_type: str, by: str, at: datetime,
                   history: ComplaintHistory | None = None) -> None:
        """Put it in another type: a new cause, so whether it repeats is judged again against that cause's
        ``history`` (the customer's complaints of the new type), as of its receipt."""
        self._open("categorised")
        policy.type_of(complaint_type)
        if complaint_type == self.complaint_type:
            return
        repeat_of = []
        if history is not None:
            repeat_of = [c for c in history.note(str(self.id), self.received_at,
                                                 timedelta(days=policy.repeat_within_days)) if c != str(self.id)]
        self._categorised(complaint_type=complaint_type, previous_type=self.complaint_type, categorised_by=by,
                          categorised_at=at, repeat_of=repeat_of)

    @event(Categorised)
    def _categorised(
        self, complaint_type: str, previous_type: str, categorised_by: str, categorised_at: datetime,
        repeat_of: list[str],
    ) -> None:
        self.complaint_type = complaint_type
        self.repeat_of = list(repeat_of)

    def link_ticket(self, ticket_id: str, by: str, at: datetime) -> None:
        self._open("linked to a ticket")
        if ticket_id in self.ticket_ids:
            return
        self._ticket_linked(ticket_id=ticket_id, linked_by=by, linked_at=at)

    @event(TicketLinked)
    def _ticket_linked(self, ticket_id: str, linked_by: str, linked_at: datetime) -> None:
        self.ticket_ids.append(ticket_id)

    def add_note(self, note: str, by: str, at: datetime) -> None:
        self._open("investigated")
        if self.status == "received":
            raise IllegalTransition(f"complaint {self.id} must be acknowledged before it is investigated", "status")
        self._note_added(note=note, noted_by=by, noted_at=at)

    @event(NoteAdded)
    def _note_added(self, note: str, noted_by: str, noted_at: datetime) -> None:
        self.notes.append({"note": note, "by": noted_by, "at": noted_at.isoformat()})
        if self.status == "acknowledged":
            self.status = "investigating"

    def give_answer(self, answer: str, by: str, at: datetime) -> None:
        self._open("answered")
        if self.status == "received":
            raise IllegalTransition(f"complaint {self.id} must be acknowledged before it is answered", "status")
        if self.status == "answered":
            raise IllegalTransition(f"complaint {self.id} was already answered; the customer has not refused the "
                                    "answer", "status")
        self._answered(answer=answer, answered_by=by, answered_at=at)

    @event(Answered)
    def _answered(self, answer: str, answered_by: str, answered_at: datetime) -> None:
        self.status = "answered"
        self.answer = {"answer": answer, "by": answered_by, "at": answered_at.isoformat()}

    def accept_answer(self, by: str, at: datetime) -> None:
        """The customer accepts the answer: the complaint is closed on that basis."""
        self._open("accepted")
        if self.status != "answered":
            raise IllegalTransition(f"complaint {self.id} has no answer to accept", "status")
        self._closed(basis="accepted", note=None, closed_by=by, closed_at=at)

    def reject_answer(self, policy: Policy, reason: str, by: str, at: datetime) -> None:
        """The customer does not accept the answer: escalated, to be answered again within the type's time."""
        self._open("refused")
        if self.status != "answered":
            raise IllegalTransition(f"complaint {self.id} has no answer to refuse", "status")
        answer_by = at + timedelta(hours=policy.type_of(self.complaint_type).answer_hours)
        self._answer_rejected(reason=reason, rejected_by=by, rejected_at=at, answer_by=answer_by)
        self._escalated(reason="answer_not_accepted", level=self.escalation_level + 1, deadline=None,
                        escalated_by=by, escalated_at=at)

    @event(AnswerRejected)
    def _answer_rejected(self, reason: str, rejected_by: str, rejected_at: datetime, answer_by: datetime) -> None:
        self.status = "investigating"
        self.answer = None
        self.answer_by = answer_by

    def escalate(self, reason: str, by: str, at: datetime) -> None:
        """A supervisor escalates by hand."""
        self._open("escalated")
        self._escalated(reason=reason, level=self.escalation_level + 1, deadline=None, escalated_by=by,
                        escalated_at=at)

    def overdue(self, now: datetime) -> list[tuple[str, datetime]]:
        """The deadlines passed and not yet escalated: (reason, deadline)."""
        done = {(e["reason"], e["deadline"]) for e in self.escalations}
        return overdue_deadlines(self.status, self.acknowledge_by, self.answer_by, done, now)

    def escalate_overdue(self, now: datetime) -> int:
        """Escalate every deadline that passed (once each); how many."""
        due = self.overdue(now)
        for reason, deadline in due:
            self._escalated(reason=reason, level=self.escalation_level + 1, deadline=deadline, escalated_by="timer",
                            escalated_at=now)
        return len(due)

    @event(Escalated)
    def _escalated(self, reason: str, level: int, deadline: datetime | None, escalated_by: str,
                   escalated_at: datetime) -> None:
        self.escalation_level = level
        self.escalations.append({
            "reason": reason, "level": level, "deadline": deadline.isoformat() if deadline else None,
            "by": escalated_by, "at": escalated_at.isoformat(),
        })

    def close(self, basis: Literal["supervisor", "withdrawn"], note: str | None, by: str, at: datetime) -> None:
        """Closed without the customer's acceptance: decided by a supervisor, or withdrawn by the customer."""
        self._open("closed again")
        self._closed(basis=basis, note=note, closed_by=by, closed_at=at)

    @event(Closed)
    def _closed(self, basis: str, note: str | None, closed_by: str, closed_at: datetime) -> None:
        self.status = "closed"
        self.closed = {"basis": basis, "note": note, "by": closed_by, "at": closed_at.isoformat()}


def overdue_deadlines(
    status: str, acknowledge_by: datetime, answer_by: datetime, escalated: set[tuple[str, str | None]], now: datetime
) -> list[tuple[str, datetime]]:
    """The deadlines of a complaint that passed and were not escalated yet: (reason, deadline).

    Not acknowledged by ``acknowledge_by``; not answered by ``answer_by`` (a new answer is due after the customer
    refused one, and a new deadline escalates again).
    """
    if status == "closed":
        return []
    due: list[tuple[str, datetime]] = []
    if status == "received" and now > acknowledge_by:
        due.append(("acknowledge_overdue", acknowledge_by))
    if status != "answered" and now > answer_by:
        due.append(("answer_overdue", answer_by))
    return [(r, d) for r, d in due if (r, d.isoformat()) not in escalated]


class ComplaintHistory(Aggregate):
    """One customer's complaints about one cause: what makes a new one a repeat.

    Every complaint of the pair is noted here in the same transaction as its receipt, so two complaints
    received at once on two instances still see each other (one of the saves conflicts and decides again).
    """

    class Started(Aggregate.Created):
        pass

    class Noted(Aggregate.Event):
        complaint_id: str
        at: datetime

    @staticmethod
    def id_for(customer_id: str, cause: str) -> UUID:
        return derived_id("complaint-history", customer_id, cause)

    @event(Started)
    def __init__(self, id: UUID) -> None:  # noqa: A002
        self.complaints: list[tuple[str, datetime]] = []

    def note(self, complaint_id: str, at: datetime, within: timedelta) -> list[str]:
        """Note a complaint; the earlier ones of the same pair within ``within`` before it (its repeats)."""
        earlier = repeats_of(self.complaints, at, within)
        if all(c != complaint_id for c, _ in self.complaints):
            self._noted(complaint_id=complaint_id, at=at)
        return earlier

    @event(Noted)
    def _noted(self, complaint_id: str, at: datetime) -> None:
        self.complaints.append((complaint_id, at))

    def forget(self, complaint_id: str) -> None:
        """The complaint was put in another type: it no longer counts for this cause."""
        if any(c == complaint_id for c, _ in self.complaints):
            self._forgot(complaint_id=complaint_id)

    class Forgot(Aggregate.Event):
        complaint_id: str

    @event(Forgot)
    def _forgot(self, complaint_id: str) -> None:
        self.complaints = [(c, at) for c, at in self.complaints if c != complaint_id]


def repeats_of(earlier: list[tuple[str, datetime]], at: datetime, within: timedelta) -> list[str]:
    """The complaints in ``earlier`` received within ``within`` before ``at`` (not after it)."""
    return [cid for cid, when in earlier if at - within <= when <= at]


# ---------------------------------------------------------------- improvement actions (§4.4)

ActionKind = Literal["corrective", "preventive"]


class ImprovementAction(Aggregate):
    """A corrective or preventive action: opened, owned, due, verified, closed (§4.4)."""

    class Event(Aggregate.Event):
        pass

    class Opened(Aggregate.Created):
        title: str
        kind: str
        origin: str
        origin_id: str
        owner: str
        due: datetime
        opened_by: str
        opened_at: datetime

    class Reassigned(Event):
        owner: str
        due: datetime
        reassigned_by: str
        reassigned_at: datetime

    class Verified(Event):
        effective: bool
        note: str
        verified_by: str
        verified_at: datetime

    class Closed(Event):
        note: str | None
        closed_by: str
        closed_at: datetime

    class Escalated(Event):
        due: datetime
        level: int
        escalated_by: str
        escalated_at: datetime

    @event(Opened)
    def __init__(self, id: UUID, title: str, kind: str, origin: str, origin_id: str, owner: str,  # noqa: A002
                 due: datetime, opened_by: str, opened_at: datetime) -> None:
        self.title, self.kind, self.origin, self.origin_id = title, kind, origin, origin_id
        self.owner, self.due, self.opened_by, self.opened_at = owner, due, opened_by, opened_at
        self.status = "open"
        self.verification: dict[str, Any] | None = None
        self.closed: dict[str, Any] | None = None
        self.escalation_level = 0
        self.escalations: list[dict[str, Any]] = []

    @property
    def escalated_dues(self) -> set[str]:
        return {e["due"] for e in self.escalations}

    def overdue(self, now: datetime) -> bool:
        """Past its due date unfinished (still open: not verified effective, not closed)."""
        return action_overdue(self.status, self.due, set(), now)

    def escalate_overdue(self, now: datetime) -> bool:
        """Escalate once its due date has passed with the action unfinished (once per due date: a new due date
        escalates again when it passes); True if it did. The aggregate decides on its own events, so a restart or
        a second instance escalates nothing twice."""
        if not action_overdue(self.status, self.due, self.escalated_dues, now):
            return False
        self._escalated(due=self.due, level=self.escalation_level + 1, escalated_by="timer", escalated_at=now)
        return True

    @event(Escalated)
    def _escalated(self, due: datetime, level: int, escalated_by: str, escalated_at: datetime) -> None:
        self.escalation_level = level
        self.escalations.append({"due": due.isoformat(), "level": level, "by": escalated_by,
                                 "at": escalated_at.isoformat()})

    def _not_closed(self) -> None:
        if self.status == "closed":
            raise IllegalTransition(f"improvement action {self.id} is closed", "status")

    def reassign(self, owner: str | None, due: datetime | None, by: str, at: datetime) -> None:
        self._not_closed()
        new_owner, new_due = owner or self.owner, due or self.due
        if (new_owner, new_due) == (self.owner, self.due):
            return
        self._reassigned(owner=new_owner, due=new_due, reassigned_by=by, reassigned_at=at)

    @event(Reassigned)
    def _reassigned(self, owner: str, due: datetime, reassigned_by: str, reassigned_at: datetime) -> None:
        self.owner, self.due = owner, due

    def verify(self, effective: bool, note: str, by: str, at: datetime) -> None:
        """Someone checked whether the action worked; an ineffective one stays open to be done again."""
        self._not_closed()
        self._verified(effective=effective, note=note, verified_by=by, verified_at=at)

    @event(Verified)
    def _verified(self, effective: bool, note: str, verified_by: str, verified_at: datetime) -> None:
        self.verification = {"effective": effective, "note": note, "by": verified_by, "at": verified_at.isoformat()}
        self.status = "verified" if effective else "open"

    def close(self, note: str | None, by: str, at: datetime) -> None:
        self._not_closed()
        if self.status != "verified":
            raise IllegalTransition(f"improvement action {self.id} must be verified effective before it is closed",
                                    "status")
        self._closed(note=note, closed_by=by, closed_at=at)

    @event(Closed)
    def _closed(self, note: str | None, closed_by: str, closed_at: datetime) -> None:
        self.status = "closed"
        self.closed = {"note": note, "by": closed_by, "at": closed_at.isoformat()}


def action_overdue(status: str, due: datetime, escalated_dues: set[str], now: datetime) -> bool:
    """Whether an improvement action must be escalated: still open past ``due``, and not escalated for that due
    date yet (``escalated_dues``: the ISO due dates escalated before)."""
    return status == "open" and now > due and due.isoformat() not in escalated_dues


class PatternWatch(Aggregate):
    """When a pattern of low scores for one subject (a technician, a service type, a team) last opened an
    action: a pattern opens one action per period, not one per further low score."""

    class Started(Aggregate.Created):
        pass

    class Triggered(Aggregate.Event):
        action_id: str
        at: datetime

    @staticmethod
    def id_for(subject_kind: str, subject: str) -> UUID:
        return derived_id("pattern-watch", subject_kind, subject)

    @event(Started)
    def __init__(self, id: UUID) -> None:  # noqa: A002
        self.last: datetime | None = None

    def trigger(self, action_id: str, at: datetime, period: timedelta) -> bool:
        if self.last is not None and at - period < self.last:
            return False
        self._triggered(action_id=action_id, at=at)
        return True

    @event(Triggered)
    def _triggered(self, action_id: str, at: datetime) -> None:
        self.last = at


def densest_window(times: list[datetime], t: datetime, period: timedelta) -> tuple[int, datetime]:
    """The most low scores any window of length ``period`` around ``t`` holds, and the last of them.

    Scores arrive in any order (a subject's tickets lie in different partitions), so a pattern is judged on
    every score known around the new one, before and after it: the same scores give the same answer
    whichever arrived last.
    """
    ordered = sorted(times)
    best = (0, t)
    for start in ordered:
        if start > t or t - start > period:
            continue
        inside = [x for x in ordered if start <= x <= start + period]
        if len(inside) > best[0]:
            best = (len(inside), inside[-1])
    return best


# ---------------------------------------------------------------- the internal assessment (§2.3, §4.2)


class Assessment(Aggregate):
    """A supervisor's review of one resolved ticket against the checklist."""

    class Recorded(Aggregate.Created):
        ticket_id: str
        checks: dict[str, bool]
        score: float
        note: str | None
        assessed_by: str
        assessed_at: datetime

    @event(Recorded)
    def __init__(self, id: UUID, ticket_id: str, checks: dict[str, bool], score: float,  # noqa: A002
                 note: str | None, assessed_by: str, assessed_at: datetime) -> None:
        self.ticket_id, self.checks, self.score = ticket_id, dict(checks), score
        self.note, self.assessed_by, self.assessed_at = note, assessed_by, assessed_at
