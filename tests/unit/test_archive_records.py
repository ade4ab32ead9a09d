"""The archive as evidence, without I/O: the chain and its verifier, checkpoint signatures, retention rules
on a manual clock, legal holds, dossier witnesses, and a ticket's past state."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from tsop_archive.domain import ArchivedEvent, causal_order, seal
from tsop_archive.records.commands import Signer, public_pem, raw_public, signature_check
from tsop_archive.records.domain import (
    ANONYMISED,
    GENESIS,
    Backlog,
    Candidate,
    ChainRow,
    ChainVerifier,
    Checkpoint,
    HoldKind,
    LegalHold,
    Matter,
    RecordClass,
    anonymise,
    chain,
    checkpoint_message,
    due_expiries,
    fold,
    has_personal_data,
    hold_id,
    link,
)
from tsop_events import schemas as wire
from tsop_events.clock import ManualClock
from tsop_events.errors import Conflict

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PERIODS = {
    RecordClass.service_records: 1095, RecordClass.personal_data: 365, RecordClass.work_logs: 730,
    RecordClass.complaints: 1095,
}


def hashes(n: int) -> list[bytes]:
    return [hashlib.sha256(f"record {i}".encode()).digest() for i in range(n)]


def rows(n: int) -> list[ChainRow]:
    hs = hashes(n)
    return [ChainRow(i + 1, h, lk, "intact") for i, (h, lk) in enumerate(zip(hs, chain(GENESIS, hs), strict=True))]


def never(_: Checkpoint) -> bool:
    raise AssertionError("no checkpoint expected")


def test_each_link_hashes_the_one_before_with_the_record_hash() -> None:
    hs = hashes(3)
    links = chain(GENESIS, hs)
    assert links[0] == hashlib.sha256(GENESIS + hs[0]).digest()
    assert links[2] == link(links[1], hs[2])
    # the same records give the same chain; any change changes every later link
    assert chain(GENESIS, hs) == links
    other = chain(GENESIS, [hs[0], hashlib.sha256(b"x").digest(), hs[2]])
    assert other[0] == links[0] and other[1] != links[1] and other[2] != links[2]


def test_the_verifier_accepts_an_intact_chain_fed_in_batches() -> None:
    rs = rows(10)
    v = ChainVerifier(1, 10, GENESIS, [], never)
    assert v.feed(rs[:4]) and v.feed(rs[4:])
    assert v.result.ok and v.result.checked == 10 and v.result.intact == 10 and v.result.last_link == rs[-1].link


@pytest.mark.parametrize(
    ("state", "reason"),
    [("altered", "record altered"), ("missing", "record missing"), ("unchained", "not in the chain")],
)
def test_the_verifier_names_the_first_broken_position(state: str, reason: str) -> None:
    rs = rows(10)
    rs[6] = rs[6]._replace(state=state)
    rs[8] = rs[8]._replace(state="altered")
    v = ChainVerifier(1, 10, GENESIS, [], never)
    assert not v.feed(rs)
    assert v.result.broken is not None and v.result.broken.seq == 7 and reason in v.result.broken.reason
    assert v.result.checked == 6


def test_a_stored_link_that_does_not_follow_is_a_break() -> None:
    rs = rows(5)
    rs[2] = rs[2]._replace(link=hashlib.sha256(b"forged").digest())
    v = ChainVerifier(1, 5, GENESIS, [], never)
    v.feed(rs)
    assert v.result.broken is not None and v.result.broken.seq == 3 and "link altered" in v.result.broken.reason


def test_an_expired_record_keeps_its_link_and_is_counted_as_expired() -> None:
    rs = rows(5)
    rs[1] = rs[1]._replace(state="expired")
    v = ChainVerifier(1, 5, GENESIS, [], never)
    assert v.feed(rs)
    assert v.result.expired == 1 and v.result.intact == 4


def test_a_range_starts_from_the_link_before_it() -> None:
    rs = rows(6)
    v = ChainVerifier(4, 6, rs[2].link or GENESIS, [], never)
    assert v.feed(rs[3:]) and v.result.checked == 3


def test_checkpoints_are_signed_and_checked_against_the_published_key() -> None:
    signer = Signer.load_or_create(None)
    rs = rows(4)
    at = T0
    assert rs[3].link is not None
    msg = checkpoint_message(4, 4, rs[3].link, at)
    cp = Checkpoint(1, 4, 4, rs[3].link, at, signer.key_id, signer.sign(msg))
    check = signature_check({signer.key_id: signer.public})
    assert check(cp)
    v = ChainVerifier(1, 4, GENESIS, [cp], check)
    assert v.feed(rs) and v.result.checkpoints == 1
    # a forged signature, another key, or a checkpoint that names another link all fail
    assert not check(Checkpoint(1, 4, 4, rs[3].link, at, signer.key_id, bytes(64)))
    stranger = Signer.load_or_create(None)
    assert not signature_check({stranger.key_id: stranger.public})(cp)
    assert not check(Checkpoint(1, 4, 5, rs[3].link, at, signer.key_id, cp.signature))  # count changed
    bad = Checkpoint(1, 4, 4, rs[2].link or GENESIS, at, signer.key_id, signer.sign(checkpoint_message(
        4, 4, rs[2].link or GENESIS, at)))
    v = ChainVerifier(1, 4, GENESIS, [bad], check)
    assert not v.feed(rs) and v.result.broken is not None and "checkpoint 1 disagrees" in v.result.broken.reason
    # the published PEM round-trips to the raw key an auditor pins
    assert raw_public(public_pem(signer.public).encode()) == signer.public


def test_the_signing_key_is_kept_in_its_file(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "k" / "signing.pem"
    first = Signer.load_or_create(path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert Signer.load_or_create(path).key_id == first.key_id


# --------------------------------------------------------------------------- retention


def candidate(seq: int, event_type: str, personal: bool = False, topic: str = "tsop.tickets") -> Candidate:
    return Candidate(seq, f"e{seq}", topic, event_type, T0, personal, False)


RECORDS = [
    candidate(1, wire.RequestSubmitted.event_type, personal=True),
    candidate(2, wire.WorkLogged.event_type),
    candidate(3, wire.Closed.event_type),
]


def test_nothing_of_an_open_ticket_expires() -> None:
    m = Matter("t1", True, None)
    assert due_expiries(m, RECORDS, PERIODS, {}, T0 + timedelta(days=5000), "tsop.") == []


def test_personal_data_is_anonymised_first_then_each_class_purged_on_its_own_clock() -> None:
    clock = ManualClock(T0)
    m = Matter("t1", True, T0)
    clock.advance(timedelta(days=364))
    assert due_expiries(m, RECORDS, PERIODS, {}, clock.now(), "tsop.") == []
    clock.advance(timedelta(days=1))
    [d] = due_expiries(m, RECORDS, PERIODS, {}, clock.now(), "tsop.")
    assert (d.seq, d.record_class, d.action) == (1, RecordClass.personal_data, "anonymised")
    clock.advance(timedelta(days=365))  # 730 days: the work log goes
    due = due_expiries(m, RECORDS, PERIODS, {}, clock.now(), "tsop.")
    assert {(d.seq, d.record_class, d.action) for d in due} == {
        (1, RecordClass.personal_data, "anonymised"), (2, RecordClass.work_logs, "purged"),
    }
    clock.advance(timedelta(days=365))  # 1095 days: the service record goes, whole
    due = due_expiries(m, RECORDS, PERIODS, {}, clock.now(), "tsop.")
    assert {(d.seq, d.action) for d in due} == {(1, "purged"), (2, "purged"), (3, "purged")}


def test_a_legal_hold_on_the_ticket_its_customer_or_its_incident_stops_expiry() -> None:
    late = T0 + timedelta(days=5000)
    m = Matter("t1", True, T0, customer_ids=frozenset({"ref-c1"}), incident_ids=frozenset({"inc-9"}))
    assert due_expiries(m, RECORDS, PERIODS, {}, late, "tsop.")
    for holds in (
        {HoldKind.ticket: frozenset({"t1"})}, {HoldKind.customer: frozenset({"ref-c1"})},
        {HoldKind.incident: frozenset({"inc-9"})},
    ):
        assert due_expiries(m, RECORDS, PERIODS, holds, late, "tsop.") == []
    assert due_expiries(m, RECORDS, PERIODS, {HoldKind.ticket: frozenset({"t2"})}, late, "tsop.")


def test_records_of_other_topics_count_from_their_own_time_and_complaints_have_their_class() -> None:
    m = Matter("cmp-1", False, None)
    rec = [candidate(9, "tsop.complaint.filed.v1", topic="tsop.complaints")]
    periods = {**PERIODS, RecordClass.complaints: 10}
    assert due_expiries(m, rec, periods, {}, T0 + timedelta(days=9), "tsop.") == []
    [d] = due_expiries(m, rec, periods, {}, T0 + timedelta(days=10), "tsop.")
    assert d.record_class is RecordClass.complaints and d.action == "purged"


def test_anonymise_drops_personal_fields_and_keeps_the_service_record() -> None:
    body = {"ticket_id": "t1", "customer_id": "c1", "description": "call Ann", "region": "north",
            "location": {"address": "1 Main St"}, "special_needs": None, "changes": {"description": "x", "priority": 2}}
    out = anonymise(body)
    assert out["customer_id"] == out["description"] == out["location"] == ANONYMISED
    assert out["region"] == "north" and out["special_needs"] is None and out["ticket_id"] == "t1"
    assert out["changes"] == {"description": ANONYMISED, "priority": 2}
    assert has_personal_data(body) and not has_personal_data(out)
    assert not has_personal_data({"notes": None, "action": "replaced the ONT"})


def test_a_legal_hold_is_placed_released_and_placed_again_as_events() -> None:
    h = LegalHold(id=hold_id(HoldKind.ticket, "t1"), kind="ticket", subject="t1", placed_by="aud", reason="case",
                  at=T0)
    with pytest.raises(Conflict):
        h.place_again("aud", "again", T0)
    h.release("sup", "case closed", T0 + timedelta(days=1))
    assert not h.active
    with pytest.raises(Conflict):
        h.release("sup", "twice", T0)
    h.place_again("aud", "reopened", T0 + timedelta(days=2))
    assert h.active and [x["action"] for x in h.history] == ["placed", "released", "placed"]
    assert len(h.collect_events()) == 3


# --------------------------------------------------------------------------- dossiers across expiry


def test_a_sealed_dossier_verifies_across_an_expired_body_by_its_witness() -> None:
    events = [
        ArchivedEvent(i, f"e{i}", t, "test", T0 + timedelta(minutes=i), f"e{i - 1}" if i else None, {"n": i})
        for i, t in enumerate([wire.RequestSubmitted.event_type, wire.Resolved.event_type, wire.Closed.event_type])
    ]
    d = seal(hold_id(HoldKind.ticket, "x"), "t1", events, [], T0, "e2")
    digests = d.digests(causal_order(events), {})
    assert digests is not None and d.verified(events)
    dropped = [events[0], ArchivedEvent(1, "e1", events[1].type, "test", events[1].time, "e0", None), events[2]]
    assert not d.verified(dropped)
    assert d.verified(dropped, {"e1": digests["e1"]})
    # a witness that does not fit the chain is no excuse
    assert not d.verified(dropped, {"e1": (digests["e1"][0], "00" * 32)})
    altered = [events[0], dropped[1], ArchivedEvent(2, "e2", events[2].type, "test", events[2].time, "e1", {"n": 9})]
    assert not d.verified(altered, {"e1": digests["e1"]})


# --------------------------------------------------------------------------- time travel


def test_a_ticket_state_is_folded_from_its_events_up_to_an_instant() -> None:
    log = [
        ("e0", wire.RequestSubmitted.event_type, T0, {"service_type": "broadband.fault_repair", "region": "north"}),
        ("e1", wire.RequestAccepted.event_type, T0 + timedelta(minutes=1), {"priority": 2}),
        ("e2", wire.Assigned.event_type, T0 + timedelta(minutes=2), {"technician_id": "tech-1"}),
        ("e3", wire.Resolved.event_type, T0 + timedelta(hours=2), {"resolution_code": "hw_replaced"}),
        ("e4", wire.Closed.event_type, T0 + timedelta(hours=3), {}),
    ]
    s = fold("t1", [e for e in log if e[2] <= T0 + timedelta(minutes=30)])
    assert s.status == "assigned" and s.open and s.fields["technician_id"] == "tech-1" and s.events == 3
    s = fold("t1", log)
    assert s.status == "closed" and not s.open and s.ended_at == T0 + timedelta(hours=3)
    b = Backlog()
    for e in log[:3]:
        b.apply("t1", *e)
    b.apply("t2", "x0", wire.RequestSubmitted.event_type, T0, None)
    b.apply("t2", "x1", wire.RequestRejected.event_type, T0, {"reason_code": "out_of_area"})
    assert [s.ticket_id for s in b.open()] == ["t1"]


def test_an_expiry_of_a_ticket_s_records_is_announced_on_the_ticket() -> None:
    from tsop_archive.records.domain import Expiry, expiry_id
    from tsop_archive.wire import WIRE

    def recorded(is_ticket: bool) -> object:
        x = Expiry(id=expiry_id("t1", "work_logs", "purged", 3), key="t1", record_class="work_logs", action="purged",
                   seqs=[3], event_ids=["e3"], days=730, at=T0, is_ticket=is_ticket)
        return x.collect_events()[0]

    out = WIRE(recorded(True))
    assert out is not None and isinstance(out.event, wire.RecordsExpired)
    assert (out.event.ticket_id, out.event.action, out.event.event_ids, out.event.retention_days) == (
        "t1", "purged", ["e3"], 730)
    assert WIRE(recorded(False)) is None  # another record's expiry stays in the archive


def test_the_record_of_a_lawful_erasure_never_expires() -> None:
    """The proof that an erasure was honoured (who asked, on which legal basis, when) is kept for good; the
    customers topic's other records expire on their class's clock."""
    m = Matter("cust-1", False, None)
    erased = candidate(0, wire.CustomerDataErased.event_type, topic="tsop.customers")
    assert due_expiries(m, [erased], PERIODS, {}, T0 + timedelta(days=100 * 365), "tsop.") == []
