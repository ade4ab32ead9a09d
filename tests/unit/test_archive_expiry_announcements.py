"""The archive's announcement of an expiry (issue 13, §7.2/§7.4), pure: what it says, what its signature
covers, which expired rows it makes verify, and that retention never expires one."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import orjson

from tsop_archive.records.commands import Signer, announcement_check
from tsop_archive.records.domain import (
    ANNOUNCEMENT_TYPE,
    GENESIS,
    Candidate,
    ChainVerifier,
    Matter,
    RecordClass,
    announcement,
    announcement_holds,
    announcement_id,
    announcement_message,
    chain,
    due_expiries,
    signed,
    signed_only,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
XID = uuid.UUID("00000000-0000-4000-8000-000000000001")


def body() -> dict[str, object]:
    return announcement(XID, "cmp-1", "complaints", "purged", 1095, T0, [4, 7], ["cmp-1-0", "cmp-1-2"])


def test_an_announcement_names_its_records_and_holds_no_personal_data() -> None:
    b = body()
    assert b == {
        "expiry_id": str(XID), "matter": "cmp-1", "record_class": "complaints", "action": "purged",
        "retention_days": 1095, "expired_at": T0.isoformat(), "seqs": [4, 7], "event_ids": ["cmp-1-0", "cmp-1-2"],
    }
    assert announcement_id(XID) == f"archive-expiry-{XID}"


def test_its_signature_covers_every_field_and_survives_the_store() -> None:
    s, stranger = Signer.load_or_create(None), Signer.load_or_create(None)
    holds = announcement_check({s.key_id: s.public})
    stored = orjson.dumps(signed(body(), s.key_id, s.sign)).decode()
    assert holds(stored)
    # as jsonb gives it back: keys reordered, the same fields
    reordered = orjson.loads(stored)
    assert holds(orjson.dumps(dict(sorted(reordered.items(), reverse=True))).decode())
    for field, value in (("event_ids", ["cmp-1-0", "cmp-1-1"]), ("seqs", [4, 8]), ("action", "anonymised"),
                         ("matter", "cmp-2"), ("retention_days", 1), ("expiry_id", str(uuid.uuid4()))):
        assert not holds(orjson.dumps({**reordered, field: value}).decode()), field
    assert not holds(orjson.dumps(body()).decode())  # unsigned
    assert not holds(orjson.dumps(signed(body(), stranger.key_id, stranger.sign)).decode())  # a key not trusted
    assert not holds(orjson.dumps(signed(body(), s.key_id, stranger.sign)).decode())  # a key id borrowed
    assert not holds("not json") and not holds('"a string"')
    assert not announcement_holds({**orjson.loads(stored), "signature": "zz"}, lambda k, m, sig: True)
    assert announcement_message(body()) != announcement_message({**body(), "seqs": [4]})


def test_an_expired_row_verifies_only_under_a_signed_announcement() -> None:
    s = Signer.load_or_create(None)
    holds = announcement_check({s.key_id: s.public})
    good = orjson.dumps(signed(body(), s.key_id, s.sign)).decode()
    bad = orjson.dumps(body()).decode()
    hashes = [bytes([i]) * 32 for i in range(1, 4)]
    links = chain(GENESIS, hashes)
    rows = [(1, hashes[0], links[0], "intact"), (2, hashes[1], links[1], "expired"), (3, hashes[2], links[2],
                                                                                      "expired")]
    assert signed_only(rows, {2: [bad, good], 3: [good]}, holds) == rows
    held = signed_only(rows, {2: [bad], 3: [good]}, holds)
    assert [r[3] for r in held] == ["intact", "unsigned", "expired"]
    v = ChainVerifier(1, 3, GENESIS, [], lambda cp: True)
    v.feed(held)
    r = v.finish()
    assert r.broken is not None and r.broken.seq == 2 and "not signed by the archive" in r.broken.reason
    assert [x[3] for x in signed_only(rows, {}, holds)] == ["intact", "unsigned", "unsigned"]


def test_retention_never_expires_an_announcement() -> None:
    m = Matter("cmp-1", False, None)
    old = T0 - timedelta(days=4000)
    records = [Candidate(1, "cmp-1-0", "p.complaints", "tsop.complaint.received.v1", old, True, False),
               Candidate(9, announcement_id(XID), "p.archive", ANNOUNCEMENT_TYPE, old, False, False)]
    due = due_expiries(m, records, {c: 30 for c in RecordClass}, {}, T0, "p.")
    assert [(d.seq, d.action) for d in due] == [(1, "purged")]
