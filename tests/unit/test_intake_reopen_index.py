"""A request finished downstream leaves intake's open-request index; reopened, it is a duplicate target again."""

from __future__ import annotations

from uuid import uuid4

from tsop_events.store import EventStoreApp
from tsop_intake.views import IntakeIndex, OpenRequest


def test_a_reopened_request_is_a_duplicate_target_again() -> None:
    index = IntakeIndex(EventStoreApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}))
    t = uuid4()
    where = {"postcode": "1000", "street": "Main 1"}
    req = OpenRequest("c1", "broadband.fault_repair", where, "accepted", None)
    index.open[t] = req
    index.by_key[req.key] = t
    assert index.open_duplicate("c1", "broadband.fault_repair", where) == t
    index.drop_closed(t)
    assert index.open_duplicate("c1", "broadband.fault_repair", where) is None
    index.reopen_finished(t)
    assert index.open_duplicate("c1", "broadband.fault_repair", where) == t
    assert index.open[t].status == "reopened"
    index.reopen_finished(t)  # a second reopening notice changes nothing
    assert index.open_duplicate("c1", "broadband.fault_repair", where) == t
