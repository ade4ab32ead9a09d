"""Records decoded once per process for every sink that reads them (``tsop_events.consumer.DECODED``): kept by
position, timestamp and decoding, checked against the record's bytes, bounded, and dropped on an erasure."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import ClassVar

import pytest

from tsop_events import consumer, runtime
from tsop_events import schemas as wire
from tsop_events.consumer import ConsumerRunner, DecodedRecords, Incoming, Sink
from tsop_events.envelope import Envelope, Headers, wrap
from tsop_events.personal import MemoryKeyring, PostgresKeyring
from tsop_events.schemas import WireEvent
from tsop_events.settings import ServiceSettings
from tsop_events.topics import Topic

TOPIC = "tsop.tickets"


@dataclass
class Record:  # what aiokafka's getmany hands over
    topic: str
    partition: int
    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes
    headers: Headers


def record(offset: int, ticket: str, timestamp: int = 1_000, partition: int = 0) -> Record:
    ev = wire.Rated(ticket_id=ticket, score=5, rated_at=datetime(2026, 6, 1, tzinfo=UTC))
    env = wrap(ev, event_id=f"e-{ticket}-{offset}", source="test")
    return Record(TOPIC, partition, offset, timestamp, 0, ticket.encode(), env.data, env.headers())


class Plain(Sink):
    name: ClassVar[str] = "plain"

    async def position(self, epoch: str, topic: str, partition: int) -> int | None:
        return None

    async def process(self, epoch: str, topic: str, partition: int, records: Sequence[Incoming],
                      last_offset: int) -> None:
        return None


class Other(Plain):
    name: ClassVar[str] = "other"


class OwnDecoding(Plain):
    name: ClassVar[str] = "own"

    def decode(self, envelope: Envelope) -> WireEvent:
        return envelope.event()


def runner(sink: Sink) -> ConsumerRunner:
    return ConsumerRunner(sink, ServiceSettings(), SimpleNamespace(epoch="ep"), None,  # type: ignore[arg-type]
                          own_consumer=False)


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> DecodedRecords:
    """The process's own (the erasure listener forgets it), emptied and kept to 3 records; the runners of other
    tests collected (they would count as readers)."""
    gc.collect()
    consumer.DECODED.forget()
    monkeypatch.setattr(consumer.DECODED, "size", 3)
    monkeypatch.setattr(consumer.DECODED, "parsed", 0)
    return consumer.DECODED


def test_two_sinks_reading_one_record_parse_it_once(decoded: DecodedRecords) -> None:
    rec = record(5, "T-1")
    first, second = runner(Plain()), runner(Other())
    a = first._decode(rec)
    b = second._decode(rec)
    assert a is b and decoded.parsed == 1
    assert isinstance(a.event, wire.Rated) and a.event.ticket_id == "T-1" and a.offset == 5 and a.key == "T-1"
    assert rec_key(rec) not in decoded._kept  # both readers of the process took it: dropped
    own_first, own_second = runner(OwnDecoding()), runner(OwnDecoding())
    own = own_first._decode(rec)  # a sink's own decoding is kept apart from the catalogue's
    assert own is not a and own.event == a.event and decoded.parsed == 2
    assert own_second._decode(rec) is own and decoded.parsed == 2


def rec_key(rec: Record) -> tuple[object, ...]:
    return (rec.topic, rec.partition, rec.offset, rec.timestamp, rec.timestamp_type, Sink.decode)


def test_a_record_is_kept_until_every_reader_of_its_topic_and_type_took_it(decoded: DecodedRecords) -> None:
    class Rated(Plain):
        name: ClassVar[str] = "rated"
        event_types: ClassVar[frozenset[str] | None] = frozenset({wire.Rated.event_type})

    class Elsewhere(Plain):
        name: ClassVar[str] = "elsewhere"
        topics = (Topic.incidents,)

    class OtherTypes(Plain):
        name: ClassVar[str] = "other-types"
        event_types: ClassVar[frozenset[str] | None] = frozenset({wire.Closed.event_type})

    readers = [runner(Plain()), runner(Rated()), runner(Other())]
    bystanders = [runner(Elsewhere()), runner(OtherTypes())]  # they never read it: not waited for
    rec = record(9, "T-9")
    assert decoded.readers_of(rec.topic, wire.Rated.event_type, Sink.decode) == 3
    first = readers[0]._decode(rec)
    assert readers[1]._decode(rec) is first and rec_key(rec) in decoded._kept
    assert readers[2]._decode(rec) is first and rec_key(rec) not in decoded._kept
    assert decoded.parsed == 1 and len(bystanders) == 2
    # a record of a topic no runner of this process follows (a tool's own consumer): kept as the oldest go
    stray = Record("elsewhere.topic", 0, 1, 1, 0, b"k", rec.value, rec.headers)
    assert decoded.readers_of("elsewhere.topic", wire.Rated.event_type, Sink.decode) == 0
    assert readers[0]._decode(stray) is readers[1]._decode(stray) is readers[2]._decode(stray)
    assert decoded.parsed == 2 and len(decoded._kept) == 1


def test_a_position_holding_another_record_after_a_broker_reset_is_decoded_again(decoded: DecodedRecords) -> None:
    """A broker reset starts the topics again: the same topic, partition and offset hold another record (a dead
    letter produced again in the new epoch), with a later timestamp; it must not be served the old one's body."""
    plain, other = runner(Plain()), runner(Other())  # two readers: each record kept for the second
    old = record(0, "T-old", timestamp=1_000)
    assert plain._decode(old).event.ticket_id == "T-old"  # type: ignore[attr-defined]
    new = record(0, "T-new", timestamp=2_000)
    assert other._decode(new).event.ticket_id == "T-new"  # type: ignore[attr-defined]
    # the same timestamp too (two epochs within a millisecond): the bytes tell them apart
    same_ms = record(0, "T-same", timestamp=2_000)
    assert plain._decode(same_ms).event.ticket_id == "T-same"  # type: ignore[attr-defined]
    assert decoded.parsed == 3
    assert other._decode(same_ms).event.ticket_id == "T-same"  # type: ignore[attr-defined]
    assert decoded.parsed == 3


def test_at_most_size_records_are_kept_the_oldest_dropped_first(decoded: DecodedRecords) -> None:
    plain, other = runner(Plain()), runner(Other())  # two readers: each record kept for the second
    records = [record(n, f"T-{n}") for n in range(5)]
    for r in records:
        plain._decode(r)
    assert len(decoded._kept) == 3 and decoded.parsed == 5
    other._decode(records[4])
    assert decoded.parsed == 5  # still kept
    other._decode(records[0])
    assert decoded.parsed == 6  # dropped: parsed again


def test_an_erasure_drops_what_was_decoded_and_a_decode_across_it_is_not_kept(
    decoded: DecodedRecords, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = record(1, "T-1")
    plain, other = runner(Plain()), runner(Other())
    plain._decode(rec)
    assert len(decoded._kept) == 1  # kept for the other reader
    monkeypatch.setattr(runtime, "keyring_of", lambda _settings: MemoryKeyring())
    listener = runtime.erasure_listener(SimpleNamespace(  # type: ignore[arg-type]
        settings=ServiceSettings(service_name="svc"), app=None, app_factory=None))
    erased = wire.CustomerDataErased(customer_id="c1", legal_basis="gdpr-17", requested_by="ops",
                                     erased_at=datetime(2026, 6, 1, tzinfo=UTC))
    env = wrap(erased, event_id="erase-1", source="test")
    letter = Incoming("tsop.customers", 0, 0, "c1", env, erased)
    asyncio.run(listener.process("ep", "tsop.customers", 0, [letter], 0))
    assert decoded._kept == {}
    other._decode(rec)
    assert decoded.parsed == 2

    class Straddling(Plain):
        name: ClassVar[str] = "straddling"

        def decode(self, envelope: Envelope) -> WireEvent:
            decoded.forget()  # an erasure heard while this record was being decoded
            return envelope.event()

    straddling, again = runner(Straddling()), runner(Straddling())
    straddling._decode(record(2, "T-2"))
    assert len(decoded._kept) == 0 and again is not None


def test_a_sink_with_models_of_its_own_shares_the_catalogues_decoding_of_every_other_type(
    decoded: DecodedRecords,
) -> None:
    from tsop_feedback.complaints.domain import DEFAULT_POLICY
    from tsop_feedback.complaints.policies import REVIEW_PUBLISHED, QualitySignals, ReviewPublished

    signals = runner(QualitySignals(None, DEFAULT_POLICY))  # type: ignore[arg-type]
    signals_too = runner(QualitySignals(None, DEFAULT_POLICY))  # type: ignore[arg-type]
    plain = runner(Plain())
    rated = record(7, "T-7")
    assert signals._decode(rated) is plain._decode(rated) and decoded.parsed == 1
    body = b'{"incident_id": "INC-1", "improvement_actions": [], "added_later": 1}'  # read tolerantly: its own model
    headers = [("ce_specversion", b"1.0"), ("ce_id", b"r-1"), ("ce_type", REVIEW_PUBLISHED.encode()),
               ("ce_source", b"incident"), ("ce_time", b"2026-06-01T09:00:00+00:00")]
    rec = Record("tsop.incidents", 0, 3, 1_000, 0, b"INC-1", body, headers)
    own = signals._decode(rec)
    assert isinstance(own.event, ReviewPublished) and own.event.incident_id == "INC-1"
    assert signals_too._decode(rec) is own and decoded.parsed == 2


def test_a_decode_made_while_the_keyring_forgets_its_keys_is_not_kept(
    decoded: DecodedRecords, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listener forgets in a thread (``asyncio.to_thread``) while the consumers keep decoding: a record decoded
    after ``DECODED`` was emptied but before the keyring dropped its cached keys could be read with a key the
    erasure destroys, and must not stay in ``DECODED`` once the listener is done."""
    plain, other = runner(Plain()), runner(Other())  # two readers: a record is kept for the second
    rec = record(3, "T-3")

    class Keys(PostgresKeyring):
        def __init__(self) -> None:  # no database: only ``forget`` is called
            pass

        def forget(self, key_ids: Iterable[str] = (), subjects: Iterable[str] = ()) -> None:
            plain._decode(rec)  # the event loop decodes a record while the keys are still cached

    monkeypatch.setattr(runtime, "keyring_of", lambda _settings: Keys())
    listener = runtime.erasure_listener(SimpleNamespace(  # type: ignore[arg-type]
        settings=ServiceSettings(service_name="svc"), app=None, app_factory=None))
    listener.forget({"c1"})
    assert decoded._kept == {}
    other._decode(rec)
    assert decoded.parsed == 2


def test_a_record_at_a_known_position_with_another_key_is_decoded_again(decoded: DecodedRecords) -> None:
    """The key is part of what a sink reads (``Incoming.key``): a record with the same bytes but another key (produced
    again at a reset position, keyed otherwise) is not served the kept one's."""
    plain, other = runner(Plain()), runner(Other())  # two readers: a record is kept for the second
    first = record(4, "T-4")
    assert plain._decode(first).key == "T-4"
    rekeyed = Record(first.topic, first.partition, first.offset, first.timestamp, first.timestamp_type, b"K-other",
                     first.value, first.headers)
    assert other._decode(rekeyed).key == "K-other"


def test_the_sinks_of_a_shared_consumer_leave_nothing_kept_once_each_took_a_record(decoded: DecodedRecords) -> None:
    """With ``TSOP_CONSUMER_SHARED`` the sinks of a ``ConsumerGroup`` take a record decoded for a sibling from the
    partition's ``shared`` decodes; each must count as its reader all the same, or every record stays kept (to the
    20,000 bound, about 2 KB each for a small rating) for readers that never ask ``DECODED`` for it."""
    members = [runner(Plain()), runner(Other())]
    shared: dict[int, Incoming | Exception] = {}
    for n in range(3):
        rec = record(n, f"T-{n}")
        first = members[0]._decode(rec, shared)
        assert members[1]._decode(rec, shared) is first
    assert decoded.parsed == 3
    assert decoded._kept == {}
