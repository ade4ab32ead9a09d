"""What the relay keeps of a notification it cannot publish (no I/O: the mapping step alone)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

from tests.dispatch_sync import SyncDispatch
from tsop_dispatch.commands import DispatchApp, work_order_id
from tsop_dispatch.domain import WorkOrder
from tsop_dispatch.wire import WIRE
from tsop_events.clock import ManualClock
from tsop_events.relay import Outgoing, Relay, _Ready, _Refused, stored_form
from tsop_events.settings import ServiceSettings

NOW = datetime(2026, 6, 1, 9, tzinfo=UTC)


def relay_over(app: SyncDispatch, mapper: Any) -> Relay:
    settings = ServiceSettings(service_name="dispatch", topic_prefix="p.")
    return Relay("dispatch", app.app, mapper, producer=None, pool=None, settings=settings, epoch=None)  # type: ignore[arg-type]


def test_a_ticket_event_the_mapper_refuses_is_kept_under_its_ticket_and_topic() -> None:
    app = SyncDispatch(DispatchApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=ManualClock(NOW)))
    tech, _ = app.register_technician(uuid4(), "T", ["broadband.fault_repair"], ["north"], 1)
    wo = app.open_work_order(work_order_id("T-1"), "T-1", "broadband.fault_repair", "north", 2, None, "cause")
    app.save(wo)

    def broken(e: Any) -> Outgoing | None:
        if isinstance(e, WorkOrder.Opened):
            raise KeyError("a bug in the mapper")
        return WIRE(e)

    relay = relay_over(app, broken)
    registered, opened = app.recorder.select_notifications(1, 10)
    ready = relay._prepare(registered)
    assert isinstance(ready, _Ready) and ready.topic == "p.workforce" and ready.key == str(tech.id).encode()
    refused = relay._prepare(opened)
    assert isinstance(refused, _Refused)
    assert refused.subject == "T-1" and refused.topic == "p.tickets"  # the ticket whose history has the gap
    assert isinstance(refused.error, KeyError)
    form = json.loads(stored_form(opened))
    assert form["notification_id"] == opened.id and form["originator_version"] == 1
    assert form["state_encoding"] == "json" and form["state"]["ticket_id"] == "T-1"


def test_an_event_without_a_ticket_is_kept_under_its_aggregate() -> None:
    app = SyncDispatch(DispatchApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=ManualClock(NOW)))
    tech, _ = app.register_technician(uuid4(), "T", ["broadband.fault_repair"], ["north"], 1)

    def broken(e: Any) -> Outgoing | None:
        raise ValueError("nothing maps")

    (n,) = app.recorder.select_notifications(1, 10)
    refused = relay_over(app, broken)._prepare(n)
    assert isinstance(refused, _Refused) and refused.subject == str(tech.id) and refused.topic is None


def test_a_refused_records_dead_letter_goes_out_before_any_later_record() -> None:
    """The archive relies on it: a ticket's final event must never reach it before the letter about an earlier
    event, or it would seal the dossier as complete with that event missing."""
    import asyncio
    import contextlib
    from datetime import UTC, datetime
    from uuid import uuid4

    from tsop_dispatch.commands import DispatchApp, work_order_id
    from tsop_dispatch.wire import WIRE
    from tsop_events.clock import ManualClock
    from tsop_events.relay import Relay
    from tsop_events.settings import ServiceSettings

    order: list[tuple[str, str]] = []

    class Producer:
        async def send(self, topic: str, value: bytes, key: bytes, headers: Any) -> Any:
            order.append(("send", topic))
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done

        async def send_and_wait(self, topic: str, value: bytes, key: bytes, headers: Any) -> None:
            order.append(("letter", topic))

    class Conn:
        async def fetchval(self, *a: Any) -> int:
            return 1

        async def execute(self, *a: Any) -> None:
            pass

        def transaction(self) -> Any:
            return contextlib.nullcontext()

    class Pool:
        def acquire(self) -> Any:
            @contextlib.asynccontextmanager
            async def conn() -> Any:
                yield Conn()

            return conn()

    class Epoch:
        epoch = "e1"

        async def wait_known(self) -> str:
            return "e1"

    Conn.transaction = lambda self: contextlib.AsyncExitStack()  # type: ignore[method-assign]
    app = SyncDispatch(DispatchApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"},
                                   clock=ManualClock(datetime(2026, 6, 1, 9, tzinfo=UTC))))
    first, _ = app.register_technician(uuid4(), "T", ["broadband.fault_repair"], ["north"], 1)
    app.register_technician(uuid4(), "U", ["broadband.fault_repair"], ["north"], 1)
    app.save(app.open_work_order(work_order_id("T-1"), "T-1", "broadband.fault_repair", "north", 2, None, "c"))

    def broken(e: Any) -> Any:
        if getattr(e, "originator_id", None) == first.id:
            raise KeyError("a bug in the mapper")
        return WIRE(e)

    relay = Relay("dispatch", app.app, broken, Producer(), Pool(),  # type: ignore[arg-type]
                  ServiceSettings(service_name="dispatch", topic_prefix="p."), Epoch())  # type: ignore[arg-type]
    relay.epoch = "e1"
    asyncio.run(relay.publish_once())
    assert order[0] == ("letter", "p.deadletter"), order
    assert len(order) > 1 and all(kind == "send" for kind, _ in order[1:])
