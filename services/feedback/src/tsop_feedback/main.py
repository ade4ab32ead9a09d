"""Wiring: settings → runtime → HTTP app."""

from __future__ import annotations

from datetime import timedelta

from fastapi import FastAPI

from tsop_events.http import create_app, serve
from tsop_events.runtime import Runtime
from tsop_events.settings import ServiceSettings
from tsop_feedback.api import router
from tsop_feedback.application import FeedbackApp, to_wire
from tsop_feedback.delivery import deliver_feedback, rating_windows
from tsop_feedback.policies import FollowTickets


class FeedbackSettings(ServiceSettings):
    service_name: str = "feedback"
    http_port: int = 8003
    rating_window_seconds: float = 24 * 3600
    webhook_secret: str = "change-me"


def build(settings: FeedbackSettings | None = None) -> FastAPI:
    s = settings or FeedbackSettings()
    window = timedelta(seconds=s.rating_window_seconds)

    def sink(rt: Runtime) -> FollowTickets:
        assert isinstance(rt.app, FeedbackApp)
        return FollowTickets(rt.app)

    runtime = Runtime(
        s,
        app_factory=lambda st: FeedbackApp(st, rating_window=window),
        mapper=to_wire,
        sinks=[sink],
        tasks=[deliver_feedback, rating_windows],
    )
    runtime.extras["webhook_secret"] = s.webhook_secret
    return create_app(runtime, "TSOP feedback", [router])


def main() -> None:
    s = FeedbackSettings()
    serve(build(s), s.http_host, s.http_port, s.log_level)


if __name__ == "__main__":
    main()
