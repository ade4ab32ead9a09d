"""Feedback driven by hand, synchronously: its commands on an in-memory store, without HTTP or a broker.

``SyncFeedback(app).rate(ticket, 4, None)`` runs ``commands.rate(svc, ...)`` to the end
on a fresh event loop; so for every command (see ``tests.sync``).
"""

from __future__ import annotations

from tests import sync
from tsop_events.runtime import Service
from tsop_feedback import commands
from tsop_feedback.commands import FeedbackApp


def service(app: FeedbackApp) -> Service[FeedbackApp]:
    return sync.service(app, "feedback")


class SyncFeedback(sync.SyncService[FeedbackApp]):
    def __init__(self, app: FeedbackApp) -> None:
        super().__init__(app, "feedback", commands)
