"""Every expiry is announced in the chain (issue 13, §7.2/§7.4), on real PostgreSQL.

1. Retention of records that belong to no ticket (a complaint's, an incident's, a dead letter's) is announced
   like a ticket's: a row made to look expired behind the archive's back — a forged expiry row and a dropped or
   anonymised body — is named by ``verify``; the legitimately expired ones verify clean.
2. ``verify`` never reports a break for the legitimate state a retention round leaves, however the two
   interleave: not right after the round (before any broker brings the ticket's announcement back), and not
   while a round commits during a pass.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import asyncpg
import orjson

from tests.integration import test_archive_evidence as evidence
from tests.integration.test_archive_evidence import PREFIX, T0, Archive, complaint, lifecycle, tamper
from tsop_archive.commands import seal_due
from tsop_archive.records import projection as rp
from tsop_archive.records.commands import Signer, expire_due, verify
from tsop_archive.records.domain import ANNOUNCEMENT_PARTITION, announcement, signed
from tsop_events import schemas as wire
from tsop_events.envelope import Envelope, wrap

archive = evidence.archive  # the same archive on a fresh database, as a fixture of this module

COMPLAINTS = f"{PREFIX}complaints"
INCIDENTS = f"{PREFIX}incidents"
DEADLETTER = f"{PREFIX}deadletter"
TICKETS = f"{PREFIX}tickets"


def incident(iid: str, at: object) -> list[Envelope]:
    declared = wire.IncidentDeclared(
        incident_id=iid, title="fibre cut", severity="II", scenario="outage", affected_services=["broadband"],
        regions=["north"], estimated_customers=120, declared_by="im-1", detected_at=T0, declared_at=T0,
    )
    return [wrap(declared, event_id=f"{iid}-0", source="test", time=at)]  # type: ignore[arg-type]


def dead_letter(n: int, at: object) -> Envelope:
    letter = wire.DeadLettered(
        consumer="feedback", source_topic=COMPLAINTS, source_partition=0, source_offset=n, source_key=None,
        source_headers={}, source_value='{"data": {"customer_id": "c-9", "comment": "call me on 555-0100"}}',
        error="boom", failed_at=T0,
    )
    return wrap(letter, event_id=f"dl{n}-{uuid.uuid4().hex[:8]}", source="test", time=at)  # type: ignore[arg-type]


async def deliver_letter(a: Archive, env: Envelope) -> None:
    """A dead letter is stored under no key: its matter is the letter itself."""
    async with a.pool.acquire() as conn, conn.transaction():
        a.offset += 1
        await a.store._store(conn, env, DEADLETTER, 0, a.offset, None, None)


async def forge_purge(a: Archive, seq: int, record_class: str) -> None:
    """With the archive's own database role: an expiry row is easy to insert, and the store's trigger then lets
    the body go (it checks that an expiry is recorded, not that the archive announced it)."""
    await a.pool.execute(
        f"""INSERT INTO archive_expiries (seq, action, event_id, expiry_id, record_class, matter, after_hash, at)
            SELECT e.seq, 'purged', e.ce_id, gen_random_uuid(), $2, coalesce(e.key, e.ce_id),
                   {rp.hash_sql('e', 'NULL::jsonb', 'NULL::bytea')}, now()
            FROM archive_events e WHERE e.seq = $1""", seq, record_class)
    await a.pool.execute("UPDATE archive_events SET data = NULL WHERE seq = $1", seq)


async def forge_anonymisation(a: Archive, seq: int) -> None:
    """As a superuser: the triggers switched off, a forged anonymising expiry and the body it names."""
    after = '"[anonymised]"'
    await tamper(
        a.pool, "archive_expiries",
        f"""INSERT INTO archive_expiries (seq, action, event_id, expiry_id, record_class, matter, after_hash, at)
            SELECT e.seq, 'anonymised', e.ce_id, gen_random_uuid(), 'personal_data', coalesce(e.key, e.ce_id),
                   {rp.hash_sql('e', f"'{after}'::jsonb", 'NULL::bytea')}, now()
            FROM archive_events e WHERE e.seq = $1""", seq)
    await tamper(a.pool, "archive_events", f"UPDATE archive_events SET data = '{after}' WHERE seq = $1", seq)


async def seq_of(a: Archive, ce_id: str) -> int:
    return int(await a.pool.fetchval("SELECT seq FROM archive_events WHERE ce_id = $1", ce_id))


async def test_a_forged_expiry_of_a_complaint_an_incident_or_a_dead_letter_is_named(archive: Archive) -> None:
    a = archive
    old_c, young_c = f"cmp{uuid.uuid4().hex[:8]}", f"cmp{uuid.uuid4().hex[:8]}"
    old_i, young_i = f"inc{uuid.uuid4().hex[:8]}", f"inc{uuid.uuid4().hex[:8]}"
    await a.deliver(complaint(old_c, "c-1", [], T0, 2), COMPLAINTS)
    await a.deliver(incident(old_i, T0), INCIDENTS)
    old_letter = dead_letter(1, T0)
    await deliver_letter(a, old_letter)
    later = T0 + timedelta(days=3 * 365)
    await a.deliver(complaint(young_c, "c-2", [], later, 1), COMPLAINTS)
    await a.deliver(incident(young_i, later), INCIDENTS)
    young_letter = dead_letter(2, later)
    await deliver_letter(a, young_letter)
    await a.chain()

    # the old ones are past every period: purged, each expiry announced in the chain at once
    a.clock.advance(timedelta(days=3 * 365 + 30))
    done = await expire_due(a.svc)
    assert done.records == 3 + 1 + 1 and done.matters == 3, done
    v = await verify(a.pool)
    assert v.ok, v.broken
    assert v.expired == 5

    # rows of the young ones made to look expired behind the archive's back: each named, in chain order
    c_seq = await seq_of(a, f"{young_c}-1")
    i_seq = await seq_of(a, f"{young_i}-0")
    l_seq = await seq_of(a, young_letter.id)
    await forge_purge(a, c_seq, "complaints")
    await forge_anonymisation(a, i_seq)
    await forge_purge(a, l_seq, "service_records")
    first, second, third = sorted((c_seq, i_seq, l_seq))
    for start, named in ((1, first), (first + 1, second), (second + 1, third)):
        v = await verify(a.pool, start)
        assert v.broken is not None and v.broken.seq == named, (start, named, v.broken)
        assert "without its announcement" in v.broken.reason
    # the legitimately expired ones still verify: everything before the first forgery does
    assert (await verify(a.pool, 1, first - 1)).ok
    # and after the last forgery the chain verifies again
    assert (await verify(a.pool, third + 1)).ok
    # the announcements: one per expiry, chained, naming each record it expired
    announcements = await a.pool.fetch(
        "SELECT e.key, e.data FROM archive_events e JOIN archive_chain c USING (seq) WHERE e.ce_type = $1",
        rp.ARCHIVE_EXPIRED)
    assert sorted(r["key"] for r in announcements) == sorted([old_c, old_i, old_letter.id])


async def test_an_announcement_names_only_the_records_it_expired(archive: Archive) -> None:
    """A forged row of a matter whose other records were legitimately expired is not covered by the matter's
    announcement (it names records, not matters)."""
    a = archive
    c = f"cmp{uuid.uuid4().hex[:8]}"
    await a.deliver(complaint(c, "c-1", [], T0, 1), COMPLAINTS)
    await a.chain()
    a.clock.advance(timedelta(days=366))  # personal data past its period: the complaint's body anonymised
    await expire_due(a.svc)
    note = await seq_of(a, f"{c}-1")  # a note: no personal field, not expired
    assert await a.pool.fetchval("SELECT data IS NOT NULL FROM archive_events WHERE seq = $1", note)
    assert (await verify(a.pool)).ok
    await forge_purge(a, note, "complaints")
    v = await verify(a.pool)
    assert v.broken is not None and v.broken.seq == note and "without its announcement" in v.broken.reason


async def test_verify_never_reports_a_break_while_retention_rounds_run(archive: Archive) -> None:
    """Passes of ``verify`` run while retention rounds (and the chainer) act on tickets, complaints, incidents
    and dead letters of staggered ages: every pass verifies, each sees the rounds' expiries all or nothing."""
    a = archive
    svc = a.svc
    rounds = 8
    for r in range(rounds):
        at = T0 + timedelta(days=30 * r)
        for _ in range(2):
            await a.deliver(lifecycle(str(uuid.uuid4()), f"c{r}", at))
        await a.deliver(complaint(f"cmp{uuid.uuid4().hex[:8]}", f"c{r}", [], at, 2), COMPLAINTS)
        await a.deliver(incident(f"inc{uuid.uuid4().hex[:8]}", at), INCIDENTS)
        await deliver_letter(a, dead_letter(100 + r, at))
    assert await seal_due(svc) == 2 * rounds
    await a.chain()
    a.clock.advance(timedelta(days=365))  # at each step below, another month's matters pass a period

    passes: list[tuple[int, object]] = []
    stop = asyncio.Event()

    async def auditor() -> None:
        while not stop.is_set():
            v = await verify(a.pool)
            passes.append((v.expired, v.broken))
            await asyncio.sleep(0)

    async def chainer() -> None:
        while not stop.is_set():
            await a.chain(every=50)
            await asyncio.sleep(0.01)

    tasks = [asyncio.create_task(auditor()), asyncio.create_task(auditor()), asyncio.create_task(chainer())]
    expired = 0
    try:
        for _ in range(2 * rounds + 8):
            a.clock.advance(timedelta(days=30 * 5))
            expired += (await expire_due(svc)).records
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert expired > rounds * 10, expired
    assert len(passes) >= 10, len(passes)
    broken = [b for _, b in passes if b is not None]
    assert not broken, broken[:3]
    assert max(e for e, _ in passes) > 0
    final = await verify(a.pool)
    assert final.ok and final.expired > 0, final.broken


async def test_a_pass_reads_one_snapshot_so_a_round_committing_midway_is_not_a_break(archive: Archive) -> None:
    """A pass reads the chain a window at a time. A retention round that commits between two windows is seen by
    the later ones; without one snapshot, they see bodies expired under an announcement above the chain's top the
    pass read at its start — a false break. Through ``snapshot`` the whole pass sees the store as it was."""
    a = archive
    for _ in range(3):
        await a.deliver(complaint(f"cmp{uuid.uuid4().hex[:8]}", "c-1", [], T0, 2), COMPLAINTS)
    await a.chain()
    a.clock.advance(timedelta(days=4 * 365))

    async def interleaved(conns: list[asyncpg.Connection]) -> list[str]:
        rows = rp.verify_rows(conns, 1, 2**62, window=2)
        states = [r["state"] for r in (await anext(rows))[0]]
        if not done:
            done.append((await expire_due(a.svc)).records)  # commits between the first window and the next
        states += [r["state"] for w in [w async for w, _ in rows] for r in w]
        return states

    done: list[int] = []
    async with a.pool.acquire() as plain:  # no snapshot: each window reads what is committed when it runs
        unsnapped = await interleaved([plain])
    assert done == [9] and "unannounced" in unsnapped, unsnapped  # the false break a snapshot prevents
    for c in range(3):  # the next matters' records, for the same interleaving through a snapshot
        await a.deliver(complaint(f"cmq{c}{uuid.uuid4().hex[:8]}", "c-2", [], T0, 2), COMPLAINTS)
    await a.chain()
    done.clear()
    async with rp.snapshot(a.pool, 1) as conns:
        snapped = await interleaved(conns)
    assert done == [9] and set(snapped) == {"intact", "expired"}, snapped
    v = await verify(a.pool)
    assert v.ok and v.expired == 18, v.broken


async def test_an_announcement_the_archive_did_not_sign_covers_nothing(archive: Archive) -> None:
    """Someone able to write the archive's tables forges the expiry row, drops the body, and writes the
    announcement too — which the chainer then links. Without the archive's key its signature does not hold, and
    ``verify`` names the record; only an auditor who trusts the forger's key would let it pass."""
    a = archive
    c = f"cmp{uuid.uuid4().hex[:8]}"
    await a.deliver(complaint(c, "c-1", [], T0, 2), COMPLAINTS)
    await a.chain()
    seq = await seq_of(a, f"{c}-1")
    await forge_purge(a, seq, "complaints")
    stranger = Signer.load_or_create(None)
    forged = announcement(uuid.uuid4(), c, "complaints", "purged", 1095, T0, [seq], [f"{c}-1"])
    for n, body in enumerate((forged, signed(forged, stranger.key_id, stranger.sign),
                              signed(forged, a.signer.key_id, stranger.sign))):
        await a.pool.execute(
            """INSERT INTO archive_events (ce_id, topic, kafka_partition, kafka_offset, key, ce_type, ce_source,
                 ce_time, data) VALUES ($1, $2, $3, -1, $4, $5, 'archive', $6, $7::jsonb)""",
            f"forged-{n}-{uuid.uuid4().hex[:6]}", rp.announcements_topic(PREFIX), ANNOUNCEMENT_PARTITION, c,
            rp.ARCHIVE_EXPIRED, T0, orjson.dumps(body).decode())
    await a.chain()
    assert await a.pool.fetchval("SELECT count(*) FROM archive_chain c JOIN archive_events e USING (seq) "
                                 "WHERE e.ce_type = $1", rp.ARCHIVE_EXPIRED) == 3  # all linked
    v = await verify(a.pool)
    assert v.broken is not None and v.broken.seq == seq and "not signed by the archive" in v.broken.reason
    trusting = {a.signer.key_id: a.signer.public, stranger.key_id: stranger.public}
    assert (await verify(a.pool, keys=trusting)).ok


async def test_a_break_in_the_first_window_ends_the_pass_cleanly_while_later_windows_are_read(
    archive: Archive,
) -> None:
    """The pass stops at the first break while the windows after it are still being read on the snapshot's other
    connections: they are cancelled and awaited before the snapshot ends, and the pool is whole afterwards."""
    a = archive
    for _ in range(6):
        await a.deliver(lifecycle(str(uuid.uuid4()), "c1", T0))
    await a.chain()
    victim = await a.pool.fetchval("SELECT seq FROM archive_events ORDER BY seq OFFSET 1 LIMIT 1")
    await tamper(a.pool, "archive_events",
                 "UPDATE archive_events SET data = jsonb_set(data, '{x}', '1') WHERE seq = $1", victim)
    for _ in range(3):
        v = await verify(a.pool, ahead=3, window=2)
        assert v.broken is not None and v.broken.seq == victim and v.checked == 1, v
    assert (await verify(a.pool, victim + 1, ahead=3, window=2)).ok
    size = a.pool.get_size()
    async with asyncio.timeout(10):  # every connection back in the pool, none left mid-transaction
        conns = [await a.pool.acquire() for _ in range(size)]
        for c in conns:
            assert not c.is_in_transaction()
            await a.pool.release(c)
