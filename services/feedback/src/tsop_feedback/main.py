"""Wiring: settings → service (event store, relay, consumer, delivery worker, rating windows) → HTTP app."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI

from tsop_events.http import create_app, serve
from tsop_events.runtime import Service
from tsop_events.settings import ServiceSettings
from tsop_feedback.api import router
from tsop_feedback.commands import FeedbackApp
from tsop_feedback.complaints import main as complaints
from tsop_feedback.policies import FollowTickets
from tsop_feedback.views import deliver_feedback, rating_windows
from tsop_feedback.wire import WIRE


class FeedbackSettings(ServiceSettings):
    service_name: str = "feedback"
    """Names the service in events and its database."""
    http_port: int = 8003
    """Feedback's HTTP port."""
    rating_window_seconds: float = 24 * 3600
    """How long after the resolution the customer may rate; then the ticket closes unrated."""
    webhook_secret: str = "change-me"
    """The key of the HMAC-SHA256 signature (`X-TSOP-Signature`) on every webhook to an applicant's callback."""
    complaints_policy_file: Path | None = None
    """Complaint types and deadlines, repeats, the low score, low-score patterns, the assessment checklist and
    the quality weights (JSON, see services/feedback/README.md); default: the built-in policy."""


FeedbackService = Service[FeedbackApp, FeedbackSettings]


def bootstrap(settings: FeedbackSettings | None = None) -> FeedbackService:
    """The feedback service; the webhook secret goes to the delivery worker and nowhere else."""
    s = settings or FeedbackSettings()

    def make_app(st: FeedbackSettings) -> FeedbackApp:
        return FeedbackApp(st, rating_window=timedelta(seconds=st.rating_window_seconds))

    async def webhooks(svc: FeedbackService) -> None:
        await deliver_feedback(svc, s.webhook_secret)

    service = Service(
        s,
        app_factory=make_app,
        mapper=complaints.mapper(WIRE),
        sinks=[FollowTickets.of, *complaints.SINKS],
        tasks=[webhooks, rating_windows, *complaints.TASKS],
        ddl=list(complaints.DDL),
    )
    complaints.configure(service, s.complaints_policy_file)
    return service


def build(settings: FeedbackSettings | None = None) -> FastAPI:
    return create_app(bootstrap(settings), "TSOP feedback", [router, complaints.router])


def main() -> None:
    s = FeedbackSettings()
    serve(build(s), s.http_host, s.http_port, s.log_level)


if __name__ == "__main__":
    main()
