"""The outbox relay: the event store's notification log, published to Kafka.

Reads notifications in order after the recorded position, maps each domain
event to at most one wire event (the service's mapper, in one place), publishes
the batch, waits for the broker's acknowledgement and then records how far it
got. Delivery is at-least-once; ``ce_id`` is stable so consumers can tell a
re-published event from a new one. When the broker epoch changes, the relay
starts again from the beginning of the log.

One bad record never stops the others. A notification that can never be
published as it is (the mapper or the wire model refuses it, or the broker
refuses the record for good, e.g. as too large) is *set aside*: a row in
``tsop_relay_set_aside`` with its stored form and the error, a ``DeadLettered``
record on the dead-letter topic, the ``tsop_relay_set_aside`` metrics, one log
line, and a ``degraded`` entry in ``/readyz``. The relay then goes on with the
rest, in order. Transient failures (broker or PostgreSQL unreachable) are
retried, never set aside.

Set-aside records are tried again when the relay starts (deploy a fix, restart)
and whenever an operator asks for it (``python -m tsop_events.relay
republish``, which any running instance of the service picks up within a
second or two).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    CorruptRecordException,
    InvalidTimestampError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
    UnsupportedForMessageFormatError,
)
from eventsourcing.persistence import InterfaceError, Notification, OperationalError

from tsop_events.envelope import Envelope, stable_event_id, wrap
from tsop_events.epoch import EpochWatcher
from tsop_events.metrics import RELAY_BACKLOG, RELAY_LEADER, RELAY_PUBLISHED, RELAY_SET_ASIDE, RELAY_SET_ASIDE_TOTAL
from tsop_events.personal import error_text
from tsop_events.schemas import DeadLettered, WireEvent
from tsop_events.settings import ServiceSettings
from tsop_events.store import EventStoreApp
from tsop_events.topics import Topic
from tsop_events.wake import wait_event

log = logging.getLogger(__name__)

RELAY_DDL = """
CREATE TABLE IF NOT EXISTS tsop_relay (
    name text PRIMARY KEY,
    epoch text NOT NULL,
    position bigint NOT NULL
)
"""

SET_ASIDE_DDL = """
CREATE TABLE IF NOT EXISTS tsop_relay_set_aside (
    name text NOT NULL,
    notification_id bigint NOT NULL,
    originator_id text NOT NULL,
    originator_version bigint NOT NULL,
    topic text,
    subject text,
    error text NOT NULL,
    stored_form text NOT NULL,
    set_aside_at timestamptz NOT NULL,
    attempts int NOT NULL DEFAULT 1,
    last_attempt_at timestamptz NOT NULL,
    retry_requested_at timestamptz,
    republished_at timestamptz,
    PRIMARY KEY (name, notification_id)
)
"""

# the broker refuses these records whatever we do: retrying cannot help, setting aside does
PERMANENT: tuple[type[BaseException], ...] = (
    MessageSizeTooLargeError,
    RecordTooLargeError,
    RecordListTooLargeError,
    CorruptRecordException,
    InvalidTimestampError,
    UnsupportedForMessageFormatError,
)
# retried with back-off, never set aside: the broker or PostgreSQL (through asyncpg or the event store) is away
TRANSIENT: tuple[type[BaseException], ...] = (
    KafkaError,
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OperationalError,
    InterfaceError,
)

DEAD_LETTER_VALUE_LIMIT = 256 * 1024  # a dead letter carries at most this much of the stored form
LEADER_CHECK_SECONDS = 1.0  # how often a standby asks for the lead, and a leader checks it still holds it
MAINTENANCE_SECONDS = 1.0  # how often the backlog, the set-aside count and republish requests are read
RELAY_POLL_SECONDS = 0.05  # how often an idle relay reads its outbox when its store cannot NOTIFY (not PostgreSQL)


@dataclass(frozen=True, slots=True)
class Outgoing:
    event: WireEvent
    causation_id: str | None = None
    correlation_id: str | None = None


Mapper = Callable[[Any], Outgoing | None]


@dataclass(slots=True)
class _Ready:
    """A notification mapped and wrapped, ready to send."""

    notification: Notification
    topic: str
    key: bytes
    envelope: Envelope


@dataclass(slots=True)
class _Refused:
    """A notification that cannot be published as it is, and why."""

    notification: Notification
    error: BaseException
    topic: str | None
    subject: str | None


def _storable(text: str) -> str:
    """Text PostgreSQL can hold (no NUL)."""
    return text.replace("\x00", "\ufffd")


def stored_form(n: Notification) -> str:
    """The notification as stored, as JSON text: what an operator (or a fixed mapper) needs to recover it."""
    try:
        state: Any = json.loads(bytes(n.state).decode("utf-8"))
        encoding = "json"
    except (UnicodeDecodeError, ValueError):
        state, encoding = base64.b64encode(bytes(n.state)).decode(), "base64"
    form = {
        "notification_id": n.id,
        "originator_id": str(n.originator_id),
        "originator_version": n.originator_version,
        "topic": n.topic,
        "state_encoding": encoding,
        "state": state,
    }
    return _storable(json.dumps(form, ensure_ascii=False, default=str))


def _ticket_of(n: Notification, domain_event: Any) -> str | None:
    """The ticket whose history the event belongs to, when it names one (``ticket_id``)."""
    ticket = getattr(domain_event, "ticket_id", None)
    if ticket is None:
        try:
            state = json.loads(bytes(n.state).decode("utf-8"))
            ticket = state.get("ticket_id") if isinstance(state, dict) else None
        except (UnicodeDecodeError, ValueError):
            ticket = None
    return str(ticket) if ticket else None


def _error_text(exc: BaseException) -> str:
    return _storable(f"{type(exc).__name__}: {error_text(exc)}"[:4000])  # no input values: they may be personal


class Relay:
    def __init__(
        self,
        name: str,
        app: EventStoreApp,
        mapper: Mapper,
        producer: AIOKafkaProducer,
        pool: asyncpg.Pool,
        settings: ServiceSettings,
        epoch: EpochWatcher,
    ) -> None:
        self.name = name
        self.app = app
        self.mapper = mapper
        self._publishes: Callable[[str], bool] | None = getattr(mapper, "publishes", None)
        self.producer = producer
        self.pool = pool
        self.settings = settings
        self.epoch_watcher = epoch
        self.position = 0
        self.epoch: str | None = None
        # told the topics of each published batch, after the broker's acknowledgement (the runtime announces them
        # to every consumer of the platform, so a consumer paused for want of records resumes at once)
        self.on_published: Callable[[set[str]], None] | None = None
        self.running = False
        self.set_aside = 0  # notifications set aside and not republished (read from the table)
        self.backlog = 0
        self._retry_all = True  # at start, every set-aside record is tried again
        self._next_maintenance = 0.0
        self._next_leader_check = 0.0
        self.leader = False
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Called after a local save so the relay need not wait for its next poll."""
        self._wake.set()

    async def on_epoch(self, epoch: str) -> None:
        """Told of a new broker epoch (the runtime subscribes it): an idle relay republishes at once, not at its
        safety net."""
        self._wake.set()

    async def _load(self) -> None:
        row = await self.pool.fetchrow("SELECT epoch, position FROM tsop_relay WHERE name = $1", self.name)
        if row is not None:
            self.epoch, self.position = row["epoch"], row["position"]

    async def _store(self, conn: asyncpg.Connection | asyncpg.Pool | None = None) -> None:
        await (conn or self.pool).execute(
            "INSERT INTO tsop_relay (name, epoch, position) VALUES ($1, $2, $3) "
            "ON CONFLICT (name) DO UPDATE SET epoch = EXCLUDED.epoch, position = EXCLUDED.position",
            self.name,
            self.epoch,
            self.position,
        )

    async def run(self) -> None:
        """Publish while this instance leads; stand by while another instance of the service does.

        Leadership is a PostgreSQL advisory lock held on a connection of its own: one relay per
        service publishes its outbox (two would publish every event twice), and when the leader's
        process dies its connection closes, the lock is released and a standby takes over from the
        recorded position within about ``LEADER_CHECK_SECONDS``.
        """
        self.running = True
        while True:
            lock = await self._lead()
            try:
                await self._publish_while_leading(lock)
            finally:
                self.leader = False
                RELAY_LEADER.labels(self.name).set(0)
                with contextlib.suppress(Exception):
                    await lock.close(timeout=2)

    async def _lead(self) -> asyncpg.Connection:
        """Wait until this instance holds the relay's lock; return the connection that holds it."""
        while True:
            try:
                conn = await asyncpg.connect(self.settings.pg_dsn())
            except TRANSIENT as exc:
                log.warning("relay %s: cannot reach PostgreSQL for leadership: %s", self.name, exc)
                await asyncio.sleep(LEADER_CHECK_SECONDS)
                continue
            try:
                while True:
                    if await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", f"tsop-relay:{self.name}"):
                        self.leader = True
                        RELAY_LEADER.labels(self.name).set(1)
                        log.info("relay %s: leading (this instance publishes the outbox)", self.name)
                        return conn
                    # a standby still reports what is set aside, so every instance's readiness shows it
                    self.set_aside = int(await conn.fetchval(
                        "SELECT count(*) FROM tsop_relay_set_aside WHERE name = $1 AND republished_at IS NULL",
                        self.name,
                    ))
                    await asyncio.sleep(LEADER_CHECK_SECONDS)
            except TRANSIENT as exc:
                log.warning("relay %s: leadership check failed: %s", self.name, exc)
                with contextlib.suppress(Exception):
                    await conn.close(timeout=2)
                await asyncio.sleep(LEADER_CHECK_SECONDS)
            except BaseException:  # stopped while standing by: the connection goes with it
                conn.terminate()
                raise

    async def _still_leading(self, lock: asyncpg.Connection) -> bool:
        loop = asyncio.get_running_loop()
        if loop.time() < self._next_leader_check:
            return True
        self._next_leader_check = loop.time() + LEADER_CHECK_SECONDS
        try:
            await asyncio.wait_for(lock.fetchval("SELECT 1"), LEADER_CHECK_SECONDS * 5)
            return True
        except TRANSIENT as exc:  # TimeoutError included
            log.warning("relay %s: lost the leadership connection (%s); standing by", self.name, exc)
            return False

    async def _listen(self, lock: asyncpg.Connection) -> bool:
        """Be woken by every save of any instance: the event store NOTIFYs its table's channel on insert.

        Listening on the leadership connection means an idle relay reads its outbox only when something
        was saved (or once per ``relay_idle_seconds`` as a safety net), instead of polling PostgreSQL.
        """
        channel = getattr(self.app.recorder, "channel_name", None)
        if not channel:
            return False
        await lock.add_listener(channel, self._notified)
        # an operator's republish request (``python -m tsop_events.relay republish`` NOTIFYs it) and the loss of
        # this connection (so of the lead) wake the relay too: an idle relay needs no round each second
        await lock.add_listener(request_channel(self.name), self._requested)
        lock.add_termination_listener(self._lost)
        return True

    def _notified(self, *_: object) -> None:
        self._wake.set()

    def _requested(self, *_: object) -> None:
        """An operator's republish request: the next round maintains (republishes), however recent the last one."""
        self._next_maintenance = 0.0
        self._wake.set()

    def _lost(self, *_: object) -> None:
        """The leadership connection is gone: the next round checks the lead, however recent the last check."""
        self._next_leader_check = 0.0
        self._wake.set()

    async def _publish_while_leading(self, lock: asyncpg.Connection) -> None:
        backoff = 0.1
        loaded = False
        listening = False
        while await self._still_leading(lock):
            try:
                if not loaded:
                    await self._load()  # where the previous leader got to
                    loaded = True
                if not listening:
                    listening = await self._listen(lock)
                await self.maintain()
                self._wake.clear()  # before reading: a save committed while we read wakes the next round
                published = await self.publish_once()
                backoff = 0.1
                if not published:
                    idle = self.settings.relay_idle_seconds if listening else RELAY_POLL_SECONDS
                    # listening: woken by a save, a republish request or the lead's connection lost; the backlog
                    # and set-aside count are read again then, or at the safety net
                    await wait_event(self._wake, idle if listening else min(idle, MAINTENANCE_SECONDS))
            except TRANSIENT as exc:
                log.warning("relay %s: %s; retrying in %.1fs", self.name, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    # --- the log, in order ---------------------------------------------------------------------------

    def _prepare(self, n: Notification) -> _Ready | _Refused | None:
        """Map one notification to its record; anything raised here is about the record, not the world. A mapper
        that tells from the stored topic that it never publishes the event's class (``WireMap.publishes``) has it
        skipped without decoding its state."""
        if self._publishes is not None and not self._publishes(n.topic):
            return None
        domain_event: Any = None
        topic: str | None = None
        try:
            domain_event = self.app.sealed_event(n)  # personal data leaves sealed (tsop_events.personal)
            out = self.mapper(domain_event)
            if out is None:
                return None
            topic = out.event.topic.qualified(self.settings.topic_prefix)
            env = wrap(
                out.event,
                event_id=stable_event_id(n.originator_id, n.originator_version),
                source=self.settings.service_name,
                time=domain_event.timestamp,
                correlation_id=out.correlation_id,
                causation_id=out.causation_id,
            )
            return _Ready(n, topic, out.event.key().encode(), env)
        except Exception as exc:  # noqa: BLE001 - a mapper or wire-model failure is this record's, not transient
            ticket = _ticket_of(n, domain_event)
            if topic is None and ticket is not None:
                topic = Topic.tickets.qualified(self.settings.topic_prefix)  # a ticket's events travel there
            return _Refused(n, exc, topic, ticket or str(n.originator_id))

    async def _send(self, ready: _Ready) -> Any:
        return await self.producer.send(
            ready.topic, value=ready.envelope.data, key=ready.key, headers=ready.envelope.headers()
        )

    async def publish_once(self) -> int:
        """Publish the next batch; return how many notifications it covered."""
        current = await self.epoch_watcher.wait_known()
        if current != self.epoch:
            log.info("relay %s: broker epoch %s, publishing from the start", self.name, current)
            self.epoch, self.position = current, 0
            await self._store()
        notifications = await asyncio.to_thread(
            self.app.recorder.select_notifications, self.position + 1, self.settings.relay_batch
        )
        if not notifications:
            self.backlog = 0
            RELAY_BACKLOG.labels(self.name).set(0)
            return 0
        refused: list[_Refused] = []
        lettered: set[int] = set()
        sent: list[tuple[_Ready, Any]] = []

        async def letter_in_order(r: _Refused) -> None:
            # the dead letter goes out before any later record of the log (the archive relies on it: a
            # ticket's final event must never reach it before the letter about an earlier event)
            if sent:
                await asyncio.gather(*(f for _, f in sent), return_exceptions=True)
            await self._dead_letter(r)
            refused.append(r)
            lettered.add(r.notification.id)

        for n in notifications:
            prepared = self._prepare(n)
            if prepared is None:
                continue
            if isinstance(prepared, _Refused):
                await letter_in_order(prepared)
                continue
            try:
                sent.append((prepared, await self._send(prepared)))
            except PERMANENT as exc:  # refused before it left (e.g. larger than the producer may send)
                await letter_in_order(_Refused(n, exc, prepared.topic, prepared.envelope.subject))
        outcomes = await asyncio.gather(*(f for _, f in sent), return_exceptions=True) if sent else []
        transient = [o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, PERMANENT)]
        if transient:
            raise transient[0]
        published = 0
        for (ready, _), outcome in zip(sent, outcomes, strict=True):
            if not isinstance(outcome, BaseException):
                published += 1
                continue
            # a batch refused as a whole may hold good records too: each alone decides
            try:
                await (await self._send(ready))
                published += 1
            except PERMANENT as exc:
                refused.append(_Refused(ready.notification, exc, ready.topic, ready.envelope.subject))
        refused.sort(key=lambda r: r.notification.id)
        for r in refused:
            if r.notification.id not in lettered:  # refused by the broker after it left: rare, and late
                await self._dead_letter(r)
        if self.epoch_watcher.epoch != self.epoch:
            return len(notifications)  # published into a new incarnation: start over
        last = notifications[-1].id
        if refused:
            async with self.pool.acquire() as conn, conn.transaction():
                new = await self._record_set_aside(conn, refused)
                self.position = last
                await self._store(conn)
        else:  # the usual case: one statement, no transaction around it
            new = set()
            self.position = last
            await self._store()
        RELAY_PUBLISHED.labels(self.name).inc(published)
        if published and self.on_published is not None:
            self.on_published({ready.topic for ready, _ in sent})
        for r in refused:
            if r.notification.id in new:
                RELAY_SET_ASIDE_TOTAL.labels(self.name).inc()
                log.error(
                    "relay %s: set aside notification %s (%s v%s, subject %s): %s; "
                    "the relay goes on; republish after a fix with `python -m tsop_events.relay republish`",
                    self.name,
                    r.notification.id,
                    r.notification.originator_id,
                    r.notification.originator_version,
                    r.subject,
                    _error_text(r.error),
                )
        if new:
            self.set_aside += len(new)
            RELAY_SET_ASIDE.labels(self.name).set(self.set_aside)
        if len(notifications) < self.settings.relay_batch:
            self.backlog = 0
            RELAY_BACKLOG.labels(self.name).set(0)
        return len(notifications)

    async def _record_set_aside(self, conn: asyncpg.Connection, refused: Sequence[_Refused]) -> set[int]:
        """Keep the refused notifications; return the ids newly set aside (not those already kept)."""
        new: set[int] = set()
        now = datetime.now(UTC)
        for r in refused:
            n = r.notification
            row = await conn.fetchval(
                """INSERT INTO tsop_relay_set_aside (name, notification_id, originator_id, originator_version, topic,
                       subject, error, stored_form, set_aside_at, last_attempt_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)
                   ON CONFLICT (name, notification_id) DO UPDATE SET
                       error = EXCLUDED.error, topic = EXCLUDED.topic, set_aside_at = EXCLUDED.set_aside_at,
                       last_attempt_at = EXCLUDED.last_attempt_at, attempts = tsop_relay_set_aside.attempts + 1,
                       republished_at = NULL, retry_requested_at = NULL
                   WHERE tsop_relay_set_aside.republished_at IS NOT NULL
                   RETURNING notification_id""",
                self.name,
                n.id,
                str(n.originator_id),
                n.originator_version,
                r.topic,
                r.subject,
                _error_text(r.error),
                stored_form(n),
                now,
            )
            if row is not None:
                new.add(int(row))
        return new

    async def _dead_letter(self, r: _Refused) -> None:
        """The refused record on the dead-letter topic, with its stored form and the error."""
        n = r.notification
        form = stored_form(n)
        if len(form) > DEAD_LETTER_VALUE_LIMIT:
            form = form[:DEAD_LETTER_VALUE_LIMIT] + " … (truncated; the whole stored form is in tsop_relay_set_aside)"
        event_id = stable_event_id(n.originator_id, n.originator_version)
        letter = DeadLettered(
            consumer=f"relay:{self.name}",
            source_topic=r.topic or f"{self.settings.topic_prefix}outbox.{self.name}",
            source_partition=-1,
            source_offset=n.id,
            source_key=r.subject,
            source_headers={
                "ce_id": event_id,
                "ce_source": self.settings.service_name,
                "ce_subject": r.subject or "",
                "relay": self.name,
                "notification_id": str(n.id),
                "originator_id": str(n.originator_id),
                "originator_version": str(n.originator_version),
                "stored_topic": n.topic,
            },
            source_value=form,
            error=_error_text(r.error),
            failed_at=datetime.now(UTC),
        )
        env = wrap(letter, event_id=stable_event_id(f"relay:{self.name}", n.id), source=self.settings.service_name)
        env = dataclasses.replace(env, subject=r.subject, correlation_id=r.subject)
        key = (r.subject or letter.key()).encode()
        try:
            await self.producer.send_and_wait(
                Topic.deadletter.qualified(self.settings.topic_prefix), value=env.data, key=key, headers=env.headers()
            )
            if self.on_published is not None:  # announced as the batch's records are
                self.on_published({Topic.deadletter.qualified(self.settings.topic_prefix)})
        except PERMANENT as exc:  # the table still holds it; the metric and the log say so
            log.error("relay %s: the dead letter of notification %s was refused too: %s", self.name, n.id, exc)

    # --- upkeep: a truthful backlog, the set-aside count, republishing --------------------------------

    async def maintain(self, force: bool = False) -> None:
        """Now and then: read the backlog and the set-aside count, and republish what was asked for."""
        loop = asyncio.get_running_loop()
        if not force and loop.time() < self._next_maintenance:
            return
        self._next_maintenance = loop.time() + MAINTENANCE_SECONDS
        latest = await asyncio.to_thread(self.app.recorder.max_notification_id) or 0
        self.backlog = max(0, latest - self.position)
        RELAY_BACKLOG.labels(self.name).set(self.backlog)
        # one read says both how many are set aside and whether an operator asked for a republish
        pending = await self.pool.fetch(
            "SELECT retry_requested_at IS NOT NULL AS requested FROM tsop_relay_set_aside "
            "WHERE name = $1 AND republished_at IS NULL",
            self.name,
        )
        retry_all, self._retry_all = self._retry_all, False
        if pending and (retry_all or any(r["requested"] for r in pending)):
            try:
                await self.republish(only_requested=not retry_all)
            except BaseException:
                self._retry_all = self._retry_all or retry_all  # not done: try again at the next round
                raise
            pending = await self.pool.fetch(
                "SELECT true FROM tsop_relay_set_aside WHERE name = $1 AND republished_at IS NULL", self.name
            )
        self.set_aside = len(pending)
        RELAY_SET_ASIDE.labels(self.name).set(self.set_aside)

    async def republish(self, only_requested: bool = True) -> tuple[int, int]:
        """Try set-aside notifications again, in order; return (republished, still refused)."""
        rows = await self.pool.fetch(
            "SELECT notification_id FROM tsop_relay_set_aside WHERE name = $1 AND republished_at IS NULL"
            + (" AND retry_requested_at IS NOT NULL" if only_requested else "")
            + " ORDER BY notification_id",
            self.name,
        )
        if not rows:
            return 0, 0
        await self.epoch_watcher.wait_known()
        done, failed = 0, 0
        first_error = ""
        topics: set[str] = set()
        for row in rows:
            nid = int(row["notification_id"])
            found = await asyncio.to_thread(self.app.recorder.select_notifications, nid, 1, nid)
            error: str | None
            if not found:
                error = f"notification {nid} is no longer in the event store"
            else:
                prepared = self._prepare(found[0])
                error = None
                if isinstance(prepared, _Refused):
                    error = _error_text(prepared.error)
                elif prepared is not None:
                    try:
                        await (await self._send(prepared))
                        topics.add(prepared.topic)
                    except PERMANENT as exc:
                        error = _error_text(exc)
            if error is None:
                done += 1
                await self.pool.execute(
                    "UPDATE tsop_relay_set_aside SET republished_at = now(), retry_requested_at = NULL, "
                    "last_attempt_at = now(), attempts = attempts + 1 WHERE name = $1 AND notification_id = $2",
                    self.name,
                    nid,
                )
            else:
                failed += 1
                first_error = first_error or f"notification {nid}: {error}"
                await self.pool.execute(
                    "UPDATE tsop_relay_set_aside SET error = $3, retry_requested_at = NULL, last_attempt_at = now(), "
                    "attempts = attempts + 1 WHERE name = $1 AND notification_id = $2",
                    self.name,
                    nid,
                    error,
                )
        if done:
            RELAY_PUBLISHED.labels(self.name).inc(done)
        if topics and self.on_published is not None:
            self.on_published(topics)  # paused consumers of those topics read them now, not at their safety net
        log.log(
            logging.ERROR if failed else logging.INFO,
            "relay %s: republished %d set-aside notification(s); %d still refused%s",
            self.name,
            done,
            failed,
            f" (first: {first_error})" if failed else "",
        )
        return done, failed


# --- the operator's command line ---------------------------------------------------------------------


def request_channel(name: str) -> str:
    """The channel a relay's leader listens on for republish requests (on its service's database)."""
    return f"tsop_relay_{name}"[:63]


async def _request_republish(settings: ServiceSettings, name: str, wait: float) -> int:
    conn = await asyncpg.connect(settings.pg_dsn())
    try:
        await conn.execute(SET_ASIDE_DDL)
        asked = await conn.fetch(
            "UPDATE tsop_relay_set_aside SET retry_requested_at = now() "
            "WHERE name = $1 AND republished_at IS NULL RETURNING notification_id",
            name,
        )
        ids = [int(r["notification_id"]) for r in asked]
        await conn.execute("SELECT pg_notify($1, '')", request_channel(name))  # wakes the leading relay at once
        print(f"relay {name}: republish asked for {len(ids)} set-aside notification(s) {ids}")
        if not ids or wait <= 0:
            return 0
        deadline = asyncio.get_running_loop().time() + wait
        while asyncio.get_running_loop().time() < deadline:
            pending = await conn.fetchval(
                "SELECT count(*) FROM tsop_relay_set_aside WHERE name = $1 AND notification_id = ANY($2) "
                "AND retry_requested_at IS NOT NULL",
                name,
                ids,
            )
            if not pending:
                break
            await asyncio.sleep(0.5)
        rows = await conn.fetch(
            "SELECT notification_id, republished_at, retry_requested_at, error FROM tsop_relay_set_aside "
            "WHERE name = $1 AND notification_id = ANY($2) ORDER BY notification_id",
            name,
            ids,
        )
        refused = 0
        for r in rows:
            if r["republished_at"] is not None:
                print(f"  {r['notification_id']}: republished")
            elif r["retry_requested_at"] is not None:
                refused += 1
                print(f"  {r['notification_id']}: not picked up yet (is the service running?)")
            else:
                refused += 1
                print(f"  {r['notification_id']}: still refused: {r['error']}")
        return 1 if refused else 0
    finally:
        await conn.close()


async def _list(settings: ServiceSettings, name: str) -> int:
    conn = await asyncpg.connect(settings.pg_dsn())
    try:
        await conn.execute(SET_ASIDE_DDL)
        rows = await conn.fetch(
            "SELECT notification_id, originator_id, originator_version, subject, error, set_aside_at, attempts "
            "FROM tsop_relay_set_aside WHERE name = $1 AND republished_at IS NULL ORDER BY notification_id",
            name,
        )
        for r in rows:
            print(
                f"{r['notification_id']}\t{r['originator_id']} v{r['originator_version']}\tsubject {r['subject']}\t"
                f"since {r['set_aside_at'].isoformat()}\tattempts {r['attempts']}\t{r['error']}"
            )
        print(f"relay {name}: {len(rows)} notification(s) set aside")
        return 0
    finally:
        await conn.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m tsop_events.relay {list,republish}`` with the service's own TSOP_* settings."""
    parser = argparse.ArgumentParser(prog="python -m tsop_events.relay", description=main.__doc__)
    parser.add_argument("command", choices=["list", "republish"])
    parser.add_argument("--service", help="the service whose relay it is (default: TSOP_SERVICE_NAME)")
    parser.add_argument("--wait", type=float, default=15.0, help="seconds to wait for the outcome (republish)")
    args = parser.parse_args(argv)
    settings = ServiceSettings(service_name=args.service) if args.service else ServiceSettings()
    name = settings.service_name
    if args.command == "list":
        return asyncio.run(_list(settings, name))
    return asyncio.run(_request_republish(settings, name, args.wait))


if __name__ == "__main__":
    sys.exit(main())
