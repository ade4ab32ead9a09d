"""Correlation is idempotent per ticket (§5.3): after a broker change the tickets topic is consumed again from the
start, and acceptances correlated before must neither declare an incident again (the derived id exists: the
partition would be stuck retrying) nor count towards a new burst (a duplicate incident)."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID, uuid4

from tests.unit.test_incident_domain import FAULT, NOW, run, sync_app
from tsop_events.envelope import derived_id
from tsop_incident import commands
from tsop_incident.commands import IncidentApp, watch_id
from tsop_incident.domain import Incident


def accept(app: IncidentApp, ticket: str, at: datetime, region: str = "south") -> None:
    run(app, lambda uow: commands.correlate(uow, app, ticket, region, FAULT, at))


def incidents(app: IncidentApp) -> set[UUID]:
    return {
        n.originator_id for n in app.recorder.select_notifications(1, 10_000)
        if n.topic.endswith("Incident.Declared")
    }


def resolve(s: object, app: IncidentApp, iid: UUID) -> None:
    inc = app.repository.get(iid)
    inc.restore("fixed", "im", NOW)
    inc.verify("checked", "im", NOW)
    app.save(inc)
    s.resolve(iid, "restored", "ok", None, "im")  # type: ignore[attr-defined]


def test_a_replayed_burst_after_the_incident_was_resolved_changes_nothing() -> None:
    s, _ = sync_app()
    tickets = [str(uuid4()) for _ in range(3)]
    for i, t in enumerate(tickets):
        accept(s.app, t, NOW + timedelta(minutes=i))
    iid = UUID(s.app.repository.get(watch_id("south", FAULT)).incident_id)
    assert iid == derived_id("incident", "south", FAULT, tickets[2])
    resolve(s, s.app, iid)
    watch = s.app.repository.get(watch_id("south", FAULT))
    assert watch.incident_id is None
    before = watch.version
    for i, t in enumerate(tickets):  # the same acceptances again (no IntegrityError, no new incident)
        accept(s.app, t, NOW + timedelta(minutes=i))
    assert incidents(s.app) == {iid}
    assert s.app.repository.get(watch_id("south", FAULT)).version == before


def test_replayed_faults_that_never_formed_a_burst_do_not_add_up_to_a_new_one() -> None:
    s, _ = sync_app()
    early = [str(uuid4()) for _ in range(2)]  # two faults, long before: below the threshold, then out of the window
    for i, t in enumerate(early):
        accept(s.app, t, NOW - timedelta(minutes=30 - i))
    burst = [str(uuid4()) for _ in range(3)]
    for i, t in enumerate(burst):
        accept(s.app, t, NOW + timedelta(minutes=i))
    first = UUID(s.app.repository.get(watch_id("south", FAULT)).incident_id)
    resolve(s, s.app, first)
    later = str(uuid4())
    accept(s.app, later, NOW + timedelta(minutes=5))  # one fresh fault after the resolution
    for i, t in enumerate(early):  # the topic replayed from the start
        accept(s.app, t, NOW - timedelta(minutes=30 - i))
    for i, t in enumerate(burst):
        accept(s.app, t, NOW + timedelta(minutes=i))
    accept(s.app, later, NOW + timedelta(minutes=5))
    assert incidents(s.app) == {first}
    assert [t for t, _ in s.app.repository.get(watch_id("south", FAULT)).recent] == [later]


def test_a_late_fault_within_the_window_still_counts() -> None:
    s, _ = sync_app()
    a, b, c = (str(uuid4()) for _ in range(3))
    accept(s.app, a, NOW + timedelta(minutes=5))
    accept(s.app, b, NOW + timedelta(minutes=6))
    accept(s.app, c, NOW)  # accepted earlier, consumed later (another partition): within the window
    assert incidents(s.app) == {derived_id("incident", "south", FAULT, c)}


def test_a_replayed_acceptance_does_not_link_again_a_ticket_unlinked_from_the_open_incident() -> None:
    s, _ = sync_app()
    tickets = [str(uuid4()) for _ in range(3)]
    for i, t in enumerate(tickets):
        accept(s.app, t, NOW + timedelta(minutes=i))
    iid = UUID(s.app.repository.get(watch_id("south", FAULT)).incident_id)
    s.unlink(iid, tickets[0], "unrelated: a broken router", "im")
    accept(s.app, tickets[0], NOW)
    inc: Incident = s.app.repository.get(iid)
    assert tickets[0] not in inc.linked and set(inc.linked) == set(tickets[1:])
