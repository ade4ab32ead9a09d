from datetime import UTC, datetime

import pytest

from tsop_events import catalogue
from tsop_events.envelope import MalformedEnvelope, stable_event_id, unwrap, wrap
from tsop_events.schemas import EVENT_TYPES, Rated, UnknownEventType, parse_event


def test_committed_catalogue_matches_the_models():
    assert catalogue.check() == [], "run `make catalogue` and commit the result"


def test_catalogue_check_notices_a_changed_model(tmp_path):
    catalogue.write(tmp_path)
    path = tmp_path / "schemas" / f"{Rated.event_type}.json"
    path.write_text(path.read_text().replace('"score"', '"stars"'))
    assert catalogue.check(tmp_path) == [f"out of date schemas/{Rated.event_type}.json"]


def test_every_type_name_is_versioned_and_unique():
    assert all(t.rsplit(".", 1)[-1].startswith("v") for t in EVENT_TYPES)
    assert len({c.__name__ for c in EVENT_TYPES.values()}) == len(EVENT_TYPES)


def test_envelope_round_trip_uses_cloudevents_binary_headers():
    e = Rated(ticket_id="t1", score=5, comment=None, rated_at=datetime(2026, 1, 1, tzinfo=UTC))
    env = wrap(e, event_id=stable_event_id("agg", 3), source="feedback", causation_id="c1")
    headers = dict(env.headers())
    assert headers["ce_specversion"] == b"1.0" and headers["ce_type"] == b"tsop.ticket.rated.v1"
    assert headers["ce_subject"] == b"t1" and headers["ce_correlationid"] == b"t1"
    back = unwrap(env.headers(), env.data)
    assert back.event() == e and back.causation_id == "c1"
    assert stable_event_id("agg", 3) == env.id != stable_event_id("agg", 4)


def test_bad_records_are_refused_clearly():
    with pytest.raises(MalformedEnvelope):
        unwrap([("ce_type", b"x")], b"{}")
    with pytest.raises(UnknownEventType):
        parse_event("tsop.nope.v1", b"{}")
    with pytest.raises(ValueError):
        parse_event(Rated.event_type, b'{"ticket_id": "t", "score": 9}')
