"""The services' recorder on real PostgreSQL: a transaction's events inserted from binary column arrays
(``tsop_events.store.ArrayInsertRecorder``) with eventsourcing's semantics: the notification ids returned in the
order of the events, the table locked (insert order is commit order), NOTIFY sent, the tracking row in the same
transaction, and a conflict leaving nothing behind."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest
from eventsourcing.domain import Aggregate, event

from tsop_events.settings import ServiceSettings
from tsop_events.store import ArrayInsertRecorder, EventStoreApp, IntegrityError, Tracking, ensure_database


class Parcel(Aggregate):
    @staticmethod
    def create_id(label: str) -> uuid.UUID:
        return uuid.uuid5(uuid.NAMESPACE_URL, f"parcel:{label}")

    @event("Sent")
    def __init__(self, label: str) -> None:
        self.label = label
        self.notes: list[str] = []

    @event("Noted")
    def note(self, text: str) -> None:
        self.notes.append(text)


@pytest.fixture
def store(pg: tuple[str, int]) -> Iterator[tuple[EventStoreApp, ServiceSettings]]:
    settings = ServiceSettings(service_name=f"store_it_{uuid.uuid4().hex[:8]}", pg_host=pg[0], pg_port=pg[1])
    asyncio.run(ensure_database(settings))
    app = EventStoreApp(settings)
    try:
        yield app, settings
    finally:
        app.close()


def test_a_tracked_batch_is_one_insert_whose_ids_follow_the_events_in_order(
    store: tuple[EventStoreApp, ServiceSettings],
) -> None:
    app, _ = store
    assert type(app.recorder) is ArrayInsertRecorder
    first = Parcel("a")
    app.save(first)  # notification 1
    parcels = [Parcel(f"p{i}") for i in range(5)]
    for i, p in enumerate(parcels):
        for j in range(i):
            p.note(f"{i}.{j}")
    first.note("later")
    pending = [e for p in [parcels[3], first, *parcels[:3], parcels[4]] for e in p.pending_events]
    recordings = app.process_recorder.insert_events(
        [app.mapper.to_stored_event(e) for e in pending], tracking=Tracking("sink|e|t|0", 41))
    assert recordings == list(range(2, 2 + len(pending)))  # one id per event, in the order given
    rows = app.recorder.select_notifications(1, 100)
    assert [n.id for n in rows] == [1, *recordings]
    assert [(n.originator_id, n.originator_version) for n in rows[1:]] == [
        (e.originator_id, e.originator_version) for e in pending]
    for p in [first, *parcels]:
        p.collect_events()
    again: Parcel = app.repository.get(parcels[4].id)
    assert again.label == "p4" and again.notes == ["4.0", "4.1", "4.2", "4.3"]
    assert app.repository.get(first.id).notes == ["later"]
    assert app.tracked_position("sink|e|t|0") == 41


def test_save_tracked_stores_and_numbers_as_eventsourcings_own_recorder(pg: tuple[str, int]) -> None:
    """The same saves through both recorders (two databases): the same notification ids for the same events."""
    seen: list[list[tuple[int, uuid.UUID, int, str]]] = []
    for topic in ("tsop_events.store:ArrayInsertRecorder", "eventsourcing.postgres:PostgresProcessRecorder"):
        settings = ServiceSettings(service_name=f"store_it_{uuid.uuid4().hex[:8]}", pg_host=pg[0], pg_port=pg[1])
        asyncio.run(ensure_database(settings))
        app = EventStoreApp(settings, env={"PROCESS_RECORDER_TOPIC": topic})
        try:
            assert type(app.recorder).__name__ == topic.split(":")[1]
            batch = [Parcel(f"p{k}") for k in range(4)]
            for k, p in enumerate(batch):
                for j in range(k):
                    p.note(str(j))
            app.save_tracked(reversed(batch), Tracking("s|e|t|0", 7))
            app.save_tracked(batch[:1], Tracking("s|e|t|0", 8))  # nothing new: the position alone
            batch[2].note("x")
            batch[0].note("y")
            app.save_tracked(batch, Tracking("s|e|t|0", 9))
            seen.append([(n.id, uuid.UUID(str(n.originator_id)), n.originator_version, n.topic)
                         for n in app.recorder.select_notifications(1, 100)])
            assert app.tracked_position("s|e|t|0") == 9
            assert app.repository.get(batch[2].id).notes == ["0", "1", "x"]
        finally:
            app.close()
    assert seen[0] == seen[1]
    assert [row[0] for row in seen[0]] == list(range(1, 13))
    assert [row[1:3] for row in seen[0]][:4] == [(Parcel.create_id("p3"), v) for v in range(1, 5)]


def test_a_conflict_leaves_neither_events_nor_position(store: tuple[EventStoreApp, ServiceSettings]) -> None:
    app, _ = store
    p = Parcel("a")
    app.save_tracked([p], Tracking("s|e|t|0", 1))
    stale: Parcel = app.repository.get(p.id)
    p = app.repository.get(p.id)
    p.note("first")
    app.save(p)
    stale.note("second")
    other = Parcel("b")
    with pytest.raises(IntegrityError):
        app.save_tracked([other, stale], Tracking("s|e|t|0", 2))
    assert app.tracked_position("s|e|t|0") == 1
    assert app.find(other.id) is None
    with pytest.raises(IntegrityError):  # a position recorded already
        app.save_tracked([Parcel("c")], Tracking("s|e|t|0", 1))
    assert [n.id for n in app.recorder.select_notifications(1, 100)] == [1, 2]


def test_the_insert_takes_the_table_lock_and_notifies(store: tuple[EventStoreApp, ServiceSettings]) -> None:
    app, settings = store
    app.save(Parcel("warm"))  # the table and its statements exist
    heard: list[str] = []
    table = app.process_recorder.events_table_name  # type: ignore[attr-defined]

    async def listen_and_hold() -> None:
        conn = await asyncpg.connect(settings.pg_dsn())
        try:
            await conn.add_listener(table, lambda *a: heard.append(a[2]))
            with psycopg.connect(settings.pg_dsn().replace("postgresql://", "postgres://")) as holder:
                # a writer of the table that has not committed: the insert must wait for it (EXCLUSIVE lock)
                holder.execute(f"LOCK TABLE {table} IN ROW EXCLUSIVE MODE")
                done = threading.Event()

                def save() -> None:
                    app.save(Parcel("x"))
                    done.set()

                saving = threading.Thread(target=save)
                saving.start()
                await asyncio.sleep(0.5)
                assert not done.is_set(), "inserted while another writer held the table"
                holder.rollback()
                saving.join(10)
                assert done.is_set()
            deadline = time.monotonic() + 5
            while not heard and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            await conn.close()

    asyncio.run(listen_and_hold())
    assert heard == [table]
