"""What an erasure must leave nothing of besides the sealed data (docs/erasure.md): idempotency fingerprints that
could be recomputed from the customer's plaintext (a phone number, an address: few enough to try them all), and
in-memory indexes built from the customer's personal fields (intake's duplicate index)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from tests.unit.test_intake_service import AUDITOR, NOW, Env, fields
from tsop_events.commands import Commands, Idempotency, IdempotencyRecord, UnitOfWork
from tsop_events.consumer import Incoming
from tsop_events.envelope import wrap
from tsop_events.personal import MemoryKeyring, keyed_digest
from tsop_events.runtime import ErasureListener
from tsop_events.schemas import CustomerDataErased
from tsop_events.store import GroupCommit
from tsop_intake import commands as service
from tsop_intake.commands import IntakeApp
from tsop_intake.views import IntakeIndex

PHONE = "+86 138 0013 8000"
ADDRESS = "17 Erasure Lane"


def _bodies(**kw: Any) -> Iterator[bytes]:
    """Serialisations of what a submission carries that an attacker holding the plaintext would try."""
    f = fields(customer_id="cust-e", description=f"call me on {PHONE}", location={"address": ADDRESS}, **kw)
    for body in (f, {**f, "location": {"address": ADDRESS, "postcode": None, "site_id": None}}):
        yield orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    parsed = service.FieldsIn.model_validate(f).model_dump(mode="json")
    parsed["location"] = {"address": ADDRESS, "postcode": None, "site_id": None}
    for channel in ("web", "app", None):
        for callback in (None,):
            yield orjson.dumps({**parsed, "channel": channel, "callback_url": callback}, option=orjson.OPT_SORT_KEYS)


def _linkable(fingerprint: str, ring: MemoryKeyring, bodies: list[bytes]) -> bool:
    """Whether the fingerprint can be matched with the plaintext: a plain hash, a sealed hash opened, or an HMAC,
    under any key the keyring still holds (the erased customer's are destroyed)."""
    live = [k for _, _, k in ring._keys.values()]
    opened = ring.open(fingerprint)  # a sealed fingerprint opens while its key lives
    for body in bodies:
        if hashlib.sha256(body).hexdigest() in {fingerprint, opened}:
            return True
        if any(fingerprint in {keyed_digest(k, body), hmac.new(k, body, hashlib.sha256).hexdigest()} for k in live):
            return True
    return False


def _stored_fingerprints(app: IntakeApp) -> list[str]:
    found = []
    for n in app.recorder.select_notifications(1, 10_000):
        state = orjson.loads(bytes(n.state))
        if isinstance(state, dict) and state.get("fingerprint"):
            found.append(str(state["fingerprint"]))
    return found


def test_a_submissions_fingerprint_cannot_be_linked_to_the_customer_after_erasure() -> None:
    async def go() -> None:
        env = Env()
        ch = await env.channel("web")
        body = fields(customer_id="cust-e", description=f"call me on {PHONE}", location={"address": ADDRESS})
        first, created = await service.submit(env.runtime, body, ch, "key-1")
        assert created
        # the fingerprint still does its work: the same body again is a replay, another body is refused
        again, created = await service.submit(env.runtime, body, ch, "key-1")
        assert not created and again.id == first.id
        with pytest.raises(service.IdempotencyConflict):
            await service.submit(env.runtime, {**body, "description": "something else"}, ch, "key-1")

        stored = _stored_fingerprints(env.app)
        assert stored, "the submission's fingerprint is stored with it"
        ring = env.app.keyring
        assert isinstance(ring, MemoryKeyring)
        # the check can find what it looks for: while the ticket's key lives, the plaintext links the fingerprint
        assert all(_linkable(fp, ring, list(_bodies())) for fp in stored)
        await service.request_erasure(env.runtime, "cust-e", "consent_withdrawn", "case 1", AUDITOR)
        leaked = [fp for fp in _stored_fingerprints(env.app) if _linkable(fp, ring, list(_bodies()))]
        assert leaked == []
        # a retry of the erased submission is answered with the (erased) request, not refused nor recorded again
        replay, created = await service.submit(env.runtime, body, ch, "key-1")
        assert not created and replay.id == first.id

    asyncio.run(go())


def test_an_idempotency_records_fingerprint_is_keyed_by_the_subjects_data_key() -> None:
    ring = MemoryKeyring()
    body = {"description": f"call me on {PHONE}", "address": ADDRESS}
    plain = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    key = Idempotency.of("complaint:agent", "k1", body, keyring=ring, subject="complaint-1", customer="cust-e")
    same = Idempotency.of("complaint:agent", "k1", dict(body), keyring=ring, subject="complaint-1", customer="cust-e")
    other = Idempotency.of("complaint:agent", "k1", {**body, "address": "elsewhere"}, keyring=ring,
                           subject="complaint-1", customer="cust-e")
    assert key.fingerprint == same.fingerprint != other.fingerprint  # it still tells bodies apart
    assert _linkable(key.fingerprint, ring, [plain])  # (before the erasure, the live key links it: the check works)
    ring.erase("cust-e")
    assert not _linkable(key.fingerprint, ring, [plain])
    # after the erasure no fingerprint can be made for the subject: a retry replays, it is not refused
    assert Idempotency.of("complaint:agent", "k1", body, keyring=ring, subject="complaint-1",
                          customer="cust-e").erased


def test_run_once_replays_a_retry_whose_subject_was_erased() -> None:
    async def go() -> None:
        app = IntakeApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
        commands = Commands(app, GroupCommit(app))
        ring = app.keyring
        calls: list[int] = []

        def decide(_: UnitOfWork) -> str:
            calls.append(1)
            return "answer"

        def once() -> Idempotency:
            return Idempotency.of("s", "k", {"note": PHONE}, keyring=ring, subject="subj", customer="cust-e")

        assert await commands.run_once(once(), decide, str, lambda _u, kept: kept) == ("answer", False)
        ring.erase("cust-e")
        assert await commands.run_once(once(), decide, str, lambda _u, kept: kept) == ("answer", True)
        assert calls == [1]
        record = app.repository.get(IdempotencyRecord.create_id("s", "k"))
        assert not _linkable(record.fingerprint, ring, [orjson.dumps({"note": PHONE}, option=orjson.OPT_SORT_KEYS)])

    asyncio.run(go())


def _index_text(index: IntakeIndex) -> str:
    return repr((index.open, index.finished, index.queued, index.by_key)).lower()


def test_the_duplicate_index_forgets_an_erased_customers_location_at_once() -> None:
    async def go() -> None:
        env = Env()
        ch = await env.channel("web")
        body = fields(customer_id="cust-e", location={"address": ADDRESS})
        kept = fields(customer_id="cust-k", location={"address": "3 Kept Road"})
        first, _ = await service.submit(env.runtime, body, ch, None)
        other, _ = await service.submit(env.runtime, kept, ch, None)
        assert "erasure lane" in _index_text(env.app.index)
        twin, _ = await service.submit(env.runtime, body, ch, None)
        assert twin.duplicate_of == str(first.id)  # the index does its work before the erasure

        await service.request_erasure(env.runtime, "cust-e", "consent_withdrawn", "case 2", AUDITOR)
        assert "erasure lane" not in _index_text(env.app.index)
        assert "kept road" in _index_text(env.app.index)  # another customer's entries stay
        # the live index holds what one rebuilt from the log would: nothing more of the erased customer
        env.app.forget_opened()
        rebuilt = IntakeIndex(env.app)
        rebuilt.refresh()
        assert env.app.index.by_key == rebuilt.by_key
        assert {t: r.location for t, r in env.app.index.open.items()} == {
            t: r.location for t, r in rebuilt.open.items()}
        again, _ = await service.submit(env.runtime, kept, ch, None)
        assert again.duplicate_of == str(other.id)

    asyncio.run(go())


def test_every_process_forgets_an_erased_customers_index_entries_when_it_hears_the_erasure() -> None:
    async def go() -> None:
        env = Env()
        ch = await env.channel("web")
        await service.submit(env.runtime, fields(customer_id="cust-e", location={"address": ADDRESS}), ch, None)
        await service.submit(env.runtime, fields(customer_id="cust-k", location={"address": "3 Kept Road"}), ch, None)
        assert "erasure lane" in _index_text(env.app.index)
        # another instance destroyed the keys; this process hears CustomerDataErased on the customers topic
        env.app.keyring.erase("cust-e")
        forgotten: list[set[str]] = []
        listener = ErasureListener(lambda customers: (forgotten.append(set(customers)),
                                                      env.app.forget_erased(customers)))
        erased = CustomerDataErased(customer_id="cust-e", legal_basis="consent_withdrawn", requested_by="dpo",
                                    erased_at=NOW)
        env_ = wrap(erased, source="intake", event_id="e1")
        await listener.process("ep", "tsop.customers", 0, [Incoming("tsop.customers", 0, 0, "cust-e", env_, erased)], 0)
        assert forgotten == [{"cust-e"}]
        assert "erasure lane" not in _index_text(env.app.index)
        assert "kept road" in _index_text(env.app.index)
        # heard again (a listener restarted reads the topic from its start): nothing more to forget, no harm
        await listener.process("ep", "tsop.customers", 0, [Incoming("tsop.customers", 0, 0, "cust-e", env_, erased)], 0)
        assert forgotten == [{"cust-e"}]

    asyncio.run(go())

