"""One relay per service publishes its outbox: two instances do not publish every event twice.

Two runtimes of one service share its database. Only the leader publishes;
when it stops (its leadership connection closes, as when its process dies),
the standby takes over from the recorded position and nothing is lost.
"""

from __future__ import annotations

from collections import Counter

from tests.integration.conftest import eventually
from tests.integration.test_bus_contract import STAFF, read_topic, request_fields
from tsop_events.runtime import Runtime
from tsop_events.settings import ServiceSettings
from tsop_events.topics import Topic
from tsop_intake import service as intake_service
from tsop_intake.application import IntakeApp
from tsop_intake.application import to_wire as intake_wire


async def test_one_instance_publishes_and_a_standby_takes_over(settings: ServiceSettings) -> None:
    first = Runtime(settings, app_factory=lambda s: IntakeApp(s), mapper=intake_wire)
    second = Runtime(settings, app_factory=lambda s: IntakeApp(s), mapper=intake_wire)
    await first.start()
    await second.start()
    stopped: Runtime | None = None
    try:
        assert first.relay is not None and second.relay is not None
        relays = (first.relay, second.relay)

        async def one_leader() -> bool:
            return sum(r.leader for r in relays) == 1

        await eventually(one_leader, 20, "one leader")
        leader, standby = (first, second) if first.relay.leader else (second, first)
        for i in range(5):
            await intake_service.submit(first, request_fields(i), STAFF, None)
            await intake_service.submit(second, request_fields(100 + i), STAFF, None)
        records = await read_topic(settings, Topic.tickets, 20)
        ids = Counter(dict(r.headers)["ce_id"] for r in records)  # type: ignore[attr-defined]
        assert len(ids) == 20 and set(ids.values()) == {1}, "each event published once"

        await leader.stop()
        stopped = leader
        assert standby.relay is not None
        await eventually(lambda: _true(standby.relay is not None and standby.relay.leader), 20, "takeover")
        for i in range(3):
            await intake_service.submit(standby, request_fields(200 + i), STAFF, None)
        records = await read_topic(settings, Topic.tickets, 26)
        ids = Counter(dict(r.headers)["ce_id"] for r in records)  # type: ignore[attr-defined]
        assert len(ids) == 26, "nothing lost across the takeover"
        assert set(ids.values()) == {1}
    finally:
        for rt in (first, second):
            if rt is not stopped:
                await rt.stop()


async def _true(value: bool) -> bool:
    return value
