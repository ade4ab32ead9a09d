"""The one command helper and the table-driven wire map every service uses."""

from __future__ import annotations

import asyncio
from datetime import datetime
from uuid import UUID, uuid4

import pytest
from eventsourcing.domain import Aggregate, event

from tsop_events import schemas as wire
from tsop_events.commands import Commands, UnitOfWork
from tsop_events.envelope import stable_event_id
from tsop_events.errors import Conflict, NotFound
from tsop_events.store import EventStoreApp
from tsop_events.wiremap import WireMap, previous_event

NOW = datetime.fromisoformat("2026-12-02T10:00:00+00:00")


class Case(Aggregate):
    class Opened(Aggregate.Created):
        ticket_id: str

    class Rated(Aggregate.Event):
        ticket_id: str
        score: int
        comment: str | None
        rated_at: datetime

    @event(Opened)
    def __init__(self, ticket_id: str) -> None:
        self.ticket_id = ticket_id
        self.score: int | None = None

    def rate(self, score: int) -> None:
        if self.score is not None:
            raise Conflict("already rated", "score")
        self._rated(ticket_id=self.ticket_id, score=score, comment=None, rated_at=NOW)

    @event(Rated)
    def _rated(self, ticket_id: str, score: int, comment: str | None, rated_at: datetime) -> None:
        self.score = score


def app() -> EventStoreApp:
    return EventStoreApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})


def test_a_command_loads_decides_and_saves_and_views_observe_it() -> None:
    store = app()
    case = Case("t1")
    store.save(case)
    commands = Commands(store)
    seen: list[object] = []
    commands.observe(seen.extend)

    def rate(uow: UnitOfWork) -> int:
        c = uow.load(Case, case.id)
        c.rate(5)
        return c.version

    assert asyncio.run(commands.run(rate)) == 2
    assert [type(e) for e in seen] == [Case.Rated]
    assert store.repository.get(case.id).score == 5


def test_a_refused_command_saves_nothing() -> None:
    store = app()
    case = Case("t1")
    case.rate(3)
    store.save(case)
    commands = Commands(store)
    with pytest.raises(Conflict):
        asyncio.run(commands.run(lambda uow: uow.load(Case, case.id).rate(4)))
    with pytest.raises(NotFound) as missing:
        asyncio.run(commands.run(lambda uow: uow.load(Case, uuid4(), "ticket_id").rate(4)))
    assert missing.value.field == "ticket_id"
    assert store.recorder.max_notification_id() == 2


def test_a_lost_race_is_decided_again_on_fresh_state() -> None:
    store = app()
    case = Case("t1")
    store.save(case)
    commands = Commands(store)
    attempts: list[int] = []

    def rate(uow: UnitOfWork) -> None:
        c = uow.load(Case, case.id)
        attempts.append(c.version)
        if len(attempts) == 1:  # another writer saves first
            rival = store.repository.get(case.id)
            rival.rate(1)
            store.save(rival)
        c.rate(5)

    with pytest.raises(Conflict):  # decided again on fresh state, which is already rated
        asyncio.run(commands.run(rate))
    assert attempts == [1, 2]
    assert store.repository.get(case.id).score == 1


def test_the_wire_map_copies_same_named_fields_and_writes_out_only_differences() -> None:
    store = app()
    case = Case("t1")
    case.rate(4)
    opened, rated = case.collect_events()
    wire_map = WireMap().add(Case.Rated, wire.Rated, causation=previous_event)
    out = wire_map(rated)
    assert out is not None
    assert out.event == wire.Rated(ticket_id="t1", score=4, comment=None, rated_at=NOW)
    assert out.causation_id == stable_event_id(case.id, 1)
    assert wire_map(opened) is None
    renamed = WireMap().add(Case.Rated, wire.Rated, fields={"comment": lambda e: f"score {e.score}"})
    built = renamed(rated)
    assert built is not None and built.event.comment == "score 4"  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="no field"):
        WireMap().add(Case.Rated, wire.Rated, fields={"nope": "score"})
    store.close()


def test_an_event_the_wire_cannot_carry_fails_in_the_map_not_later() -> None:
    case = Case("t1")
    case._rated(ticket_id="t1", score=4, comment=None, rated_at=None)  # type: ignore[arg-type]
    _, rated = case.collect_events()
    with pytest.raises(ValueError):
        WireMap().add(Case.Rated, wire.Rated)(rated)


def test_uow_refuses_the_wrong_aggregate_type() -> None:
    store = app()
    case = Case("t1")
    store.save(case)

    class Other(Aggregate):
        pass

    with pytest.raises(TypeError):
        UnitOfWork(store).load(Other, case.id)
    assert isinstance(case.id, UUID)


def test_an_idempotent_command_runs_once_per_key_and_replays_its_answer() -> None:
    from tsop_events.commands import Idempotency
    from tsop_events.errors import Invalid

    store = app()
    commands = Commands(store)

    def open_case(uow: UnitOfWork) -> Case:
        case = Case("t9")
        uow.add(case)
        return case

    def replay(uow: UnitOfWork, answer: str) -> Case:
        return uow.load(Case, UUID(answer))

    key = Idempotency.of("test:open:caller-1", "k1", {"ticket": "t9"})
    first, replayed = asyncio.run(commands.run_once(key, open_case, lambda c: str(c.id), replay))
    assert not replayed
    again, replayed = asyncio.run(commands.run_once(key, open_case, lambda c: str(c.id), replay))
    assert replayed and again.id == first.id
    assert store.recorder.max_notification_id() == 2  # one case and one record, not two cases

    with pytest.raises(Invalid) as other_body:
        asyncio.run(
            commands.run_once(Idempotency.of("test:open:caller-1", "k1", {"x": 1}), open_case, lambda c: "", replay)
        )
    assert other_body.value.field == "Idempotency-Key"
    other_caller = Idempotency.of("test:open:caller-2", "k1", {"ticket": "t9"})
    second, replayed = asyncio.run(commands.run_once(other_caller, open_case, lambda c: str(c.id), replay))
    assert not replayed and second.id != first.id


def test_concurrent_retries_with_one_key_give_one_effect() -> None:
    from tsop_events.commands import Idempotency

    store = app()
    commands = Commands(store)
    key = Idempotency.of("test:open:caller-1", "k2", {})

    def open_case(uow: UnitOfWork) -> Case:
        case = Case("t10")
        uow.add(case)
        return case

    async def both() -> list[tuple[Case, bool]]:
        return list(
            await asyncio.gather(
                *(
                    commands.run_once(key, open_case, lambda c: str(c.id), lambda uow, a: uow.load(Case, UUID(a)))
                    for _ in range(4)
                )
            )
        )

    results = asyncio.run(both())
    assert len({case.id for case, _ in results}) == 1
    assert sum(not replayed for _, replayed in results) == 1


def test_commands_through_the_group_commit_keep_snapshotting() -> None:
    class Snapshotting(EventStoreApp):
        snapshotting_intervals = {Case: 2}

    store = Snapshotting(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    commands = Commands(store)
    case = asyncio.run(commands.run(lambda uow: (c := Case("t11"), uow.add(c))[0]))
    asyncio.run(commands.run(lambda uow: uow.load(Case, case.id).rate(2)))  # version 2: a snapshot is due
    assert store.snapshots is not None
    snapshots = list(store.snapshots.get(case.id))
    assert [s.originator_version for s in snapshots] == [2]
    assert store.repository.get(case.id).score == 2


def test_prefetch_learns_in_one_go_which_aggregates_are_absent_and_an_added_one_is_found() -> None:
    store = EventStoreApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    kept = Case(ticket_id="t1")
    store.save(kept)
    uow = UnitOfWork(store)
    missing, other = uuid4(), uuid4()
    asked: list[set[UUID]] = []
    real = store.existing

    def existing(ids: object) -> set[UUID]:
        asked.append(set(ids))  # type: ignore[call-overload]
        return real(asked[-1])

    store.existing = existing  # type: ignore[method-assign]
    uow.prefetch([kept.id, missing, other])
    assert asked == [{kept.id, missing, other}]
    store.find = lambda _id: pytest.fail("an absent aggregate was looked up again")  # type: ignore[method-assign]
    assert uow.get(missing) is None and uow.find(Case, other) is None
    store.find = EventStoreApp.find.__get__(store)  # type: ignore[method-assign]
    assert uow.find(Case, kept.id) is not None  # it exists: loaded as usual
    uow.prefetch([missing, kept.id])
    assert len(asked) == 1  # nothing new to ask
    again = Case(ticket_id="t2")
    again._id = missing  # type: ignore[attr-defined]
    uow.add(again)
    assert uow.get(missing) is again  # created within the unit: no longer absent


class Counter(Aggregate):
    """One hot aggregate many commands change at once (a technician's load, say)."""

    class Started(Aggregate.Created):
        pass

    class Bumped(Aggregate.Event):
        pass

    @event(Started)
    def __init__(self) -> None:
        self.count = 0

    @event(Bumped)
    def bump(self) -> None:
        self.count += 1


def test_many_commands_racing_on_one_aggregate_all_succeed_and_none_is_lost() -> None:
    store = app()
    counter = Counter()
    store.save(counter)
    commands = Commands(store)
    decided: list[int] = []

    def bump(uow: UnitOfWork) -> int:
        c = uow.load(Counter, counter.id)
        decided.append(c.version)
        c.bump()
        return c.count

    async def race() -> list[int]:
        return list(await asyncio.gather(*(commands.run(bump) for _ in range(40))))

    counts = asyncio.run(race())
    # every command was applied exactly once, each on the state its predecessor left
    assert sorted(counts) == list(range(1, 41))
    assert store.repository.get(counter.id).count == 40
    assert len(decided) > 40  # the race was real: some decided again


def test_a_command_that_keeps_losing_gives_up_with_the_conflict() -> None:
    from tsop_events.store import IntegrityError

    store = app()
    counter = Counter()
    store.save(counter)
    commands = Commands(store, lane_attempts=3, retry_for=0.0)
    tries: list[int] = []

    def always_late(uow: UnitOfWork) -> None:
        c = uow.load(Counter, counter.id)
        tries.append(c.version)
        rival: Counter = store.repository.get(counter.id)
        rival.bump()
        store.save(rival)  # another writer saves first, every time
        c.bump()

    with pytest.raises(IntegrityError):
        asyncio.run(commands.run(always_late))
    assert len(tries) == 1 + 3
    assert store.repository.get(counter.id).count == 4  # only the rivals' bumps


def test_a_command_losing_for_a_while_to_another_writer_goes_on_until_it_wins() -> None:
    """A consumer's batches can change a hot aggregate (a technician) again and again for a moment under load: a
    command keeps trying for ``retry_for`` seconds, more than its ``lane_attempts``, instead of answering 409."""
    from tsop_events.store import IntegrityError

    store = app()
    counter = Counter()
    store.save(counter)
    tries: list[int] = []

    def late_twenty_times(uow: UnitOfWork) -> int:
        c = uow.load(Counter, counter.id)
        tries.append(c.version)
        if len(tries) <= 20:
            rival: Counter = store.repository.get(counter.id)
            rival.bump()
            store.save(rival)  # the other writer saves first, twenty times over
        c.bump()
        return c.count

    assert asyncio.run(Commands(store, retry_for=5.0).run(late_twenty_times)) == 21
    assert len(tries) == 21
    # with no time to retry for, the same race gives up after its lane attempts, as a 409
    tries.clear()
    with pytest.raises(IntegrityError):
        asyncio.run(Commands(store, retry_for=0.0).run(late_twenty_times))
    assert len(tries) == 1 + 8


def test_a_command_waits_for_its_lane_as_long_as_its_retry_time_allows() -> None:
    """A command that lost waits its turn behind one deciding slowly in the lane: longer than ``lane_wait`` while its
    ``retry_for`` lasts (it answered 409 after the lane wait before, though nothing was wrong)."""
    import time

    store = app()
    counter = Counter()
    store.save(counter)
    commands = Commands(store, lane_wait=0.1, retry_for=3.0)
    slow_tries: list[int] = []
    quick_tries: list[int] = []

    def rival_bump() -> None:
        rival: Counter = store.repository.get(counter.id)
        rival.bump()
        store.save(rival)

    def slow_in_its_lane(uow: UnitOfWork) -> None:
        c = uow.load(Counter, counter.id)
        slow_tries.append(c.version)
        if len(slow_tries) == 1:
            rival_bump()  # loses its first try: goes to the lane
        else:
            time.sleep(0.5)  # decides slowly there
        c.bump()

    def quick(uow: UnitOfWork) -> None:
        c = uow.load(Counter, counter.id)
        quick_tries.append(c.version)
        if len(quick_tries) == 1:
            rival_bump()  # loses its first try too, then waits ~0.4 s for the lane
        c.bump()

    async def race() -> None:
        slow = asyncio.create_task(commands.run(slow_in_its_lane))
        await asyncio.sleep(0.15)
        await commands.run(quick)
        await slow

    asyncio.run(race())
    assert store.repository.get(counter.id).count == 4  # two rivals' bumps and both commands'
    assert len(quick_tries) == 2


def test_a_command_retrying_on_one_aggregate_does_not_hold_up_a_retry_on_another() -> None:
    import time

    from tsop_events.store import IntegrityError

    store = app()
    hot, other = Counter(), Counter()
    commands = Commands(store, lane_attempts=3, retry_for=0.0)
    while hash(other.id) % 4096 == hash(hot.id) % 4096:  # in another lane
        other = Counter()
    store.save(hot, other)
    finished: dict[str, float] = {}
    other_tries: list[int] = []

    def always_late(uow: UnitOfWork) -> None:
        c = uow.load(Counter, hot.id)
        rival: Counter = store.repository.get(hot.id)
        rival.bump()
        store.save(rival)
        time.sleep(0.5)  # a slow decide, in the lane
        c.bump()

    def late_once(uow: UnitOfWork) -> None:
        c = uow.load(Counter, other.id)
        other_tries.append(c.version)
        if len(other_tries) == 1:
            rival: Counter = store.repository.get(other.id)
            rival.bump()
            store.save(rival)
        c.bump()

    async def race() -> None:
        async def hot_one() -> None:
            with pytest.raises(IntegrityError):
                await commands.run(always_late)
            finished["hot"] = time.monotonic()

        async def other_one() -> None:
            await asyncio.sleep(0.6)  # while the hot command decides again in its lane
            started = time.monotonic()
            await commands.run(late_once)
            finished["other"] = time.monotonic()
            finished["other took"] = finished["other"] - started

        await asyncio.gather(hot_one(), other_one())

    asyncio.run(race())
    assert other_tries == [1, 2]
    assert finished["other took"] < 0.25  # not queued behind the hot aggregate's retry (about 0.4 s)
    assert finished["other"] < finished["hot"]
    assert store.repository.get(other.id).count == 2


def test_a_lookup_that_found_nothing_is_not_read_again_in_one_unit_of_work() -> None:
    store = app()
    reads: list[UUID] = []
    find = store.find

    def counted(aggregate_id: UUID) -> object:
        reads.append(aggregate_id)
        return find(aggregate_id)

    store.find = counted  # type: ignore[method-assign]
    uow = UnitOfWork(store)
    missing = uuid4()
    assert uow.get(missing) is None and uow.get(missing) is None
    assert reads == [missing]
    created = Counter()
    uow.add(created)
    assert uow.get(created.id) is created
