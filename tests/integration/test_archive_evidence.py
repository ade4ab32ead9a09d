"""The archive as evidence on real PostgreSQL: the whole-archive chain, its signed checkpoints, ``verify``
finding a row altered behind the archive's back, and retention expiring records while the chain and the
sealed dossiers stay verifiable.

The archive's store, chainer, sealer and retention run in-process against a fresh database; the records
arrive through the archive's own consumer code (``ArchiveStore``) as the broker would deliver them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tsop_archive.commands import ArchiveApp, seal_due
from tsop_archive.domain import Dossier, dossier_id
from tsop_archive.main import ArchiveSettings
from tsop_archive.projection import DDL, ArchiveStore, ticket_record
from tsop_archive.records import projection as rp
from tsop_archive.records.commands import (
    HeadSeen,
    Signer,
    chain_and_checkpoint,
    expire_due,
    place_hold,
    public_pem,
    rebuild_backlog,
    release_hold,
    set_period,
    ticket_as_of,
    verify,
)
from tsop_archive.records.domain import HoldKind, RecordClass
from tsop_archive.records.main import main as cli
from tsop_events import schemas as wire
from tsop_events.auth import Principal, Role
from tsop_events.clock import ManualClock
from tsop_events.commands import Commands
from tsop_events.consumer import OFFSETS_DDL
from tsop_events.envelope import Envelope, wrap
from tsop_events.runtime import Runtime
from tsop_events.store import GroupCommit, ensure_database

T0 = datetime(2026, 6, 1, 9, tzinfo=UTC)
AUDITOR = Principal("auditor-1", frozenset({Role.auditor}))
PREFIX = "ev."
TICKETS = f"{PREFIX}tickets"


def lifecycle(ticket: str, customer: str, at: datetime) -> list[Envelope]:
    events: list[wire.WireEvent] = [
        wire.RequestSubmitted(
            ticket_id=ticket, channel="web", customer_id=customer, customer_tier="gold", region="north",
            service_type="broadband.fault_repair", description="No internet since the storm, call Ann on 555-0101",
            time_requirement=wire.TimeRequirement(), location=wire.Location(address="1 Main Street"),
            submitted_at=at,
        ),
        wire.RequestAccepted(ticket_id=ticket, service_type="broadband.fault_repair", region="north", priority=2,
                             customer_tier="gold", accepted_at=at + timedelta(minutes=1)),
        wire.WorkLogged(ticket_id=ticket, work_order_id="wo", technician_id="tech", action="replaced the ONT",
                        mode="on_site", logged_at=at + timedelta(hours=1)),
        wire.Resolved(ticket_id=ticket, work_order_id="wo", technician_id="tech", resolution_code="hw_replaced",
                      summary="ONT replaced", resolved_at=at + timedelta(hours=2)),
        wire.Closed(ticket_id=ticket, reason="rated", closed_at=at + timedelta(hours=3)),
    ]
    out: list[Envelope] = []
    for i, e in enumerate(events):
        out.append(wrap(e, event_id=f"{ticket}-{i}", source="test", time=at + timedelta(minutes=i * 30),
                        causation_id=out[-1].id if out else None))
    return out


class Archive:
    """The archive's parts that matter here, on one database, without a broker."""

    def __init__(self, svc: Runtime[ArchiveApp, ArchiveSettings], clock: ManualClock, signer: Signer) -> None:
        self.svc, self.clock, self.signer = svc, clock, signer
        self.store = ArchiveStore(svc.pool, PREFIX)
        self.offset = 0

    @property
    def pool(self) -> asyncpg.Pool:
        return self.svc.pool

    async def deliver(self, envs: list[Envelope], topic: str = TICKETS) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            for env in envs:
                self.offset += 1
                await self.store._store(conn, env, topic, 0, self.offset, self._key(env), None)

    @staticmethod
    def _key(env: Envelope) -> str:
        return env.id.rsplit("-", 1)[0]

    async def chain(self, every: int = 3) -> int:
        return await chain_and_checkpoint(self.pool, self.signer, self.clock.now(), every, 3600)


@pytest.fixture
async def archive(pg: tuple[str, int], tmp_path: Path) -> AsyncIterator[Archive]:
    s = ArchiveSettings(
        service_name=f"ev_{uuid.uuid4().hex[:10]}", pg_host=pg[0], pg_port=pg[1], topic_prefix=PREFIX,
        archive_signing_key_file=tmp_path / "signing.pem",
    )
    from tsop_archive.records.projection import DDL as RECORDS_DDL

    await ensure_database(s, [OFFSETS_DDL, *DDL, *RECORDS_DDL])
    clock = ManualClock(T0)
    svc: Runtime[ArchiveApp, ArchiveSettings] = Runtime(s)
    svc.pool = await asyncpg.create_pool(s.pg_dsn(), min_size=1, max_size=8)
    svc.app = await asyncio.to_thread(ArchiveApp, s, None, clock)
    svc.committer = GroupCommit(svc.app)
    svc.commands = Commands(svc.app, svc.committer)
    try:
        yield Archive(svc, clock, Signer.load_or_create(s.archive_signing_key_file))
    finally:
        await svc.pool.close()
        svc.app.close()


async def announce(archive: Archive) -> int:
    """What the broker brings back to the archive after retention acted on tickets' records: one records-expired
    announcement per expiry decision, on the ticket (as ``tsop_archive.wire`` maps ``Expiry.Recorded``)."""
    rows = await archive.pool.fetch(
        """SELECT x.expiry_id, x.matter, x.action, x.record_class, min(x.at) AS at,
                  array_agg(x.event_id ORDER BY x.seq) AS event_ids
           FROM archive_expiries x JOIN archive_events e ON e.seq = x.seq WHERE e.topic = $1
           GROUP BY 1, 2, 3, 4 ORDER BY 5, 1""", TICKETS)
    envs = [
        wrap(wire.RecordsExpired(ticket_id=r["matter"], record_class=r["record_class"], action=r["action"],
                                 event_ids=list(r["event_ids"]), retention_days=365, expired_at=r["at"]),
             event_id=f"{r['matter']}-x{r['expiry_id'].hex}", source="archive", time=r["at"])
        for r in rows
    ]
    before = await archive.pool.fetchval("SELECT count(*) FROM archive_events")
    await archive.deliver(envs)
    return int(await archive.pool.fetchval("SELECT count(*) FROM archive_events")) - int(before)


async def tamper(pool: asyncpg.Pool, table: str, sql: str, *args: Any) -> None:
    """What a superuser can do: switch the append-only trigger off, change a row, switch it on again."""
    trigger = f"{table}_no_change"
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}")
        await conn.execute(sql, *args)
        await conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER {trigger}")


async def test_verify_names_a_row_altered_directly_in_postgresql(
    archive: Archive, pg: tuple[str, int], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tickets = [str(uuid.uuid4()) for _ in range(4)]
    for t in tickets:
        await archive.deliver(lifecycle(t, "c1", T0))
    assert await archive.chain() == 20
    clean = await verify(archive.pool)
    assert clean.ok and clean.checked == 20 and clean.intact == 20 and clean.checkpoints >= 1
    # offline, with the published key pinned: the CLI agrees; with another key the checkpoints do not hold
    monkeypatch.setenv("TSOP_PG_HOST", pg[0])
    monkeypatch.setenv("TSOP_PG_PORT", str(pg[1]))
    name = archive.svc.settings.service_name
    [(kid, (raw, _))] = (await rp.public_keys(archive.pool)).items()
    assert kid == archive.signer.key_id
    pinned, stranger = tmp_path / "archive.pub", tmp_path / "stranger.pub"
    pinned.write_text(public_pem(raw))
    stranger.write_text(public_pem(Signer.load_or_create(None).public))
    for key, status in ((pinned, 0), (stranger, 1)):
        with pytest.raises(SystemExit) as exit_:
            await asyncio.to_thread(cli, ["verify", "--service-name", name, "--public-key", str(key)])
        assert exit_.value.code == status
    # the store refuses the change while its trigger stands
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await archive.pool.execute("UPDATE archive_events SET ce_source = 'forged' WHERE seq = 7")
    victim = await archive.pool.fetchrow("SELECT seq, ce_id FROM archive_events ORDER BY seq OFFSET 11 LIMIT 1")
    await tamper(
        archive.pool, "archive_events",
        "UPDATE archive_events SET data = jsonb_set(data, '{summary}', '\"nothing was done\"') WHERE seq = $1",
        victim["seq"],
    )
    found = await verify(archive.pool)
    assert not found.ok and found.broken is not None
    assert found.broken.seq == victim["seq"] and "record altered" in found.broken.reason
    assert found.checked == 11  # every record before it still verifies
    # a range that ends before the altered row still verifies; one that starts after it too
    assert (await verify(archive.pool, 1, victim["seq"] - 1)).ok
    assert (await verify(archive.pool, victim["seq"] + 1)).ok
    # the CLI says the same, with exit status 1
    with pytest.raises(SystemExit) as exit_:
        await asyncio.to_thread(cli, ["verify", "--service-name", archive.svc.settings.service_name])
    assert exit_.value.code == 1


async def test_a_rewritten_history_is_caught_by_the_signed_checkpoint(archive: Archive) -> None:
    """Someone who alters a record and recomputes its hash and every later link cannot re-sign."""
    t = str(uuid.uuid4())
    envs = lifecycle(t, "c1", T0)
    await archive.deliver(envs[:2])
    await archive.chain(every=1)  # a checkpoint signed at the second record
    await archive.deliver(envs[2:])
    await archive.chain(every=1)
    rows = await archive.pool.fetch("SELECT seq FROM archive_events ORDER BY seq")
    seqs = [r["seq"] for r in rows]
    victim = seqs[1]
    await tamper(archive.pool, "archive_events",
                 "UPDATE archive_events SET data = jsonb_set(data, '{priority}', '5') WHERE seq = $1", victim)
    # recompute the victim's record hash and every link from it on, as a thorough forger would
    prev = await rp.link_before(archive.pool, victim)
    from tsop_archive.records.domain import link

    async with archive.pool.acquire() as conn, conn.transaction():
        await conn.execute("ALTER TABLE archive_chain DISABLE TRIGGER archive_chain_no_change")
        for s in seqs[1:]:
            h = await conn.fetchval(f"SELECT {rp.hash_sql('e')} FROM archive_events e WHERE seq = $1", s)
            prev = link(prev, bytes(h))
            await conn.execute("UPDATE archive_chain SET record_hash = $2, link = $3 WHERE seq = $1", s, h, prev)
        await conn.execute("ALTER TABLE archive_chain ENABLE TRIGGER archive_chain_no_change")
    found = await verify(archive.pool)
    assert found.broken is not None and "checkpoint" in found.broken.reason
    assert found.broken.seq == victim  # the checkpoint signed at the victim no longer agrees
    assert found.checked == 2


async def test_the_chain_order_is_deterministic_under_concurrent_writers(archive: Archive) -> None:
    async def writer(n: int) -> None:
        for i in range(10):
            await archive.deliver(lifecycle(f"{uuid.uuid4()}", f"c{n}", T0 + timedelta(minutes=i)))

    async def chainer(stop: asyncio.Event) -> None:
        while not stop.is_set():
            await archive.chain(every=25)
            await asyncio.sleep(0.01)

    stop = asyncio.Event()
    running = asyncio.create_task(chainer(stop))
    await asyncio.gather(*(writer(n) for n in range(4)))
    stop.set()
    await running
    await archive.chain()
    count = await archive.pool.fetchval("SELECT count(*) FROM archive_events")
    assert count == 200
    assert await archive.pool.fetchval("SELECT count(*) FROM archive_chain") == 200
    v = await verify(archive.pool)
    assert v.ok and v.checked == 200 and v.checkpoints >= 2, v


async def test_the_chainer_counts_from_the_head_it_read_and_every_checkpoint_counts_the_whole_chain(
    archive: Archive, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each round of a chainer counts the chain's records from the head its round before read (``HeadSeen``), not
    from the last checkpoint (up to ``archive_checkpoint_every`` links read again every round), or from a later
    checkpoint another instance signed meanwhile; the count each checkpoint signs is still every link up to it."""
    counted_from: list[int] = []
    head = rp.chain_head

    async def spied(pool: asyncpg.Pool, known_seq: int = 0, known_count: int = 0) -> rp.ChainHead | None:
        counted_from.append(known_seq)
        return await head(pool, known_seq, known_count)

    monkeypatch.setattr(rp, "chain_head", spied)
    seen = HeadSeen()

    async def round_(mine: bool = True) -> None:
        await chain_and_checkpoint(archive.pool, archive.signer, archive.clock.now(), 12, 3600, seen if mine else None)

    async def top() -> int:
        return int(await archive.pool.fetchval("SELECT max(seq) FROM archive_chain"))

    await archive.deliver(lifecycle(str(uuid.uuid4()), "c1", T0))
    await round_()  # the first checkpoint (5 records)
    first = await top()
    for _ in range(2):
        await archive.deliver(lifecycle(str(uuid.uuid4()), "c1", T0))
        await round_()
    assert counted_from == [0, first, await top() - 5]  # the second round from the checkpoint, the third from its head
    assert seen.head is not None and seen.head.count == 15 and seen.head.seq == await top()
    await archive.deliver(lifecycle(str(uuid.uuid4()), "c1", T0))
    await round_(mine=False)  # another instance: 15 records since the first checkpoint, so it signs one at 20
    signed_at = await top()
    await archive.deliver(lifecycle(str(uuid.uuid4()), "c1", T0))
    await round_()  # from that checkpoint (later than this chainer's head)
    assert counted_from[-1] == signed_at and seen.head.count == 25
    for _ in range(2):
        await archive.deliver(lifecycle(str(uuid.uuid4()), "c1", T0))
        await round_()  # 30, then 35: 15 since the checkpoint at 20, signed
    rows = await archive.pool.fetch("SELECT upto_seq, count FROM archive_checkpoints ORDER BY number")
    assert [r["count"] for r in rows] == [5, 20, 35]
    for r in rows:
        assert r["count"] == await archive.pool.fetchval("SELECT count(*) FROM archive_chain WHERE seq <= $1",
                                                         r["upto_seq"])
    v = await verify(archive.pool)
    assert v.ok and v.checked == 35 and v.checkpoints == 3, v


async def test_expiry_keeps_the_chain_and_the_sealed_dossier_verifiable_and_a_hold_stops_it(
    archive: Archive,
) -> None:
    svc = archive.svc
    kept, expired, held_customer = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    await archive.deliver(lifecycle(kept, "c-kept", T0 + timedelta(days=400)))  # ends later: kept longer
    await archive.deliver(lifecycle(expired, "c-plain", T0))
    await archive.deliver(lifecycle(held_customer, "c-held", T0))
    assert await seal_due(svc) == 3
    await archive.chain()
    await place_hold(svc, HoldKind.customer, "c-held", "litigation 2026/17", AUDITOR)
    await place_hold(svc, HoldKind.ticket, kept, "regulator's inquiry", AUDITOR)

    # a year and a day after the end: personal data expires (anonymised), the service record stays
    archive.clock.advance(timedelta(days=366))
    first = await expire_due(svc)
    assert first.records == 1, first  # RequestSubmitted of `expired` only: the others are held or too young
    events, _ = await ticket_record(svc.pool, TICKETS, expired)
    submitted = next(e for e in events if e.type == wire.RequestSubmitted.event_type)
    assert submitted.data["description"] == "[anonymised]" and submitted.data["customer_id"] == "[anonymised]"
    assert submitted.data["service_type"] == "broadband.fault_repair"
    held_events, _ = await ticket_record(svc.pool, TICKETS, held_customer)
    assert "storm" in held_events[0].data["description"]

    # three years on, with work logs kept for two: the service record is purged, the work log too
    await set_period(svc, RecordClass.work_logs, 730, "work logs are kept two years", AUDITOR)
    archive.clock.advance(timedelta(days=3 * 365))
    await expire_due(svc)
    events, _ = await ticket_record(svc.pool, TICKETS, expired)
    assert all(e.data is None for e in events), [e.data for e in events]  # bodies gone, records remain
    assert len(events) == 5
    # another expiry round changes nothing more (durable and idempotent)
    assert (await expire_due(svc)).records == 0
    # the held customer's ticket and the held ticket are intact
    for t in (held_customer, kept):
        evs, _ = await ticket_record(svc.pool, TICKETS, t)
        assert all(e.data is not None and "storm" in str(e.data) for e in evs[:1])

    # right after the rounds, before any broker brings the tickets' records-expired back, the whole-archive chain
    # verifies: each round announced its expiries in the chain itself, and the expired records are reported as
    # such, not as broken
    own = int(await archive.pool.fetchval("SELECT count(*) FROM archive_events WHERE ce_type = $1",
                                          rp.ARCHIVE_EXPIRED))
    assert own == 3  # one per expiry: personal data anonymised, then the service record and the work log purged
    early = await verify(archive.pool)
    assert early.ok and early.expired == 5 and early.intact == 10 + own, early.broken
    # the records-expired announcements back from the broker change nothing to that
    announced = await announce(archive)
    await archive.chain()
    v = await verify(archive.pool)
    assert v.ok, v.broken
    assert v.expired == 5 and v.intact == 10 + own + announced
    # and the sealed dossier still verifies, through the witnesses recorded at expiry
    d = await svc.commands.run(lambda uow: uow.find(Dossier, dossier_id(expired)))
    assert d is not None
    assert not d.verified(events)  # without the witnesses the bodies no longer hash to the seal
    assert d.verified(events, await rp.witnesses(svc.pool, d.event_ids))
    # what was expired, and how, is on record
    rows = await rp.expiries(svc.pool, expired, 100)
    assert sorted((r["action"], r["record_class"]) for r in rows)[:2] == [
        ("anonymised", "personal_data"), ("purged", "service_records")
    ]
    # tampering with an expired row (restoring a body) is still found
    await tamper(svc.pool, "archive_events", "UPDATE archive_events SET data = '{\"x\": 1}' WHERE seq = $1",
                 submitted.seq)
    assert (await verify(archive.pool)).broken is not None

    # releasing the hold lets retention act on the next round
    await release_hold(svc, HoldKind.customer, "c-held", "case closed", AUDITOR)
    assert (await expire_due(svc)).records == 5


async def test_a_delete_is_refused_even_for_expired_records(archive: Archive) -> None:
    await archive.deliver(lifecycle(str(uuid.uuid4()), "c1", T0))
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await archive.pool.execute("DELETE FROM archive_events")
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await archive.pool.execute("UPDATE archive_events SET data = NULL")
    await archive.chain()
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await archive.pool.execute("DELETE FROM archive_chain")


async def test_a_ticket_as_it_stood(archive: Archive) -> None:
    t = str(uuid.uuid4())
    envs = lifecycle(t, "c1", T0)
    await archive.deliver(envs)
    before = await ticket_as_of(archive.svc, t, T0 + timedelta(minutes=45))
    assert before.status == "accepted" and before.events == 2 and before.open
    after = await ticket_as_of(archive.svc, t, T0 + timedelta(days=1))
    assert after.status == "closed" and not after.open and after.fields["resolution_code"] == "hw_replaced"
    # the projection rebuilt from the log, page by page, agrees
    other = str(uuid.uuid4())
    await archive.deliver(lifecycle(other, "c2", T0)[:3])
    view, seen = await rebuild_backlog(archive.pool, TICKETS, page=2)
    assert seen == 8 and [s.ticket_id for s in view.open()] == [other]
    assert view.tickets[t].status == "closed" and view.tickets[t].events == after.events


def records_expired(ticket: str, event_ids: list[str], at: datetime, n: int) -> Envelope:
    """The archive's own announcement of an expiry, as it comes back from the broker onto the tickets topic."""
    e = wire.RecordsExpired(ticket_id=ticket, record_class="service_records", action="purged",
                            event_ids=event_ids, retention_days=1095, expired_at=at)
    return wrap(e, event_id=f"{ticket}-x{n}", source="archive", time=at)


async def test_retention_never_expires_its_own_announcements_nor_counts_idle_matters(archive: Archive) -> None:
    svc = archive.svc
    t = str(uuid.uuid4())
    await archive.deliver(lifecycle(t, "c1", T0))
    assert await seal_due(svc) == 1
    await archive.chain()
    archive.clock.advance(timedelta(days=4 * 365))
    first = await expire_due(svc)
    assert first.records == 5 and first.matters == 1, first
    # the announcement of that expiry arrives, as a new record of the ticket, and rounds go on
    for n in range(3):
        await archive.deliver([records_expired(t, [f"{t}-{i}" for i in range(5)], archive.clock.now(), n)])
        archive.clock.advance(timedelta(days=1))
        again = await expire_due(svc)
        assert again.records == 0 and again.matters == 0, again  # no announcement of an announcement
    events, _ = await ticket_record(svc.pool, TICKETS, t)
    assert [e.data is not None for e in events] == [False] * 5 + [True] * 3
    assert len(await rp.expiries(svc.pool, t, 100)) == 5


def complaint(cid: str, customer: str, tickets: list[str], at: datetime, notes: int) -> list[Envelope]:
    events: list[wire.WireEvent] = [wire.ComplaintReceived(
        complaint_id=cid, customer_id=customer, source="agent", complaint_type="service_quality",
        description="The engineer never came, call me on 555-0199", ticket_ids=tickets, received_by="agent-1",
        received_at=at, acknowledge_by=at + timedelta(days=2), answer_by=at + timedelta(days=14), repeat=False,
    )]
    events += [wire.ComplaintNoteAdded(complaint_id=cid, note=f"step {i}", noted_by="agent-1",
                                       noted_at=at + timedelta(hours=i + 1)) for i in range(notes)]
    return [wrap(e, event_id=f"{cid}-{i}", source="test", time=at + timedelta(hours=i))
            for i, e in enumerate(events)]


async def test_a_hold_on_a_customer_or_a_ticket_keeps_every_record_of_their_complaints(archive: Archive) -> None:
    svc = archive.svc
    complaints = f"{PREFIX}complaints"
    held_c, held_t, plain, filler = (f"cmp{i}{uuid.uuid4().hex[:8]}" for i in range(4))
    ticket = str(uuid.uuid4())
    # the complaints' records interleave with others', so no page of records holds a whole complaint
    await archive.deliver(complaint(held_c, "c-held", [], T0, 0), complaints)
    await archive.deliver(complaint(held_t, "c-other", [ticket], T0, 0), complaints)
    await archive.deliver(complaint(plain, "c-plain", [], T0, 0), complaints)
    await archive.deliver(complaint(filler, "c-filler", [], T0, 5), complaints)
    later = [e for c in (held_c, held_t, plain) for e in complaint(c, "x", [], T0, 3)[1:]]
    await archive.deliver(later, complaints)
    await place_hold(svc, HoldKind.customer, "c-held", "litigation", AUDITOR)
    await place_hold(svc, HoldKind.ticket, ticket, "regulator's inquiry", AUDITOR)
    archive.clock.advance(timedelta(days=4 * 365))
    r = await expire_due(svc, limit=1)
    assert r.matters == 2 and r.records == 4 + 6, r  # plain and filler only
    for cid, kept in ((held_c, True), (held_t, True), (plain, False), (filler, False)):
        rows = await archive.pool.fetch(
            "SELECT data IS NOT NULL AS has FROM archive_events WHERE key = $1 AND topic = $2 ORDER BY seq", cid,
            complaints)
        assert len(rows) == (6 if cid == filler else 4)
        assert all(x["has"] == kept for x in rows), (cid, [x["has"] for x in rows])


async def test_a_reopened_ticket_is_open_again_in_the_past_and_retention_counts_from_its_last_end(
    archive: Archive,
) -> None:
    from tsop_archive.records.commands import backlog_as_of

    svc = archive.svc
    t = str(uuid.uuid4())
    envs = lifecycle(t, "c1", T0)  # closed at T0 + 2h
    reopened = wire.Reopened(ticket_id=t, reason_code="not_solved", reason="still down", requested_by="web",
                             reopen_count=1, reopened_at=T0 + timedelta(days=10))
    closed = wire.Closed(ticket_id=t, reason="rated", closed_at=T0 + timedelta(days=20))
    envs.append(wrap(reopened, event_id=f"{t}-5", source="test", time=T0 + timedelta(days=10)))
    envs.append(wrap(closed, event_id=f"{t}-6", source="test", time=T0 + timedelta(days=20)))
    await archive.deliver(envs)
    for days, open_ in ((5, False), (15, True), (25, False)):
        at = T0 + timedelta(days=days)
        assert [k for k, _ in await backlog_as_of(svc, at)] == ([t] if open_ else []), days
        state = await ticket_as_of(svc, t, at)
        assert state.open is open_, (days, state.status)
    view, _ = await rebuild_backlog(archive.pool, TICKETS)
    assert not view.tickets[t].open and view.tickets[t].ended_at == T0 + timedelta(days=20)

    assert await seal_due(svc) == 1
    await archive.chain()
    archive.clock.advance(timedelta(days=370))  # a year after the first close, not after the last
    assert (await expire_due(svc)).records == 0
    archive.clock.advance(timedelta(days=16))  # a year and a day after the last close
    assert (await expire_due(svc)).records == 1


async def test_a_deleted_tail_is_caught_by_its_checkpoint_or_by_the_one_the_auditor_kept(
    archive: Archive, pg: tuple[str, int], monkeypatch: pytest.MonkeyPatch,
) -> None:
    t = str(uuid.uuid4())
    envs = lifecycle(t, "c1", T0)
    await archive.deliver(envs[:2])
    await archive.chain(every=1)
    await archive.deliver(envs[2:])
    await archive.chain(every=1)
    kept = await rp.last_checkpoint(archive.pool)  # what the auditor noted at the last audit
    assert kept is not None and kept.upto_seq == (await rp.chain_head(archive.pool)).seq  # type: ignore[union-attr]
    before = await verify(archive.pool, expect=(kept.number, kept.link))
    assert before.ok and before.last_seq == kept.upto_seq
    tail = kept.upto_seq - 2

    async def cut(table: str, sql: str) -> None:
        await tamper(archive.pool, table, sql, tail)

    # the last records and their links deleted: the last checkpoint is never reached
    await cut("archive_events", "DELETE FROM archive_events WHERE seq > $1")
    await cut("archive_chain", "DELETE FROM archive_chain WHERE seq > $1")
    v = await verify(archive.pool)
    assert v.broken is not None and v.broken.seq == kept.upto_seq and "gone" in v.broken.reason
    assert v.last_seq == tail
    # the checkpoints over them deleted too: only the checkpoint the auditor kept tells
    await cut("archive_checkpoints", "DELETE FROM archive_checkpoints WHERE upto_seq > $1")
    assert (await verify(archive.pool)).ok
    v = await verify(archive.pool, expect=(kept.number, kept.link))
    assert v.broken is not None and "auditor holds" in v.broken.reason
    # and on the command line: exit 1 with the kept checkpoint, 0 without it, 2 when it is malformed
    monkeypatch.setenv("TSOP_PG_HOST", pg[0])
    monkeypatch.setenv("TSOP_PG_PORT", str(pg[1]))
    name = archive.svc.settings.service_name
    for extra, status in (([f"--expect={kept.number}:{kept.link.hex()}"], 1), ([], 0), (["--expect=1:zz"], 2)):
        with pytest.raises(SystemExit) as exit_:
            await asyncio.to_thread(cli, ["verify", "--service-name", name, *extra])
        assert exit_.value.code == status, extra


async def test_a_forged_expiry_cannot_rewrite_a_body(archive: Archive) -> None:
    """With the archive's own database role (no trigger switched off): an expiry row is easy to insert, but
    the body may only change as its action allows — a purge drops it, an anonymisation only masks values."""
    t = str(uuid.uuid4())
    await archive.deliver(lifecycle(t, "c1", T0))
    await archive.chain()
    seq = await archive.pool.fetchval("SELECT min(seq) FROM archive_events")
    forged = '{"ticket_id": "x", "description": "the customer withdrew the complaint"}'
    for action, body in (("anonymised", forged), ("purged", forged)):
        await archive.pool.execute(
            f"""INSERT INTO archive_expiries (seq, action, event_id, expiry_id, record_class, matter, after_hash, at)
                SELECT e.seq, $2, e.ce_id, gen_random_uuid(), 'service_records', e.key,
                       {rp.hash_sql('e', '$3::jsonb', 'NULL::bytea')}, now()
                FROM archive_events e WHERE e.seq = $1""", seq, action, body)
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await archive.pool.execute("UPDATE archive_events SET data = $2::jsonb WHERE seq = $1", seq, body)
    assert (await verify(archive.pool)).ok


async def test_only_the_chain_leader_asks_for_the_share_lock(archive: Archive) -> None:
    """Another instance holds the chain's advisory lock: this one skips the round at once, without queueing a
    SHARE lock on the store (which would stall every consumer's insert behind it)."""
    await archive.deliver(lifecycle(str(uuid.uuid4()), "c1", T0))
    leader = await archive.pool.acquire()
    try:
        assert await leader.fetchval("SELECT pg_try_advisory_lock($1)", rp.CHAIN_LOCK)
        assert await asyncio.wait_for(rp.chain_pending(archive.pool), 5) == 0
        share = await archive.pool.fetchval(
            "SELECT count(*) FROM pg_locks WHERE relation = 'archive_events'::regclass AND mode = 'ShareLock'")
        assert share == 0
        assert await archive.pool.fetchval("SELECT count(*) FROM archive_chain") == 0
    finally:
        await leader.execute("SELECT pg_advisory_unlock($1)", rp.CHAIN_LOCK)
        await archive.pool.release(leader)
    assert await rp.chain_pending(archive.pool) == 5


# --------------------------------------------------------------------------- the gaps of issue 13, closed


async def test_a_deleted_checkpoint_between_two_others_is_named(archive: Archive) -> None:
    """Each checkpoint signs its predecessor: deleting one from the middle (records and links untouched, every
    remaining signature good) breaks the checkpoints' own chain at the next one."""
    t = str(uuid.uuid4())
    envs = lifecycle(t, "c1", T0)
    for lo, hi in ((0, 2), (2, 4), (4, 5)):
        await archive.deliver(envs[lo:hi])
        await archive.chain(every=1)
    cps = await rp.checkpoints(archive.pool)
    assert len(cps) == 3 and cps[0].previous == bytes(32)
    assert cps[1].previous == cps[0].digest() and cps[2].previous == cps[1].digest()
    assert (await verify(archive.pool)).ok
    await tamper(archive.pool, "archive_checkpoints", "DELETE FROM archive_checkpoints WHERE number = $1",
                 cps[1].number)
    v = await verify(archive.pool)
    assert v.broken is not None and v.broken.seq == cps[2].upto_seq, v.broken
    assert f"checkpoint {cps[2].number} does not follow" in v.broken.reason
    # a range that starts after the gap still holds its first checkpoint to the one before it
    part = await verify(archive.pool, cps[1].upto_seq + 1)
    assert part.broken is not None and "does not follow" in part.broken.reason
    # two instances signing at once never fork the checkpoints' chain (one at a time, after the last)
    await archive.deliver(lifecycle(str(uuid.uuid4()), "c2", T0))
    await rp.chain_pending(archive.pool)
    head = await rp.chain_head(archive.pool)
    assert head is not None
    made = await asyncio.gather(*(
        rp.add_checkpoint(archive.pool, head.seq - i, head.count - i, head.link, archive.clock.now(),
                          archive.signer.key_id, archive.signer.sign) for i in range(2)
    ))
    newest = await rp.checkpoints(archive.pool, cps[2].upto_seq + 1)
    assert 1 <= len(newest) == len([m for m in made if m is not None])
    assert newest[0].previous == cps[2].digest()


async def test_a_record_dropped_with_a_forged_expiry_is_not_passed_off_as_expired(archive: Archive) -> None:
    """With the archive's own database role: an expiry row is easy to insert and a purge then passes the store's
    trigger; but no records-expired announcement of the ticket names the record, so ``verify`` refuses it."""
    t = str(uuid.uuid4())
    await archive.deliver(lifecycle(t, "c1", T0))
    await archive.chain()
    seq, ce_id = await archive.pool.fetchrow("SELECT seq, ce_id FROM archive_events ORDER BY seq OFFSET 3 LIMIT 1")
    await archive.pool.execute(
        f"""INSERT INTO archive_expiries (seq, action, event_id, expiry_id, record_class, matter, after_hash, at)
            SELECT e.seq, 'purged', e.ce_id, gen_random_uuid(), 'service_records', e.key,
                   {rp.hash_sql('e', 'NULL::jsonb', 'NULL::bytea')}, now()
            FROM archive_events e WHERE e.seq = $1""", seq)
    await archive.pool.execute("UPDATE archive_events SET data = NULL WHERE seq = $1", seq)
    v = await verify(archive.pool)
    assert v.broken is not None and v.broken.seq == seq and "without its announcement" in v.broken.reason
    # an announcement that names another record, or another action, does not cover it
    other = wire.RecordsExpired(ticket_id=t, record_class="service_records", action="anonymised",
                                event_ids=[ce_id], retention_days=1095, expired_at=T0)
    elsewhere = wire.RecordsExpired(ticket_id=t, record_class="service_records", action="purged",
                                    event_ids=[f"{t}-0"], retention_days=1095, expired_at=T0)
    await archive.deliver([wrap(other, event_id=f"{t}-x1", source="x", time=T0),
                           wrap(elsewhere, event_id=f"{t}-x2", source="x", time=T0)])
    await archive.chain()
    v = await verify(archive.pool)
    assert v.broken is not None and v.broken.seq == seq and "without its announcement" in v.broken.reason


async def test_an_anonymised_raw_body_keeps_none_of_its_bytes(archive: Archive) -> None:
    """A body jsonb cannot hold (a NUL) is kept raw; under an anonymising expiry its bytes go, replaced whole by
    "[anonymised]" — and the store's trigger refuses an "anonymisation" that keeps them."""
    svc = archive.svc
    t = str(uuid.uuid4())
    envs = lifecycle(t, "c-nul", T0)
    submitted = wire.RequestSubmitted(
        ticket_id=t, channel="web", customer_id="c-nul", customer_tier="gold", region="north\x00east",
        service_type="broadband.fault_repair", description="call Ann\x00 on 555-0101",
        time_requirement=wire.TimeRequirement(), submitted_at=T0)
    envs[0] = wrap(submitted, event_id=f"{t}-0", source="test", time=T0)
    await archive.deliver(envs)
    seq = await archive.pool.fetchval("SELECT seq FROM archive_events WHERE ce_id = $1", f"{t}-0")
    assert await archive.pool.fetchval("SELECT raw IS NOT NULL AND data IS NULL FROM archive_events WHERE seq = $1",
                                       seq)
    await archive.chain()
    # a forged anonymisation that keeps the raw bytes as they are
    await archive.pool.execute(
        f"""INSERT INTO archive_expiries (seq, action, event_id, expiry_id, record_class, matter, after_hash, at)
            SELECT e.seq, 'anonymised', e.ce_id, gen_random_uuid(), 'personal_data', e.key, {rp.hash_sql('e')}, now()
            FROM archive_events e WHERE e.seq = $1""", seq)
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await archive.pool.execute("UPDATE archive_events SET raw = raw WHERE seq = $1", seq)
    await tamper(archive.pool, "archive_expiries", "DELETE FROM archive_expiries WHERE seq = $1", seq)
    # retention's own anonymisation: no raw bytes left, the record still verifies as expired
    assert await seal_due(svc) == 1
    archive.clock.advance(timedelta(days=366))
    assert (await expire_due(svc)).records == 1
    row = await archive.pool.fetchrow("SELECT data, raw FROM archive_events WHERE seq = $1", seq)
    assert row["raw"] is None and row["data"] == '"[anonymised]"'
    await announce(archive)
    await archive.chain()
    v = await verify(archive.pool)
    assert v.ok and v.expired == 1, v.broken
    # the sealed dossier still verifies across it
    d = await svc.commands.run(lambda uow: uow.find(Dossier, dossier_id(t)))
    events, _ = await ticket_record(svc.pool, TICKETS, t)
    assert d is not None and d.verified(events, await rp.witnesses(svc.pool, d.event_ids))


async def test_a_chainer_whose_remembered_head_is_gone_counts_from_the_checkpoint_again(archive: Archive) -> None:
    """The database went back under a running chainer (a failover to a standby that lacked the last commits, a
    restore to a point in time): the head it remembers is no longer in the chain. It must not count from that head
    (signing counts of links that no longer exist, which ``verify`` would not catch), but from the last checkpoint."""
    seen = HeadSeen()

    async def round_() -> None:
        await chain_and_checkpoint(archive.pool, archive.signer, archive.clock.now(), 12, 3600, seen)

    await archive.deliver(lifecycle(str(uuid.uuid4()), "c1", T0))
    await round_()  # the first checkpoint (5 records)
    first = int(await archive.pool.fetchval("SELECT max(seq) FROM archive_chain"))
    await archive.deliver(lifecycle(str(uuid.uuid4()), "c1", T0))
    await round_()  # remembers the head at 10 records
    assert seen.head is not None and seen.head.count == 10
    # the last lifecycle's records and links are gone, as after the database went back in time
    await tamper(archive.pool, "archive_chain", "DELETE FROM archive_chain WHERE seq > $1", first)
    await tamper(archive.pool, "archive_events", "DELETE FROM archive_events WHERE seq > $1", first)
    for _ in range(3):  # 15 records since the checkpoint: the next is signed
        await archive.deliver(lifecycle(str(uuid.uuid4()), "c1", T0))
        await round_()
    rows = await archive.pool.fetch("SELECT upto_seq, count FROM archive_checkpoints ORDER BY number")
    assert len(rows) == 2
    for r in rows:
        assert r["count"] == await archive.pool.fetchval("SELECT count(*) FROM archive_chain WHERE seq <= $1",
                                                         r["upto_seq"]), [tuple(x) for x in rows]
