"""Intake's commands (commands.py) on an in-memory event store: channels, review, queue, changes, cancellation."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from uuid import UUID, uuid4

import pytest

from tsop_events.auth import Principal, Role, hash_token
from tsop_events.clock import ManualClock, SystemClock
from tsop_events.commands import Commands
from tsop_events.errors import TooMany
from tsop_events.schemas import parse_event
from tsop_events.store import GroupCommit
from tsop_intake import commands as service
from tsop_intake.commands import IntakeApp
from tsop_intake.views import DEADLINE_SAFETY_SECONDS, expire_pending, until_next_deadline
from tsop_intake.wire import WIRE as to_wire

NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
ADMIN = Principal("ops", frozenset({Role.admin}))
AGENT = Principal("alice", frozenset({Role.agent}))
AUDITOR = Principal("audit", frozenset({Role.auditor}))


class FakePool:
    """The read model's downstream statuses (what the rest of the platform did with a ticket)."""

    def __init__(self) -> None:
        self.status: dict[UUID, str] = {}
        self.holds: list[dict[str, Any]] = []  # legal holds the archive announced (rows of covering_holds)

    async def fetchval(self, _sql: str, ticket: UUID) -> str | None:
        return self.status.get(ticket)

    async def fetch(self, _sql: str, customer_id: str, tickets: list[str]) -> list[dict[str, Any]]:
        return [h for h in self.holds if (h["kind"], h["subject"]) == ("customer", customer_id)
                or (h["kind"] == "ticket" and h["subject"] in tickets)]


class Env:
    def __init__(self) -> None:
        self.clock = ManualClock(NOW)
        self.app = IntakeApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=self.clock)
        self.pool = FakePool()
        committer = GroupCommit(self.app)
        self.runtime: Any = SimpleNamespace(app=self.app, committer=committer, commands=Commands(self.app, committer),
                                            pool=self.pool, settings=None)

    async def channel(self, kind: str = "web", name: str = "portal", **kw: Any) -> Principal:
        _, _, token = await service.register_channel(self.runtime, name, kind, kw.get("callback_url"),
                                                     kw.get("limit"), ADMIN)
        found = self.app.index.principal(hash_token(token))
        assert found is not None
        return found


def fields(**kw: Any) -> dict[str, Any]:
    f: dict[str, Any] = dict(customer_id="c1", customer_tier="gold", region="north",
                             service_type="broadband.fault_repair", description="No internet since the storm",
                             location={"address": "1 Main Street"})
    f.update(kw)
    return f


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_channels_get_hashed_revocable_credentials_resolved_to_a_channel_principal() -> None:
    async def go() -> None:
        env = Env()
        ch, cred, token = await service.register_channel(env.runtime, "shop", "onsite", None, None, ADMIN)
        assert token.startswith("tsop_ch_")
        assert all(c.token_hash != token for c in ch.credentials.values())  # only the hash is kept
        p = env.app.index.principal(hash_token(token))
        assert p is not None and p.roles == {Role.channel} and p.channel_id == str(ch.id)
        _, _, token2 = await service.issue_credential(env.runtime, ch.id, ADMIN)
        await service.revoke_credential(env.runtime, ch.id, cred, ADMIN)
        assert env.app.index.principal(hash_token(token)) is None
        assert env.app.index.principal(hash_token(token2)) is not None
        with pytest.raises(service.Conflict):
            await service.revoke_credential(env.runtime, ch.id, cred, ADMIN)
        with pytest.raises(service.NotFound):
            await service.revoke_credential(env.runtime, ch.id, "nope", ADMIN)
        with pytest.raises(service.NotFound):
            await service.issue_credential(env.runtime, uuid4(), ADMIN)

    run(go())


def test_the_channel_identity_comes_from_the_credential() -> None:
    async def go() -> None:
        env = Env()
        hotline = await env.channel("hotline", callback_url="https://desk.example/cb")
        r, new = await service.submit(env.runtime, fields(), hotline, None)
        assert new and r.channel == "hotline" and r.channel_id == hotline.channel_id
        assert r.callback_url == "https://desk.example/cb"  # the channel's registered callback by default
        with pytest.raises(service.InvalidInput) as err:
            await service.submit(env.runtime, fields(channel="web"), hotline, None)
        assert err.value.field == "channel"
        with pytest.raises(service.InvalidInput) as staff:
            await service.submit(env.runtime, fields(customer_id="c2"), ADMIN, None)
        assert staff.value.field == "channel"
        by_staff, _ = await service.submit(env.runtime, fields(customer_id="c2", channel="onsite"), ADMIN, None)
        assert by_staff.channel == "onsite" and by_staff.channel_id is None

    run(go())


def test_bad_fields_name_the_field() -> None:
    async def go() -> None:
        env = Env()
        web = await env.channel()
        cases = [
            (fields(bogus=1), "bogus"),
            (fields(customer_tier="platinum"), "customer_tier"),
            (fields(time_requirement={"deadline": "2026-06-02T10:00:00"}), "time_requirement.deadline"),
            (fields(details={"Bad Key": 1}), "details.Bad Key"),
            (fields(location={"address": "x", "floor": 3}), "location.floor"),
            (fields(region="r" * 65), "region"),
            (fields(time_requirement={"deadline": "9999-12-31T23:59:59-14:00"}), "time_requirement.deadline"),
        ]
        for f, field in cases:
            with pytest.raises(service.InvalidInput) as err:
                await service.submit(env.runtime, f, web, None)
            assert field in [e["field"] for e in err.value.errors], (field, err.value.errors)
            assert err.value.status == 422
        with pytest.raises(service.UnknownServiceType) as unknown:
            await service.submit(env.runtime, fields(service_type="fax.repair"), web, None)
        assert unknown.value.field == "service_type" and "broadband.fault_repair" in unknown.value.extra["known"]

    run(go())


def test_idempotency_keys_are_per_channel_and_bound_to_the_body() -> None:
    async def go() -> None:
        env = Env()
        web, app_ch = await env.channel("web", "w"), await env.channel("app", "a")
        first, new1 = await service.submit(env.runtime, fields(), web, "k1")
        again, new2 = await service.submit(env.runtime, fields(), web, "k1")
        assert new1 and not new2 and again.id == first.id
        other, new3 = await service.submit(env.runtime, fields(customer_id="c9"), app_ch, "k1")
        assert new3 and other.id != first.id
        with pytest.raises(service.IdempotencyConflict):
            await service.submit(env.runtime, fields(description="Something else entirely"), web, "k1")
        # a restarted process (empty index) still answers the replay from the store
        env.app.index = type(env.app.index)(env.app)
        replay, new4 = await service.submit(env.runtime, fields(), web, "k1")
        assert not new4 and replay.id == first.id

    run(go())


def test_pending_information_is_completed_by_its_channel_and_reviewed_again() -> None:
    async def go() -> None:
        env = Env()
        web, other = await env.channel("web", "w"), await env.channel("app", "a")
        r, _ = await service.submit(env.runtime, fields(location=None), web, None)
        assert r.status == "pending_information" and r.pending is not None
        assert r.pending["missing"] == [{"field": "location.address", "reason": "required for broadband.fault_repair"}]
        with pytest.raises(service.Forbidden):
            await service.update(env.runtime, r.id, {"location": {"address": "2 High St"}}, other)
        with pytest.raises(service.InvalidChange) as fixed:
            await service.update(env.runtime, r.id, {"customer_id": "x"}, web)
        assert fixed.value.field == "customer_id"
        with pytest.raises(service.NotFound):
            await service.update(env.runtime, uuid4(), {"description": "whatever it is"}, web)
        done = await service.update(env.runtime, r.id, {"location": {"address": "2 High St"}}, web)
        assert done.status == "accepted" and done.decision is not None and done.decision["priority"] == 1
        with pytest.raises(service.InvalidChange):
            await service.update(env.runtime, r.id, {"region": "south"}, web)

    run(go())


def test_the_completion_deadline_cancels_with_the_reason() -> None:
    async def go() -> None:
        env = Env()
        web = await env.channel()
        r, _ = await service.submit(env.runtime, fields(location=None), web, None)
        assert await expire_pending(env.runtime) == 0
        env.clock.advance(timedelta(hours=72, seconds=1))
        assert await expire_pending(env.runtime) == 1
        after = env.app.get_request(r.id)
        assert after is not None and after.status == "cancelled"
        assert after.cancellation == {"reason_code": "information_deadline_passed",
                                      "reason": f"still missing at {(NOW + timedelta(hours=72)).isoformat()}: "
                                                "location.address", "cancelled_by": "rules"}
        assert await expire_pending(env.runtime) == 0

    run(go())


class _At(SystemClock):
    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at


def test_the_completion_timer_sleeps_until_the_earliest_deadline_not_a_second() -> None:
    async def go() -> None:
        env = Env()
        web = await env.channel()
        assert until_next_deadline(env.app) == 1.0, "an injected clock is looked at each second"
        env.app.clock = _At(NOW)
        assert until_next_deadline(env.app) == DEADLINE_SAFETY_SECONDS, "nothing pending: the safety net"
        env.app.clock = env.clock
        await service.submit(env.runtime, fields(location=None), web, None)  # due at NOW + 72 h
        env.app.index.refresh()
        env.app.clock = _At(NOW + timedelta(hours=72) - timedelta(seconds=5))
        assert 5.0 < until_next_deadline(env.app) < 5.1
        env.app.clock = _At(NOW + timedelta(hours=72, seconds=3))
        assert 0.0 < until_next_deadline(env.app) < 0.1, "past due: at once"
        env.app.clock = _At(NOW)
        assert until_next_deadline(env.app) == DEADLINE_SAFETY_SECONDS, "far off: the safety net, then again"

    run(go())


def test_duplicates_are_linked_until_the_first_is_closed_downstream() -> None:
    async def go() -> None:
        env = Env()
        web = await env.channel()
        first, _ = await service.submit(env.runtime, fields(location={"address": "1 Main St."}), web, None)
        twin, _ = await service.submit(env.runtime, fields(location={"address": "1  MAIN st"}), web, None)
        assert twin.status == "linked" and twin.duplicate_of == str(first.id)
        elsewhere, _ = await service.submit(env.runtime, fields(location={"address": "9 Other Rd"}), web, None)
        assert elsewhere.status == "accepted"
        env.pool.status[first.id] = "closed"
        later, _ = await service.submit(env.runtime, fields(location={"address": "1 Main St"}), web, None)
        assert later.status == "accepted"

    run(go())


def test_concurrent_twins_one_accepted_one_linked() -> None:
    async def go() -> None:
        env = Env()
        web = await env.channel()
        results = await asyncio.gather(*(service.submit(env.runtime, fields(), web, None) for _ in range(5)))
        statuses = sorted(r.status for r, _ in results)
        assert statuses == ["accepted", "linked", "linked", "linked", "linked"]

    run(go())


def test_over_its_limit_a_channel_gets_429_with_retry_after_and_nothing_is_recorded() -> None:
    async def go() -> None:
        env = Env()
        web = await env.channel(limit=3)
        for i in range(3):
            r, _ = await service.submit(env.runtime, fields(customer_id=f"c{i}"), web, None)
            assert r.decision is not None and r.decision["reason_code"] == "rules_passed"
            env.clock.advance(timedelta(seconds=10))
        stored = env.app.recorder.max_notification_id()
        with pytest.raises(TooMany) as refused:
            await service.submit(env.runtime, fields(customer_id="c9"), web, "key-1")
        assert refused.value.status == 429 and refused.value.field == "channel"
        # the first of the three was 30 s ago: the window frees a slot in 30 s
        assert refused.value.retry_after == 30
        assert env.app.recorder.max_notification_id() == stored  # no event recorded
        # concurrent submissions at the limit: exactly the free slots pass
        env.clock.advance(timedelta(seconds=31))  # the first has left the window, two remain: one free slot
        results = await asyncio.gather(
            *(service.submit(env.runtime, fields(customer_id=f"d{i}"), web, None) for i in range(4)),
            return_exceptions=True,
        )
        assert sorted(type(r).__name__ for r in results) == ["TooMany"] * 3 + ["tuple"]
        # unlimited by default: the catalogue sets no channel limit, a channel without its own has none
        assert env.app.catalogue.limits.channel_per_minute is None
        free = await env.channel("app", "free")
        for i in range(50):
            await service.submit(env.runtime, fields(customer_id=f"f{i}", location={"address": f"{i} Lane"}), free,
                                 None)

    run(go())


def test_abuse_limit_counts_per_customer() -> None:
    async def go() -> None:
        env = Env()
        loud = await env.channel("app", "a")
        statuses = []
        for i in range(11):
            f = fields(customer_id="loud", location={"address": f"{i} Loud Lane"})
            r, _ = await service.submit(env.runtime, f, loud, None)
            statuses.append(r.status)
        assert statuses == ["accepted"] * 10 + ["queued_for_review"]

    run(go())


def test_agents_decide_the_queue_with_catalogued_reason_codes() -> None:
    async def go() -> None:
        env = Env()
        web = await env.channel()
        q, _ = await service.submit(env.runtime, fields(service_type="mobile.cancellation"), web, None)
        assert q.status == "queued_for_review" and q.id in env.app.index.queued
        with pytest.raises(service.UnknownReasonCode) as bad:
            await service.decide(env.runtime, q.id, True, "because", None, AGENT)
        assert "agent_verified" in bad.value.extra["known"]
        with pytest.raises(service.UnknownReasonCode):
            await service.decide(env.runtime, q.id, False, "retention_done", None, AGENT)  # an accept code
        done = await service.decide(env.runtime, q.id, False, "not_eligible", "contract runs until 2027", AGENT)
        assert done.status == "rejected" and done.decision == {
            "decision": "rejected", "reason_code": "not_eligible", "reason": "contract runs until 2027",
            "decided_by": "alice"}
        assert q.id not in env.app.index.queued
        with pytest.raises(service.Conflict):
            await service.decide(env.runtime, q.id, True, "agent_verified", None, AGENT)

    run(go())


def test_cancellation_needs_a_catalogued_code_and_an_open_request() -> None:
    async def go() -> None:
        env = Env()
        web, other = await env.channel("web", "w"), await env.channel("app", "a")
        r, _ = await service.submit(env.runtime, fields(), web, None)
        with pytest.raises(service.UnknownReasonCode):
            await service.cancel(env.runtime, r.id, "meh", "", web)
        with pytest.raises(service.Forbidden):
            await service.cancel(env.runtime, r.id, "withdrawn_by_channel", "", other)
        env.pool.status[r.id] = "resolved"
        with pytest.raises(service.Conflict):
            await service.cancel(env.runtime, r.id, "withdrawn_by_channel", "", web)
        env.pool.status.pop(r.id)
        c = await service.cancel(env.runtime, r.id, "withdrawn_by_customer", "", web)
        assert c.cancellation == {"reason_code": "withdrawn_by_customer",
                                  "reason": "the customer withdrew the application", "cancelled_by": "channel:w"}
        with pytest.raises(service.Conflict):
            await service.cancel(env.runtime, r.id, "withdrawn_by_customer", "", web)
        assert (await service.get(env.runtime, r.id, AUDITOR)).status == "cancelled"

    run(go())


def test_shares_of_self_service_and_manual_channels() -> None:
    async def go() -> None:
        env = Env()
        web, app_ch, hotline = await env.channel("web", "w"), await env.channel("app", "a"), await env.channel(
            "hotline", "h")
        for i, ch in enumerate([web, web, app_ch, app_ch, app_ch, web, app_ch, hotline, hotline, hotline]):
            await service.submit(env.runtime, fields(customer_id=f"c{i}"), ch, None)
        s = env.app.index.shares()
        assert s["submitted"] == 10 and s["self_service_share"] == 0.7 and s["manual_share"] == 0.3
        assert s["by_channel_kind"] == {"web": 3, "app": 4, "hotline": 3}
        assert s["review_outcomes"] == {"accepted_by_rules": 10}

    run(go())


def test_every_request_event_maps_to_a_valid_wire_event_with_its_reason() -> None:
    async def go() -> None:
        env = Env()
        web = await env.channel()
        p, _ = await service.submit(env.runtime, fields(location=None, details={"note": "gate code 12"}), web, "x")
        await service.update(env.runtime, p.id, {"location": {"address": "2 High St"}}, web)
        q, _ = await service.submit(env.runtime, fields(service_type="mobile.cancellation"), web, None)
        await service.decide(env.runtime, q.id, True, "retention_done", None, AGENT)
        await service.submit(env.runtime, fields(location={"address": "2 High St"}), web, None)
        c, _ = await service.submit(env.runtime, fields(customer_id="z"), web, None)
        await service.cancel(env.runtime, c.id, "entered_in_error", "typo", web)
        events = [env.app.mapper.to_domain_event(n) for n in env.app.recorder.select_notifications(1, 100)]
        outs = [o for o in map(to_wire, events) if o is not None]
        for o in outs:  # what the relay publishes parses as what consumers expect
            assert parse_event(o.event.event_type, o.event.model_dump(mode="json")) == o.event
        channel_events = [o.event for o in outs if o.event.event_type.startswith("tsop.channel.")]
        # the channel registry goes to the channels topic: its registration and credential, hash only
        assert [e.event_type for e in channel_events] == [
            "tsop.channel.registered.v1", "tsop.channel.credential-issued.v1"]
        issued = channel_events[1].model_dump()
        assert len(issued["token_sha256"]) == 64 and "token" not in issued
        types = [o.event.event_type.split(".")[2] for o in outs if not o.event.event_type.startswith("tsop.channel.")]
        assert types == [
            "request-submitted", "request-pending-information", "request-updated", "request-accepted",
            "request-submitted", "request-queued-for-review", "request-accepted",
            "request-submitted", "request-linked",
            "request-submitted", "request-accepted", "request-cancelled",
        ]
        outs = [o for o in outs if not o.event.event_type.startswith("tsop.channel.")]
        by_type = {o.event.event_type.split(".")[2]: o.event for o in outs}
        assert by_type["request-cancelled"].model_dump()["reason_code"] == "entered_in_error"
        submitted = outs[0].event.model_dump()
        assert submitted["channel_id"] == web.channel_id and submitted["details"] == {"note": "gate code 12"}
        agent_accept = [o.event.model_dump() for o in outs if o.event.event_type.endswith("accepted.v1")][1]
        assert agent_accept["decided_by"] == "alice" and agent_accept["reason_code"] == "retention_done"

    run(go())


def test_what_no_event_can_carry_is_refused_naming_the_field() -> None:
    async def go() -> None:
        env = Env()
        web = await env.channel()
        with pytest.raises(service.InvalidInput) as text:
            await service.submit(env.runtime, fields(description="broken \ud800 line, no signal"), web, None)
        assert text.value.field == "description"
        with pytest.raises(service.InvalidInput) as number:
            await service.submit(env.runtime, fields(details={"n": 2**70}), web, None)
        assert number.value.field == "details.n"
        r, _ = await service.submit(env.runtime, fields(location=None), web, None)
        with pytest.raises(service.InvalidInput) as change:
            await service.update(env.runtime, r.id, {"special_needs": "\udfff"}, web)
        assert change.value.field == "special_needs"
        with pytest.raises(service.InvalidInput):
            await service.cancel(env.runtime, r.id, "entered_in_error", "\ud800", web)
        with pytest.raises(service.InvalidInput):
            await service.register_channel(env.runtime, "bad \ud800", "web", None, None, ADMIN)

    run(go())


def test_concurrent_retries_with_one_key_give_one_request() -> None:
    async def go() -> None:
        env = Env()
        web = await env.channel()
        results = await asyncio.gather(*(service.submit(env.runtime, fields(), web, "same-key") for _ in range(5)))
        assert len({r.id for r, _ in results}) == 1
        assert sorted(new for _, new in results) == [False, False, False, False, True]

    run(go())


def test_callbacks_to_internal_addresses_are_refused_naming_the_field_and_nothing_is_stored() -> None:
    async def go() -> None:
        env = Env()
        for url in ("http://127.0.0.1:8001/x", "http://169.254.169.254/latest", "http://2130706433/",
                    "http://10.0.0.1/cb", "http://[::ffff:192.168.0.1]/cb", "http://localhost./cb"):
            before = env.app.recorder.max_notification_id()
            with pytest.raises(service.InvalidInput) as bad:
                await service.register_channel(env.runtime, "evil", "web", url, None, ADMIN)
            assert bad.value.field == "callback_url" and bad.value.status == 422
            web = await env.channel(name=f"ok-{url}")
            before = env.app.recorder.max_notification_id()
            with pytest.raises(service.InvalidInput) as bad:
                await service.submit(env.runtime, fields(callback_url=url), web, None)
            assert bad.value.field == "callback_url"
            assert env.app.recorder.max_notification_id() == before
        ch, _, _ = await service.register_channel(env.runtime, "ok", "web", None, None, ADMIN)
        with pytest.raises(service.InvalidInput):
            await service.change_channel(env.runtime, ch.id, {"callback_url": "http://[fe80::1]/"}, ADMIN)
        web = await env.channel(name="upd")
        r, _ = await service.submit(env.runtime, fields(), web, None)
        with pytest.raises(service.InvalidInput):
            await service.update(env.runtime, r.id, {"callback_url": "http://192.168.1.1/"}, web)

    run(go())
