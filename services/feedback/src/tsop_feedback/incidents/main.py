"""Wiring of the incident notices into feedback's service: their consumer and the timer of the notices that wait
for a ticket's case (``main.bootstrap`` adds them)."""

from __future__ import annotations

from functools import partial

from tsop_events.runtime import Service
from tsop_feedback.commands import FeedbackApp
from tsop_feedback.incidents.policies import IncidentNotices, tell_waiting
from tsop_feedback.incidents.views import LinkedTickets

__all__ = ["SINKS", "TASKS"]

SINKS = [IncidentNotices.of]


async def waiting_notices(svc: Service[FeedbackApp], every: float = 1.0, chunk: int = 500) -> None:
    """At most each ``every`` seconds, after a save: queue the incident notices whose tickets' cases have opened since
    they came (a link can reach feedback before the ticket's submission), a chunk of tickets per transaction."""
    board = LinkedTickets.of(svc.app)
    wake = svc.waiter(saved=True, pace=every)  # a case opens with a save (any instance); idle: the safety net only
    while True:
        waiting = await board.read(board.waiting_tickets)
        for i in range(0, len(waiting), chunk):
            await svc.commands.run(partial(tell_waiting, app=svc.app, tickets=waiting[i:i + chunk]))
        await wake.wait()


TASKS = [waiting_notices]
