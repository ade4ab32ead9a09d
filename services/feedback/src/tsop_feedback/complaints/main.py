"""Wiring of the complaints context into feedback's service: its mapper rows, consumer, tasks, policy and routes.

Feedback's ``main.bootstrap`` adds these to its own; this context keeps no settings class of its own (its one
setting, ``TSOP_COMPLAINTS_POLICY_FILE``, is on ``FeedbackSettings``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tsop_events.runtime import Service
from tsop_events.wiremap import WireMap
from tsop_feedback.commands import FeedbackApp
from tsop_feedback.complaints import commands, policies, views, wire
from tsop_feedback.complaints.api import router
from tsop_feedback.complaints.domain import DEFAULT_POLICY, Policy
from tsop_feedback.complaints.projection import DDL

__all__ = ["DDL", "SINKS", "TASKS", "configure", "load_policy", "mapper", "router"]

SINKS = [policies.QualitySignals.of]
TASKS = [views.complaint_deadlines, policies.drain]


def mapper(service: WireMap) -> WireMap:
    return wire.with_service(service)


def load_policy(path: Path | None) -> Policy:
    """The operator's complaints policy: the file, else the built-in one; a bad file stops the start, naming why."""
    if path is None:
        return DEFAULT_POLICY
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"TSOP_COMPLAINTS_POLICY_FILE {path}: {exc.strerror or exc}") from None
    return Policy.from_json(text, f"TSOP_COMPLAINTS_POLICY_FILE {path}")


def configure(service: Service[FeedbackApp, Any], policy_file: Path | None) -> None:
    """Give the service the policy (checked now, at bootstrap)."""
    service.extras[commands.POLICY_KEY] = load_policy(policy_file)
