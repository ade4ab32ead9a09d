"""Complaints' use cases: each loads, decides and saves through ``svc.commands.run`` (tsop_events.commands).

``Desk`` is this context's handle: the operator's policy and the complaint board (``views.ComplaintBoard``),
kept beside feedback's event store in ``svc.extras`` (``desk(svc)``). Time comes from feedback's clock.

Who may do what is decided here, once: a channel system acts only on the complaints it filed
(``caller.channel_id``); agents, supervisors and auditors see all; what each route admits is in ``api``.
A complaint opened by the bus (a low rating, a complaint-type ticket, an incident review) has an id
derived from its cause, so the same cause read twice opens it once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Literal
from uuid import UUID, uuid4

from tsop_events.auth import Principal, Role
from tsop_events.commands import Idempotency, UnitOfWork
from tsop_events.envelope import derived_id
from tsop_events.errors import Conflict, Forbidden, NotFound
from tsop_events.runtime import Service
from tsop_feedback.commands import FeedbackApp, case_id, queue_notification
from tsop_feedback.complaints import views
from tsop_feedback.complaints.domain import (
    DEFAULT_POLICY,
    ActionKind,
    Assessment,
    Complaint,
    ComplaintHistory,
    ImprovementAction,
    PatternWatch,
    Policy,
    Source,
)
from tsop_feedback.domain import FeedbackCase

POLICY_KEY, DESK_KEY = "complaints_policy", "complaints_desk"
STAFF = (Role.agent, Role.supervisor, Role.auditor)


class Desk:
    """The complaints context of one feedback process: its policy and its board."""

    def __init__(self, app: FeedbackApp, policy: Policy) -> None:
        self.app, self.policy = app, policy
        self.board = views.ComplaintBoard(app)


def desk(svc: Service[FeedbackApp]) -> Desk:
    """This process's desk (made on first use, with the policy ``bootstrap`` put in ``svc.extras``)."""
    found = svc.extras.get(DESK_KEY)
    if not isinstance(found, Desk):
        policy = svc.extras.get(POLICY_KEY)
        found = Desk(svc.app, policy if isinstance(policy, Policy) else DEFAULT_POLICY)
        svc.extras[DESK_KEY] = found
    return found


def channel_of(caller: Principal) -> str | None:
    """The channel a caller acts for: a registered channel system's id (a staff token in the channel role: its
    subject); None for staff."""
    if caller.has(*STAFF) or Role.channel not in caller.roles:
        return None
    return caller.channel_id or caller.subject


def _check_access(c: Complaint, caller: Principal) -> None:
    channel = channel_of(caller)
    if channel is not None and c.channel_id != channel:
        raise Forbidden("this complaint was filed by another channel", "complaint_id")


def _now(svc: Service[FeedbackApp]) -> datetime:
    return svc.app.clock.now()


# ---------------------------------------------------------------- telling the customer (§4.3)

# which step of a complaint's life the customer is told of, by the act that made it
STEP_OF = {"acknowledge": "complaint_acknowledged", "answer": "complaint_answered", "reject": "complaint_escalated",
           "escalate": "complaint_escalated", "accept": "complaint_closed", "close": "complaint_closed",
           "timer": "complaint_escalated"}


def tell_customer(uow: UnitOfWork, svc: Service[FeedbackApp], c: Complaint, act: str, policy: Policy) -> None:
    """Queue the message telling the customer of this step of their complaint, through the signed callback of
    the ticket it is linked to (the first with one; of a channel's complaint, the first that channel submitted)
    and their channel's template; nothing when no linked ticket has one. The message derives from the
    complaint's version: each step is told once."""
    step = STEP_OF.get(act)
    if step is None:
        return
    case = next((k for t in c.ticket_ids if (k := uow.find(FeedbackCase, case_id(t))) is not None
                 and k.callback_url and (c.channel_id is None or k.channel_id == c.channel_id)), None)
    if case is None or case.callback_url is None:
        return
    kind = policy.complaint_types.get(c.complaint_type)
    values: dict[str, str | None] = {
        "complaint_id": str(c.id), "complaint_type": kind.name if kind else c.complaint_type, "status": c.status,
        "answer": (c.answer or {}).get("answer"), "answer_by": c.answer_by.isoformat(timespec="minutes"),
        "level": str(c.escalation_level), "closed_basis": (c.closed or {}).get("basis"),
    }
    queue_notification(uow, svc.app, cause=f"complaint:{c.id}:{c.version}", ticket_id=case.ticket_id,
                       url=case.callback_url, channel_id=c.channel_id or case.channel_id, step=step,
                       at=_now(svc), values=values)


# ---------------------------------------------------------------- complaints


def _history(uow: UnitOfWork, customer_id: str, cause: str) -> ComplaintHistory:
    """The customer's complaints about one cause (made on first use, saved with the complaint)."""
    hid = ComplaintHistory.id_for(customer_id, cause)
    history = uow.find(ComplaintHistory, hid)
    if history is None:
        history = ComplaintHistory(id=hid)
        uow.add(history)
    return history


def _receive(
    uow: UnitOfWork, policy: Policy, cid: UUID, *, customer_id: str, channel_id: str | None, source: Source,
    complaint_type: str, description: str, ticket_ids: list[str], by: str, at: datetime,
    rating_score: int | None = None,
) -> Complaint:
    policy.type_of(complaint_type)
    history = _history(uow, customer_id, complaint_type)
    repeats = history.note(str(cid), at, timedelta(days=policy.repeat_within_days))
    c = Complaint.receive(
        cid, policy, customer_id=customer_id, channel_id=channel_id, source=source, complaint_type=complaint_type,
        description=description, ticket_ids=ticket_ids, by=by, at=at, repeat_of=repeats, rating_score=rating_score,
    )
    uow.add(c)
    return c


async def receive(
    svc: Service[FeedbackApp], caller: Principal, *, customer_id: str, complaint_type: str, description: str,
    ticket_ids: list[str], idempotency_key: str | None, body: Any,
) -> tuple[Complaint, bool]:
    """A complaint filed by a channel (for its own customer) or an agent; (complaint, replayed)."""
    d = desk(svc)
    channel = channel_of(caller)
    source: Source = "channel" if channel is not None else "agent"

    # with a key, the complaint's id derives from it, so its fingerprint can be keyed by the complaint's data key
    # before it exists: the description is personal (docs/erasure.md)
    cid = derived_id("complaint-key", caller.subject, idempotency_key) if idempotency_key else uuid4()

    def decide(uow: UnitOfWork) -> Complaint:
        return _receive(uow, d.policy, cid, customer_id=customer_id, channel_id=channel, source=source,
                        complaint_type=complaint_type, description=description, ticket_ids=ticket_ids,
                        by=caller.subject, at=_now(svc))

    key = await asyncio.to_thread(
        Idempotency.of, f"complaint:{caller.subject}", idempotency_key, body, keyring=svc.app.keyring,
        subject=str(cid), customer=customer_id) if idempotency_key else None
    return await svc.commands.run_once(
        key, decide, lambda c: str(c.id), lambda uow, cid: uow.load(Complaint, UUID(cid)))


async def receive_from_bus(
    svc: Service[FeedbackApp], cause: str, *, customer_id: str, channel_id: str | None,
    source: Literal["rating", "ticket"], complaint_type: str, description: str, ticket_id: str, at: datetime,
    rating_score: int | None = None,
) -> Complaint:
    """A complaint another service's event opened (a low rating called solved, a complaint-type ticket); its id
    derives from ``cause``, so it is opened once however often the event is read."""
    d = desk(svc)
    cid = derived_id("complaint", cause)

    def decide(uow: UnitOfWork) -> Complaint:
        found = uow.find(Complaint, cid)
        if found is not None:
            return found
        return _receive(uow, d.policy, cid, customer_id=customer_id or f"ticket:{ticket_id}", channel_id=channel_id,
                        source=source, complaint_type=complaint_type, description=description,
                        ticket_ids=[ticket_id], by=source, at=at, rating_score=rating_score)

    return await svc.commands.run(decide)


async def complaint(svc: Service[FeedbackApp], cid: UUID, caller: Principal) -> Complaint:
    def read(uow: UnitOfWork) -> Complaint:
        c = uow.load(Complaint, cid, "complaint_id", "complaint")
        _check_access(c, caller)
        return c

    found = await svc.commands.run(read)
    return found


async def change(svc: Service[FeedbackApp], cid: UUID, caller: Principal, act: str, **args: Any) -> Complaint:
    """One step of a complaint's life (``act`` names the domain method); refusals are 409s naming the state."""
    d = desk(svc)

    def decide(uow: UnitOfWork) -> Complaint:
        c = uow.load(Complaint, cid, "complaint_id", "complaint")
        _check_access(c, caller)
        now, by = _now(svc), caller.subject
        if act == "acknowledge":
            c.acknowledge(by, now)
        elif act == "categorise":
            kind, previous = args["complaint_type"], c.complaint_type
            c.categorise(d.policy, kind, by, now, _history(uow, c.customer_id, kind))
            if c.complaint_type != previous:
                _history(uow, c.customer_id, previous).forget(str(c.id))
        elif act == "link":
            c.link_ticket(args["ticket_id"], by, now)
        elif act == "note":
            c.add_note(args["note"], by, now)
        elif act == "answer":
            c.give_answer(args["answer"], by, now)
        elif act == "accept":
            c.accept_answer(by, now)
        elif act == "reject":
            c.reject_answer(d.policy, args["reason"], by, now)
        elif act == "escalate":
            c.escalate(args["reason"], by, now)
        elif act == "close":
            c.close(args["basis"], args.get("note"), by, now)
        else:  # pragma: no cover - the routes name the acts
            raise ValueError(act)
        if c.status == "closed" and c.source == "ticket" and c.ticket_ids:
            # a ticket the complaint desk worked (a complaint-type request) closes with its complaint
            case = uow.find(FeedbackCase, case_id(c.ticket_ids[0]))
            if case is not None:
                case.close_with_complaint(now)
        tell_customer(uow, svc, c, act, d.policy)
        return c

    return await svc.commands.run(decide)


async def complaints(svc: Service[FeedbackApp], caller: Principal, **filters: Any) -> list[views.ComplaintSummary]:
    board = desk(svc).board  # read off the event loop: a refresh in another thread may hold the board's lock
    return await board.read(lambda: board.complaints(channel_of(caller), _now(svc), **filters))


async def _escalate_each(
    svc: Service[FeedbackApp], overdue: Callable[[datetime], list[UUID]], escalate: Callable[[UnitOfWork, UUID], int],
) -> int:
    """Escalate, each in its own command, what the board says is ``overdue`` now (read off the event loop: a
    refresh in another thread may hold the board's lock); how many escalations."""
    board = desk(svc).board
    done = 0
    for item in await board.read(lambda: overdue(_now(svc))):

        def one(uow: UnitOfWork, item: UUID = item) -> int:
            return escalate(uow, item)

        done += await svc.commands.run(one)
    if done:
        await asyncio.to_thread(board.refresh)
    return done


async def escalate_overdue(svc: Service[FeedbackApp]) -> int:
    """Escalate every complaint whose deadline passed (the board says which); how many escalations."""

    def escalate(uow: UnitOfWork, cid: UUID) -> int:
        c = uow.load(Complaint, cid)
        escalated = c.escalate_overdue(_now(svc))
        if escalated:
            tell_customer(uow, svc, c, "timer", desk(svc).policy)
        return escalated

    return await _escalate_each(svc, desk(svc).board.due, escalate)


# ---------------------------------------------------------------- improvement actions


async def open_action(
    svc: Service[FeedbackApp], caller: Principal, *, title: str, kind: ActionKind, complaint_id: UUID | None,
    owner: str, due: datetime, idempotency_key: str | None, body: Any,
) -> tuple[ImprovementAction, bool]:
    """An improvement action opened by hand, from a complaint or on its own; (action, replayed)."""

    def decide(uow: UnitOfWork) -> ImprovementAction:
        if complaint_id is not None:
            uow.load(Complaint, complaint_id, "complaint_id", "complaint")
        action = ImprovementAction(
            id=uuid4(), title=title, kind=kind, origin="complaint" if complaint_id else "manual",
            origin_id=str(complaint_id) if complaint_id else "", owner=owner, due=due, opened_by=caller.subject,
            opened_at=_now(svc),
        )
        uow.add(action)
        return action

    key = Idempotency.of(f"improvement:{caller.subject}", idempotency_key, body) if idempotency_key else None
    return await svc.commands.run_once(
        key, decide, lambda a: str(a.id), lambda uow, aid: uow.load(ImprovementAction, UUID(aid)))


async def open_action_from_review(
    svc: Service[FeedbackApp], incident_id: str, index: int, *, title: str, kind: ActionKind, owner: str,
    due: datetime,
) -> ImprovementAction:
    """An action an incident review published (once per review item)."""
    aid = derived_id("improvement", "incident-review", incident_id, index)

    def decide(uow: UnitOfWork) -> ImprovementAction:
        found = uow.find(ImprovementAction, aid)
        if found is not None:
            return found
        action = ImprovementAction(id=aid, title=title, kind=kind, origin="incident_review", origin_id=incident_id,
                                   owner=owner, due=due, opened_by="incident_review", opened_at=_now(svc))
        uow.add(action)
        return action

    return await svc.commands.run(decide)


async def open_action_from_pattern(
    svc: Service[FeedbackApp], subject_kind: str, subject: str, *, count: int, at: datetime,
) -> ImprovementAction | None:
    """A pattern of low scores for one subject: one corrective action per pattern period (None: one is open)."""
    d = desk(svc)
    pattern = d.policy.low_score_pattern
    wid = PatternWatch.id_for(subject_kind, subject)
    aid = derived_id("improvement", "pattern", subject_kind, subject, at.isoformat())

    def decide(uow: UnitOfWork) -> ImprovementAction | None:
        if uow.find(ImprovementAction, aid) is not None:
            return None
        watch = uow.find(PatternWatch, wid)
        if watch is None:
            watch = PatternWatch(id=wid)
            uow.add(watch)
        if not watch.trigger(str(aid), at, timedelta(days=pattern.within_days)):
            return None
        action = ImprovementAction(
            id=aid, title=f"{count} low scores within {pattern.within_days:g} days for {subject_kind} {subject}",
            kind="corrective", origin="low_score_pattern", origin_id=f"{subject_kind}:{subject}",
            owner=d.policy.action_owner, due=at + timedelta(days=d.policy.action_due_days),
            opened_by="low_score_pattern", opened_at=_now(svc),
        )
        uow.add(action)
        return action

    return await svc.commands.run(decide)


async def action(svc: Service[FeedbackApp], aid: UUID) -> ImprovementAction:
    return await svc.commands.run(lambda uow: uow.load(ImprovementAction, aid, "action_id", "improvement action"))


async def change_action(svc: Service[FeedbackApp], aid: UUID, caller: Principal, act: str,
                        **args: Any) -> ImprovementAction:
    def decide(uow: UnitOfWork) -> ImprovementAction:
        a = uow.load(ImprovementAction, aid, "action_id", "improvement action")
        now, by = _now(svc), caller.subject
        if act == "reassign":
            a.reassign(args.get("owner"), args.get("due"), by, now)
        elif act == "verify":
            a.verify(args["effective"], args["note"], by, now)
        elif act == "close":
            a.close(args.get("note"), by, now)
        else:  # pragma: no cover
            raise ValueError(act)
        return a

    return await svc.commands.run(decide)


async def actions(svc: Service[FeedbackApp], status: str | None, origin: str | None,
                  overdue: bool | None = None) -> list[views.ActionSummary]:
    board = desk(svc).board  # read off the event loop (as complaints)
    return await board.read(lambda: board.actions(status, origin, _now(svc), overdue))


async def escalate_overdue_actions(svc: Service[FeedbackApp]) -> int:
    """Escalate every improvement action past its due date unfinished (the board says which); how many."""
    return await _escalate_each(
        svc, desk(svc).board.actions_due,
        lambda uow, aid: int(uow.load(ImprovementAction, aid).escalate_overdue(_now(svc))),
    )


# ---------------------------------------------------------------- the internal assessment


def assessment_id(ticket_id: str) -> UUID:
    return derived_id("assessment", ticket_id)


async def assess(
    svc: Service[FeedbackApp], ticket_id: str, checks: dict[str, bool], note: str | None, caller: Principal
) -> Assessment:
    """A supervisor's review of a resolved ticket (once per ticket; a second one is a 409)."""
    d = desk(svc)
    score = d.policy.score_checks(checks)
    aid = assessment_id(ticket_id)

    def decide(uow: UnitOfWork) -> Assessment:
        found = uow.find(Assessment, aid)
        if found is not None:
            if (found.checks, found.note, found.assessed_by) == (checks, note, caller.subject):
                return found  # the same review again: a retry
            raise Conflict(f"ticket {ticket_id} was already assessed by {found.assessed_by}", "ticket_id")
        a = Assessment(id=aid, ticket_id=ticket_id, checks=checks, score=score, note=note,
                       assessed_by=caller.subject, assessed_at=_now(svc))
        uow.add(a)
        return a

    return await svc.commands.run(decide)


async def assessment(svc: Service[FeedbackApp], ticket_id: str) -> Assessment:
    def read(uow: UnitOfWork) -> Assessment:
        found = uow.find(Assessment, assessment_id(ticket_id))
        if found is None:
            raise NotFound(f"ticket {ticket_id} has not been assessed", "ticket_id")
        return found

    return await svc.commands.run(read)
