from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from tsop_archive.domain import ArchivedEvent, causal_order, chain_hash

T = datetime(2026, 6, 1, tzinfo=UTC)


def ev(seq, id_, cause=None, data=None):
    return ArchivedEvent(seq, id_, "t", "s", T, cause, data or {"n": seq})


def test_causal_order_puts_causes_first_even_when_they_arrived_later():
    # after a broker restart, an effect may be republished before its cause
    events = [ev(1, "assigned", cause="accepted"), ev(2, "submitted"), ev(3, "accepted", cause="submitted")]
    assert [e.id for e in causal_order(events)] == ["submitted", "accepted", "assigned"]


@given(st.permutations(list(range(8))))
def test_causal_order_of_a_chain_is_the_chain_whatever_the_arrival(perm):
    chain = [ev(perm[i], f"e{i}", cause=f"e{i - 1}" if i else None) for i in range(8)]
    assert [e.id for e in causal_order(chain)] == [f"e{i}" for i in range(8)]


def test_chain_hash_detects_any_change():
    events = [ev(1, "a"), ev(2, "b"), ev(3, "c")]
    h = chain_hash(events)
    assert h == chain_hash(list(events))
    assert chain_hash([events[0], ev(2, "b", data={"n": 99}), events[2]]) != h
    assert chain_hash([events[1], events[0], events[2]]) != h
    assert chain_hash(events[:2]) != h
