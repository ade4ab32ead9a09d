"""Wiring: settings → service (event store, relay, consumer, delivery worker, rating windows) → HTTP app."""

from __future__ import annotations

import json
from datetime import timedelta
from importlib import resources
from pathlib import Path

from fastapi import FastAPI

from tsop_events.http import create_app, serve
from tsop_events.runtime import Service
from tsop_events.settings import ServiceSettings
from tsop_feedback.api import channels_router, router, stats_router
from tsop_feedback.commands import FeedbackApp
from tsop_feedback.complaints import main as complaints
from tsop_feedback.domain import FeedbackPolicy, Templates
from tsop_feedback.incidents import main as incidents
from tsop_feedback.policies import FollowChannels, FollowTickets
from tsop_feedback.views import (
    channel_tokens,
    deliver_feedback,
    deliver_notifications,
    follow_channels,
    rating_windows,
)
from tsop_feedback.wire import WIRE


class FeedbackSettings(ServiceSettings):
    service_name: str = "feedback"
    """Names the service in events and its database."""
    http_port: int = 8003
    """Feedback's HTTP port."""
    rating_window_seconds: float = 24 * 3600
    """How long after the resolution the customer may rate, for service types the feedback policy gives no
    window of their own; then the ticket closes unrated (RatingExpired)."""
    feedback_policy_file: Path | None = None
    """The operator's feedback policy (JSON): rating windows per service type, the reminder, the low score that
    asks "is it solved?", the reopen period, sampling and fatigue caps. Unset: the built-in `feedback_policy.json`."""
    notification_templates_file: Path | None = None
    """The applicant's message texts per template kind (sms, email, app), language (zh, en …) and step (JSON).
    Unset: the built-in `notification_templates.json`."""
    webhook_secret: str = "change-me"
    """The key of the HMAC-SHA256 signature (`X-TSOP-Signature`) on every webhook to an applicant's callback."""
    shard_index: int = 0
    """This instance's share of the webhooks and step notifications to deliver (0 to shard_count - 1)."""
    shard_count: int = 1
    """How many feedback instances share the deliveries: each makes its own share (a stable draw from the
    notification's id) and another's only when that instance showed no progress for `delivery_takeover_seconds`."""
    delivery_takeover_seconds: float = 30.0
    """How long another instance must show no progress on its share (no delivery, no attempt) before this one
    makes its waiting deliveries (it is down or stuck); more than a delivery's deadline (3 times the 5 s timeout)."""
    complaints_policy_file: Path | None = None
    """Complaint types and deadlines, repeats, the low score, low-score patterns, the assessment checklist and
    the quality weights (JSON, see services/feedback/README.md); default: the built-in policy."""


FeedbackService = Service[FeedbackApp, FeedbackSettings]


def bootstrap(settings: FeedbackSettings | None = None) -> FeedbackService:
    """The feedback service; the webhook secret goes to the delivery worker and nowhere else."""
    s = settings or FeedbackSettings()
    policy = load_policy(s)
    templates = Templates.from_dict(*operator_data(s.notification_templates_file, "notification_templates.json",
                                                   "TSOP_NOTIFICATION_TEMPLATES_FILE"))

    def make_app(st: FeedbackSettings) -> FeedbackApp:
        return FeedbackApp(st, rating_window=timedelta(seconds=st.rating_window_seconds), policy=policy,
                           templates=templates)

    async def webhooks(svc: FeedbackService) -> None:
        await deliver_feedback(svc, s.webhook_secret)

    async def notifications(svc: FeedbackService) -> None:
        await deliver_notifications(svc, s.webhook_secret)

    service = Service(
        s,
        app_factory=make_app,
        mapper=complaints.mapper(WIRE),
        sinks=[FollowTickets.of, FollowChannels.of, *complaints.SINKS, *incidents.SINKS],
        tasks=[webhooks, notifications, rating_windows, *complaints.TASKS, *incidents.TASKS],
        followers=[follow_channels],  # the channel credentials the routes check
        token_resolvers=[channel_tokens],
        ddl=list(complaints.DDL),
    )
    complaints.configure(service, s.complaints_policy_file)
    return service


def operator_data(path: Path | None, built_in: str, setting: str) -> tuple[object, str]:
    """A JSON file of operator data (or the built-in one) and where it came from; unreadable: ValueError."""
    source = str(path) if path else f"built-in {built_in}"
    try:
        raw = path.read_text() if path else resources.files("tsop_feedback").joinpath(built_in).read_text()
        return json.loads(raw), source
    except (OSError, ValueError) as exc:
        raise ValueError(f"{setting} {source}: {exc}") from None


def load_policy(s: FeedbackSettings) -> FeedbackPolicy:
    """The feedback policy file, checked now: a bad file stops the start with the file, key and reason."""
    data, source = operator_data(s.feedback_policy_file, "feedback_policy.json", "TSOP_FEEDBACK_POLICY_FILE")
    return FeedbackPolicy.from_dict(data, timedelta(seconds=s.rating_window_seconds), source)


def build(settings: FeedbackSettings | None = None) -> FastAPI:
    return create_app(bootstrap(settings), "TSOP feedback", [router, stats_router, channels_router, complaints.router])


def main() -> None:
    s = FeedbackSettings()
    serve(build(s), s.http_host, s.http_port, s.log_level)


if __name__ == "__main__":
    main()
