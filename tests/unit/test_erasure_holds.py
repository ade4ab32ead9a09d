"""Lawful erasure against legal holds (docs/erasure.md): the archive announces its holds on the customers topic,
and intake refuses (409, naming each hold, recording the refusal) an erasure a hold covers."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest

from tests.unit.test_erasure_leftovers import ADDRESS, _index_text
from tests.unit.test_intake_service import AUDITOR, NOW, Env, fields
from tsop_archive.records.domain import HoldKind, LegalHold, hold_id, hold_subject
from tsop_archive.wire import WIRE as archive_wire
from tsop_events.errors import Conflict
from tsop_events.personal import ERASED
from tsop_events.schemas import CustomerErasureRefused, LegalHoldPlaced, LegalHoldPlacedAgain, LegalHoldReleased
from tsop_intake import commands as service
from tsop_intake.domain import CustomerErasure
from tsop_intake.wire import WIRE as to_wire

AT = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def test_the_archive_announces_each_hold_decision_under_the_holds_id() -> None:
    for kind, subject in ((HoldKind.customer, "cust-7"), (HoldKind.ticket, "5b3c0c1e-0000-4000-8000-000000000001"),
                          (HoldKind.incident, "inc-9")):
        hid = hold_id(kind, hold_subject(kind, subject))
        h = LegalHold(id=hid, kind=kind.value, subject=subject, placed_by="audit", reason="inquiry", at=AT)
        h.release("audit", "closed", AT)
        h.place_again("sup", "reopened", AT)
        out = [archive_wire(e) for e in h.collect_events()]
        assert [type(o.event) for o in out if o] == [LegalHoldPlaced, LegalHoldReleased, LegalHoldPlacedAgain]
        placed = out[0]
        assert placed is not None and isinstance(placed.event, LegalHoldPlaced)
        assert (placed.event.kind, placed.event.subject, placed.event.reason) == (kind.value, subject, "inquiry")
        # one key for the hold's whole history: its decisions arrive in order
        assert {o.event.key() for o in out if o} == {str(hid)}


def _hold(kind: str, subject: str) -> dict[str, Any]:
    return {"hold_id": f"h-{kind}-{subject}", "kind": kind, "subject": subject, "reason": "regulator's inquiry",
            "placed_by": "audit", "placed_at": NOW, "ticket_id": None}


def test_an_erasure_a_legal_hold_covers_is_refused_naming_the_hold_and_changes_nothing() -> None:
    async def go() -> None:
        env = Env()
        ch = await env.channel("web")
        mine, _ = await service.submit(
            env.runtime, fields(customer_id="cust-h", location={"address": ADDRESS}), ch, None)
        await service.submit(env.runtime, fields(customer_id="cust-other", location={"address": "9 Road"}), ch, None)
        for hold in (_hold("customer", "cust-h"), _hold("ticket", str(mine.id))):
            env.pool.holds = [hold, _hold("customer", "cust-other")]
            before = len(env.app.recorder.select_notifications(1, 10_000))
            with pytest.raises(Conflict) as refused:
                await service.request_erasure(env.runtime, "cust-h", "consent_withdrawn", "case 3", AUDITOR)
            assert hold["subject"] in refused.value.reason and hold["kind"] in refused.value.reason
            assert [h["hold_id"] for h in refused.value.extra["holds"]] == [hold["hold_id"]]
            # nothing erased, nothing forgotten: only the refusal is recorded, and goes on the customers topic
            env.app.forget_opened()
            assert env.app.repository.get(mine.id).location["address"] == ADDRESS
            new = env.app.recorder.select_notifications(1, 10_000)[before:]
            assert CustomerErasure.id_for("cust-h") not in {n.originator_id for n in new}
            assert [n.originator_id for n in new] == [UUID(refused.value.extra["refusal_id"])]
            out = to_wire(env.app.sealed_event(new[0]))
            assert out is not None and isinstance(out.event, CustomerErasureRefused)
            assert (out.event.customer_id, out.event.legal_basis, out.event.requested_by) == (
                "cust-h", "consent_withdrawn", AUDITOR.subject)
            assert [(h.kind, h.subject) for h in out.event.holds] == [(hold["kind"], hold["subject"])]
            assert out.event.key() == "cust-h"
            assert "erasure lane" in _index_text(env.app.index)
        env.pool.holds = [_hold("customer", "cust-other")]  # released
        _, created, destroyed = await service.request_erasure(
            env.runtime, "cust-h", "consent_withdrawn", "case 3", AUDITOR)
        assert created and destroyed == 1
        env.app.forget_opened()
        assert env.app.repository.get(mine.id).location["address"] == ERASED

    asyncio.run(go())


def test_a_hold_on_a_ticket_completed_with_its_customer_later_covers_that_customer() -> None:
    async def go() -> None:
        env = Env()
        ch = await env.channel("web")
        # a TMF621-style application without its customer yet: pending information
        bare, _ = await service.submit(env.runtime, fields(customer_id=""), ch, None)
        assert bare.status == "pending_information"
        env.pool.holds = [_hold("ticket", str(bare.id))]
        assert await service.legal_holds(env.runtime, "cust-late") == []
        await service.update(env.runtime, bare.id, {"customer_id": "cust-late"}, ch)
        assert [h["subject"] for h in await service.legal_holds(env.runtime, "cust-late")] == [str(bare.id)]
        with pytest.raises(Conflict):
            await service.request_erasure(env.runtime, "cust-late", "consent_withdrawn", "case 4", AUDITOR)

    asyncio.run(go())
