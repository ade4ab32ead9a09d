"""Channel systems, service requests and their automatic review (§2.1, §2.2). No I/O.

The review is a pure function of the application, the catalogue and *facts*
the caller looked up (an open duplicate, recent submission counts); every
outcome becomes an event carrying its reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from tsop_events.envelope import derived_id
from tsop_events.errors import Conflict, Invalid, NotFound
from tsop_intake.catalogue import Catalogue, ServiceType

Json = str | int | float | bool | None | list["Json"] | dict[str, "Json"]
DetailValue = str | int | float | bool

MIN_DESCRIPTION = 10
SELF_SERVICE = frozenset({"web", "app"})
CHANNEL_KINDS = {"web": "self-service web", "app": "self-service app", "hotline": "hotline", "onsite": "on-site"}

# what may change, and when (the rest is fixed once submitted: customer, channel)
REVIEWABLE = frozenset(
    {"region", "service_type", "customer_tier", "description", "time_requirement", "special_needs",
     "callback_url", "location", "details", "channel_request_ref", "attributes"}
)
CORRECTABLE_AFTER_ACCEPT = frozenset(
    {"description", "special_needs", "callback_url", "channel_request_ref", "attributes"}
)
OPEN = frozenset({"submitted", "pending_information", "queued_for_review", "accepted"})


# ---------------------------------------------------------------- refusals (tsop_events.errors)


class InvalidState(Conflict):
    """The request's status refuses the command (409, naming ``current_status``)."""

    def __init__(self, status: str, action: str) -> None:
        super().__init__(f"cannot {action} a request that is {status}", "status", current_status=status)
        self.current, self.action = status, action


class InvalidChange(Invalid):
    """A change the request refuses: a fixed field, or one closed once accepted (422)."""

    title = "Invalid change"

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason, field)


class UnknownServiceType(Invalid):
    title = "Unknown service type"


class UnknownReasonCode(Invalid):
    title = "Unknown reason code"


class IdempotencyConflict(Invalid):
    title = "Idempotency-Key reused"


# ---------------------------------------------------------------- the review


@dataclass(frozen=True)
class Facts:
    """What the review needs to know that is not in the application (looked up by the caller)."""

    now: datetime
    open_duplicate: UUID | None = None
    customer_recent: int = 0  # this customer's submissions in the last day, this one excluded


Outcome = Literal["accept", "reject", "pending", "queue", "link"]


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason_code: str
    reason: str
    priority: int = 0
    resolve_by: datetime | None = None
    missing: tuple[tuple[str, str], ...] = ()
    complete_by: datetime | None = None
    reasons: tuple[str, ...] = ()
    duplicate_of: UUID | None = None

    @property
    def accepted(self) -> bool:
        return self.outcome == "accept"


def _dt(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def missing_information(st: ServiceType, app: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Each field the type requires that the application lacks, with why."""
    missing: list[tuple[str, str]] = []
    if not _present(app.get("customer_id")):
        missing.append(("customer_id", "who the customer is: the work, the feedback and the rating are theirs"))
    if not _present(app.get("region")):
        missing.append(("region", f"where the service is needed: it decides whether {st.name} is offered "
                                  "and who can do the work"))
    if len(str(app.get("description") or "").strip()) < MIN_DESCRIPTION:
        missing.append(("description", f"too short: describe the need in at least {MIN_DESCRIPTION} characters"))
    tr = app.get("time_requirement") or {}
    location = app.get("location") or {}
    details = app.get("details") or {}
    for path in st.required:
        head, _, tail = path.partition(".")
        if path == "time_requirement.window":
            ok = _present(tr.get("window_start")) and _present(tr.get("window_end"))
            why = f"{st.name} needs an appointment window (window_start and window_end)"
        elif path == "time_requirement":
            ok = any(_present(tr.get(k)) for k in ("deadline", "window_start"))
            why = f"{st.name} needs a deadline or an appointment window"
        elif head == "time_requirement":
            ok = _present(tr.get(tail))
            why = f"required for {st.name}"
        elif head == "location":
            ok = bool(location) if not tail else _present(location.get(tail))
            why = f"required for {st.name}"
        elif head == "details":
            ok = _present(details.get(tail))
            why = f"required for {st.name}"
        else:
            ok = _present(app.get(path))
            why = f"required for {st.name}"
        if not ok:
            missing.append((path, why))
    return missing


def location_key(location: Mapping[str, Any] | None) -> str:
    """Where, normalised, for duplicate detection: the site id when known, else the address."""
    if not location:
        return ""
    if location.get("site_id"):
        return "site:" + str(location["site_id"]).strip().lower()
    return "addr:" + " ".join(re.sub(r"[^\w]+", " ", str(location.get("address") or "").lower()).split())


def priority_of(cat: Catalogue, st: ServiceType, tier: str, latest: datetime | None, now: datetime) -> int:
    """Customer tier x urgency x type: the type's default, raised by the tier and a near deadline."""
    urgent = latest is not None and latest - now <= timedelta(hours=cat.priority.urgent_within_hours)
    boost = cat.priority.tiers.get(tier, 0) + (cat.priority.urgency_boost if urgent else 0)
    return max(1, min(5, st.default_priority - boost))


def latest_time(app: Mapping[str, Any]) -> datetime | None:
    tr = app.get("time_requirement") or {}
    times = [t for t in (_dt(tr.get("deadline")), _dt(tr.get("window_end"))) if t is not None]
    return min(times, default=None)


def accept_decision(
    cat: Catalogue, st: ServiceType, app: Mapping[str, Any], now: datetime, code: str, reason: str
) -> Decision:
    latest = latest_time(app)
    resolve_by = now + timedelta(hours=st.resolve_hours)
    if latest is not None and latest > now:
        resolve_by = min(resolve_by, latest)
    priority = priority_of(cat, st, str(app.get("customer_tier")), latest, now)
    return Decision("accept", code, reason, priority=priority, resolve_by=resolve_by)


def review(cat: Catalogue, app: Mapping[str, Any], facts: Facts) -> Decision:
    """The automatic review of an application (the fields of a ServiceRequest) against the rules."""
    now = facts.now
    name = str(app.get("service_type"))
    st = cat.get(name)
    if st is None:
        return Decision("reject", "not_offered_in_region", f"service type {name!r} is not offered")
    region = str(app.get("region") or "")
    if _present(region) and not st.offered_in(region):  # no region yet: asked for below (pending)
        return Decision("reject", "not_offered_in_region", f"{name} is not offered in region {region!r}")
    latest = latest_time(app)
    if latest is not None and latest <= now:
        return Decision("reject", "infeasible_time", "the time requirement is already in the past")
    tr = app.get("time_requirement") or {}
    start = _dt(tr.get("window_start")) or latest
    if start is not None and start - now > timedelta(days=st.review.max_horizon_days):
        return Decision(
            "reject", "infeasible_time", f"{name} is planned at most {st.review.max_horizon_days:g} days ahead"
        )
    if facts.open_duplicate is not None:
        return Decision(
            # the id is in ``duplicate_of`` only: views show it to those who may see that ticket
            "link", "duplicate", "the same customer, type and location is already open",
            duplicate_of=facts.open_duplicate,
        )
    missing = missing_information(st, app)
    if missing:
        complete_by = now + timedelta(hours=cat.completion_hours_of(st))
        fields = ", ".join(f for f, _ in missing)
        return Decision("pending", "missing_information", f"missing: {fields}", missing=tuple(missing),
                        complete_by=complete_by)
    if facts.customer_recent >= cat.limits.customer_per_day:
        why = (f"the customer submitted {facts.customer_recent} requests in the last day; "
               f"the limit is {cat.limits.customer_per_day}")
        if cat.limits.customer_limit_action == "reject":
            return Decision("reject", "abuse_customer_limit", why)
        return Decision("queue", "abuse_customer_limit", why, reasons=(f"abuse_customer_limit: {why}",))
    reasons: list[str] = []
    if st.review.manual:
        reasons.append(f"manual_type: every {name} application is reviewed by an agent")
    tier = str(app.get("customer_tier"))
    if tier in st.review.manual_tiers:
        reasons.append(f"manual_tier: {tier} customers' {name} applications are reviewed by an agent")
    if start is not None and st.review.min_lead_hours and start - now < timedelta(hours=st.review.min_lead_hours):
        reasons.append(f"time_tight: {name} needs {st.review.min_lead_hours:g} h of lead time")
    if reasons:
        return Decision("queue", "needs_agent", "; ".join(reasons), reasons=tuple(reasons))
    return accept_decision(cat, st, app, now, "rules_passed", "every automatic review rule passed")


# ---------------------------------------------------------------- service requests


class ServiceRequest(Aggregate):
    """One application, from submission through review to an accepted, rejected, linked or cancelled request."""

    class Submitted(Aggregate.Created):
        channel: str
        channel_id: str | None
        channel_request_ref: str | None
        customer_id: str
        customer_tier: str
        region: str
        service_type: str
        description: str
        time_requirement: dict[str, str | None]
        special_needs: str | None
        callback_url: str | None
        location: dict[str, str | None] | None
        details: dict[str, DetailValue]
        submitted_at: datetime
        fingerprint: str = ""
        attributes: dict[str, Json] | None = None  # absent from the oldest stored submissions

    class Accepted(Aggregate.Event):
        priority: int
        resolve_by: datetime
        reason_code: str
        decided_by: str
        accepted_at: datetime
        service_type: str
        region: str
        customer_tier: str

    class Rejected(Aggregate.Event):
        reason_code: str
        reason: str
        decided_by: str
        rejected_at: datetime

    class PendingInformation(Aggregate.Event):
        missing: list[dict[str, str]]
        complete_by: datetime
        pending_at: datetime

    class Queued(Aggregate.Event):
        reasons: list[str]
        queued_at: datetime

    class Linked(Aggregate.Event):
        duplicate_of: str
        reason: str
        linked_at: datetime

    class Updated(Aggregate.Event):
        changes: dict[str, Json]
        updated_by: str
        updated_at: datetime

    class Cancelled(Aggregate.Event):
        reason_code: str
        reason: str
        cancelled_by: str
        cancelled_at: datetime

    class ResolutionConfirmed(Aggregate.Event):
        confirmed_by: str
        comment: str | None
        confirmed_at: datetime

    @event(Submitted)
    def __init__(
        self,
        id: UUID,  # noqa: A002 - the ticket id, chosen by the application
        channel: str,
        channel_id: str | None,
        channel_request_ref: str | None,
        customer_id: str,
        customer_tier: str,
        region: str,
        service_type: str,
        description: str,
        time_requirement: dict[str, str | None],
        special_needs: str | None,
        callback_url: str | None,
        location: dict[str, str | None] | None,
        details: dict[str, DetailValue],
        submitted_at: datetime,
        fingerprint: str = "",
        attributes: dict[str, Json] | None = None,
    ) -> None:
        self.fingerprint = fingerprint  # of the submitted fields: an Idempotency-Key replay must match it
        self.channel = channel
        self.channel_id = channel_id
        self.channel_request_ref = channel_request_ref
        self.customer_id = customer_id
        self.customer_tier = customer_tier
        self.region = region
        self.service_type = service_type
        self.description = description
        self.time_requirement = time_requirement
        self.special_needs = special_needs
        self.callback_url = callback_url
        self.location = location
        self.details = details
        self.attributes = attributes or {}  # kept, not acted on: a TMF ticket's name, severity, notes
        self.submitted_at = submitted_at
        self.status = "submitted"
        self.decision: dict[str, Any] | None = None
        self.pending: dict[str, Any] | None = None
        self.queued_reasons: list[str] = []
        self.duplicate_of: str | None = None
        self.cancellation: dict[str, str] | None = None

    def fields(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in (*sorted(REVIEWABLE), "customer_id", "channel", "channel_id")}

    @property
    def is_open(self) -> bool:
        return self.status in OPEN

    def apply_decision(self, decision: Decision, at: datetime, decided_by: str = "rules") -> None:
        if self.status not in ("submitted", "pending_information"):
            raise InvalidState(self.status, "review")
        if decision.outcome == "accept":
            self._accept_with(decision, at, decided_by)
        elif decision.outcome == "reject":
            self._reject(reason_code=decision.reason_code, reason=decision.reason, decided_by=decided_by,
                         rejected_at=at)
        elif decision.outcome == "pending":
            assert decision.complete_by is not None
            self._pending(
                missing=[{"field": f, "reason": r} for f, r in decision.missing],
                complete_by=decision.complete_by,
                pending_at=at,
            )
        elif decision.outcome == "queue":
            self._queued(reasons=list(decision.reasons), queued_at=at)
        else:
            assert decision.duplicate_of is not None
            self._linked(duplicate_of=str(decision.duplicate_of), reason=decision.reason, linked_at=at)

    def agent_decision(self, decision: Decision, at: datetime, agent: str) -> None:
        if self.status != "queued_for_review":
            raise InvalidState(self.status, "decide on")
        if decision.outcome == "accept":
            self._accept_with(decision, at, agent)
        elif decision.outcome == "reject":
            self._reject(reason_code=decision.reason_code, reason=decision.reason, decided_by=agent, rejected_at=at)
        else:
            raise InvalidState(self.status, f"{decision.outcome} (agents accept or reject)")

    def _accept_with(self, decision: Decision, at: datetime, decided_by: str) -> None:
        assert decision.resolve_by is not None
        self._accept(
            priority=decision.priority,
            resolve_by=decision.resolve_by,
            reason_code=decision.reason_code,
            decided_by=decided_by,
            accepted_at=at,
            service_type=self.service_type,
            region=self.region,
            customer_tier=self.customer_tier,
        )

    @event(Accepted)
    def _accept(
        self,
        priority: int,
        resolve_by: datetime,
        reason_code: str,
        decided_by: str,
        accepted_at: datetime,
        service_type: str,
        region: str,
        customer_tier: str,
    ) -> None:
        self.status = "accepted"
        self.pending = None
        self.decision = {
            "decision": "accepted", "priority": priority, "resolve_by": resolve_by.isoformat(),
            "reason_code": reason_code, "decided_by": decided_by,
        }

    @event(Rejected)
    def _reject(self, reason_code: str, reason: str, decided_by: str, rejected_at: datetime) -> None:
        self.status = "rejected"
        self.pending = None
        self.decision = {"decision": "rejected", "reason_code": reason_code, "reason": reason,
                         "decided_by": decided_by}

    @event(PendingInformation)
    def _pending(self, missing: list[dict[str, str]], complete_by: datetime, pending_at: datetime) -> None:
        self.status = "pending_information"
        self.pending = {"missing": missing, "complete_by": complete_by.isoformat()}
        self.decision = {"decision": "pending_information", "missing": missing,
                         "complete_by": complete_by.isoformat()}

    @event(Queued)
    def _queued(self, reasons: list[str], queued_at: datetime) -> None:
        self.status = "queued_for_review"
        self.pending = None
        self.queued_reasons = reasons
        self.decision = {"decision": "queued_for_review", "reasons": reasons}

    @event(Linked)
    def _linked(self, duplicate_of: str, reason: str, linked_at: datetime) -> None:
        self.status = "linked"
        self.duplicate_of = duplicate_of
        self.decision = {"decision": "linked", "duplicate_of": duplicate_of, "reason": reason}

    def update(self, changes: Mapping[str, Json], by: str, at: datetime) -> bool:
        """Complete or correct the application; True when it must be reviewed again."""
        if not changes:
            raise InvalidChange("body", "no changes")
        for name in changes:
            if name == "customer_id" and not _present(self.customer_id) and self.status == "pending_information":
                continue  # completing an application submitted without its customer
            if name not in REVIEWABLE:
                raise InvalidChange(name, "cannot be changed once submitted" if name in (
                    "customer_id", "channel", "channel_id") else "not a field of an application")
        if self.status == "accepted":
            fixed = sorted(set(changes) - CORRECTABLE_AFTER_ACCEPT)
            if fixed:
                raise InvalidChange(fixed[0], "cannot be changed once the request is accepted")
        elif self.status not in ("pending_information", "queued_for_review"):
            raise InvalidState(self.status, "update")
        real = {k: v for k, v in changes.items() if getattr(self, k) != v}
        if real:
            self._updated(changes=dict(real), updated_by=by, updated_at=at)
        # reviewed again only when something changed: a no-op PATCH must not push the deadline back
        return bool(real) and self.status == "pending_information"

    @event(Updated)
    def _updated(self, changes: dict[str, Json], updated_by: str, updated_at: datetime) -> None:
        for name, value in changes.items():
            setattr(self, name, value)

    def confirm_resolution(self, by: str, comment: str | None, at: datetime) -> None:
        """The customer confirmed, through their channel, that the resolution solved the problem (§2.4): intake
        records it; feedback closes the ticket on it. Only an accepted request has been worked and resolved
        (whether it is resolved now is downstream's to know: the command checks the status read model)."""
        if self.status != "accepted":
            raise InvalidState(self.status, "confirm the resolution of")
        self._resolution_confirmed(confirmed_by=by, comment=comment, confirmed_at=at)

    @event(ResolutionConfirmed)
    def _resolution_confirmed(self, confirmed_by: str, comment: str | None, confirmed_at: datetime) -> None:
        pass  # the request stays accepted here; its closure is feedback's (tickets topic: Closed)

    def cancel(self, reason_code: str, reason: str, by: str, at: datetime) -> None:
        if not self.is_open:
            raise InvalidState(self.status, "cancel")
        self._cancelled(reason_code=reason_code, reason=reason, cancelled_by=by, cancelled_at=at)

    def expire(self, now: datetime) -> bool:
        """Cancel once the completion deadline has passed without the missing information; True if it did."""
        if self.status != "pending_information" or self.pending is None:
            return False
        if now <= datetime.fromisoformat(self.pending["complete_by"]):
            return False
        missing = ", ".join(m["field"] for m in self.pending["missing"])
        self._cancelled(
            reason_code="information_deadline_passed",
            reason=f"still missing at {self.pending['complete_by']}: {missing}",
            cancelled_by="rules",
            cancelled_at=now,
        )
        return True

    @event(Cancelled)
    def _cancelled(self, reason_code: str, reason: str, cancelled_by: str, cancelled_at: datetime) -> None:
        self.status = "cancelled"
        self.pending = None
        self.cancellation = {"reason_code": reason_code, "reason": reason, "cancelled_by": cancelled_by}


# ---------------------------------------------------------------- channel systems


@dataclass
class Credential:
    id: str
    token_hash: str
    issued_at: datetime
    revoked_at: datetime | None = None


class ChannelSystem(Aggregate):
    """A registered channel system: who it is, how to call it back, its revocable credentials."""

    class Registered(Aggregate.Created):
        name: str
        kind: str
        callback_url: str | None
        rate_limit_per_minute: int | None
        registered_by: str
        registered_at: datetime

    class CredentialIssued(Aggregate.Event):
        credential_id: str
        token_hash: str
        issued_by: str
        issued_at: datetime

    class CredentialRevoked(Aggregate.Event):
        credential_id: str
        token_hash: str
        revoked_by: str
        revoked_at: datetime

    class SettingsChanged(Aggregate.Event):
        changes: dict[str, str | int | None]
        changed_by: str
        changed_at: datetime

    @event(Registered)
    def __init__(
        self,
        id: UUID,  # noqa: A002
        name: str,
        kind: str,
        callback_url: str | None,
        rate_limit_per_minute: int | None,
        registered_by: str,
        registered_at: datetime,
    ) -> None:
        self.name = name
        self.kind = kind
        self.callback_url = callback_url
        self.rate_limit_per_minute = rate_limit_per_minute
        self.registered_at = registered_at
        self.credentials: dict[str, Credential] = {}

    @property
    def self_service(self) -> bool:
        return self.kind in SELF_SERVICE

    def issue_credential(self, credential_id: str, token_hash: str, by: str, at: datetime) -> None:
        self._credential_issued(credential_id=credential_id, token_hash=token_hash, issued_by=by, issued_at=at)

    @event(CredentialIssued)
    def _credential_issued(self, credential_id: str, token_hash: str, issued_by: str, issued_at: datetime) -> None:
        self.credentials[credential_id] = Credential(credential_id, token_hash, issued_at)

    def revoke_credential(self, credential_id: str, by: str, at: datetime) -> None:
        cred = self.credentials.get(credential_id)
        if cred is None:
            raise NotFound(f"channel {self.id} has no credential {credential_id}", "credential_id")
        if cred.revoked_at is not None:
            raise Conflict(f"credential {credential_id} was already revoked at {cred.revoked_at.isoformat()}",
                           "credential_id")
        self._credential_revoked(credential_id=credential_id, token_hash=cred.token_hash, revoked_by=by,
                                 revoked_at=at)

    @event(CredentialRevoked)
    def _credential_revoked(self, credential_id: str, token_hash: str, revoked_by: str, revoked_at: datetime) -> None:
        self.credentials[credential_id].revoked_at = revoked_at

    def change_settings(self, changes: Mapping[str, str | int | None], by: str, at: datetime) -> None:
        real = {k: v for k, v in changes.items() if getattr(self, k) != v}
        if real:
            self._settings_changed(changes=real, changed_by=by, changed_at=at)

    @event(SettingsChanged)
    def _settings_changed(self, changes: dict[str, str | int | None], changed_by: str, changed_at: datetime) -> None:
        for name, value in changes.items():
            setattr(self, name, value)



# ---------------------------------------------------------------- lawful erasure (PIPL, §1.4, §7.4)

LEGAL_BASES = {
    "consent_withdrawn": "the customer withdrew their consent (PIPL art. 47(3))",
    "purpose_achieved": "the purpose of processing is achieved, impossible or no longer needed (art. 47(1))",
    "service_ended": "the operator stopped providing the service, or the retention period expired (art. 47(2))",
    "unlawful_processing": "the data was processed in breach of law or agreement (art. 47(4))",
    "other_legal_ground": "another ground laid down by law or administrative regulation (art. 47(5))",
}
"""The legal bases an erasure request may name (operator policy may narrow them; each one is recorded)."""


class CustomerErasure(Aggregate):
    """A customer's erasure request: its legal basis, who asked and when; one per customer (a repeat is the same
    request). Its effect (the customer's data keys destroyed) happens outside the domain, in the keyring."""

    class Requested(Aggregate.Created):
        customer_id: str
        legal_basis: str
        reference: str
        requested_by: str
        requested_at: datetime

    @staticmethod
    def id_for(customer_id: str) -> UUID:
        return derived_id("customer-erasure", customer_id)

    @classmethod
    def request(
        cls, customer_id: str, legal_basis: str, reference: str, requested_by: str, requested_at: datetime
    ) -> CustomerErasure:
        if not customer_id.strip():
            raise Invalid("names no customer", "customer_id")
        if legal_basis not in LEGAL_BASES:
            raise Invalid(f"not a legal basis; one of {', '.join(LEGAL_BASES)}", "legal_basis")
        erasure: CustomerErasure = cls(
            id=cls.id_for(customer_id), customer_id=customer_id, legal_basis=legal_basis, reference=reference,
            requested_by=requested_by, requested_at=requested_at,
        )
        return erasure

    @event(Requested)
    def __init__(
        self, id: UUID, customer_id: str, legal_basis: str, reference: str,  # noqa: A002
        requested_by: str, requested_at: datetime,
    ) -> None:
        self.customer_id = customer_id
        self.legal_basis = legal_basis
        self.reference = reference
        self.requested_by = requested_by
        self.requested_at = requested_at


class ErasureRefusal(Aggregate):
    """An erasure request refused because legal holds cover the customer: who asked, on which basis, and which
    holds stood in the way, so that the refusal is auditable as the erasure would have been. The customer's data
    is untouched; once the holds are released the request can be made again."""

    class Recorded(Aggregate.Created):
        customer_id: str
        legal_basis: str
        reference: str
        requested_by: str
        refused_at: datetime
        holds: list[dict[str, str]]

    @classmethod
    def record(
        cls, customer_id: str, legal_basis: str, reference: str, requested_by: str, refused_at: datetime,
        holds: list[dict[str, str]],
    ) -> ErasureRefusal:
        if legal_basis not in LEGAL_BASES:
            raise Invalid(f"not a legal basis; one of {', '.join(LEGAL_BASES)}", "legal_basis")
        refusal: ErasureRefusal = cls(
            customer_id=customer_id, legal_basis=legal_basis, reference=reference, requested_by=requested_by,
            refused_at=refused_at, holds=[{k: h[k] for k in ("hold_id", "kind", "subject")} for h in holds],
        )
        return refusal

    @event(Recorded)
    def __init__(
        self, customer_id: str, legal_basis: str, reference: str, requested_by: str, refused_at: datetime,
        holds: list[dict[str, str]],
    ) -> None:
        self.customer_id = customer_id
        self.legal_basis = legal_basis
        self.reference = reference
        self.requested_by = requested_by
        self.refused_at = refused_at
        self.holds = holds
