"""Wire schemas: the only contract between TSOP services.

One pydantic model per domain event that crosses a service boundary. Each model
names its CloudEvents type (``ce_type``), its schema version and the topic it
travels on. Library-internal class paths never go on the wire. A change that
would break a consumer must change the type name's version suffix; the
committed catalogue (``libs/events/catalogue``) makes such changes visible.
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from tsop_events.topics import Topic


class CustomerTier(StrEnum):
    standard = "standard"
    gold = "gold"
    vip = "vip"
    enterprise = "enterprise"


class Channel(StrEnum):
    web = "web"
    app = "app"
    hotline = "hotline"
    onsite = "onsite"


class WireEvent(BaseModel):
    """Base of every event on the bus; subclasses set the class variables."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    event_type: ClassVar[str]
    topic: ClassVar[Topic]
    schema_version: ClassVar[int] = 1
    doc: ClassVar[str] = ""

    def key(self) -> str:
        """Kafka record key: the id of the entity whose history this extends."""
        raise NotImplementedError


class TicketEvent(WireEvent):
    """An event in a ticket's life; key = ticket id, on the ``tickets`` topic."""

    topic: ClassVar[Topic] = Topic.tickets
    ticket_id: str

    def key(self) -> str:
        return self.ticket_id


NonEmpty = Annotated[str, Field(min_length=1, max_length=4000)]
Personal = Annotated[
    str,
    Field(
        max_length=24000,
        description="A customer's personal data, sealed: `pd1.<key id>.<ciphertext>` under the customer's data key "
        "(see docs/erasure.md); opens to `[erased]` once the customer's data is erased, and is `[erased]` itself "
        "when written after its subject (ticket, complaint) was erased.",
    ),
]


class TimeRequirement(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    deadline: datetime | None = None
    window_start: datetime | None = None
    window_end: datetime | None = None


class Location(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    address: str | None = None
    postcode: str | None = None
    site_id: str | None = Field(default=None, description="The operator's own id of the site, when known.")


class RequestSubmitted(TicketEvent):
    event_type: ClassVar[str] = "tsop.ticket.request-submitted.v1"
    doc: ClassVar[str] = "A channel submitted a service request (§2.1)."
    channel: Channel
    channel_id: str | None = Field(default=None, description="The registered channel system that submitted it.")
    channel_request_ref: str | None = None
    customer_id: str = Field(
        description="Empty when the channel did not name the customer (a minimal TMF621 ticket): review then "
        "asks for it, and a RequestUpdated with `customer_id` in its changes completes it."
    )
    customer_tier: CustomerTier
    region: str = Field(
        description="Empty when the channel did not name it: review asks for it (RequestPendingInformation), "
        "and RequestUpdated completes it. RequestAccepted always carries the region."
    )
    service_type: str
    description: Annotated[Personal, Field(min_length=1)]
    time_requirement: TimeRequirement
    special_needs: Personal | None = None
    callback_url: str | None = None
    location: Location | None = Field(default=None, description="Where the service is needed.")
    details: dict[str, Any] = Field(default_factory=dict, description="Type-specific details the catalogue asks for.")
    attributes: dict[str, Any] = Field(
        default_factory=dict,
        description="What a channel sent that the platform keeps but does not act on: a TMF ticket's name, "
        "severity and notes.",
    )
    submitted_at: datetime


class RequestAccepted(TicketEvent):
    event_type: ClassVar[str] = "tsop.ticket.request-accepted.v1"
    doc: ClassVar[str] = "Review accepted the request; it may be assigned (§2.2)."
    service_type: str
    region: str
    priority: Annotated[int, Field(ge=1, le=5)]
    customer_tier: CustomerTier
    resolve_by: datetime | None = None
    reason_code: str = "rules_passed"
    decided_by: str = Field(default="rules", description="'rules', or the agent who decided.")
    accepted_at: datetime


class RequestRejected(TicketEvent):
    event_type: ClassVar[str] = "tsop.ticket.request-rejected.v1"
    doc: ClassVar[str] = "Review rejected the request, with the reason (§2.2)."
    reason_code: str
    reason: str
    decided_by: str = Field(default="rules", description="'rules', or the agent who decided.")
    rejected_at: datetime


class MissingInformation(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    field: str
    reason: str


class RequestPendingInformation(TicketEvent):
    event_type: ClassVar[str] = "tsop.ticket.request-pending-information.v1"
    doc: ClassVar[str] = "The application lacks what its type requires; the channel completes it by a deadline (§2.1)."
    missing: list[MissingInformation]
    complete_by: datetime
    pending_at: datetime


class RequestUpdated(TicketEvent):
    event_type: ClassVar[str] = "tsop.ticket.request-updated.v1"
    doc: ClassVar[str] = "The channel or an agent changed attributes of the application (completion, correction)."
    changes: dict[str, Any]
    updated_by: str
    updated_at: datetime


class RequestQueuedForReview(TicketEvent):
    event_type: ClassVar[str] = "tsop.ticket.request-queued-for-review.v1"
    doc: ClassVar[str] = "The rules could not decide; an agent reviews the request (§2.2)."
    reasons: list[str]
    queued_at: datetime


class RequestLinked(TicketEvent):
    event_type: ClassVar[str] = "tsop.ticket.request-linked.v1"
    doc: ClassVar[str] = "A duplicate of an open ticket (same customer, type, location): linked, not worked twice."
    duplicate_of: str
    reason: str
    linked_at: datetime


class RequestCancelled(TicketEvent):
    event_type: ClassVar[str] = "tsop.ticket.request-cancelled.v1"
    doc: ClassVar[str] = "The request was cancelled, with the reason (information deadline passed, channel, admin)."
    reason_code: str
    reason: str
    cancelled_by: str
    cancelled_at: datetime


class AssignmentCandidate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    technician_id: str
    score: float
    load: int
    capacity: int


class Assigned(TicketEvent):
    event_type: ClassVar[str] = "tsop.ticket.assigned.v1"
    doc: ClassVar[str] = "A qualified technician was assigned automatically (§2.2)."
    work_order_id: str
    technician_id: str
    reason: str
    candidates: list[AssignmentCandidate]
    assigned_by: str = Field(default="auto", description="'auto', or the supervisor who reassigned.")
    previous_technician_id: str | None = None
    resources: list[str] = Field(default_factory=list, description="Equipment and venue slots reserved with it.")
    accept_by: datetime | None = None
    assigned_at: datetime


class AssignmentAccepted(TicketEvent):
    event_type: ClassVar[str] = "tsop.ticket.assignment-accepted.v1"
    doc: ClassVar[str] = "The assigned technician accepted the work order (§2.2, §3.2 time to respond)."
    work_order_id: str
    technician_id: str
    accepted_at: datetime


class AssignmentDeclined(TicketEvent):
    event_type: ClassVar[str] = "tsop.ticket.assignment-declined.v1"
    doc: ClassVar[str] = "The technician declined, or did not answer in time; the work order is reassigned (§2.2)."
    work_order_id: str
    technician_id: str
    reason: str
    timed_out: bool = False
    declined_at: datetime


class WorkStarted(TicketEvent):
    event_type: ClassVar[str] = "tsop.ticket.work-started.v1"
    doc: ClassVar[str] = "The technician started the work, on site or remotely (§2.3)."
    work_order_id: str
    technician_id: str
    mode: Literal["on_site", "remote"]
    started_at: datetime


class WorkLogged(TicketEvent):
    event_type: ClassVar[str] = "tsop.ticket.work-logged.v1"
    doc: ClassVar[str] = "A technician logged a step of the work (§2.3)."
    work_order_id: str
    technician_id: str
    action: NonEmpty
    mode: Literal["on_site", "remote"]
    notes: str | None = None
    equipment: list[str] = Field(default_factory=list)
    measurements: dict[str, float | str] = Field(default_factory=dict)
    logged_at: datetime


class WorkPaused(TicketEvent):
    event_type: ClassVar[str] = "tsop.ticket.work-paused.v1"
    doc: ClassVar[str] = "Work paused: pending (waiting for the customer) or held (parts, incident); SLA clocks stop."
    work_order_id: str
    technician_id: str
    kind: Literal["pending", "held"]
    reason: str
    paused_at: datetime


class WorkResumed(TicketEvent):
    event_type: ClassVar[str] = "tsop.ticket.work-resumed.v1"
    doc: ClassVar[str] = "Paused work continues; SLA clocks run again."
    work_order_id: str
    technician_id: str
    resumed_at: datetime


class Resolved(TicketEvent):
    event_type: ClassVar[str] = "tsop.ticket.resolved.v1"
    doc: ClassVar[str] = "The technician resolved the work order (§2.3)."
    work_order_id: str
    technician_id: str
    resolution_code: str
    summary: NonEmpty
    advice: str | None = None
    resolved_at: datetime


class SlaThresholdCrossed(TicketEvent):
    event_type: ClassVar[str] = "tsop.ticket.sla-threshold-crossed.v1"
    doc: ClassVar[str] = "A service-level clock reached 75 % (warning) or 100 % (breach) of its target (§3.2)."
    target: Literal["respond", "resolve"]
    level: Literal["warning", "breach"]
    deadline: datetime
    elapsed_seconds: float
    target_seconds: float
    crossed_at: datetime


class Escalated(TicketEvent):
    event_type: ClassVar[str] = "tsop.ticket.escalated.v1"
    doc: ClassVar[str] = "The ticket was escalated to a supervisor, with the reason (§3.2)."
    to_role: str
    reason: str
    escalated_at: datetime


class FeedbackSent(TicketEvent):
    event_type: ClassVar[str] = "tsop.ticket.feedback-sent.v1"
    doc: ClassVar[str] = "The applicant was notified of the result (§2.3)."
    channel: Literal["webhook", "none"]
    attempts: int
    status_code: int | None = None
    rating_due_at: datetime
    sent_at: datetime


class Rated(TicketEvent):
    event_type: ClassVar[str] = "tsop.ticket.rated.v1"
    doc: ClassVar[str] = "The customer rated the service within the window (§2.3)."
    score: Annotated[int, Field(ge=1, le=5)]
    comment: str | None = None
    tags: list[Literal["on_time", "solved", "attitude", "communication"]] = Field(
        default_factory=list, description="What the rating is about (reason tags the customer chose)."
    )
    solved: bool | None = Field(
        default=None,
        description="The customer's answer to 'is the problem solved?', asked on a low score; null when not asked.",
    )
    rated_at: datetime


class Closed(TicketEvent):
    event_type: ClassVar[str] = "tsop.ticket.closed.v1"
    doc: ClassVar[str] = (
        "The ticket is closed: the customer confirmed or rated, or the rating window expired (§2.4); a ticket the "
        "complaint desk worked closes with its complaint (§4.3)."
    )
    reason: Literal["rated", "confirmed", "rating_window_expired", "complaint_closed"]
    basis: Literal["confirmed", "rated", "window_lapsed", "complaint_closed"] | None = Field(
        default=None,
        description="Why it closed: the customer confirmed or rated, the window lapsed without a reopen, or "
        "(a complaint ticket) its complaint closed (null only on closures recorded before the basis was)."
    )
    reopenable_until: datetime | None = Field(
        default=None,
        description="Until when the ticket may still be reopened (§2.4); null: this closure is final. The archive "
        "seals the dossier only after it.",
    )
    closed_at: datetime


class Archived(TicketEvent):
    event_type: ClassVar[str] = "tsop.ticket.archived.v1"
    doc: ClassVar[str] = "The ticket's dossier is sealed in the archive (§2.4, §7.2)."
    dossier_hash: str
    event_count: int
    last_event_id: str
    archived_at: datetime
    complete: bool = Field(
        default=True,
        description="False when an auditor or supervisor sealed the dossier although events were known missing.",
    )
    missing_event_ids: list[str] = Field(
        default_factory=list, description="The dead-lettered events the dossier was sealed without."
    )
    decided_by: str | None = Field(default=None, description="Who decided to seal an incomplete dossier.")
    reason: str | None = Field(default=None, description="Why an incomplete dossier was sealed.")


# --- ticket events of the customer's voice: notifications, the rating, closure and reopening (§2.3, §2.4) ---
# (feedback's events on the tickets topic go here)


class RatingReminded(TicketEvent):
    event_type: ClassVar[str] = "tsop.ticket.rating-reminded.v1"
    doc: ClassVar[str] = "The customer was reminded to rate before the rating window ends (§2.3)."
    rating_due_at: datetime
    reminded_at: datetime


class RatingExpired(TicketEvent):
    event_type: ClassVar[str] = "tsop.ticket.rating-expired.v1"
    doc: ClassVar[str] = "The rating window ended without a rating: no answer, never a score (§2.3)."
    rating_due_at: datetime
    expired_at: datetime


class ResolutionConfirmed(TicketEvent):
    event_type: ClassVar[str] = "tsop.ticket.resolution-confirmed.v1"
    doc: ClassVar[str] = (
        "The customer confirmed through their channel system that the resolution solved the problem (§2.4; "
        "TMF621: a PATCH of a resolved ticket to `closed`). Intake records it; feedback closes the ticket on it, "
        "basis `confirmed` (or keeps it until the resolution reaches feedback)."
    )
    confirmed_by: str = Field(description="The channel system (or staff member) that passed it on.")
    comment: Personal | None = Field(default=None, description="The customer's words, if any (TMF statusChangeReason).")
    confirmed_at: datetime


class Reopened(TicketEvent):
    event_type: ClassVar[str] = "tsop.ticket.reopened.v1"
    doc: ClassVar[str] = (
        "The ticket is open again: the customer said the problem is not solved, or a closed ticket was reopened "
        "within its period (§2.3, §2.4). Dispatch reopens the work order, preferring the same technician."
    )
    reason_code: Literal["not_solved", "reopen_requested"]
    reason: NonEmpty
    requested_by: str = Field(description="The channel or staff member who asked for it.")
    reopen_count: Annotated[int, Field(ge=1)] = Field(description="How many times this ticket has been reopened.")
    reopened_at: datetime


# the channels topic (key = channel id): what other services need to know a channel system's caller by.
# Only a credential's SHA-256 travels, never the token.


class ChannelEvent(WireEvent):
    """An event about a registered channel system; key = channel id, on the ``channels`` topic."""

    topic: ClassVar[Topic] = Topic.channels
    channel_id: str

    def key(self) -> str:
        return self.channel_id


class ChannelRegistered(ChannelEvent):
    event_type: ClassVar[str] = "tsop.channel.registered.v1"
    doc: ClassVar[str] = "An admin registered a channel system (§2.1)."
    name: str
    kind: str
    registered_at: datetime


class ChannelCredentialIssued(ChannelEvent):
    event_type: ClassVar[str] = "tsop.channel.credential-issued.v1"
    doc: ClassVar[str] = "A channel system got a credential; only the token's SHA-256 hex travels."
    credential_id: str
    token_sha256: Annotated[str, Field(pattern="^[0-9a-f]{64}$")]
    issued_at: datetime


class ChannelCredentialRevoked(ChannelEvent):
    event_type: ClassVar[str] = "tsop.channel.credential-revoked.v1"
    doc: ClassVar[str] = "A channel system's credential was revoked: from now on no service accepts it."
    credential_id: str
    token_sha256: Annotated[str, Field(pattern="^[0-9a-f]{64}$")]
    revoked_at: datetime


# --- ticket events of incidents: tickets linked to an incident, held and released (§5.3) ---
# (events an incident causes on the tickets topic go here)


class TicketHeld(TicketEvent):
    event_type: ClassVar[str] = "tsop.ticket.held.v1"
    doc: ClassVar[str] = (
        "Dispatch holds the ticket for an incident it is linked to: its SLA clocks pause and no technician "
        "is sent to it on its own (§5.3)."
    )
    work_order_id: str
    incident_id: str
    held_at: datetime


class TicketReleased(TicketEvent):
    event_type: ClassVar[str] = "tsop.ticket.released.v1"
    doc: ClassVar[str] = (
        "The ticket proved unrelated and was unlinked from its incident: back to normal dispatch, its SLA "
        "clocks running again (§5.3)."
    )
    work_order_id: str
    incident_id: str
    reason: str
    released_at: datetime


# --- ticket events of records: erasure and retention (§7.4, PIPL) ---
# (the archive's events on the tickets topic go here)


class RecordsExpired(TicketEvent):
    event_type: ClassVar[str] = "tsop.ticket.records-expired.v1"
    doc: ClassVar[str] = (
        "Retention acted on some of a ticket's archived records (§7.4): their bodies were purged, or their "
        "personal fields anonymised. The records, their hashes and their place in the archive's chain remain."
    )
    record_class: Literal["service_records", "personal_data", "work_logs", "complaints"]
    action: Literal["purged", "anonymised"]
    event_ids: list[str] = Field(description="The ce_id of each record acted on.")
    retention_days: int = Field(description="The class's retention period that ran out.")
    expired_at: datetime


# --- the workforce topic (key = technician id): who may do what, where and when (§3.3, §6) ---


class WorkforceEvent(WireEvent):
    """An event about a technician; key = technician id, on the ``workforce`` topic."""

    topic: ClassVar[Topic] = Topic.workforce
    technician_id: str

    def key(self) -> str:
        return self.technician_id


class Qualification(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    service_type: str
    certificate: str
    level: Annotated[int, Field(ge=1, le=5)] = 1
    valid_from: datetime
    valid_until: datetime | None = None


class TechnicianRegistered(WorkforceEvent):
    event_type: ClassVar[str] = "tsop.workforce.technician-registered.v1"
    doc: ClassVar[str] = "A technician joined the workforce with qualifications (§3.3)."
    service_types: list[str]
    regions: list[str]
    capacity: Annotated[int, Field(ge=1)]
    name: str | None = None
    qualifications: list[Qualification] = Field(default_factory=list)
    registered_at: datetime


class QualificationGranted(WorkforceEvent):
    event_type: ClassVar[str] = "tsop.workforce.qualification-granted.v1"
    doc: ClassVar[str] = (
        "A training record granted or renewed a qualification (§3.3, §6.1-6.3); "
        "once valid_until passes, no work of that type is assigned to the technician."
    )
    qualification: Qualification
    renewal: bool
    source: str = Field(description="'registration', 'training', or who granted it.")
    granted_at: datetime


class ShiftScheduled(WorkforceEvent):
    event_type: ClassVar[str] = "tsop.workforce.shift-scheduled.v1"
    doc: ClassVar[str] = "A shift: the technician is assignable between start and end (none scheduled: on call)."
    start: datetime
    end: datetime


class LeaveScheduled(WorkforceEvent):
    event_type: ClassVar[str] = "tsop.workforce.leave-scheduled.v1"
    doc: ClassVar[str] = "Leave: the technician is not assignable between start and end, whatever the shifts."
    start: datetime
    end: datetime
    reason: str


class CapacityChanged(WorkforceEvent):
    event_type: ClassVar[str] = "tsop.workforce.capacity-changed.v1"
    doc: ClassVar[str] = "How many work orders the technician may hold at once."
    capacity: Annotated[int, Field(ge=1)]


class ResourceRegistered(WireEvent):
    event_type: ClassVar[str] = "tsop.workforce.resource-registered.v1"
    doc: ClassVar[str] = "Equipment (an ONT, a test set) or a venue slot that work orders reserve (§2.2, §3.4)."
    topic: ClassVar[Topic] = Topic.workforce
    resource_id: str
    kind: str
    name: str
    region: str
    registered_at: datetime

    def key(self) -> str:
        return self.resource_id


class PeakModeChanged(WireEvent):
    event_type: ClassVar[str] = "tsop.workforce.peak-mode-changed.v1"
    doc: ClassVar[str] = (
        "Peak mode on or off (§2.2: 24-hour norm, 48 hours at peak), declared by a supervisor "
        "or automatic when the backlog crosses its threshold."
    )
    topic: ClassVar[Topic] = Topic.workforce
    on: bool
    changed_by: str = Field(description="'auto', or the supervisor who declared it.")
    reason: str
    backlog: int
    changed_at: datetime

    def key(self) -> str:
        return "peak-mode"


# --- the incidents topic (key = incident id): declaration, emergency plans, restoration, review (§5) ---
# (incident's events go here)


Severity = Literal["I", "II", "III", "IV"]


class IncidentEvent(WireEvent):
    """An event in an incident's life; key = incident id, on the ``incidents`` topic."""

    topic: ClassVar[Topic] = Topic.incidents
    incident_id: str

    def key(self) -> str:
        return self.incident_id


class IncidentDeclared(IncidentEvent):
    event_type: ClassVar[str] = "tsop.incident.declared.v1"
    doc: ClassVar[str] = (
        "An incident was declared, by an incident manager or automatically when fault tickets of one service "
        "type in one region crossed a threshold within a window (§5.1)."
    )
    title: str
    severity: Severity
    scenario: str = Field(description="The emergency-plan scenario (e.g. 'outage').")
    affected_services: list[str]
    regions: list[str]
    estimated_customers: int
    declared_by: str = Field(description="'auto', or the incident manager who declared it.")
    rule: str | None = Field(default=None, description="The correlation rule that declared it automatically.")
    detected_at: datetime = Field(description="The first sign of the incident (the first correlated ticket).")
    declared_at: datetime


class IncidentAcknowledged(IncidentEvent):
    event_type: ClassVar[str] = "tsop.incident.acknowledged.v1"
    doc: ClassVar[str] = "An incident manager took charge of the incident."
    acknowledged_by: str
    acknowledged_at: datetime


class IncidentSeverityChanged(IncidentEvent):
    event_type: ClassVar[str] = "tsop.incident.severity-changed.v1"
    doc: ClassVar[str] = "The incident's severity, scope or estimate changed (§5.1)."
    severity: Severity
    previous_severity: Severity
    affected_services: list[str]
    regions: list[str]
    estimated_customers: int
    reason: str
    changed_by: str
    changed_at: datetime


class IncidentTicketLinked(IncidentEvent):
    event_type: ClassVar[str] = "tsop.incident.ticket-linked.v1"
    doc: ClassVar[str] = "A ticket was linked to the incident (automatically, in scope, or by hand): it is held (§5.3)."
    ticket_id: str
    linked_by: str = Field(description="'auto', or who linked it.")
    linked_at: datetime


class IncidentTicketUnlinked(IncidentEvent):
    event_type: ClassVar[str] = "tsop.incident.ticket-unlinked.v1"
    doc: ClassVar[str] = "A ticket proved unrelated: it goes back to normal dispatch (§5.3)."
    ticket_id: str
    reason: str
    unlinked_by: str
    unlinked_at: datetime


class PlanStep(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    key: str
    title: str
    role: str = Field(description="The role that owns the step.")
    notify: list[str] = Field(description="Who is notified when the plan starts the step.")
    limit_seconds: float
    due_at: datetime


class EmergencyPlanActivated(IncidentEvent):
    event_type: ClassVar[str] = "tsop.incident.plan-activated.v1"
    doc: ClassVar[str] = (
        "The emergency plan for the incident's scenario and severity was activated; every step starts now "
        "and is due within its time limit (§5.2)."
    )
    plan: str
    severity: Severity
    steps: list[PlanStep]
    activated_at: datetime


class PlanStepFinished(IncidentEvent):
    event_type: ClassVar[str] = "tsop.incident.plan-step-finished.v1"
    doc: ClassVar[str] = "A step of the emergency plan was finished (late when after its due time) (§5.2)."
    plan: str
    step: str
    finished_by: str
    late: bool
    finished_at: datetime


class PlanStepEscalated(IncidentEvent):
    event_type: ClassVar[str] = "tsop.incident.plan-step-escalated.v1"
    doc: ClassVar[str] = "A step of the emergency plan passed its time limit unfinished: escalated (§5.2)."
    plan: str
    step: str
    owner_role: str
    to_role: str
    due_at: datetime
    escalated_at: datetime


class ServiceRestored(IncidentEvent):
    event_type: ClassVar[str] = "tsop.incident.service-restored.v1"
    doc: ClassVar[str] = "The affected service is restored, to be verified (§5.4)."
    note: str
    restored_by: str
    restored_at: datetime


class RestorationVerified(IncidentEvent):
    event_type: ClassVar[str] = "tsop.incident.restoration-verified.v1"
    doc: ClassVar[str] = "The restoration was verified (§5.4)."
    note: str
    verified_by: str
    verified_at: datetime


class IncidentResolved(IncidentEvent):
    event_type: ClassVar[str] = "tsop.incident.resolved.v1"
    doc: ClassVar[str] = (
        "The incident is resolved: dispatch resolves every ticket still linked with the incident's resolution, "
        "each with its own Resolved event (§5.4)."
    )
    resolution_code: str
    summary: str
    advice: str | None = None
    tickets_linked: int = Field(
        description="How many tickets were linked at resolution (dispatch resolves those it holds)."
    )
    resolved_by: str
    resolved_at: datetime


class ImprovementAction(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    title: str
    kind: Literal["corrective", "preventive"]
    owner: str
    due: date


class ReviewTimelineEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    at: datetime
    what: str


class LateStep(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    plan: str
    step: str
    role: str
    due_at: datetime
    finished_at: datetime | None
    late_seconds: float


class ReviewPublished(IncidentEvent):
    event_type: ClassVar[str] = "tsop.incident.review-published.v1"
    doc: ClassVar[str] = (
        "The post-incident review, generated from the incident's log and completed by the incident manager "
        "with the root cause and improvement actions (each opens an improvement measure) (§5.4)."
    )
    title: str
    severity: Severity
    affected_services: list[str]
    regions: list[str]
    detected_at: datetime
    declared_at: datetime
    acknowledged_at: datetime | None
    restored_at: datetime | None
    resolved_at: datetime
    time_to_detect_seconds: float = Field(description="From the first correlated ticket to the declaration.")
    time_to_acknowledge_seconds: float | None
    time_to_restore_seconds: float | None = Field(description="From the declaration to the restoration.")
    tickets_affected: int
    tickets_unlinked: int
    customers_affected: int
    sla_paused_seconds: float = Field(description="Ticket-seconds of SLA clock held for the incident.")
    late_steps: list[LateStep]
    timeline: list[ReviewTimelineEntry]
    root_cause: str
    improvement_actions: list[ImprovementAction]
    published_by: str
    published_at: datetime


# --- the incidents topic, bulk linking (issue 12's bulk path): one event per chunk of tickets linked ---


class IncidentTicketsLinked(IncidentEvent):
    event_type: ClassVar[str] = "tsop.incident.tickets-linked.v1"
    doc: ClassVar[str] = (
        "Tickets were linked to the incident together (the sweep of the tickets open in its scope, a chunk at a "
        "time): each is held as if linked alone (§5.3). Consumers also keep reading IncidentTicketLinked, the "
        "event of one ticket linked."
    )
    ticket_ids: list[str] = Field(
        min_length=1, description="The tickets linked, each linked to no other open incident."
    )
    linked_by: str = Field(description="'auto', or who linked them.")
    linked_at: datetime


# --- the complaints topic (key = complaint id): complaints and improvement measures (§4.3, §4.4) ---
# (complaints and improvement actions go here)


class ComplaintEvent(WireEvent):
    """An event in a complaint's life; key = complaint id, on the ``complaints`` topic."""

    topic: ClassVar[Topic] = Topic.complaints
    complaint_id: str

    def key(self) -> str:
        return self.complaint_id


class ComplaintReceived(ComplaintEvent):
    event_type: ClassVar[str] = "tsop.complaint.received.v1"
    doc: ClassVar[str] = (
        "A customer's complaint was received (§4.3): from a channel, an agent, a low rating the customer called "
        "solved, or a ticket of a complaint type; with its deadlines and whether it repeats earlier ones."
    )
    customer_id: str
    channel_id: str | None = Field(default=None, description="The channel system that filed it, if one did.")
    source: Literal["channel", "agent", "rating", "ticket"]
    complaint_type: str = Field(description="One of the operator's complaint types.")
    description: str
    ticket_ids: list[str] = Field(default_factory=list, description="The tickets the complaint is about.")
    received_by: str
    received_at: datetime
    acknowledge_by: datetime
    answer_by: datetime
    repeat: bool = Field(description="The same customer complained of the same cause within the policy's period.")
    repeat_of: list[str] = Field(default_factory=list, description="The earlier complaints it repeats.")
    rating_score: int | None = Field(default=None, description="The low score that opened it (source rating).")


class ComplaintAcknowledged(ComplaintEvent):
    event_type: ClassVar[str] = "tsop.complaint.acknowledged.v1"
    doc: ClassVar[str] = "The complaint was acknowledged to the customer (§4.3)."
    acknowledged_by: str
    acknowledged_at: datetime


class ComplaintCategorised(ComplaintEvent):
    event_type: ClassVar[str] = "tsop.complaint.categorised.v1"
    doc: ClassVar[str] = (
        "The complaint was put in another of the operator's complaint types: a new cause, so whether it repeats "
        "the customer's earlier complaints is judged again."
    )
    complaint_type: str
    previous_type: str
    categorised_by: str
    categorised_at: datetime
    repeat: bool = Field(description="It repeats complaints of the new type within the policy's period.")
    repeat_of: list[str] = Field(default_factory=list, description="The earlier complaints of the new type.")


class ComplaintTicketLinked(ComplaintEvent):
    event_type: ClassVar[str] = "tsop.complaint.ticket-linked.v1"
    doc: ClassVar[str] = "A ticket was linked to the complaint."
    ticket_id: str
    linked_by: str
    linked_at: datetime


class ComplaintNoteAdded(ComplaintEvent):
    event_type: ClassVar[str] = "tsop.complaint.note-added.v1"
    doc: ClassVar[str] = "A step of the investigation, noted."
    note: str
    noted_by: str
    noted_at: datetime


class ComplaintAnswered(ComplaintEvent):
    event_type: ClassVar[str] = "tsop.complaint.answered.v1"
    doc: ClassVar[str] = "The customer was given the answer to the complaint."
    answer: str
    answered_by: str
    answered_at: datetime


class ComplaintAnswerRejected(ComplaintEvent):
    event_type: ClassVar[str] = "tsop.complaint.answer-rejected.v1"
    doc: ClassVar[str] = "The customer did not accept the answer; a new one is due by answer_by."
    reason: str
    rejected_by: str
    rejected_at: datetime
    answer_by: datetime


class ComplaintEscalated(ComplaintEvent):
    event_type: ClassVar[str] = "tsop.complaint.escalated.v1"
    doc: ClassVar[str] = (
        "The complaint was escalated to a supervisor: a deadline passed (acknowledge_overdue, answer_overdue), "
        "the customer did not accept the answer, or a supervisor decided so."
    )
    reason: str
    level: int = Field(description="1 for the first escalation, then 2, 3 …")
    deadline: datetime | None = Field(default=None, description="The deadline that passed, for an overdue one.")
    escalated_by: str = Field(description="'timer', or who escalated it.")
    escalated_at: datetime


class ComplaintClosed(ComplaintEvent):
    event_type: ClassVar[str] = "tsop.complaint.closed.v1"
    doc: ClassVar[str] = (
        "The complaint is closed: the customer accepted the answer, withdrew it, or a supervisor closed it."
    )
    basis: Literal["accepted", "withdrawn", "supervisor"]
    note: str | None = None
    closed_by: str
    closed_at: datetime


class ImprovementEvent(WireEvent):
    """An event of an improvement action (§4.4); key = action id, on the ``complaints`` topic."""

    topic: ClassVar[Topic] = Topic.complaints
    action_id: str

    def key(self) -> str:
        return self.action_id


class ImprovementActionOpened(ImprovementEvent):
    event_type: ClassVar[str] = "tsop.improvement.action-opened.v1"
    doc: ClassVar[str] = (
        "A corrective or preventive action was opened (§4.4), from a complaint, a pattern of low scores or an "
        "incident review, with its owner and due date."
    )
    title: str
    kind: Literal["corrective", "preventive"]
    origin: Literal["complaint", "low_score_pattern", "incident_review", "manual"]
    origin_id: str = Field(description="The complaint, the pattern's subject or the incident it came from.")
    owner: str
    due: datetime
    opened_by: str
    opened_at: datetime


class ImprovementActionReassigned(ImprovementEvent):
    event_type: ClassVar[str] = "tsop.improvement.action-reassigned.v1"
    doc: ClassVar[str] = "The action has a new owner or due date."
    owner: str
    due: datetime
    reassigned_by: str
    reassigned_at: datetime


class ImprovementActionVerified(ImprovementEvent):
    event_type: ClassVar[str] = "tsop.improvement.action-verified.v1"
    doc: ClassVar[str] = "Whether the action worked was checked; an ineffective one stays open."
    effective: bool
    note: str
    verified_by: str
    verified_at: datetime


class ImprovementActionClosed(ImprovementEvent):
    event_type: ClassVar[str] = "tsop.improvement.action-closed.v1"
    doc: ClassVar[str] = "The verified action is closed."
    note: str | None = None
    closed_by: str
    closed_at: datetime


class TicketAssessed(WireEvent):
    event_type: ClassVar[str] = "tsop.quality.ticket-assessed.v1"
    doc: ClassVar[str] = (
        "A supervisor assessed a resolved ticket against the operator's checklist (§2.3, §4.2); the score is "
        "0 to 100, the checklist's weighted share of items passed."
    )
    topic: ClassVar[Topic] = Topic.complaints
    ticket_id: str
    checks: dict[str, bool]
    score: Annotated[float, Field(ge=0, le=100)]
    note: str | None = None
    assessed_by: str
    assessed_at: datetime

    def key(self) -> str:
        return self.ticket_id


# --- the complaints topic, overdue improvement actions (§4.4; feedback's complaints context, fb-close) ---


class ImprovementActionEscalated(ImprovementEvent):
    event_type: ClassVar[str] = "tsop.improvement.action-escalated.v1"
    doc: ClassVar[str] = (
        "The action passed its due date unfinished (not verified effective, not closed): escalated by the durable "
        "timer, once per due date (a new due date escalates again when it passes) (§4.4)."
    )
    due: datetime = Field(description="The due date that passed.")
    level: Annotated[int, Field(ge=1)] = Field(description="How many times this action has been escalated.")
    escalated_by: str
    escalated_at: datetime


# --- records: archive checkpoints, retention, erasure (§7) ---
# (the archive's own events go here)


# --- lawful erasure (PIPL, §1.4, §7.4): the customers topic (key = customer id) ---


class CustomerDataErased(WireEvent):
    event_type: ClassVar[str] = "tsop.customer.data-erased.v1"
    doc: ClassVar[str] = (
        "A customer's personal data was erased on a recorded legal basis: their data keys are destroyed, so every "
        "sealed copy of it (topics, event stores, projections, the archive) opens to `[erased]` from now on; "
        "the service record (types, times, outcomes, scores) remains (§1.4, §7.4). A service that keeps keys "
        "in memory forgets them when it hears this."
    )
    topic: ClassVar[Topic] = Topic.customers
    customer_id: str
    legal_basis: str = Field(description="The ground of the erasure (intake's `LEGAL_BASES`).")
    reference: str = Field(default="", description="The request's reference (a case or letter number).")
    requested_by: str
    erased_at: datetime

    def key(self) -> str:
        return self.customer_id


# --- legal holds (§7.4): the archive's holds on the customers topic (key = hold id), so that intake refuses an
# erasure a hold covers (docs/erasure.md) ---


HoldKindName = Literal["ticket", "customer", "incident"]


class LegalHoldEvent(WireEvent):
    """A legal hold's decision, announced by the archive; key = the hold's id (one partition holds its history)."""

    topic: ClassVar[Topic] = Topic.customers
    hold_id: str = Field(description="The archive's id of the hold (one per kind and subject).")

    def key(self) -> str:
        return self.hold_id


class LegalHoldPlaced(LegalHoldEvent):
    event_type: ClassVar[str] = "tsop.legal-hold.placed.v1"
    doc: ClassVar[str] = (
        "A legal hold was placed on a ticket, a customer or an incident (§7.4): nothing of it expires, and no "
        "erasure of a customer it covers (the customer, one of their tickets, an incident linked to one) proceeds "
        "while it is in force."
    )
    kind: HoldKindName
    subject: str = Field(description="The ticket id, customer id or incident id held.")
    placed_by: str
    reason: str
    placed_at: datetime


class LegalHoldReleased(LegalHoldEvent):
    event_type: ClassVar[str] = "tsop.legal-hold.released.v1"
    doc: ClassVar[str] = "A legal hold was released (recorded, with who and why): expiry and erasure may proceed."
    kind: HoldKindName | None = Field(default=None, description="What it held (null in decisions from before).")
    subject: str | None = Field(default=None, description="The id it held (null in decisions from before).")
    released_by: str
    reason: str
    released_at: datetime


class LegalHoldPlacedAgain(LegalHoldEvent):
    event_type: ClassVar[str] = "tsop.legal-hold.placed-again.v1"
    doc: ClassVar[str] = (
        "A released legal hold was placed again on the same subject: it is in force again. It names what it holds, "
        "so a reader that never heard the first placement (a hold placed before holds were announced) knows it."
    )
    kind: HoldKindName | None = Field(default=None, description="What it holds (null in decisions from before).")
    subject: str | None = Field(default=None, description="The id it holds (null in decisions from before).")
    placed_by: str
    reason: str
    placed_at: datetime


class RefusingHold(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    hold_id: str
    kind: HoldKindName
    subject: str


class CustomerErasureRefused(WireEvent):
    event_type: ClassVar[str] = "tsop.customer.erasure-refused.v1"
    doc: ClassVar[str] = (
        "A customer's erasure request was refused because legal holds cover them (on the customer, one of their "
        "tickets, or an incident linked to one): nothing was erased; the request, its basis and the holds are "
        "recorded so the refusal is auditable. Once the holds are released the request can be made again."
    )
    topic: ClassVar[Topic] = Topic.customers
    refusal_id: str
    customer_id: str
    legal_basis: str
    reference: str = ""
    requested_by: str
    refused_at: datetime
    holds: list[RefusingHold] = Field(min_length=1)

    def key(self) -> str:
        return self.customer_id


class DeadLettered(WireEvent):
    """What the dead-letter topic carries: the original record and the error."""

    event_type: ClassVar[str] = "tsop.deadletter.v1"
    doc: ClassVar[str] = "A record a consumer could not process, with the error."
    topic: ClassVar[Topic] = Topic.deadletter
    consumer: str
    source_topic: str
    source_partition: int
    source_offset: int
    source_key: str | None
    source_headers: dict[str, str]
    source_value: str
    error: str
    failed_at: datetime

    def key(self) -> str:
        return f"{self.source_topic}:{self.source_partition}:{self.source_offset}"


def _concrete(cls: type[WireEvent]) -> list[type[WireEvent]]:
    found: list[type[WireEvent]] = []
    for sub in cls.__subclasses__():
        if "event_type" in sub.__dict__:
            found.append(sub)
        found.extend(_concrete(sub))
    return found


EVENT_TYPES: dict[str, type[WireEvent]] = {cls.event_type: cls for cls in _concrete(WireEvent)}


class UnknownEventType(ValueError):
    pass


def parse_event(event_type: str, data: bytes | str | dict[str, Any]) -> WireEvent:
    """Validate a body against the model its ``ce_type`` names."""
    try:
        cls = EVENT_TYPES[event_type]
    except KeyError:
        raise UnknownEventType(event_type) from None
    if isinstance(data, dict):
        return cls.model_validate(data)
    return cls.model_validate_json(data)
