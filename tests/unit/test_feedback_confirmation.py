"""Closure on the customer's explicit confirmation (§2.4), with the injectable clock: basis ``confirmed``, the
window ends with it, a retry changes nothing, an early confirmation is kept and applied as an early rating is,
another channel's ticket is forbidden and refusals change nothing."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.test_feedback_voice import DAY, NOW, make_app, names, resolved, wire_events
from tsop_events import schemas as wire
from tsop_events.errors import Forbidden, NotFound
from tsop_feedback.commands import case_id
from tsop_feedback.domain import AlreadyClosed, AlreadyRated, FeedbackCase


def opened(app: object, ticket: str, channel: str = "ch-1") -> None:
    case = FeedbackCase(id=case_id(ticket), ticket_id=ticket, callback_url=None, opened_at=NOW, channel_id=channel,
                        service_type="broadband.fault_repair", customer_id="c1")
    app.save(case)  # type: ignore[attr-defined]


def test_a_confirmation_closes_on_the_basis_confirmed_and_ends_the_window() -> None:
    app, clock = make_app(reopen_period_days=7)
    resolved(app, "t")
    clock.advance(timedelta(hours=2))
    case, closed = app.confirm("t", "channel:portal", "works again, thanks", channel_id="ch-1")
    assert closed and case.closed_reason == "confirmed" and case.closed_basis == "confirmed"
    assert case.confirmed_by == "channel:portal"
    assert names(app, "t") == ["feedback-sent", "closed"]
    closed_ev = wire_events(app, "t")[-1]
    assert isinstance(closed_ev, wire.Closed)
    assert (closed_ev.reason, closed_ev.basis) == ("confirmed", "confirmed")
    assert closed_ev.reopenable_until == clock.now() + timedelta(days=7)
    # the window ended with the closure: no reminder, no expiry; a rating afterwards is refused
    clock.advance(DAY * 2)
    assert app.expire_windows() == 0
    version = app.load(case_id("t")).version
    with pytest.raises(AlreadyClosed):
        app.rate("t", 5, None)
    assert app.load(case_id("t")).version == version
    # and it can be reopened within its period, like any closure
    case = app.reopen("t", "it broke again", "agent-1")
    assert case.closed_reason is None and case.confirmed_by is None and case.reopen_count == 1


def test_the_same_confirmation_again_is_a_harmless_retry() -> None:
    app, _ = make_app()
    resolved(app, "t")
    app.confirm("t", "agent-1")
    version = app.load(case_id("t")).version
    case, closed = app.confirm("t", "agent-1")
    assert closed and case.closed_basis == "confirmed" and app.load(case_id("t")).version == version
    assert names(app, "t").count("closed") == 1


def test_a_rated_or_lapsed_ticket_refuses_a_confirmation_and_nothing_changes() -> None:
    app, clock = make_app()
    resolved(app, "rated")
    app.rate("rated", 5, None)
    version = app.load(case_id("rated")).version
    with pytest.raises(AlreadyClosed):
        app.confirm("rated", "agent-1")
    assert app.load(case_id("rated")).version == version
    resolved(app, "late")
    clock.advance(DAY + timedelta(seconds=1))  # the window passed; the timer has not closed it yet
    version = app.load(case_id("late")).version
    with pytest.raises(AlreadyClosed):
        app.confirm("late", "agent-1")
    assert app.load(case_id("late")).version == version


def test_another_channels_ticket_is_forbidden_and_an_unknown_one_is_not_found() -> None:
    app, _ = make_app()
    resolved(app, "t", channel="ch-1")
    version = app.load(case_id("t")).version
    with pytest.raises(Forbidden):
        app.confirm("t", "channel:other", channel_id="ch-2")
    assert app.load(case_id("t")).version == version
    with pytest.raises(NotFound):
        app.confirm("never-heard-of", "agent-1", patience=0.0)


def test_an_early_confirmation_is_kept_and_closes_the_ticket_when_the_resolution_arrives() -> None:
    app, clock = make_app()
    opened(app, "t")
    clock.advance(timedelta(hours=1))
    case, closed = app.confirm("t", "channel:portal", "fixed", channel_id="ch-1")
    assert not closed and case.closed_reason is None
    case, closed = app.confirm("t", "channel:portal", "fixed", channel_id="ch-1")  # a retry of the kept one
    assert not closed
    with pytest.raises(AlreadyRated):  # one answer is kept per resolution: a rating now is refused
        app.rate("t", 5, None, channel_id="ch-1")
    clock.advance(timedelta(seconds=5))
    case = resolved(app, "t", event_id="r1")  # resolved a moment before the confirmation reached us
    case = app.load(case_id("t"))
    assert case.closed_basis == "confirmed" and case.confirmed_by == "channel:portal"
    assert names(app, "t")[-1] == "closed"


def test_a_confirmation_given_before_the_work_was_resolved_confirms_nothing() -> None:
    app, clock = make_app()
    opened(app, "t")
    app.confirm("t", "agent-1")
    clock.advance(timedelta(hours=3))  # resolved long after the "confirmation"
    resolved(app, "t")
    case = app.load(case_id("t"))
    assert case.closed_reason is None and case.rating_due_at is not None
    case, closed = app.confirm("t", "agent-1")  # the customer confirms the resolution in its window
    assert closed and case.closed_basis == "confirmed"


def test_an_early_rating_is_still_kept_and_applied_as_before() -> None:
    app, _ = make_app()
    opened(app, "t")
    case, recorded = app.rate("t", 4, "ok", tags=["on_time"], solved=None)
    assert not recorded
    _, recorded = app.rate("t", 4, "ok", tags=["on_time"])  # the same again: a retry
    assert not recorded
    with pytest.raises(AlreadyRated):
        app.rate("t", 3, "ok")
    with pytest.raises(AlreadyRated):  # a rating is kept: a confirmation now is refused
        app.confirm("t", "agent-1")
    resolved(app, "t")
    case = app.load(case_id("t"))
    assert case.closed_basis == "rated" and case.score == 4


Answer = tuple[str, int]
ANSWERS = st.one_of(st.just(("confirm", 0)), st.tuples(st.just("rate"), st.integers(3, 5)))


def answer(app: object, a: Answer) -> bool | None:
    """Give one answer; what it said (closed or recorded: True, kept: False), None when refused (409)."""
    try:
        if a[0] == "confirm":
            return bool(app.confirm("t", "agent-1")[1])  # type: ignore[attr-defined]
        return bool(app.rate("t", a[1], None)[1])  # type: ignore[attr-defined]
    except (AlreadyClosed, AlreadyRated):
        return None


@settings(max_examples=40, deadline=None)
@given(early=st.lists(ANSWERS, max_size=3), late=st.lists(ANSWERS, max_size=3), gap=st.sampled_from([0, 20, 3600]))
def test_whatever_the_customer_answers_and_when_the_ticket_closes_once_on_its_first_answer_and_refusals_change_nothing(
    early: list[Answer], late: list[Answer], gap: int,
) -> None:
    app, clock = make_app()
    opened(app, "t")
    first: Answer | None = None
    for a in early:  # before feedback has read Resolved: the first is kept, the same again is a retry
        version = app.load(case_id("t")).version
        said = answer(app, a)
        if said is None:
            assert first is not None and a != first and app.load(case_id("t")).version == version
        else:
            assert said is False and (first is None or a == first)
            first = first or a
    clock.advance(timedelta(seconds=gap))
    resolved(app, "t")
    case = app.load(case_id("t"))
    applied = first is not None and gap <= 30  # given after (or within the clock skew of) the resolution
    assert (case.closed_reason is not None) == applied
    closer = first if applied else None
    for a in late:
        version = app.load(case_id("t")).version
        said = answer(app, a)
        if said is None:  # closed already (a confirmation repeated is a retry, answered True)
            assert closer is not None and app.load(case_id("t")).version == version
        else:
            assert said is True
            if closer is not None:
                assert a[0] == "confirm" == closer[0] and app.load(case_id("t")).version == version
            closer = closer or a
    case = app.load(case_id("t"))
    assert names(app, "t").count("closed") == (1 if closer else 0)
    if closer is not None:
        assert case.closed_basis == ("confirmed" if closer[0] == "confirm" else "rated")


def test_what_the_customer_said_on_confirming_is_stored_sealed() -> None:
    """The note is the customer's own words (personal data, docs/erasure.md): the event store holds only its
    ciphertext, kept early or applied, and the service reads it back."""
    mark = "works again, my flat at 12 Rue Marker-Q7"
    app, clock = make_app()
    opened(app, "early")
    app.confirm("early", "channel:portal", mark, channel_id="ch-1")  # kept until Resolved arrives
    clock.advance(timedelta(seconds=5))
    resolved(app, "early", event_id="r-early")
    resolved(app, "t")
    app.confirm("t", "channel:portal", mark, channel_id="ch-1")
    for ticket in ("early", "t"):
        stored = list(app.recorder.select_events(case_id(ticket)))
        assert any(s.topic.endswith(("ConfirmationKept", "Confirmed")) for s in stored)
        assert not any(b"Marker-Q7" in bytes(s.state) for s in stored)
    assert app.repository.get(case_id("t")).closed_basis == "confirmed"
