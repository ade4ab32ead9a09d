"""An epoch change (the broker came back empty) seeks every assigned partition to the new epoch's stored position:
no seek computed for the old epoch may land after it. Otherwise the records of the new incarnation before that old
position are never read in the new epoch (the consumer reads on from there), e.g. a case never opened.

Two such seeks race the epoch change: a batch's retry after a transient failure (its first offset, from a fetch at
the old epoch's position) and a seek to the stored positions that read them for the old epoch."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from aiokafka import TopicPartition

from tsop_events import schemas as wire
from tsop_events.consumer import ConsumerGroup, ConsumerRunner, Incoming, ProjectionSink, Retry
from tsop_events.envelope import Headers, wrap
from tsop_events.settings import ServiceSettings

TOPIC = "tsop.tickets"
TP = TopicPartition(TOPIC, 0)
OLD_POSITION = 50  # where the consumer stood in the old epoch; the new epoch has stored nothing yet


class Epoch:
    """The epoch watcher: ``change`` is what ``EpochWatcher.check`` does when it reads a new epoch."""

    def __init__(self) -> None:
        self.epoch: str | None = "old"
        self.listeners: list[Callable[[str], Awaitable[None]]] = []

    def subscribe(self, listener: Callable[[str], Awaitable[None]]) -> None:
        self.listeners.append(listener)

    async def wait_known(self) -> str:
        assert self.epoch is not None
        return self.epoch

    async def change(self, epoch: str) -> None:
        self.epoch = epoch
        for listener in self.listeners:
            await listener(epoch)


class Client:
    async def force_metadata_update(self) -> bool:
        return True


class Consumer:
    """A Kafka consumer that remembers where its partition was sought last."""

    def __init__(self) -> None:
        self._client = Client()
        self.at: dict[TopicPartition, int] = {}

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def subscription(self) -> set[str]:
        return {TOPIC}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.at[tp] = offset

    async def seek_to_beginning(self, *tps: TopicPartition) -> bool:
        for tp in tps:
            self.at[tp] = 0
        return True

    def highwater(self, tp: TopicPartition) -> int | None:
        return None


class Sink(ProjectionSink):
    """Positions stored per epoch; ``during_process`` / ``during_position`` run once, inside the first call."""

    name: ClassVar[str] = "cases"

    def __init__(self) -> None:
        super().__init__(None)  # type: ignore[arg-type]
        self.stored: dict[tuple[str, str, int], int] = {("old", TOPIC, 0): OLD_POSITION}
        self.during_process: Callable[[], Awaitable[None]] | None = None
        self.during_position: Callable[[], Awaitable[None]] | None = None

    async def position(self, epoch: str, topic: str, partition: int) -> int | None:
        if self.during_position is not None:
            during, self.during_position = self.during_position, None
            await during()
        return self.stored.get((epoch, topic, partition))

    async def process(
        self, epoch: str, topic: str, partition: int, records: Sequence[Incoming], last_offset: int
    ) -> None:
        if self.during_process is not None:
            during, self.during_process = self.during_process, None
            await during()
        raise Retry("write conflict; reloading")  # transient: the batch is fetched again from its first offset

    async def apply(self, conn: Any, incoming: Incoming) -> None:
        raise AssertionError("not reached")


@dataclass
class Record:  # what aiokafka's getmany hands over
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: Headers


def records() -> list[Any]:
    """What a fetch at the old epoch's position returned from the new incarnation (relays republished into it)."""
    out: list[Any] = []
    for offset in range(OLD_POSITION, OLD_POSITION + 3):
        ev = wire.Rated(ticket_id="t", score=5, rated_at=datetime.now(UTC))
        env = wrap(ev, event_id=f"e{offset}", source="test")
        out.append(Record(TOPIC, 0, offset, b"t", env.data, env.headers()))
    return out


async def test_a_batch_retried_across_an_epoch_change_leaves_the_epoch_s_seek_alone() -> None:
    epoch, sink, consumer = Epoch(), Sink(), Consumer()
    runner = ConsumerRunner(sink, ServiceSettings(), epoch, None)  # type: ignore[arg-type]
    runner.consumer = consumer  # type: ignore[assignment]
    sink.during_process = lambda: epoch.change("new")  # the watcher reads the new epoch while the batch applies
    await runner._handle(TP, records())
    assert consumer.at[TP] == 0, "the new epoch's records before the old position would never be read"


async def test_a_group_s_batch_retried_across_an_epoch_change_leaves_the_epoch_s_seek_alone() -> None:
    epoch, sink, consumer = Epoch(), Sink(), Consumer()
    runner = ConsumerRunner(sink, ServiceSettings(), epoch, None, own_consumer=False)  # type: ignore[arg-type]
    group = ConsumerGroup([runner], ServiceSettings(), epoch)  # type: ignore[arg-type]
    group.consumer = runner.consumer = consumer  # type: ignore[assignment]
    sink.during_process = lambda: epoch.change("new")
    await group._handle_batch({TP: records()})
    assert consumer.at[TP] == 0, "the new epoch's records before the old position would never be read"


async def test_a_retry_without_an_epoch_change_still_fetches_the_batch_again() -> None:
    epoch, sink, consumer = Epoch(), Sink(), Consumer()
    runner = ConsumerRunner(sink, ServiceSettings(), epoch, None)  # type: ignore[arg-type]
    runner.consumer = consumer  # type: ignore[assignment]
    await runner._handle(TP, records())
    assert consumer.at[TP] == OLD_POSITION


async def test_stored_positions_read_across_an_epoch_change_are_the_new_epoch_s() -> None:
    epoch, sink, consumer = Epoch(), Sink(), Consumer()
    runner = ConsumerRunner(sink, ServiceSettings(), epoch, None)  # type: ignore[arg-type]
    runner.consumer = consumer  # type: ignore[assignment]
    # an assignment's seek reads the old epoch's position; the epoch changes (and its own seek runs) meanwhile
    sink.during_position = lambda: epoch.change("new")
    await runner.seek_stored([TP])
    assert consumer.at[TP] == 0


async def test_a_group_s_stored_positions_read_across_an_epoch_change_are_the_new_epoch_s() -> None:
    epoch, sink, consumer = Epoch(), Sink(), Consumer()
    runner = ConsumerRunner(sink, ServiceSettings(), epoch, None, own_consumer=False)  # type: ignore[arg-type]
    group = ConsumerGroup([runner], ServiceSettings(), epoch)  # type: ignore[arg-type]
    group.consumer = runner.consumer = consumer  # type: ignore[assignment]
    sink.during_position = lambda: epoch.change("new")
    await group.seek_stored([TP])
    assert consumer.at[TP] == 0
