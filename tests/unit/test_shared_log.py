"""The log followers of one app share one reader of its notification log (``tsop_events.store.SharedLog``): each
notification is read and decoded once for all of them, and every follower still applies every event once, in order."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from tsop_events.store import EventStoreApp, LogFollower, SharedLog


class Note(Aggregate):
    @event("Written")
    def __init__(self, n: int) -> None:
        self.n = n

    @event("Amended")
    def amend(self, n: int) -> None:
        self.n = n


class Other(Aggregate):
    @event("Started")
    def __init__(self, n: int) -> None:
        self.n = n


class Seen(LogFollower):
    def __init__(self, app: EventStoreApp) -> None:
        super().__init__(app)
        self.seen: list[tuple[UUID, int]] = []

    def apply(self, e: Any) -> None:
        self.seen.append((e.originator_id, e.originator_version))


class OthersOnly(Seen):
    topics = (f"{Other.__module__}:{Other.__qualname__}.",)


class Counting(EventStoreApp):
    """Counts the rows the log gave and the events decoded."""

    def __init__(self) -> None:
        super().__init__(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
        self.rows = self.queries = self.decoded = 0
        select, decode = self.recorder.select_notifications, self.mapper.to_domain_event

        def counted_select(*args: Any, **kwargs: Any) -> Any:
            batch = select(*args, **kwargs)
            self.queries += 1
            self.rows += len(batch)
            return batch

        def counted_decode(stored: Any) -> Any:
            self.decoded += 1
            return decode(stored)

        self.recorder.select_notifications = counted_select  # type: ignore[method-assign]
        self.mapper.to_domain_event = counted_decode  # type: ignore[method-assign, assignment]


def write(app: EventStoreApp, n: int, kind: type[Aggregate] = Note) -> list[tuple[UUID, int]]:
    out = []
    for i in range(n):
        a = kind(i)  # type: ignore[call-arg]
        app.save(a)
        out.append((a.id, 1))
    return out


def test_three_followers_each_apply_every_event_once_in_order_and_each_row_is_read_and_decoded_once() -> None:
    app = Counting()
    followers = [Seen(app), Seen(app), Seen(app)]
    written = write(app, 30)
    for f in followers:
        f.refresh()
    assert [f.seen for f in followers] == [written] * 3
    assert (app.rows, app.decoded) == (30, 30)  # one follower each before: 90 rows read, 90 events decoded
    more = write(app, 5)
    for f in followers:
        f.refresh()
        f.refresh()  # nothing new: nothing applied again
    assert [f.seen for f in followers] == [written + more] * 3
    assert (app.rows, app.decoded) == (35, 35)


def test_a_refresh_that_waited_for_a_read_begun_after_it_was_called_makes_no_query_and_sees_everything() -> None:
    app = Counting()
    a, b = Seen(app), Seen(app)
    written = write(app, 4)
    shared = SharedLog.of(app)
    called = shared.started  # b's refresh is called now (it waits for the reader); a's read begins after that
    b.refreshed = time.monotonic()
    a.refresh()
    queries = app.queries
    found = shared.after(b.position, called)
    assert found is not None and app.queries == queries
    assert [(r.decoded(app.mapper, shared).originator_id, 1) for r in found[0]] == written
    # a read that began before the call does not do: a refresh called now reads the log again
    later = write(app, 1)
    b.refresh()
    assert app.queries > queries and b.seen == written + later


def test_a_follower_of_some_topics_decodes_and_applies_only_those() -> None:
    app = Counting()
    others = OthersOnly(app)
    write(app, 3)
    started = write(app, 2, Other)
    others.refresh()
    assert others.seen == started
    assert app.decoded == 2  # the notes are not decoded for it
    assert others.position == 5


def test_a_follower_behind_what_is_kept_reads_the_gap_itself_and_applies_each_event_once() -> None:
    app = Counting()
    shared = SharedLog.of(app)
    shared.keep = 4
    early = Seen(app)
    written = write(app, 25)
    early.refresh()  # reads the log four at a time through the shared reader
    assert early.seen == written
    late = Seen(app)  # starts at the beginning of a log longer than what is kept
    late.refresh()
    assert late.seen == written
    assert shared.floor > 0 and len(shared.kept) <= 2 * shared.keep
    more = write(app, 3)
    early.refresh()
    late.refresh()
    assert early.seen == late.seen == written + more


def test_an_idle_follower_holds_nothing_back_and_catches_up_exactly() -> None:
    app = Counting()
    shared = SharedLog.of(app)
    shared.idle = 0.0  # any follower counts as idle once its refresh is over
    busy, idle = Seen(app), Seen(app)
    idle.refresh()
    written = write(app, 10)
    busy.refresh()
    busy.refresh()
    assert shared.kept == []  # the idle follower did not keep what the busy one applied
    idle.refresh()
    assert busy.seen == idle.seen == written


def test_an_apply_that_fails_is_taken_up_at_the_failed_event_without_applying_the_earlier_ones_again() -> None:
    app = Counting()

    class Fussy(Seen):
        fail_at = 3

        def apply(self, e: Any) -> None:
            if len(self.seen) == self.fail_at:
                self.fail_at = -1
                raise RuntimeError("once")
            super().apply(e)

    f = Fussy(app)
    written = write(app, 6)
    try:
        f.refresh()
    except RuntimeError:
        pass
    f.refresh()
    assert f.seen == written


def test_forgetting_drops_every_decoded_event_kept() -> None:
    app = Counting()
    a, b = Seen(app), Seen(app)
    written = write(app, 3)
    b.refresh()
    a.refresh()
    shared = SharedLog.of(app)
    kept = list(shared.kept)
    app.forget_opened()
    assert all(r.event is None for r in kept)
    assert a.seen == b.seen == written


def test_followers_refreshed_from_many_threads_while_events_are_written_each_apply_every_event_once() -> None:
    app = EventStoreApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    SharedLog.of(app).keep = 50
    followers = [Seen(app), Seen(app), Seen(app), OthersOnly(app)]
    written: list[tuple[UUID, int]] = []
    stop = threading.Event()

    def writer() -> None:
        for i in range(300):
            a: Aggregate = Note(i) if i % 3 else Other(i)
            if i % 7 == 0 and isinstance(a, Note):
                a.amend(i + 1)
            app.save(a)
            written.extend((a.id, v) for v in range(1, a.version + 1))
        stop.set()

    def refresher(f: Seen) -> None:
        while not stop.is_set():
            f.refresh()

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=refresher, args=(f,)) for f in followers
                                                   for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for f in followers:
        f.refresh()
    others = {i for i, _ in written if isinstance(app.repository.get(i), Other)}
    assert [f.seen for f in followers[:3]] == [written] * 3
    assert followers[3].seen == [w for w in written if w[0] in others]


def test_a_decode_that_straddles_an_erasure_keeps_nothing(monkeypatch: Any) -> None:
    """An erasure drops what was opened; an event decoded while it ran (the key still known when the decode began)
    is applied, as if it had come a moment earlier, but not kept for the followers still to come."""
    app = EventStoreApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    f = Seen(app)
    written = write(app, 2)
    decode = app.mapper.to_domain_event
    calls: list[object] = []

    def erased_meanwhile(stored: Any) -> Any:
        calls.append(stored)
        if len(calls) == 1:
            app.forget_opened()
        return decode(stored)

    monkeypatch.setattr(app.mapper, "to_domain_event", erased_meanwhile)
    f.refresh()
    assert f.seen == written
    kept = SharedLog.of(app).kept
    assert kept[0].event is None and kept[1].event is not None


def test_a_read_does_not_deadlock_with_a_refresh_that_takes_a_lock_of_its_own_first() -> None:
    """Intake's index refreshes under a lock of its own, then takes ``lock`` to apply what it read; a ``read`` that
    held ``lock`` while refreshing waited for that other lock while the refresh waited for ``lock``: for ever (an
    intake in CI answered no request again)."""

    class OwnLock(LogFollower):
        def __init__(self, app: EventStoreApp) -> None:
            super().__init__(app)
            self.refreshing = threading.Lock()
            self.inside, self.go = threading.Event(), threading.Event()

        def apply(self, e: Any) -> None:
            pass

        def refresh(self) -> None:
            with self.refreshing:
                self.inside.set()
                self.go.wait(5)
                with self.lock:
                    pass

    f = OwnLock(EventStoreApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}))
    refresher = threading.Thread(target=f.refresh, daemon=True)
    refresher.start()
    assert f.inside.wait(5)
    answers: list[int] = []
    reader = threading.Thread(target=lambda: answers.append(asyncio.run(f.read(lambda: 7))), daemon=True)
    reader.start()
    time.sleep(0.3)  # the read waits for the refresh under way
    f.go.set()
    refresher.join(10)
    reader.join(10)
    assert not refresher.is_alive() and not reader.is_alive() and answers == [7]
