"""The archive's records after review: retention never expires its own announcements, a matter's holds are
read from all its records, a checkpoint the chain no longer reaches is a break, a reopened ticket is open
again, and complaints count with a filter through the tickets they are about. Pure, on a manual clock."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from tsop_archive.records.commands import Signer, signature_check
from tsop_archive.records.domain import (
    GENESIS,
    Backlog,
    Candidate,
    ChainRow,
    ChainVerifier,
    Checkpoint,
    HoldKind,
    Matter,
    RecordClass,
    chain,
    checkpoint_message,
    customer_ref,
    due_expiries,
    fold,
    matter_refs,
)
from tsop_archive.stats.domain import Complaint, Filters, Question, TicketFacts, report, ticket_ids_of
from tsop_events import schemas as wire
from tsop_events.clock import ManualClock

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PERIODS = {
    RecordClass.service_records: 1095, RecordClass.personal_data: 365, RecordClass.work_logs: 730,
    RecordClass.complaints: 1095,
}


def test_retention_never_expires_its_own_announcement() -> None:
    clock = ManualClock(T0)
    m = Matter("t1", True, T0)
    announced = Candidate(9, "x9", "tsop.tickets", wire.RecordsExpired.event_type, T0 + timedelta(days=1100),
                          personal=False, anonymised=False)
    closed = Candidate(3, "e3", "tsop.tickets", wire.Closed.event_type, T0, personal=False, anonymised=False)
    clock.advance(timedelta(days=5000))
    due = due_expiries(m, [closed, announced], PERIODS, {}, clock.now(), "tsop.")
    assert [d.seq for d in due] == [3]
    assert due_expiries(m, [announced], PERIODS, {}, clock.now(), "tsop.") == []


def test_a_complaint_is_held_by_its_customer_or_the_tickets_it_is_about_read_from_all_its_records() -> None:
    received = {"complaint_id": "c1", "customer_id": "cust-9", "ticket_ids": ["t7"], "description": "x"}
    note = {"complaint_id": "c1", "note": "called back"}
    linked = {"complaint_id": "c1", "ticket_id": "t8"}
    customers, incidents, tickets = matter_refs([note, received, linked, None])
    assert customers == {customer_ref("cust-9")} and tickets == {"t7", "t8"} and incidents == set()
    m = Matter("c1", False, None, frozenset(customers), frozenset(), frozenset(tickets))
    recs = [Candidate(i, f"c1-{i}", "tsop.complaints", "tsop.complaint.note-added.v1", T0, False, False)
            for i in range(3)]
    late = T0 + timedelta(days=5000)
    assert len(due_expiries(m, recs, PERIODS, {}, late, "tsop.")) == 3
    for holds in ({HoldKind.customer: frozenset({customer_ref("cust-9")})}, {HoldKind.ticket: frozenset({"t8"})},
                  {HoldKind.ticket: frozenset({"t7"})}):
        assert due_expiries(m, recs, PERIODS, holds, late, "tsop.") == []


def _signed(signer: Signer, upto: int, link_: bytes) -> Checkpoint:
    return Checkpoint(1, upto, upto, link_, T0, signer.key_id, signer.sign(checkpoint_message(upto, upto, link_, T0)))


def test_a_checkpoint_the_chain_no_longer_reaches_is_a_break() -> None:
    hs = [hashlib.sha256(f"r{i}".encode()).digest() for i in range(6)]
    links = chain(GENESIS, hs)
    rs = [ChainRow(i + 1, h, lk, "intact") for i, (h, lk) in enumerate(zip(hs, links, strict=True))]
    signer = Signer.load_or_create(None)
    cp = _signed(signer, 6, links[5])
    whole = ChainVerifier(1, 2**62, GENESIS, [cp], signature_check({signer.key_id: signer.public}))
    assert whole.feed(rs) and whole.finish().ok and whole.result.last_seq == 6
    # the last two records and their chain rows deleted: the checkpoint at 6 is never reached
    cut = ChainVerifier(1, 2**62, GENESIS, [cp], signature_check({signer.key_id: signer.public}))
    assert cut.feed(rs[:4])
    v = cut.finish()
    assert not v.ok and v.broken is not None and v.broken.seq == 6 and "gone" in v.broken.reason
    assert v.last_seq == 4


def test_a_reopened_ticket_is_open_again_until_its_next_end() -> None:
    log: list[tuple[str, str, datetime, Any]] = [
        ("e0", wire.RequestSubmitted.event_type, T0, {}),
        ("e1", wire.Closed.event_type, T0 + timedelta(hours=3), {}),
        ("e2", wire.Reopened.event_type, T0 + timedelta(days=2), {}),
    ]
    s = fold("t1", log)
    assert s.open and s.status == "reopened" and s.ended_at is None
    s = fold("t1", [*log, ("e3", wire.Closed.event_type, T0 + timedelta(days=3), {})])
    assert not s.open and s.ended_at == T0 + timedelta(days=3)
    b = Backlog()
    for e in log:
        b.apply("t1", *e)
    assert [x.ticket_id for x in b.open()] == ["t1"]


def test_a_filtered_complaint_rate_counts_complaints_through_their_tickets() -> None:
    assert ticket_ids_of({"ticket_ids": ["a", "b"]}) == ["a", "b"]
    assert ticket_ids_of({"ticket_id": "c"}) == ["c"] and ticket_ids_of(None) == []
    web = TicketFacts("t1", channel="web", submitted_at=T0)
    phone = TicketFacts("t2", channel="hotline", submitted_at=T0)
    complaints = [Complaint("c1", ("t1",), T0), Complaint("c2", ("t2", "t1"), T0), Complaint("c3", ("t2",), T0),
                  Complaint("c4", (), T0)]
    q = Question(T0, T0 + timedelta(days=1), "day", Filters(channel="web"))
    r = report(q, [web, phone], complaints, [])
    assert r.total.complaints == 2 and r.total.complaint_rate == 2.0
    assert report(Question(T0, T0 + timedelta(days=1)), [web, phone], complaints, []).total.complaints == 4


def test_a_dead_letter_s_copy_of_the_failed_record_is_personal_data_and_names_its_customer() -> None:
    from tsop_archive.records.domain import ANONYMISED, anonymise, has_personal_data

    failed = '{"ticket_id": "t5", "customer_id": "cust-3", "description": "call Ann on 555-0101"}'
    letter = {"source_topic": "tsop.tickets", "source_key": "t5", "source_value": failed, "error": "bad"}
    assert has_personal_data(letter)
    assert anonymise(letter)["source_value"] == ANONYMISED and anonymise(letter)["error"] == "bad"
    customers, _, tickets = matter_refs([letter])
    assert customers == {customer_ref("cust-3")} and tickets == {"t5"}
    m = Matter("dl-1", False, None, frozenset(customers), frozenset(), frozenset(tickets))
    rec = [Candidate(1, "d1", "tsop.deadletter", wire.DeadLettered.event_type, T0, personal=True, anonymised=False)]
    [d] = due_expiries(m, rec, PERIODS, {}, T0 + timedelta(days=365), "tsop.")
    assert d.action == "anonymised" and d.record_class is RecordClass.personal_data
    assert due_expiries(m, rec, PERIODS, {HoldKind.customer: frozenset({customer_ref("cust-3")})},
                        T0 + timedelta(days=365), "tsop.") == []
