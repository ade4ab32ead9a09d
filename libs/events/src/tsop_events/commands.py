"""Commands: every use case of every service runs as load → decide → save, through ``Commands.run``.

``decide`` is plain synchronous domain code: it loads aggregates through a
``UnitOfWork``, calls their methods (which may raise ``tsop_events.errors``)
and returns its answer. ``run`` does the rest, the same in all five services:

- the thread hop (the event store is synchronous; the event loop never blocks);
- the group commit (concurrent commands share one transaction, see ``store.GroupCommit``);
- the conflict retry (another writer saved first: decide again on fresh state);
- telling the service's in-memory views what was saved, so a caller reads its own write.

A command that changes nothing saves nothing; one that raises saves nothing.

``run_once`` makes a command idempotent under a client's ``Idempotency-Key``:
the key's record is saved in the same transaction as the command's events, so
a retry after a lost answer (or a crash) replays the first answer instead of
repeating the effect, and two concurrent retries give one effect.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from uuid import UUID

import orjson
from eventsourcing.domain import Aggregate, event

from tsop_events.envelope import derived_id
from tsop_events.errors import Invalid, NotFound
from tsop_events.personal import ERASED_FINGERPRINT, Keyring, fingerprint
from tsop_events.store import EventStoreApp, GroupCommit, IntegrityError

T = TypeVar("T", bound=Aggregate)
R = TypeVar("R")
A = TypeVar("A", bound=EventStoreApp)

Observer = Callable[[list[Any]], None]

log = logging.getLogger(__name__)


class IdempotencyRecord(Aggregate):
    """What a command answered under one client key: kept with the command's own events."""

    class Recorded(Aggregate.Created):
        scope: str
        key: str
        fingerprint: str
        answer: str

    @event(Recorded)
    def __init__(self, scope: str, key: str, fingerprint: str, answer: str) -> None:
        self.scope, self.key, self.fingerprint, self.answer = scope, key, fingerprint, answer

    @staticmethod
    def create_id(scope: str, key: str) -> UUID:
        return derived_id("idempotency", scope, key)


@dataclass(frozen=True, slots=True)
class Idempotency:
    """A client's ``Idempotency-Key`` for one command: ``scope`` names the command and the caller."""

    scope: str
    key: str
    fingerprint: str

    @classmethod
    def of(
        cls, scope: str, key: str, body: Any, *, keyring: Keyring | None = None, subject: str | None = None,
        customer: str | None = None,
    ) -> Idempotency:
        """The key with its body's fingerprint. A body holding personal data names the ``subject`` (and
        ``customer``) whose data key seals it, with the ``keyring``: its fingerprint is then keyed by that data key
        (``personal.fingerprint``), so an erasure leaves nothing a guess of the plaintext could be matched with.
        This call may read the keyring: call it off the event loop when the keyring is PostgreSQL's."""
        raw = orjson.dumps(body, option=orjson.OPT_SORT_KEYS, default=str)
        if keyring is None or subject is None:
            return cls(scope, key, hashlib.sha256(raw).hexdigest())
        return cls(scope, key, fingerprint(keyring, subject, customer, raw))

    @property
    def erased(self) -> bool:
        """The body's subject was erased: its fingerprint cannot be compared (a retry replays the first answer)."""
        return self.fingerprint == ERASED_FINGERPRINT


class UnitOfWork:
    """The aggregates one command (or one consumed batch) touches, loaded once, saved together."""

    def __init__(self, app: EventStoreApp) -> None:
        self.app = app
        self._aggregates: dict[UUID, Aggregate] = {}
        self._absent: set[UUID] = set()  # known (by ``prefetch``) never to have been created

    def prefetch(self, aggregate_ids: Iterable[UUID]) -> None:
        """Learn in one query which of ``aggregate_ids`` were never created, so finding them costs nothing.

        A batch that looks up many aggregates most of which do not exist (a consumer's new tickets) saves a round
        trip each. Safe under concurrency as any decision is: an aggregate created meanwhile by another writer makes
        this unit's save conflict (it would create it again at version 1), and the work is retried."""
        todo = {i for i in aggregate_ids if i not in self._aggregates and i not in self._absent}
        if todo:
            self._absent |= todo - self.app.existing(todo)

    def preload(self, aggregate_ids: Iterable[UUID]) -> None:
        """Load in one query the aggregates of ``aggregate_ids`` this unit has not loaded, and learn which were
        never created (a batch about many tickets: one round trip, not two per ticket)."""
        todo = {i for i in aggregate_ids if i not in self._aggregates and i not in self._absent}
        if todo:
            found = self.app.find_many(todo)
            self._aggregates.update(found)
            self._absent |= todo - set(found)

    def get(self, aggregate_id: UUID) -> Any:
        """The aggregate, or None if it was never created."""
        if aggregate_id in self._aggregates:
            return self._aggregates[aggregate_id]
        if aggregate_id in self._absent:
            return None
        aggregate = self.app.find(aggregate_id)
        if aggregate is None:
            self._absent.add(aggregate_id)  # asked again (a batch's many look-ups of one record): no second read
            return None
        self._aggregates[aggregate_id] = aggregate
        return aggregate

    def find(self, cls: type[T], aggregate_id: UUID) -> T | None:
        """The aggregate of type ``cls``, or None if it was never created."""
        found = self.get(aggregate_id)
        if found is not None and not isinstance(found, cls):
            raise TypeError(f"{aggregate_id} is a {type(found).__name__}, not a {cls.__name__}")
        return found

    def find_or_add(self, cls: type[T], aggregate_id: UUID, create: Callable[[], T]) -> T:
        """The aggregate of type ``cls``, created with ``create`` (and added) if it was never created."""
        found = self.find(cls, aggregate_id)
        if found is None:
            found = create()
            self.add(found)  # type: ignore[arg-type]
        return found

    def load(self, cls: type[T], aggregate_id: UUID, field: str = "id", what: str | None = None) -> T:
        """The aggregate of type ``cls``; ``NotFound`` (a 404 naming ``field``) if it was never created."""
        found = self.find(cls, aggregate_id)
        if found is None:
            raise NotFound(f"no {what or cls.__name__.lower()} {aggregate_id}", field)
        return found

    def add(self, aggregate: Aggregate) -> None:
        """A new aggregate, or one the caller rebuilt itself (from a view's events): saved with the others."""
        self._aggregates[aggregate.id] = aggregate
        self._absent.discard(aggregate.id)

    def holds(self, aggregate_id: UUID) -> bool:
        """Whether this unit of work has the aggregate already (loaded or added): no read is needed."""
        return aggregate_id in self._aggregates

    def aggregates(self) -> Iterable[Aggregate]:
        return self._aggregates.values()


class _Lost(Exception):
    """An attempt that lost a race: the conflict, and the aggregates the attempt would have changed."""

    def __init__(self, error: IntegrityError, ids: frozenset[UUID], kinds: str = "") -> None:
        super().__init__(str(error))
        self.error, self.ids, self.kinds = error, ids, kinds


class Commands(Generic[A]):
    """Runs a service's commands; one per service process, built at bootstrap."""

    def __init__(
        self, app: A, committer: GroupCommit | None = None, lane_attempts: int = 8, lanes: int = 4096,
        lane_wait: float = 2.0, retry_for: float = 5.0,
    ) -> None:
        self.app = app
        self.committer = committer or GroupCommit(app)
        self.lane_attempts, self.lane_wait, self.retry_for = lane_attempts, lane_wait, retry_for
        self.observers: list[Observer] = []
        # commands that lost a race go again one at a time per aggregate: see ``run``
        self._lanes = [asyncio.Lock() for _ in range(lanes)]

    def observe(self, observer: Observer) -> None:
        """Call ``observer`` with the events of every command saved by this process (e.g. to update a view)."""
        self.observers.append(observer)

    async def run(self, decide: Callable[[UnitOfWork], R], *, inline: bool = False) -> R:
        """Load, decide and save; when another writer saved first, decide again on fresh state.

        ``inline``: the first ``decide`` runs on the event loop, at once (no await before it), for a hot
        command that reads only in-memory views and loads nothing; a retry after a conflict runs in a thread.

        A command that lost a race goes again in the *lanes* of the aggregates it would have changed (a lock per
        stripe of aggregate ids, taken in one order): one at a time per aggregate, each loading after the previous
        one's commit, so commands of this process on one hot aggregate (a technician's many work orders, say) no
        longer lose to each other again and again, while commands on other aggregates are not held up. A retry can
        still lose to a first attempt, to this process's consumers (they save on their own) or to another instance:
        at least ``lane_attempts`` tries, and more while ``retry_for`` seconds have not passed since the first (a
        consumer's batches may change a hot aggregate, a technician say, several times a second for a while under
        load: a caller waits a little longer rather than get a 409 for a race it did not cause), backing off outside
        the lane (2 ms doubling up to 200 ms: some 30 tries in the 5 s, not a hundred). A lane not free within
        what is left of ``retry_for`` (at least ``lane_wait`` seconds) gives up with the conflict (409) rather than
        queue without bound. 4,096 lanes: with 64, commands on unrelated aggregates of the same stripe queued behind
        each other, and under lifecycle load they gave up after the 2 s wait then allowed (up to 164 resolves a run
        answered 409; 14 with these lanes and waits, in the same run).
        """
        try:
            return await self._attempt(decide, inline=inline)
        except _Lost as lost:
            last = lost
        deadline = time.monotonic() + self.retry_for
        attempt = 0
        while True:
            held = await self._enter(last, max(self.lane_wait, deadline - time.monotonic()))
            try:
                return await self._attempt(decide, inline=False)
            except _Lost as lost:
                last = lost
            finally:
                for lock in held:
                    lock.release()
            attempt += 1
            if attempt >= self.lane_attempts and time.monotonic() >= deadline:
                log.warning("a command gave up after %d attempts in %.1f s, losing each to another writer of %s: %s",
                            attempt + 1, self.retry_for + time.monotonic() - deadline, last.kinds, last.error)
                raise last.error
            await asyncio.sleep(0.002 * min(2 ** (attempt - 1), 100))

    async def _enter(self, lost: _Lost, wait: float) -> list[asyncio.Lock]:
        """The lanes of the aggregates ``lost`` would have changed, taken in order (no two commands deadlock), within
        ``wait`` seconds (else the conflict)."""
        stripes = sorted({hash(i) % len(self._lanes) for i in lost.ids})
        held: list[asyncio.Lock] = []
        try:
            async with asyncio.timeout(wait):
                for n in stripes:
                    await self._lanes[n].acquire()
                    held.append(self._lanes[n])
        except BaseException as exc:
            for lock in held:
                lock.release()
            if isinstance(exc, TimeoutError):
                log.warning("a command gave up waiting %.1f s for its turn on %s (other commands of this process "
                            "retrying on them): %s", wait, lost.kinds, lost.error)
                raise lost.error from None
            raise
        return held

    async def _attempt(self, decide: Callable[[UnitOfWork], R], *, inline: bool) -> R:
        """One load → decide → save; ``_Lost`` when another writer saved first."""
        uow = UnitOfWork(self.app)
        result = decide(uow) if inline else await asyncio.to_thread(decide, uow)
        changed = [a for a in uow.aggregates() if a.pending_events]
        if not changed:
            return result
        events = [e for a in changed for e in a.pending_events]
        try:
            await self.committer.save(*changed)
        except IntegrityError as exc:
            kinds = ", ".join(sorted(f"{type(a).__name__} {a.id}" for a in changed))
            raise _Lost(exc, frozenset(a.id for a in changed), kinds) from exc
        for observer in self.observers:
            observer(events)
        return result

    async def run_once(
        self,
        idempotency: Idempotency | None,
        decide: Callable[[UnitOfWork], R],
        remember: Callable[[R], str],
        replay: Callable[[UnitOfWork, str], R],
    ) -> tuple[R, bool]:
        """Run ``decide`` once per key; return ``(answer, replayed)``.

        ``remember`` turns the answer into what is kept (an id, say); ``replay`` rebuilds the answer
        from it. The same key with another body is refused (``Invalid``, 422) and changes nothing.
        """
        if idempotency is None:
            return await self.run(decide), False
        key = idempotency
        record_id = IdempotencyRecord.create_id(key.scope, key.key)

        def once(uow: UnitOfWork) -> tuple[R, bool]:
            record = uow.find(IdempotencyRecord, record_id)
            if record is not None:
                # after an erasure neither fingerprint can be recomputed: the first answer is replayed unchecked
                if record.fingerprint != key.fingerprint and not key.erased:
                    raise Invalid("was used before with a different request", "Idempotency-Key")
                return replay(uow, record.answer), True
            answer = decide(uow)
            uow.add(IdempotencyRecord(key.scope, key.key, key.fingerprint, remember(answer)))
            return answer, False

        return await self.run(once)
