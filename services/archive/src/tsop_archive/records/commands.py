"""The archive-as-evidence use cases: chain and sign, verify, retention and legal hold, past states.

The chain, checkpoints and expiries are written with asyncpg (``records.projection``); retention policy,
legal holds and expiry decisions are events in the archive's event store, decided through
``svc.commands.run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from tsop_archive.commands import ArchiveApp, tickets_topic
from tsop_archive.domain import Dossier, dossier_id
from tsop_archive.projection import ticket_record
from tsop_archive.records import projection as rp
from tsop_archive.records.domain import (
    ANONYMISED,
    DEFAULT_DAYS,
    ENDED,
    POLICY_ID,
    STATUS_OF,
    Backlog,
    ChainVerifier,
    Checkpoint,
    Due,
    Expiry,
    HoldKind,
    LegalHold,
    RecordClass,
    RetentionPolicy,
    TicketState,
    Verification,
    announcement_holds,
    anonymise,
    check_expected,
    check_period,
    due_expiries,
    expiry_id,
    fold,
    hold_id,
    hold_subject,
    key_id,
    signed_only,
)
from tsop_events.auth import Principal
from tsop_events.commands import UnitOfWork
from tsop_events.errors import NotFound
from tsop_events.runtime import Service

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- signing


class Signer:
    """The Ed25519 key that signs checkpoints. Its public key is published (``GET /v1/archive/keys``)."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self.key = key
        self.public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.key_id = key_id(self.public)

    @classmethod
    def load_or_create(cls, path: Path | None) -> Signer:
        """From a PEM file (created, mode 0600, when missing); a fresh key per start when no file is named."""
        if path is None:
            return cls(Ed25519PrivateKey.generate())
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError(f"{path} holds no Ed25519 private key")
            return cls(key)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        return cls(key)

    def sign(self, message: bytes) -> bytes:
        return self.key.sign(message)


def signature_check(keys: Mapping[str, bytes]) -> Callable[[Checkpoint], bool]:
    """Checks a checkpoint's signature against the public key it names (raw 32 bytes by key id)."""
    loaded = {k: Ed25519PublicKey.from_public_bytes(v) for k, v in keys.items()}

    def check(cp: Checkpoint) -> bool:
        pk = loaded.get(cp.key_id)
        if pk is None:
            return False
        try:
            pk.verify(cp.signature, cp.message())
        except InvalidSignature:
            return False
        return True

    return check


def announcement_check(keys: Mapping[str, bytes]) -> Callable[[str], bool]:
    """Whether an expiry's announcement (its stored body, JSON text) is signed by one of the keys (raw 32 bytes
    by key id). One announcement names many records: each body is checked once."""
    loaded = {k: Ed25519PublicKey.from_public_bytes(v) for k, v in keys.items()}
    seen: dict[str, bool] = {}

    def check(kid: str, message: bytes, signature: bytes) -> bool:
        pk = loaded.get(kid)
        if pk is None:
            return False
        try:
            pk.verify(signature, message)
        except InvalidSignature:
            return False
        return True

    def holds(body: str) -> bool:
        ok = seen.get(body)
        if ok is None:
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                parsed = None
            ok = seen[body] = announcement_holds(parsed, check)
        return ok

    return holds


def signer_for(svc: Service[ArchiveApp]) -> Signer:
    """The service's signing key (``archive_signing_key_file``), one per service (kept in ``svc.extras``): the
    chainer signs checkpoints and retention its announcements with the same key, also when no file is named (a
    fresh key per start)."""
    signer = svc.extras.get("archive_signer")
    if not isinstance(signer, Signer):
        path = getattr(svc.settings, "archive_signing_key_file", None)
        signer = svc.extras["archive_signer"] = Signer.load_or_create(path if isinstance(path, Path) else None)
    return signer


def public_pem(raw: bytes) -> str:
    return Ed25519PublicKey.from_public_bytes(raw).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def raw_public(pem: bytes) -> bytes:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# --------------------------------------------------------------------------- chain, checkpoints, verify


@dataclass
class HeadSeen:
    """The chain's head as a round of the chainer last read it (``chain_and_checkpoint``): the next round counts
    the links from there, not from the last checkpoint (up to ``archive_checkpoint_every`` links, each round)."""

    head: rp.ChainHead | None = None


async def chain_and_checkpoint(
    pool: asyncpg.Pool, signer: Signer, now: datetime, every: int, seconds: float, seen: HeadSeen | None = None
) -> int:
    """Link what is new; sign the head when ``every`` records or ``seconds`` have passed since the last
    checkpoint (and something is new). Returns how many records were linked. ``seen``: the head an earlier round
    of this chainer read (updated here), to count the chain's records from."""
    linked = await rp.chain_pending(pool)
    last = await rp.last_checkpoint(pool)
    known = (last.upto_seq, last.count) if last is not None else (0, 0)
    if seen is not None and seen.head is not None and seen.head.seq > known[0] \
            and await rp.link_at(pool, seen.head.seq) == seen.head.link:
        # the head read before is still there with its link, so every link below it is too (they commit in
        # order): its count holds. A head gone or changed (the database went back under this process: a failover
        # to a standby that lacked the last commits, a restore) is forgotten, and the count starts again from the
        # last checkpoint
        known = (seen.head.seq, seen.head.count)
    head = await rp.chain_head(pool, *known)
    if head is None:
        return linked
    if seen is not None:
        seen.head = head
    if last is not None and last.upto_seq >= head.seq:
        return linked
    since = head.count - (last.count if last is not None else 0)
    if last is None or since >= every or now - last.at >= timedelta(seconds=seconds):
        await rp.publish_key(pool, signer.key_id, signer.public, now)
        await rp.add_checkpoint(pool, head.seq, head.count, head.link, now, signer.key_id, signer.sign)
    return linked


async def verify(
    pool: asyncpg.Pool, from_seq: int = 1, to_seq: int = 2**62, keys: Mapping[str, bytes] | None = None,
    expect: tuple[int, bytes] | None = None, ahead: int = 2, window: int = 25_000,
) -> Verification:
    """Recompute the chain from ``from_seq`` to ``to_seq``: each record's hash from its stored form, each
    link from the one before, each checkpoint's link and signature; stop at the first break.

    ``keys`` pins the public keys an auditor trusts (by key id); by default the keys the archive published.
    ``expect`` is a checkpoint the auditor kept (number, link): it must still be there, alike, and reached.
    A record verifies as expired only where an announcement of its expiry, in the chain and signed by one of
    ``keys``, names it (see ``records.domain``).

    The whole pass reads the store as it stood at one instant (``projection.snapshot``, on ``ahead``
    connections): a retention round or a chaining round that commits meanwhile is seen entirely or not at all,
    so a consistent archive never shows a break.
    """
    async with rp.snapshot(pool, ahead) as conns:
        db = conns[0]
        if keys is None:
            keys = {k: v for k, (v, _) in (await rp.public_keys(db)).items()}
        previous = await rp.link_before(db, from_seq)
        cps = await rp.checkpoints(db, from_seq, to_seq, limit=10_000_000)
        v = ChainVerifier(from_seq, to_seq, previous, cps, signature_check(keys))
        if cps:
            v.chain_checkpoints(await rp.checkpoint_before(db, min(c.number for c in cps)))
        holds = announcement_check(keys)
        # closed before the snapshot's transactions end: windows still being read are cancelled and awaited first
        async with contextlib.aclosing(rp.verify_rows(conns, from_seq, to_seq, window)) as windows:
            async for rows, covers in windows:
                if not v.feed(signed_only(rows, covers, holds) if _any_expired(rows) else rows):
                    break
        r = v.finish()
        if expect is not None:
            r = check_expected(r, expect[0], expect[1], await rp.checkpoint_numbered(db, expect[0]))
    return r


def _any_expired(rows: Sequence[Any]) -> bool:
    return any(r[3] == "expired" for r in rows)


# --------------------------------------------------------------------------- retention and legal hold


async def policy(svc: Service[ArchiveApp]) -> dict[RecordClass, int]:
    def read(uow: UnitOfWork) -> dict[RecordClass, int]:
        p = uow.find(RetentionPolicy, POLICY_ID)
        return p.periods() if p is not None else dict(DEFAULT_DAYS)

    return await svc.commands.run(read)


async def set_period(
    svc: Service[ArchiveApp], cls: RecordClass, days: int, reason: str, caller: Principal
) -> dict[RecordClass, int]:
    check_period(days)

    def decide(uow: UnitOfWork) -> dict[RecordClass, int]:
        p = uow.find(RetentionPolicy, POLICY_ID)
        if p is None:
            p = RetentionPolicy(id=POLICY_ID)
        p.set_period(cls.value, days, caller.subject, reason, svc.app.clock.now())
        uow.add(p)
        return p.periods()

    return await svc.commands.run(decide)


async def place_hold(svc: Service[ArchiveApp], kind: HoldKind, subject: str, reason: str, caller: Principal) -> (
    LegalHold
):
    """Place a legal hold (or place it again after a release); 409 when one is in force already."""
    return await svc.commands.run(lambda uow: _placed(uow, kind, subject, reason, caller, svc.app.clock.now()))


def _placed(uow: UnitOfWork, kind: HoldKind, subject: str, reason: str, caller: Principal, now: datetime) -> (
    LegalHold
):
    hid = hold_id(kind, hold_subject(kind, subject))
    h = uow.find(LegalHold, hid)
    if h is None:
        h = LegalHold(id=hid, kind=kind.value, subject=subject, placed_by=caller.subject, reason=reason, at=now)
    else:
        h.place_again(caller.subject, reason, now)
    uow.add(h)
    return h


async def release_hold(svc: Service[ArchiveApp], kind: HoldKind, subject: str, reason: str, caller: Principal) -> (
    LegalHold
):
    def decide(uow: UnitOfWork) -> LegalHold:
        h = uow.find(LegalHold, hold_id(kind, hold_subject(kind, subject)))
        if h is None:
            raise NotFound(f"no legal hold was ever placed on {kind.value} {subject}")
        h.release(caller.subject, reason, svc.app.clock.now())
        uow.add(h)
        return h

    return await svc.commands.run(decide)


async def find_hold(svc: Service[ArchiveApp], kind: HoldKind, subject: str) -> LegalHold | None:
    return await svc.commands.run(lambda uow: uow.find(LegalHold, hold_id(kind, hold_subject(kind, subject))))


async def active_holds(svc: Service[ArchiveApp], candidates: Mapping[HoldKind, set[str]]) -> dict[
    HoldKind, frozenset[str]
]:
    """Of the candidate subjects (looked-up form, see ``hold_subject``), those under a legal hold now."""

    def read(uow: UnitOfWork) -> dict[HoldKind, frozenset[str]]:
        out: dict[HoldKind, frozenset[str]] = {}
        for kind, subjects in candidates.items():
            found = set()
            for s in subjects:
                h = uow.find(LegalHold, hold_id(kind, s))
                if h is not None and h.active:
                    found.add(s)
            out[kind] = frozenset(found)
        return out

    return await svc.commands.run(read)


@dataclass
class ExpiryRound:
    matters: int = 0
    records: int = 0
    skipped_unsealed: int = 0


async def expire_due(svc: Service[ArchiveApp], limit: int = 200) -> ExpiryRound:
    """One round of retention: every matter whose records are past their period and under no legal hold.

    Each decision is an ``Expiry`` event first (its id derives from the matter, class, action and first
    record, so a decision is never taken twice), then applied to the store; a decision recorded but not
    applied (a crash between) is applied on the next round from the recorded event.
    """
    now = svc.app.clock.now()
    periods = await policy(svc)
    cutoff = now - timedelta(days=min(periods.values()))
    topic = tickets_topic(svc)
    prefix = svc.settings.topic_prefix
    out = ExpiryRound()
    cursor: rp.Cursor | None = rp.Cursor()
    while cursor is not None:
        page, cursor = await rp.matters_due(svc.pool, topic, cutoff, limit, cursor)
        for mr in page:
            await _expire_matter(svc, mr, periods, now, prefix, out)
    return out


async def _expire_matter(
    svc: Service[ArchiveApp], mr: rp.MatterRecords, periods: dict[RecordClass, int], now: datetime, prefix: str,
    out: ExpiryRound,
) -> None:
    """Expire what is due of one matter (nothing while a legal hold covers it)."""
    m = mr.matter
    subjects: dict[HoldKind, set[str]] = {
        HoldKind.ticket: {m.key} | set(m.ticket_ids),
        HoldKind.incident: set(m.incident_ids) | ({m.key} if not m.is_ticket else set()),
        HoldKind.customer: set(m.customer_ids),
    }
    holds = await active_holds(svc, subjects)
    due = due_expiries(m, mr.records, periods, holds, now, prefix)
    if not due:
        return
    witness: dict[str, tuple[str, str]] = {}
    if m.is_ticket:
        sealed = await _dossier(svc, m.key)
        if sealed is None:
            out.skipped_unsealed += 1
            return
        got = await _witnesses(svc, sealed, m.key, {d.event_id for d in due})
        if got is None:
            log.warning("retention: the dossier of ticket %s does not verify; its records are kept", m.key)
            out.skipped_unsealed += 1
            return
        witness = got
    signer = signer_for(svc)
    await rp.publish_key(svc.pool, signer.key_id, signer.public, now)  # an auditor checks announcements with it
    changed = 0
    groups: dict[tuple[str, str], list[Due]] = {}
    for d in due:
        groups.setdefault((d.record_class.value, d.action), []).append(d)
    for (cls, action), items in groups.items():
        xid = expiry_id(m.key, cls, action, items[0].seq)
        days = periods[RecordClass(cls)]

        x = await svc.commands.run(partial(
            _decide_expiry, xid=xid, key=m.key, is_ticket=m.is_ticket, cls=cls, action=action, items=items,
            days=days, now=now,
            witness={k: list(v) for k, v in witness.items() if k in {d.event_id for d in items}},
        ))
        changes = [
            rp.Change(
                seq=s, event_id=e, action=x.action,
                data=None if x.action == "purged" else _anonymised(mr.bodies.get(s), s in mr.raw),
                witness=tuple(x.witnesses[e]) if e in x.witnesses else None,  # type: ignore[arg-type]
            )
            for s, e in zip(x.seqs, x.event_ids, strict=True)
        ]
        changed += await rp.apply_expiry(
            svc.pool, str(x.id), m.key, x.record_class, x.at, sorted(m.customer_ids), changes,
            rp.Announcing(x.days, svc.settings.service_name, rp.announcements_topic(prefix), signer.key_id,
                          signer.sign),
        )
    out.records += changed
    if changed:
        out.matters += 1  # a matter counts only when an expiry changed something


def _decide_expiry(
    uow: UnitOfWork, *, xid: UUID, key: str, is_ticket: bool, cls: str, action: str, items: list[Due], days: int,
    now: datetime, witness: dict[str, list[str]],
) -> Expiry:
    found = uow.find(Expiry, xid)
    if found is not None:
        return found  # decided before (a crash before it was applied): apply that decision
    x = Expiry(
        id=xid, key=key, record_class=cls, action=action, seqs=[d.seq for d in items],
        event_ids=[d.event_id for d in items], days=days, at=now, witnesses=witness, is_ticket=is_ticket,
    )
    uow.add(x)
    return x


def _anonymised(data: Any, raw: bool = False) -> Any:
    """A body without its personal data. A raw body (bytes jsonb could not hold: a NUL, a lone surrogate) is
    replaced whole: its bytes must not stay, and what remains of it might not be storable as jsonb either."""
    if raw and data is not None:
        return ANONYMISED
    return anonymise(data) if isinstance(data, dict) else (None if data is None else ANONYMISED)


async def _dossier(svc: Service[ArchiveApp], ticket_id: str) -> Dossier | None:
    return await svc.commands.run(lambda uow: uow.find(Dossier, dossier_id(ticket_id)))


async def _witnesses(
    svc: Service[ArchiveApp], d: Dossier, ticket_id: str, expiring: set[str]
) -> dict[str, tuple[str, str]] | None:
    """The dossier chain's digests around each expiring event; None when the dossier does not verify now."""
    events, _ = await ticket_record(svc.pool, tickets_topic(svc), ticket_id)
    known = await rp.witnesses(svc.pool, d.event_ids)
    digests = d.digests(events, known)
    if digests is None:
        return None
    return {e: digests[e] for e in expiring if e in digests}


# --------------------------------------------------------------------------- time travel

OPENING = (
    "tsop.ticket.request-submitted.v1",
)


async def ticket_as_of(svc: Service[ArchiveApp], ticket_id: str, as_of: datetime) -> TicketState:
    topic = tickets_topic(svc)
    events = await rp.ticket_events_until(svc.pool, topic, ticket_id, as_of)
    if not events:
        if await rp.held_anything(svc.pool, topic, ticket_id):
            raise NotFound(f"ticket {ticket_id} did not exist yet at {as_of.isoformat()}", "as_of")
        raise NotFound(f"the archive holds nothing of ticket {ticket_id}")
    return fold(ticket_id, events)


ENDING = tuple(t for t, s in STATUS_OF.items() if s in ENDED)


async def rebuild_backlog(pool: asyncpg.Pool, topic: str, page: int = 25_000) -> tuple[Backlog, int]:
    """Every ticket's state rebuilt from the archived log, in store order; the next page is read while this
    one is applied. Returns the projection and how many events it applied."""
    view, seen = Backlog(), 0
    loads = orjson.loads
    rows = await rp.log_rows(pool, topic, 0, page)
    while rows:
        nxt = asyncio.ensure_future(rp.log_rows(pool, topic, int(rows[-1]["seq"]), page))
        apply = view.apply
        for r in rows:
            body = r["data"]
            apply(r["key"], r["ce_id"], r["ce_type"], r["ce_time"], loads(body) if body is not None else None)
        seen += len(rows)
        rows = await nxt
    return view, seen


async def backlog_as_of(svc: Service[ArchiveApp], as_of: datetime) -> list[tuple[str, datetime]]:
    rows = await rp.backlog_at(svc.pool, tickets_topic(svc), as_of, OPENING, ENDING)
    return [(r["key"], r["opened_at"]) for r in rows]
