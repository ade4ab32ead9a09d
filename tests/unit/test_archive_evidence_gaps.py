"""The archive's evidence, its remaining gaps closed: the checkpoints form a chain of their own (each signs its
predecessor), so one deleted or replaced between two others is named by ``verify``."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from tsop_archive.records.commands import Signer, signature_check
from tsop_archive.records.domain import (
    GENESIS,
    ChainRow,
    ChainVerifier,
    Checkpoint,
    chain,
    checkpoint_chain_breaks,
    checkpoint_message,
)

T0 = datetime(2026, 6, 1, 9, tzinfo=UTC)


def signed(signer: Signer, number: int, upto: int, link_: bytes, previous: Checkpoint | None | bool) -> Checkpoint:
    """A v2 checkpoint after ``previous`` (None: the first); ``False``: a v1 checkpoint, which signs none."""
    prev = None if previous is False else (GENESIS if previous is None else previous.digest())  # type: ignore[union-attr]
    at = T0 + timedelta(minutes=number)
    return Checkpoint(number, upto, upto, link_, at, signer.key_id,
                      signer.sign(checkpoint_message(upto, upto, link_, at, prev)), prev)


def rows(n: int) -> tuple[list[ChainRow], list[bytes]]:
    hs = [hashlib.sha256(f"r{i}".encode()).digest() for i in range(n)]
    links = chain(GENESIS, hs)
    return [ChainRow(i + 1, h, lk, "intact") for i, (h, lk) in enumerate(zip(hs, links, strict=True))], links


def test_each_checkpoint_signs_its_predecessor() -> None:
    signer = Signer.load_or_create(None)
    _, links = rows(9)
    c1 = signed(signer, 1, 3, links[2], None)
    c2 = signed(signer, 2, 6, links[5], c1)
    c3 = signed(signer, 3, 9, links[8], c2)
    assert c2.message().startswith(b"tsop-archive-checkpoint/v2|")
    assert c2.message().decode().endswith("|" + c1.digest().hex())
    assert checkpoint_chain_breaks(None, [c1, c2, c3]) == {}
    # checked from the middle: the one before the range is the predecessor
    assert checkpoint_chain_breaks(c1, [c2, c3]) == {}
    # c2 deleted: c3 no longer follows the checkpoint the archive holds before it
    gone = checkpoint_chain_breaks(None, [c1, c3])
    assert list(gone) == [9] and "checkpoint 3 does not follow" in gone[9]
    # c2 replaced by another properly signed checkpoint (say, after rewriting the chain): c3 names the old one
    forged = signed(signer, 2, 6, hashlib.sha256(b"other").digest(), c1)
    assert list(checkpoint_chain_breaks(None, [c1, forged, c3])) == [9]
    # the first checkpoint deleted: the second signed a predecessor that is no longer there
    assert list(checkpoint_chain_breaks(None, [c2, c3])) == [6]
    # v1 checkpoints made before the chain of checkpoints existed are accepted, then the chain starts from them
    old = signed(signer, 1, 3, links[2], False)
    after_old = signed(signer, 2, 6, links[5], old)
    assert checkpoint_chain_breaks(None, [old, after_old]) == {}
    # but an unchained one after a chained one is not the archive's
    late_v1 = signed(signer, 3, 9, links[8], False)
    assert list(checkpoint_chain_breaks(None, [old, after_old, late_v1])) == [9]


def test_verify_names_the_checkpoint_whose_predecessor_is_gone() -> None:
    signer = Signer.load_or_create(None)
    rs, links = rows(9)
    c1 = signed(signer, 1, 3, links[2], None)
    c2 = signed(signer, 2, 6, links[5], c1)
    c3 = signed(signer, 3, 9, links[8], c2)
    check = signature_check({signer.key_id: signer.public})
    whole = ChainVerifier(1, 9, GENESIS, [c1, c2, c3], check)
    whole.chain_checkpoints(None)
    assert whole.feed(rs) and whole.finish().ok and whole.result.checkpoints == 3
    # c2 deleted from the table: every link and signature left still holds, the chain of checkpoints does not
    cut = ChainVerifier(1, 9, GENESIS, [c1, c3], check)
    cut.chain_checkpoints(None)
    assert not cut.feed(rs)
    r = cut.finish()
    assert r.broken is not None and r.broken.seq == 9 and "checkpoint 3 does not follow" in r.broken.reason
    assert r.checked == 9 and r.checkpoints == 1
    # the signature covers the predecessor: a checkpoint re-pointed at another one no longer verifies
    moved = Checkpoint(c3.number, c3.upto_seq, c3.count, c3.link, c3.at, c3.key_id, c3.signature, c1.digest())
    assert not check(moved)
