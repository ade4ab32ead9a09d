"""The archive never seals a known gap: the pure rules (dead letter → gap → seal)."""

from datetime import UTC, datetime
from uuid import uuid4

import pytest
from eventsourcing.utils import resolve_topic

from tsop_archive.api import DossierAnswer
from tsop_archive.domain import (
    AlreadySealed,
    ArchivedEvent,
    Dossier,
    DossierError,
    Gap,
    chain_hash,
    dossier_id,
    dossier_status,
    letter_facts,
    may_seal_complete,
    open_gaps,
    seal,
    seal_by_decision,
)
from tsop_archive.projection import jsonb_safe, row_to_event
from tsop_archive.wire import WIRE
from tsop_events.errors import Conflict
from tsop_events.schemas import Archived, Closed, DeadLettered

T = datetime(2026, 6, 1, tzinfo=UTC)
TICKETS, DEADLETTER = "tsop.tickets", "tsop.deadletter"


def letter(**kw: object) -> DeadLettered:
    fields: dict[str, object] = {
        "consumer": "intake-tmf",
        "source_topic": TICKETS,
        "source_partition": 2,
        "source_offset": 17,
        "source_key": "t1",
        "source_headers": {"ce_id": "e-logged", "ce_type": "tsop.ticket.work-logged.v1"},
        "source_value": "{}",
        "error": "UntranslatableCharacterError: \\u0000 cannot be converted to text",
        "failed_at": T,
    }
    fields.update(kw)
    return DeadLettered.model_validate(fields)


def gap(noted: int, delivered: int | None = None, event: str = "e-logged", consumer: str = "intake-tmf") -> Gap:
    return Gap(event, "tsop.ticket.work-logged.v1", consumer, "boom", f"{TICKETS}:2:17", T, noted, delivered)


def ev(seq: int, id_: str, type_: str = "t", cause: str | None = None) -> ArchivedEvent:
    return ArchivedEvent(seq, id_, type_, "s", T, cause, {"n": seq})


def test_a_consumers_letter_names_the_ticket_event_consumer_and_error() -> None:
    facts = letter_facts(letter(), TICKETS, DEADLETTER)
    assert facts is not None
    assert (facts.ticket_id, facts.event_id, facts.event_type, facts.consumer) == (
        "t1", "e-logged", "tsop.ticket.work-logged.v1", "intake-tmf"
    )
    assert facts.source == f"{TICKETS}:2:17" and "\\u0000" in facts.error


def test_a_relays_letter_names_the_ticket_in_its_key_whatever_its_source_topic() -> None:
    relay = letter(consumer="relay:dispatch", source_topic="tsop.outbox", source_partition=-1, source_offset=42,
                   source_key="t9", source_headers={"ce_id": "e-resolved"})
    facts = letter_facts(relay, TICKETS, DEADLETTER)
    assert facts is not None and (facts.ticket_id, facts.event_id, facts.event_type) == ("t9", "e-resolved", None)
    # what the relay writes: the stable id, and the stored class when no wire type could be made
    stored = letter(consumer="relay:dispatch", source_topic="tsop.outbox.dispatch", source_partition=-1,
                    source_offset=42, source_key="t9",
                    source_headers={"ce_id": "e-resolved", "stored_topic": "tsop_dispatch.domain:WorkOrder.Resolved"})
    facts = letter_facts(stored, TICKETS, DEADLETTER)
    assert facts is not None and facts.event_type == "tsop_dispatch.domain:WorkOrder.Resolved"
    assert facts.source == "tsop.outbox.dispatch:-1:42"


def test_a_letter_without_an_event_id_is_named_by_its_position() -> None:
    facts = letter_facts(letter(source_headers={}), TICKETS, DEADLETTER)
    assert facts is not None and facts.event_id == f"{TICKETS}:2:17"


def test_letters_about_other_topics_or_without_a_key_concern_no_ticket() -> None:
    assert letter_facts(letter(source_topic="tsop.workforce"), TICKETS, DEADLETTER) is None
    assert letter_facts(letter(source_key=None), TICKETS, DEADLETTER) is None
    assert letter_facts(letter(consumer="relay:intake", source_key=None), TICKETS, DEADLETTER) is None


def test_a_letter_about_a_letter_reveals_the_gap_inside_it() -> None:
    inner = letter()
    outer = letter(consumer="archive-store", source_topic=DEADLETTER, source_key="tsop.tickets:2:17",
                   source_headers={"ce_type": DeadLettered.event_type}, source_value=inner.model_dump_json())
    facts = letter_facts(outer, TICKETS, DEADLETTER)
    assert facts is not None and (facts.ticket_id, facts.event_id, facts.consumer) == ("t1", "e-logged", "intake-tmf")
    assert letter_facts(letter(source_topic=DEADLETTER, source_value="not json"), TICKETS, DEADLETTER) is None


def test_a_gap_stays_open_until_the_event_arrives_after_the_failure_was_noted() -> None:
    assert gap(noted=5).open  # never delivered (a relay's or the archive's own failure)
    assert gap(noted=5, delivered=3).open  # delivered before the failure: another consumer still lacks it
    assert not gap(noted=5, delivered=8).open  # delivered again afterwards: a republish
    assert not may_seal_complete([gap(noted=5)]) and may_seal_complete([gap(noted=5, delivered=8)])
    assert may_seal_complete([])


def test_the_latest_failure_of_each_event_and_consumer_counts() -> None:
    # failed, republished, failed again: open; each consumer's gap is its own
    gaps = [gap(2, 9), gap(10, 9), gap(4, 9, consumer="incident-open")]
    assert [(g.noted, g.consumer) for g in open_gaps(gaps)] == [(10, "intake-tmf")]
    assert open_gaps([gap(2, 9), gap(4, 9)]) == []


def test_dossier_status() -> None:
    assert dossier_status(False, [], None) == "open"
    assert dossier_status(True, [], None) == "awaiting_seal"
    assert dossier_status(True, [gap(5)], None) == "incomplete"
    assert dossier_status(False, [gap(5)], None) == "incomplete"
    assert dossier_status(True, [gap(5, 8)], None) == "awaiting_seal"
    assert dossier_status(True, [], True) == "sealed"
    assert dossier_status(True, [gap(5)], True) == "sealed_incomplete"  # a gap found after the seal
    assert dossier_status(True, [gap(5)], False) == "sealed_incomplete"  # sealed by a decision


def test_a_dossier_with_an_open_gap_is_sealed_only_by_a_decision_with_a_reason() -> None:
    events = [ev(1, "a"), ev(2, "b", cause="a")]
    with pytest.raises(DossierError):
        seal(uuid4(), "t1", events, [gap(5)], T, "b")
    with pytest.raises(DossierError):
        seal(uuid4(), "t1", events, [gap(5)], T, "b", decided_by="auditor-1", reason="")
    d = seal(uuid4(), "t1", events, [gap(5)], T, "b", decided_by="auditor-1", reason="event lost for good")
    assert d.complete is False and d.decided_by == "auditor-1" and d.reason == "event lost for good"
    assert [m["event_id"] for m in d.missing] == ["e-logged"] and d.dossier_hash == chain_hash(events)
    wire = WIRE(d.collect_events()[0])
    assert wire is not None and isinstance(wire.event, Archived)
    assert wire.event.complete is False and wire.event.missing_event_ids == ["e-logged"]
    assert wire.event.decided_by == "auditor-1" and wire.event.reason == "event lost for good"


def test_a_complete_seal_says_so_on_the_wire() -> None:
    d = seal(uuid4(), "t1", [ev(1, "a")], [gap(5, 8)], T, "a")
    assert d.complete is True and d.missing == []
    wire = WIRE(d.collect_events()[0])
    assert wire is not None and isinstance(wire.event, Archived)
    assert wire.event.complete is True and wire.event.missing_event_ids == [] and wire.event.last_event_id == "a"
    with pytest.raises(DossierError):
        seal(uuid4(), "t1", [], [], T, "a")  # nothing held: nothing to seal


def test_what_jsonb_refuses_is_kept_raw_and_read_back_the_same() -> None:
    body = b'{"ticket_id":"t1","description":"a\\u0000b"}'
    assert not jsonb_safe(body) and not jsonb_safe(b'{"x":"\\ud800"}') and not jsonb_safe(b'{"x":"\\uDFFF"}')
    assert jsonb_safe(b'{"x":"caf\xc3\xa9","y":"\\u00e9"}')
    row = {"seq": 1, "ce_id": "e", "ce_type": "t", "ce_source": "s", "ce_time": T, "causation_id": None,
           "data": None, "raw": memoryview(body), "recovered_from": None}
    e = row_to_event(row)
    assert e.data["description"] == "a\x00b"
    # the hash covers the NUL, and a lone surrogate still hashes (deterministically)
    assert chain_hash([e]) != chain_hash([ArchivedEvent(1, "e", "t", "s", T, None, {**e.data, "description": "ab"})])
    lone = row_to_event({**row, "raw": b'{"x":"\\ud800"}'})
    assert lone.data == {"x": "\ud800"} and chain_hash([lone]) == chain_hash([lone])


def test_a_decision_seals_only_what_is_missing_and_names_its_cause() -> None:
    closed = Closed.event_type
    events = [ev(2, "b", type_=closed, cause="a"), ev(1, "a"), ev(3, "x", type_=Archived.event_type, cause="b")]
    with pytest.raises(DossierError) as nothing:
        seal_by_decision("t1", events, [gap(5, 8)], T, "auditor-1", "why")
    assert isinstance(nothing.value, Conflict) and nothing.value.title == "Nothing to decide"
    d = seal_by_decision("t1", events, [gap(5)], T, "auditor-1", "lost for good")
    # the archive's own Archived is never sealed; the cause is the last event held in causal order
    assert d.id == dossier_id("t1") and d.event_ids == ["a", "b"] and d.causation_id == "b"
    assert d.complete is False and d.decided_by == "auditor-1"
    with pytest.raises(DossierError) as open_ticket:  # not ended: later events would fall outside the seal
        seal_by_decision("t1", [ev(1, "a")], [gap(5)], T, "auditor-1", "lost")
    assert "has not ended" in str(open_ticket.value)
    missing_final = Gap("e-closed", closed, "archive-store", "boom", f"{TICKETS}:2:18", T, 7, None)
    only_gaps = seal_by_decision("t1", [ev(1, "a")], [gap(5), missing_final], T, "auditor-1", "lost")
    assert only_gaps.causation_id == "a"
    with pytest.raises(DossierError):  # nothing held at all: nothing to seal
        seal_by_decision("t1", [], [gap(5)], T, "auditor-1", "lost")
    assert issubclass(AlreadySealed, DossierError) and AlreadySealed.title == "Already sealed"


def test_stored_seals_keep_their_topic_and_old_ones_map_as_before() -> None:
    """Seals stored before ``complete`` existed load and go on the wire as complete, as they always did."""
    assert Dossier.Sealed.__module__ == "tsop_archive.domain" and Dossier.Sealed.__qualname__ == "Dossier.Sealed"
    assert resolve_topic("tsop_archive.domain:Dossier.Sealed") is Dossier.Sealed
    from tsop_archive.records.domain import Expiry, LegalHold
    from tsop_events.schemas import LegalHoldPlaced, LegalHoldPlacedAgain, LegalHoldReleased, RecordsExpired

    assert WIRE.mapped() == {Dossier.Sealed: Archived, Expiry.Recorded: RecordsExpired,
                             LegalHold.Placed: LegalHoldPlaced, LegalHold.Released: LegalHoldReleased,
                             LegalHold.PlacedAgain: LegalHoldPlacedAgain}
    d = seal(uuid4(), "t1", [ev(1, "a"), ev(2, "b", cause="a")], [], T, "b")
    state = dict(d.collect_events()[0].__dict__)
    for added_later in ("complete", "missing", "decided_by", "reason"):
        state.pop(added_later)
    old = object.__new__(Dossier.Sealed)
    object.__setattr__(old, "__dict__", state)
    out = WIRE(old)
    assert out is not None and out.causation_id == "b"
    assert out.event == Archived(ticket_id="t1", dossier_hash=d.dossier_hash, event_count=2, last_event_id="b",
                                 archived_at=T, complete=True, missing_event_ids=[], decided_by=None, reason=None)
    rebuilt = old.mutate(None)
    assert isinstance(rebuilt, Dossier) and rebuilt.complete is True and rebuilt.missing == []


def test_the_dossier_answer_keeps_its_shape() -> None:
    recovered = ArchivedEvent(2, "b", Closed.event_type, "s", T, "a", {"n": 2}, recovered_from="letter-1")
    events = [ev(1, "a"), recovered]
    d = seal(dossier_id("t1"), "t1", events, [gap(5, 8)], T, "b")
    body = DossierAnswer.of("t1", events, [gap(5, 8)], d).model_dump(mode="json", exclude_unset=True)
    g = {"event_id": "e-logged", "event_type": "tsop.ticket.work-logged.v1", "consumer": "intake-tmf",
         "error": "boom", "source": f"{TICKETS}:2:17", "failed_at": T.isoformat(), "open": False}
    assert body == {
        "ticket_id": "t1", "status": "sealed", "complete": True, "missing": [], "gaps": [g],
        "events": [
            {"id": "a", "type": "t", "source": "s", "time": T.isoformat(), "causation_id": None, "data": {"n": 1}},
            {"id": "b", "type": Closed.event_type, "source": "s", "time": T.isoformat(), "causation_id": "a",
             "data": {"n": 2}, "recovered_from": "letter-1"},
        ],
        "seal": {"dossier_hash": chain_hash(events), "event_count": 2, "sealed_at": T.isoformat(), "verified": True,
                 "complete": True, "missing": [], "decided_by": None, "reason": None},
    }
    changed = [ev(1, "a"), ArchivedEvent(2, "b", Closed.event_type, "s", T, "a", {"n": 3})]
    assert DossierAnswer.of("t1", changed, [], d).seal.verified is False  # type: ignore[union-attr]
    open_ = DossierAnswer.of("t1", events[:1], [gap(5)], None)
    assert (open_.status, open_.complete, open_.seal) == ("incomplete", False, None)
