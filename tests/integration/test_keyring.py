"""The keyring on real PostgreSQL (tsop_events.personal.PostgresKeyring): keys shared by every service, created in
one round trip per batch, destroyed by customer, forgotten by other processes within their cache time."""

from __future__ import annotations

import threading
import time
import uuid

import psycopg

from tsop_events.personal import ERASED, PostgresKeyring


def _ring(pg: tuple[str, int], database: str, cache_seconds: float = 5.0) -> PostgresKeyring:
    host, port = pg
    return PostgresKeyring(
        f"postgresql://postgres@{host}:{port}/postgres", f"postgresql://postgres@{host}:{port}/{database}", database,
        cache_seconds,
    )


def test_keys_are_shared_created_in_batches_and_destroyed_by_customer(pg: tuple[str, int]) -> None:
    database = f"keyring_{uuid.uuid4().hex[:8]}"
    intake, archive = _ring(pg, database), _ring(pg, database, cache_seconds=0.2)  # two services, one keyring
    try:
        intake.prepare({"t1": "alice", "t2": "alice", "t3": "bob"})
        with psycopg.connect(intake.pool.conninfo) as conn:
            rows = conn.execute("SELECT subject, customer_id FROM tsop_data_keys ORDER BY subject").fetchall()
        assert rows == [("t1", "alice"), ("t2", "alice"), ("t3", "bob")]
        other = _ring(pg, database)
        other.prepare({"t1": "alice"})  # a subject keeps its key, in another process too
        other.close()
        with psycopg.connect(intake.pool.conninfo) as conn:
            assert conn.execute("SELECT count(*) FROM tsop_data_keys").fetchone() == (3,)
        a1, a2 = intake.seal("t1", "alice", "A one"), intake.seal("t2", "alice", "A two")
        b = intake.seal("t3", "bob", "B")
        archive.load([a1.split(".")[1], b.split(".")[1]])
        assert archive.open([a1, a2, b]) == ["A one", "A two", "B"]

        assert intake.erase("alice") == 2
        assert intake.open(a1) == ERASED  # at once where it was destroyed
        time.sleep(0.3)  # elsewhere, within the cache time (or at once on CustomerDataErased: ``forget``)
        assert archive.open([a1, a2, b]) == [ERASED, ERASED, "B"]
        with psycopg.connect(intake.pool.conninfo) as conn:
            assert conn.execute("SELECT count(*) FROM tsop_data_keys WHERE customer_id = 'alice'").fetchone() == (0,)
        assert intake.erase("alice") == 0

        # a request submitted without its customer is erased with the customer it is later assigned to
        late = intake.seal("t4", None, "who am I")
        intake.assign("t4", "carol")
        assert intake.erase("carol") == 1 and intake.open(late) == ERASED
    finally:
        intake.close()
        archive.close()


def test_an_erased_subject_gets_no_new_key_and_erasure_does_not_lock_out_readers(pg: tuple[str, int]) -> None:
    database = f"keyring_{uuid.uuid4().hex[:8]}"
    intake, feedback = _ring(pg, database), _ring(pg, database)  # two services, one keyring
    try:
        before = intake.seal("t1", "alice", "A wrote this")
        feedback.prepare({"t1": None})  # feedback rates the ticket (its rule names no customer)
        assert feedback.open(feedback.seal("t1", None, "first comment")) == "first comment"
        kept = intake.seal("t2", "bob", "B")
        with psycopg.connect(intake.pool.conninfo) as reader:
            reader.execute("SELECT count(*) FROM tsop_data_keys").fetchone()  # a reader's transaction is open
            done: list[int] = []
            eraser = threading.Thread(target=lambda: done.append(intake.erase("alice")))
            eraser.start()
            eraser.join(15)  # VACUUM (FULL) would wait for the reader (ACCESS EXCLUSIVE): it must not
            assert done == [1]
            reader.rollback()
        with psycopg.connect(intake.pool.conninfo) as conn:
            tombs = conn.execute("SELECT subject, customer_id FROM tsop_erased_subjects").fetchall()
            assert tombs == [("t1", "alice")]
            assert conn.execute("SELECT count(*) FROM information_schema.columns WHERE "
                                "table_name = 'tsop_erased_subjects' AND column_name = 'key'").fetchone() == (0,)
        feedback.forget()  # as on CustomerDataErased
        # a rating comment written after the erasure, for the erased ticket: no new key, erased at birth
        late = feedback.seal("t1", None, "a comment after the erasure")
        feedback.prepare({"t1": None})
        assert late == ERASED and intake.seal("t1", "alice", "again") == ERASED
        with psycopg.connect(intake.pool.conninfo) as conn:
            assert conn.execute("SELECT count(*) FROM tsop_data_keys WHERE subject = 't1'").fetchone() == (0,)
        assert intake.open(before) == ERASED and intake.open(kept) == "B"
        assert intake.erase("alice") == 0
        fresh = intake.seal("t3", "alice", "a new request")  # a new subject of the same customer reads
        assert feedback.open(fresh) == "a new request"
    finally:
        intake.close()
        feedback.close()
