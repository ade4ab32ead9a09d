"""The TMF621 view: statuses from lifecycle events, valid transitions, queries, inbound checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tsop_events import schemas as wire
from tsop_intake.tmf import inbound, model
from tsop_intake.tmf.api import TroubleTicket

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
TICKET = "7d5c1b52-3f0c-4d55-9a8f-0f3ad1f0b6a1"


def submitted(**attrs: Any) -> wire.RequestSubmitted:
    return wire.RequestSubmitted(
        ticket_id=TICKET, channel=wire.Channel.app, channel_id="ch-1", channel_request_ref="ext-9",
        customer_id="c-1", customer_tier=wire.CustomerTier.gold, region="north",
        service_type="broadband.fault_repair", description="No internet since this morning",
        time_requirement=wire.TimeRequirement(deadline=T0 + timedelta(hours=8)),
        attributes={"severity": "major", "name": "No internet", **attrs}, submitted_at=T0,
    )


def lifecycle() -> list[wire.TicketEvent]:
    at = T0
    return [
        submitted(),
        wire.RequestAccepted(ticket_id=TICKET, service_type="broadband.fault_repair", region="north", priority=2,
                             customer_tier=wire.CustomerTier.gold, resolve_by=at + timedelta(hours=8), accepted_at=at),
        wire.Assigned(ticket_id=TICKET, work_order_id="wo", technician_id="t-1", reason="r", candidates=[],
                      assigned_at=at),
        wire.AssignmentAccepted(ticket_id=TICKET, work_order_id="wo", technician_id="t-1", accepted_at=at),
        wire.WorkPaused(ticket_id=TICKET, work_order_id="wo", technician_id="t-1", kind="held",
                        reason="waiting for an ONT", paused_at=at),
        wire.WorkResumed(ticket_id=TICKET, work_order_id="wo", technician_id="t-1", resumed_at=at),
        wire.Resolved(ticket_id=TICKET, work_order_id="wo", technician_id="t-1", resolution_code="hw_replaced",
                      summary="ONT replaced", resolved_at=at),
        wire.Closed(ticket_id=TICKET, reason="rated", closed_at=at),
    ]


def test_the_lifecycle_reads_as_tmf_statuses_with_reasons() -> None:
    state, history = model.fold((e, T0) for e in lifecycle())
    assert state is not None
    assert [h["status"] for h in history] == [
        "acknowledged", "inProgress", "held", "inProgress", "resolved", "closed"
    ]
    assert history[2]["reason"] == "waiting for an ONT"
    resource = model.render(state, history, "/tt")
    assert resource["status"] == "closed"
    assert resource["priority"] == "High"
    assert resource["severity"] == "major"
    assert resource["ticketType"] == "broadband.fault_repair"
    assert resource["relatedParty"][0]["partyOrPartyRole"]["id"] == "c-1"
    assert resource["externalIdentifier"][0]["id"] == "ext-9"
    assert resource["resolutionDate"].endswith("Z")


def test_an_out_of_lifecycle_event_moves_nothing() -> None:
    state, _ = model.fold((e, T0) for e in lifecycle())
    assert state is not None
    late = wire.WorkResumed(ticket_id=TICKET, work_order_id="wo", technician_id="t-1", resumed_at=T0)
    assert model.evolve(state, late, T0).change is None  # closed is terminal


def test_a_step_kept_before_its_turn_is_ready_once_its_move_is_valid() -> None:
    """After a broker change another service's step can come before the ticket's own steps it followed: it waits
    (see projection.py) until the ticket is submitted and its move is valid there, or the ticket has ended."""
    sub, acc, _, aa, wp, wr, res, closed = lifecycle()
    reopened = wire.Reopened(ticket_id=TICKET, reason_code="not_solved", reason="down", requested_by="portal",
                             reopen_count=1, reopened_at=T0)
    assert not model.ready(None, aa)
    new, _ = model.fold([(sub, T0)])
    assert not any(model.ready(new, step) for step in (aa, wp, wr, res, closed, reopened))  # not acknowledged yet
    acknowledged, _ = model.fold([(sub, T0), (acc, T0)])
    assert model.ready(acknowledged, aa) and model.ready(acknowledged, res) and not model.ready(acknowledged, reopened)
    # a closure after a rating waits for the resolution (acknowledged -> closed is a complaint ticket's move)
    complaint_closed = wire.Closed(ticket_id=TICKET, reason="complaint_closed", basis="complaint_closed", closed_at=T0)
    assert not model.ready(acknowledged, closed) and model.ready(acknowledged, complaint_closed)
    resolved, _ = model.fold([(sub, T0), (acc, T0), (aa, T0), (res, T0)])
    assert model.ready(resolved, closed) and model.ready(resolved, reopened) and not model.ready(resolved, wp)
    cancelled, _ = model.fold([(sub, T0), (wire.RequestCancelled(ticket_id=TICKET, reason_code="withdrawn",
                                                                  reason="r", cancelled_by="portal",
                                                                  cancelled_at=T0), T0)])
    assert cancelled is not None and cancelled["status"] == "cancelled"
    assert model.ready(cancelled, aa)  # ended: nothing would move it any more, nothing waits for ever


def test_a_redelivered_submission_changes_nothing() -> None:
    state, _ = model.fold([(submitted(), T0)])
    assert model.evolve(state, submitted(), T0).state is None


@given(st.lists(st.sampled_from(lifecycle()[1:]), max_size=12))
def test_any_order_of_events_only_takes_valid_transitions(events: list[wire.TicketEvent]) -> None:
    state, history = model.fold([(submitted(), T0), *((e, T0) for e in events)])
    previous = None
    for h in history:
        assert model.can_move(previous, h["status"]), (previous, h["status"])
        previous = h["status"]
    assert state is not None and state["status"] == previous


def test_list_query_parsing() -> None:
    q = model.parse_list_query(
        [("status", "acknowledged,pending"), ("creationDate.gte", "2026-11-01T00:00:00Z"), ("sort", "-lastUpdate"),
         ("limit", "50"), ("offset", "100"), ("fields", "status,severity")]
    )
    assert q.where[0] == ("status", "IN", ["acknowledged", "pending"])
    assert q.where[1][0:2] == ("creation_date", ">=")
    assert q.order == (("last_update", True),)
    assert (q.limit, q.offset, q.fields) == (50, 100, frozenset({"status", "severity"}))


@pytest.mark.parametrize(
    "params, parameter",
    [
        ([("limit", "0")], "limit"),
        ([("limit", "abc")], "limit"),
        ([("status", "open")], "status"),
        ([("colour", "red")], "colour"),
        ([("sort", "description")], "sort"),
        ([("creationDate.gte", "yesterday")], "creationDate.gte"),
        ([("creationDate.after", "2026-11-01T00:00:00Z")], "creationDate.after"),
    ],
)
def test_a_bad_list_query_names_the_parameter(params: list[tuple[str, str]], parameter: str) -> None:
    with pytest.raises(model.InvalidQuery) as caught:
        model.parse_list_query(params)
    assert caught.value.parameter == parameter


def test_fields_selection_keeps_identity() -> None:
    assert model.select({"id": "1", "href": "/1", "@type": "TroubleTicket", "status": "x", "name": "n"},
                        frozenset({"status"})) == {"id": "1", "href": "/1", "@type": "TroubleTicket", "status": "x"}


def fvo(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "@type": "TroubleTicket",
        "description": "No dial tone on the fixed line",
        "severity": "Major",
        "ticketType": "fixed.fault_repair",
        "relatedParty": [{"@type": "RelatedPartyRefOrPartyRoleRef", "role": "customer",
                          "partyOrPartyRole": {"@type": "PartyRef", "id": "c-7"}}],
        "troubleTicketCharacteristic": [{"@type": "StringCharacteristic", "name": "region", "value": "north"}],
    }
    body.update(over)
    return {k: v for k, v in body.items() if v is not None}


def create(body: dict[str, Any]) -> dict[str, Any]:
    return inbound.parse_create(
        body, service_types={"fixed.fault_repair"}, channel_id="ch-1", author="portal", now=T0
    )


def test_a_valid_create_maps_to_native_fields() -> None:
    fields = create(fvo(name="Line dead", note=[{"@type": "Note", "text": "call after 6pm"}],
                        externalIdentifier=[{"@type": "ExternalIdentifier", "id": "crm-42"}],
                        troubleTicketCharacteristic=[{"name": "region", "value": "north"},
                                                     {"name": "siteId", "value": "S-9"}]))
    assert fields["location"] == {"site_id": "S-9"}
    assert fields["service_type"] == "fixed.fault_repair"
    assert fields["customer_id"] == "c-7" and fields["region"] == "north"
    assert fields["channel_request_ref"] == "crm-42"
    assert fields["attributes"]["severity"] == "Major"  # kept as sent
    assert fields["attributes"]["note"][0]["author"] == "portal"


@pytest.mark.parametrize(
    "over, field",
    [
        ({"description": None}, "description"),
        ({"severity": None}, "severity"),
        ({"severity": "apocalyptic"}, "severity"),
        ({"ticketType": "teleportation"}, "ticketType"),
        ({"@type": None}, "@type"),
        ({"status": "resolved"}, "status"),
        ({"priority": "High"}, "priority"),
        ({"id": "mine"}, "id"),
        ({"attachment": []}, "attachment"),
        ({"colour": "red"}, "colour"),
        ({"description": 42}, "description"),
        ({"relatedParty": [{"role": "customer", "partyOrPartyRole": {"id": "a"}},
                           {"role": "customer", "partyOrPartyRole": {"id": "b"}}]}, "relatedParty"),
        ({"relatedParty": [{"role": "customer", "partyOrPartyRole": {"id": " "}}]}, "relatedParty"),
        ({"troubleTicketCharacteristic": [{"name": "colour", "value": "red"}]}, "troubleTicketCharacteristic[0].name"),
        ({"requestedResolutionDate": "0001-01-01T00:00:00+14:00"}, "requestedResolutionDate"),
        ({"requestedResolutionDate": "2026-12-01T10:00:00"}, "requestedResolutionDate"),
        ({"channel": {"id": "someone-else"}}, "channel"),
    ],
)
def test_a_bad_create_names_the_attribute(over: dict[str, Any], field: str) -> None:
    body = fvo()
    for k, v in over.items():
        if v is None:
            body.pop(k, None)
        else:
            body[k] = v
    with pytest.raises(inbound.BadAttribute) as caught:
        create(body)
    assert caught.value.field == field


def test_a_patch_maps_changes_and_refuses_server_owned_attributes() -> None:
    kept = {"severity": "major", "name": "Line dead", "note": [{"@type": "Note", "text": "first"}]}
    changes, status = inbound.parse_patch(
        {"description": "Still no dial tone", "severity": "critical", "status": "cancelled",
         "note": [{"text": "second"}],
         "troubleTicketCharacteristic": [{"name": "address", "value": "1 Main St"},
                                         {"name": "detail.floor", "value": "3"}]},
        kept=kept, author="a", now=T0,
    )
    assert changes["description"] == "Still no dial tone"
    assert changes["location"] == {"address": "1 Main St"} and changes["details"] == {"floor": "3"}
    attributes = changes["attributes"]
    assert attributes["severity"] == "critical" and attributes["name"] == "Line dead"
    assert [n["text"] for n in attributes["note"]] == ["first", "second"]  # notes are appended, never replaced
    assert status == "cancelled"
    for body, field in (({"statusChangeHistory": []}, "statusChangeHistory"), ({"ticketType": "x"}, "ticketType"),
                        ({"status": "done"}, "status"), ({}, "body")):
        with pytest.raises(inbound.BadAttribute) as caught:
            inbound.parse_patch(body, kept={}, author="a", now=T0)
        assert caught.value.field == field


def test_list_sql_uses_equality_for_one_value_and_counts_only_categorical_filters() -> None:
    q = model.parse_list_query([("status", "inProgress"), ("severity", "major,critical")])
    condition, order, args, countable = q.sql((("channel_id", "IN", ["ch-1"]),))
    assert condition == "true AND status = $1 AND severity = ANY($2) AND channel_id = $3"
    assert args == ["inProgress", ["major", "critical"], "ch-1"]
    assert order == "creation_date DESC, ticket_id" and countable
    dated = model.parse_list_query([("status", "held"), ("creationDate.gte", "2026-11-01T00:00:00+00:00")])
    assert dated.sql()[3] is False  # a date range is counted on the tickets themselves
    by_severity = model.parse_list_query([("sort", "severity,-lastUpdate")])
    assert by_severity.sql()[1] == "severity ASC NULLS LAST, last_update DESC, ticket_id"


def test_the_events_the_read_model_skips_never_change_the_view() -> None:
    state, _ = model.fold([(submitted(), T0), (lifecycle()[1], T0)])
    skipped = [
        wire.Assigned(ticket_id=TICKET, work_order_id="wo", technician_id="t", reason="r", candidates=[],
                      assigned_at=T0),
        wire.AssignmentDeclined(ticket_id=TICKET, work_order_id="wo", technician_id="t", reason="r", declined_at=T0),
        wire.Escalated(ticket_id=TICKET, to_role="supervisor", reason="breach", escalated_at=T0),
        wire.Rated(ticket_id=TICKET, score=5, rated_at=T0),
        wire.Archived(ticket_id=TICKET, dossier_hash="h", event_count=3, last_event_id="e", archived_at=T0),
    ]
    for ev in skipped:
        assert ev.event_type not in model.RELEVANT
        assert model.evolve(state, ev, T0).state is None, ev.event_type
    assert all(e.event_type in model.RELEVANT for e in lifecycle() if not isinstance(e, wire.Assigned))


def test_the_conformance_kit_minimum_is_taken_and_review_asks_for_the_rest() -> None:
    minimal = {"@type": "TroubleTicket", "description": "No dial tone on the fixed line", "severity": "Critical",
               "ticketType": "fixed.fault_repair"}
    fields = create(minimal)
    assert fields["customer_id"] == "" and fields["region"] == ""
    assert fields["attributes"]["severity"] == "Critical"  # as sent


def test_an_operator_ticket_type_maps_to_a_service_type_and_is_kept() -> None:
    names = {"bill dispute": "fixed.fault_repair"}
    fields = inbound.parse_create(
        fvo(ticketType="Bill Dispute"), service_types={"fixed.fault_repair"}, channel_id="ch-1", author="p",
        now=T0, service_type_for=lambda n: names.get(n.lower()),
    )
    assert fields["service_type"] == "fixed.fault_repair" and fields["attributes"]["ticketType"] == "Bill Dispute"
    state = model.created(submitted(ticketType="Bill Dispute", severity="Critical"))
    assert state["ticket_type"] == "Bill Dispute" and state["severity"] == "critical"
    shown = model.render(state, [], "/tt")
    assert shown["ticketType"] == "Bill Dispute" and shown["severity"] == "Critical"


def test_a_customer_added_later_shows() -> None:
    ev = submitted()
    state = model.created(ev.model_copy(update={"customer_id": "", "region": ""}))
    assert "relatedParty" not in model.render(state, [], "/tt")
    upd = wire.RequestUpdated(ticket_id=TICKET, changes={"customer_id": "c-9", "region": "north"}, updated_by="p",
                              updated_at=T0)
    after = model.evolve(state, upd, T0).state
    assert after is not None and after["customer_id"] == "c-9"
    assert model.render(after, [], "/tt")["relatedParty"][0]["partyOrPartyRole"]["id"] == "c-9"
    changes, _ = inbound.parse_patch(
        {"relatedParty": [{"role": "customer", "partyOrPartyRole": {"id": "c-9"}}]}, kept={}, author="p", now=T0
    )
    assert changes == {"customer_id": "c-9"}


def test_severity_filters_match_in_any_case() -> None:
    q = model.parse_list_query([("severity", "Critical,MAJOR")])
    assert q.where == (("severity", "IN", ["critical", "major"]),)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("offset", str(2**64)),
        ("offset", "1_0"),
        ("offset", "\u0665"),
        ("limit", " 5"),
        ("limit", "-1"),
        ("creationDate.gte", "0001-01-01T00:00:00+14:00"),
        ("lastUpdate.lt", "9999-12-31T23:59:59-14:00"),
    ],
)
def test_out_of_range_list_parameters_are_refused(name: str, value: str) -> None:
    with pytest.raises(model.InvalidQuery) as caught:
        model.parse_list_query([(name, value)])
    assert caught.value.parameter == name


def test_a_duplicate_names_its_original_only_to_whoever_may_see_it() -> None:
    state = model.created(submitted())
    linked = wire.RequestLinked(ticket_id=TICKET, duplicate_of="0" * 8 + "-0000-0000-0000-" + "0" * 12,
                                reason="r", linked_at=T0)
    evolution = model.evolve(state, linked, T0)
    assert evolution.state is not None and evolution.change is not None
    assert "0000" not in evolution.change.reason
    assert "troubleTicketRelationship" not in model.render(evolution.state, [], "/tt")
    assert "troubleTicketRelationship" not in model.render(evolution.state, [], "/tt", lambda _: False)
    rel = model.render(evolution.state, [], "/tt", lambda _: True)["troubleTicketRelationship"]
    assert rel[0]["relationshipType"] == "isDuplicateOf"
    old = {**evolution.state, "status_change_reason": "duplicate of open ticket " + linked.duplicate_of}
    assert linked.duplicate_of not in model.render(old, [], "/tt")["statusChangeReason"]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
    max_leaves=4,
)


@given(st.dictionaries(st.sampled_from(["severity", "ticketType", "name", "note", "@baseType", "@schemaLocation"]),
                       JSON_VALUES))
def test_any_native_attributes_render_as_a_trouble_ticket(attrs: dict[str, Any]) -> None:
    """A native request keeps free-form attributes; the TMF621 view of it is always a valid TroubleTicket (a
    text ``note`` answered 500 when the view was read)."""
    ev = submitted().model_copy(update={"attributes": attrs})
    state = model.created(ev)
    assert isinstance(state["ticket_type"], str) and state["severity"] in (None, *[
        v.lower() for v in attrs.values() if isinstance(v, str)])
    TroubleTicket.model_validate(model.render(state, [], "/tt"))
    upd = wire.RequestUpdated(ticket_id=TICKET, changes={"attributes": attrs}, updated_by="p", updated_at=T0)
    after = model.evolve(model.created(submitted()), upd, T0).state
    assert after is not None
    TroubleTicket.model_validate(model.render(after, [], "/tt"))
