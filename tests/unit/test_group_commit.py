import asyncio

from tests.unit.test_intake_review import fields, memory_app
from tsop_events.store import GroupCommit, IntegrityError


async def test_concurrent_commands_share_a_commit_and_only_the_conflicting_one_fails() -> None:
    app = memory_app()
    commit = GroupCommit(app)
    first = app.new_request(fields(), "key-1")
    other = app.new_request(fields(), None)
    retry = app.new_request(fields(), "key-1")  # same key: same ticket id, version 1 again
    results = await asyncio.gather(commit.save(first), commit.save(other), commit.save(retry), return_exceptions=True)
    assert results[0] is None and results[1] is None
    assert isinstance(results[2], IntegrityError)
    assert app.exists(first.id) and app.exists(other.id)
    notifications = app.recorder.select_notifications(1, 100)
    assert len(notifications) == 4  # two requests, two events each: nothing of the refused one


async def test_a_quiet_commit_is_written_at_once() -> None:
    app = memory_app()
    commit = GroupCommit(app)
    request = app.new_request(fields(), None)
    await asyncio.wait_for(commit.save(request), 2)
    assert app.exists(request.id)
