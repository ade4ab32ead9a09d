import asyncio
from uuid import UUID, uuid4

from tests.unit.test_intake_review import CAT, NOW, request
from tsop_events.clock import ManualClock
from tsop_events.store import GroupCommit, IntegrityError
from tsop_intake.commands import IntakeApp
from tsop_intake.domain import Facts, ServiceRequest, review


def memory_app() -> IntakeApp:
    return IntakeApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}, clock=ManualClock(NOW))


def reviewed(ticket: UUID | None = None) -> ServiceRequest:
    r = request(ticket=ticket or uuid4())
    r.apply_decision(review(CAT, r.fields(), Facts(now=NOW)), NOW)
    return r


async def test_concurrent_commands_share_a_commit_and_only_the_conflicting_one_fails() -> None:
    app = memory_app()
    commit = GroupCommit(app)
    key = uuid4()
    first, other, retry = reviewed(key), reviewed(), reviewed(key)  # same id: version 1 again
    results = await asyncio.gather(commit.save(first), commit.save(other), commit.save(retry), return_exceptions=True)
    assert results[0] is None and results[1] is None
    assert isinstance(results[2], IntegrityError)
    assert app.exists(first.id) and app.exists(other.id)
    notifications = app.recorder.select_notifications(1, 100)
    assert len(notifications) == 4  # two requests, two events each: nothing of the refused one


async def test_a_quiet_commit_is_written_at_once() -> None:
    app = memory_app()
    commit = GroupCommit(app)
    one = reviewed()
    await asyncio.wait_for(commit.save(one), 2)
    assert app.exists(one.id)


async def test_two_writers_save_everything_once_and_refuse_only_the_conflict() -> None:
    app = memory_app()
    commit = GroupCommit(app, writers=2)
    key = uuid4()
    requests = [reviewed(key), *(reviewed() for _ in range(50)), reviewed(key)]
    results = await asyncio.gather(*(commit.save(r) for r in requests), return_exceptions=True)
    assert all(r is None for r in results[:-1]) and isinstance(results[-1], IntegrityError)
    assert len(app.recorder.select_notifications(1, 1000)) == 2 * 51
    assert not commit._flushers  # every writer finished, so the next save starts one
    late = reviewed()
    await asyncio.wait_for(commit.save(late), 2)
    assert app.exists(late.id)
