"""Webhook delivery to the applicant and the rating-window timer.

Delivery is at-least-once: a case stays on the board until its Notified event
is saved, so a crash between the POST and the save repeats the POST (receivers
de-duplicate on ``X-TSOP-Delivery``). Failed attempts back off exponentially.
"""

from __future__ import annotations

import asyncio
import logging
import time
from uuid import UUID

import httpx

from tsop_events.runtime import Runtime
from tsop_feedback.application import FeedbackApp, sign, webhook_body
from tsop_feedback.domain import FeedbackCase

log = logging.getLogger(__name__)


class Deliverer:
    def __init__(self, app: FeedbackApp, secret: str, timeout: float = 5.0, max_backoff: float = 300.0) -> None:
        self.app, self.secret, self.timeout, self.max_backoff = app, secret, timeout, max_backoff
        self.attempts: dict[UUID, int] = {}
        self.next_try: dict[UUID, float] = {}

    async def run_once(self, client: httpx.AsyncClient) -> int:
        await asyncio.to_thread(self.app.follow_ups.refresh)
        now = time.monotonic()
        with self.app.follow_ups.lock:
            todo = [c for c in self.app.follow_ups.to_notify if self.next_try.get(c, 0.0) <= now]
        if not todo:
            return 0
        results = await asyncio.gather(*(self._deliver(client, c) for c in todo[:200]))
        delivered = [r for r in results if r is not None]
        if delivered:
            await asyncio.to_thread(self.app.mark_notified, delivered)
            for cid, *_ in delivered:
                self.attempts.pop(cid, None)
                self.next_try.pop(cid, None)
        return len(delivered)

    async def _deliver(self, client: httpx.AsyncClient, cid: UUID) -> tuple[UUID, str, int, int | None] | None:
        """POST the webhook; what to record if it was delivered (or there is nowhere to deliver)."""
        case: FeedbackCase = await asyncio.to_thread(self.app.load, cid)
        if case.notified:
            return None
        attempts = self.attempts.get(cid, 0) + 1
        self.attempts[cid] = attempts
        status: int | None = None
        if case.callback_url:
            body = webhook_body(case)
            try:
                resp = await client.post(
                    case.callback_url,
                    content=body,
                    headers={
                        "content-type": "application/json",
                        "X-TSOP-Signature": sign(self.secret, body),
                        "X-TSOP-Delivery": str(cid),
                    },
                    timeout=self.timeout,
                )
                status = resp.status_code
            except httpx.HTTPError as exc:
                log.info("webhook for ticket %s failed (attempt %s): %s", case.ticket_id, attempts, exc)
            if status is None or not 200 <= status < 300:
                self.next_try[cid] = time.monotonic() + min(self.max_backoff, 0.5 * 2 ** (attempts - 1))
                return None
        return cid, "webhook" if case.callback_url else "none", attempts, status


async def deliver_feedback(runtime: Runtime) -> None:
    app = runtime.app
    assert isinstance(app, FeedbackApp)
    secret = runtime.extras["webhook_secret"]
    deliverer = Deliverer(app, secret)
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=100)) as client:
        while True:
            sent = await deliverer.run_once(client)
            if not sent:
                await asyncio.sleep(0.05)


async def rating_windows(runtime: Runtime) -> None:
    app = runtime.app
    assert isinstance(app, FeedbackApp)
    while True:
        await asyncio.to_thread(app.expire_windows)
        await asyncio.sleep(1.0)
