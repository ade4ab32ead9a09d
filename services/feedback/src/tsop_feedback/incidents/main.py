"""Wiring of the incident notices into feedback's service: their consumer and the timer of the notices that wait
for a ticket's case (``main.bootstrap`` adds them)."""

from __future__ import annotations

import asyncio
from functools import partial

from tsop_events.runtime import Service
from tsop_feedback.commands import FeedbackApp, case_id
from tsop_feedback.incidents.policies import IncidentNotices, tell_waiting
from tsop_feedback.incidents.views import LinkedTickets

__all__ = ["SINKS", "TASKS"]

SINKS = [IncidentNotices.of]


def ready_tickets(app: FeedbackApp) -> list[str]:
    """The tickets whose waiting notices can be queued or dropped now: their case opened, or their incidents ended
    (the board first, then the cases: a case the board's notices could need is known)."""
    board, follow_ups = LinkedTickets.of(app), app.follow_ups
    board.refresh()
    follow_ups.refresh()
    return board.ready_tickets(lambda ticket: follow_ups.opened(case_id(ticket)))


async def waiting_notices(svc: Service[FeedbackApp], every: float = 1.0, idle: float = 10.0, chunk: int = 500) -> None:
    """Queue the incident notices whose tickets' cases have opened since they came (a link can reach feedback
    before the ticket's submission), a chunk of tickets per transaction; drop those nobody can be told of. Only the
    tickets that are ready are read (not every waiting one, each round, while their cases lag). Woken when the
    store saved (any instance), at most once per ``every`` seconds; with nothing waiting, a round per ``idle``
    seconds at most otherwise (a save wakes it: a notice that begins to wait is a save)."""
    board = LinkedTickets.of(svc.app)
    wake = svc.waiter(saved=True, pace=every)
    while True:
        ready = await asyncio.to_thread(ready_tickets, svc.app)
        for i in range(0, len(ready), chunk):
            await svc.commands.run(partial(tell_waiting, app=svc.app, tickets=ready[i:i + chunk]))
        await wake.wait(every if board.waiting else idle)  # (a dict's truth: no lock needed)


TASKS = [waiting_notices]
