"""Wiring of the incident notices into feedback's service: their consumer (``main.bootstrap`` adds it)."""

from __future__ import annotations

from tsop_feedback.incidents.policies import IncidentNotices

__all__ = ["SINKS"]

SINKS = [IncidentNotices.of]
