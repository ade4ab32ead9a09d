"""Crypto-shredding (tsop_events.personal): personal data sealed under per-subject keys, opened for readers,
unreadable once the customer's keys are destroyed; the event store holds only ciphertext (docs/erasure.md)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest
from pydantic import ValidationError

from tsop_events import schemas as wire
from tsop_events.personal import ERASED, MemoryKeyring, error_text, is_sealed
from tsop_intake.catalogue import Catalogue
from tsop_intake.commands import IntakeApp
from tsop_intake.domain import CustomerErasure, Facts, ServiceRequest, review
from tsop_intake.wire import WIRE

NOW = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
MARK = "Zebra-Marker-4711 Flat 3, 12 Quiet Lane"


def test_seal_open_round_trip_and_erase_per_customer() -> None:
    ring = MemoryKeyring()
    value = {"address": MARK, "floor": 3, "ok": True, "notes": ["gate code 1234", None], "x": None}
    sealed = ring.seal("ticket-a", "cust-a", value)
    assert sealed["floor"] == 3 and sealed["ok"] is True and sealed["x"] is None  # not text: kept
    assert is_sealed(sealed["address"]) and is_sealed(sealed["notes"][0]) and sealed["notes"][1] is None
    assert MARK not in json.dumps(sealed)
    other = ring.seal("ticket-b", "cust-b", "B's own words")
    assert ring.open(sealed) == {**value, "notes": ["gate code 1234", None]}
    assert ring.seal("ticket-a", "cust-a", sealed) == sealed  # already sealed: unchanged
    assert ring.erase("cust-a") == 1
    assert ring.erase("cust-a") == 0  # a repeat destroys nothing more
    assert ring.open(sealed)["address"] == ERASED and ring.open(sealed)["notes"] == [ERASED, None]
    assert ring.open(other) == "B's own words"
    # a new subject of the erased customer gets a new key: new data is readable, the old stays erased
    again = ring.seal("ticket-c", "cust-a", "after erasure")
    assert ring.open(again) == "after erasure" and ring.open(sealed["address"]) == ERASED


def test_a_token_cannot_be_moved_to_another_key() -> None:
    ring = MemoryKeyring()
    token = ring.seal("t1", "c1", "secret")
    key_b = ring.seal("t2", "c2", "other").split(".")[1]
    forged = "pd1." + key_b + "." + token.split(".")[2]
    assert ring.open(forged) == ERASED  # the key id is authenticated: no plaintext, no crash


def test_open_json_replaces_tokens_with_escaped_plaintext() -> None:
    ring = MemoryKeyring()
    text = 'He said "no signal"\nsince 9:00 — 无信号 \\ ok'
    doc = {"description": ring.seal("t", "c", text), "n": 1, "plain": "pd1.not-a-token"}
    body = json.dumps(doc).encode()
    opened = json.loads(ring.open_json(body))
    assert opened == {"description": text, "n": 1, "plain": "pd1.not-a-token"}
    ring.erase("c")
    assert json.loads(ring.open_json(body))["description"] == ERASED
    assert ring.open_json(b'{"a": 1}') == b'{"a": 1}'


def _app() -> IntakeApp:
    return IntakeApp(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})


def _request(customer: str = "cust-a", description: str = MARK, region: str = "north") -> ServiceRequest:
    return ServiceRequest(
        id=uuid4(), channel="web", channel_id="ch1", channel_request_ref="ref-1", customer_id=customer,
        customer_tier="gold", region=region, service_type="broadband.fault_repair", description=description,
        time_requirement={}, special_needs="wheelchair " + MARK, callback_url=None,
        location={"address": MARK, "postcode": "100001", "site_id": None}, details={"port": "eth0", "floor": 2},
        submitted_at=NOW, attributes={"name": MARK, "severity": "Major", "ticketType": "fault"},
    )


def test_the_event_store_holds_only_ciphertext_and_the_relay_sends_it_sealed() -> None:
    app = _app()
    r = _request(region="")
    r.apply_decision(review(Catalogue.load(), r.fields(), Facts(now=NOW)), NOW)  # pending: no region
    app.save(r)
    r.update({"description": "corrected: " + MARK, "region": "south"}, "portal", NOW)
    app.save(r)
    stored = [e for e in app.recorder.select_events(r.id) if e.topic.endswith(("Submitted", "Updated"))]
    assert len(stored) == 2
    for s in stored:
        assert MARK.encode() not in bytes(s.state)
    assert b"cust-a" in bytes(stored[0].state) and b"broadband.fault_repair" in bytes(stored[0].state)
    assert b'"south"' in bytes(stored[1].state)  # not personal: stays readable

    loaded = app.repository.get(r.id)  # the service itself reads plaintext
    assert loaded.description == "corrected: " + MARK and loaded.location["address"] == MARK
    assert loaded.details == {"port": "eth0", "floor": 2}

    out = WIRE(app.sealed_event(stored[0]))  # what the relay publishes
    assert out is not None and isinstance(out.event, wire.RequestSubmitted)
    body = out.event.model_dump_json()
    assert MARK not in body and is_sealed(out.event.description) and out.event.customer_id == "cust-a"
    assert out.event.location is not None and is_sealed(out.event.location.address)
    # a TMF ticket's severity and type are its service record (filtered, sorted, counted on): plain
    assert is_sealed(out.event.attributes["name"])
    assert (out.event.attributes["severity"], out.event.attributes["ticketType"]) == ("Major", "fault")
    update = WIRE(app.sealed_event(stored[1]))
    assert update is not None and isinstance(update.event, wire.RequestUpdated)
    assert is_sealed(update.event.changes["description"]) and update.event.changes["region"] == "south"
    assert app.keyring.open(update.event.changes["description"]) == "corrected: " + MARK


def test_after_erasure_the_service_record_remains_and_personal_data_opens_to_erased() -> None:
    app = _app()
    a, b = _request("cust-a"), _request("cust-b", description="B wrote this")
    app.save(a, b)
    assert app.keyring.erase("cust-a") == 1
    app.forget_opened()
    gone = app.repository.get(a.id)
    assert gone.description == ERASED and gone.location["address"] == ERASED
    assert gone.attributes == {"name": ERASED, "severity": "Major", "ticketType": "fault"}
    assert gone.special_needs == ERASED and gone.details == {"port": ERASED, "floor": 2}
    assert (gone.customer_id, gone.service_type, gone.region, gone.submitted_at) == (
        "cust-a", "broadband.fault_repair", "north", NOW)
    assert app.repository.get(b.id).description == "B wrote this"


def test_a_request_completed_with_its_customer_is_erased_with_them() -> None:
    app = _app()
    r = _request(customer="")
    app.save(r)
    r.apply_decision(review(Catalogue.load(), r.fields(), Facts(now=NOW)), NOW)
    assert r.status == "pending_information"  # it lacks its customer
    # completing it names the customer: the store assigns the ticket's keys to them
    r.update({"customer_id": "cust-late", "description": "now with " + MARK}, "portal", NOW)
    app.save(r)
    assert app.keyring.erase("cust-late") == 1
    app.forget_opened()
    assert app.repository.get(r.id).description == ERASED


def test_erasure_needs_a_legal_basis() -> None:
    with pytest.raises(Exception, match="legal basis"):
        CustomerErasure.request("c1", "because", "", "dpo", NOW)
    with pytest.raises(Exception, match="customer"):
        CustomerErasure.request(" ", "consent_withdrawn", "", "dpo", NOW)
    e = CustomerErasure.request("c1", "consent_withdrawn", "case 7", "dpo", NOW)
    assert e.id == CustomerErasure.id_for("c1")
    out = WIRE(e.collect_events()[0])
    assert out is not None and isinstance(out.event, wire.CustomerDataErased)
    assert (out.event.customer_id, out.event.legal_basis, out.event.erased_at) == ("c1", "consent_withdrawn", NOW)
    assert out.event.key() == "c1"


def test_error_text_never_quotes_the_input() -> None:
    with pytest.raises(ValidationError) as caught:
        wire.WorkLogged.model_validate({"ticket_id": "t", "notes": ["Zebra-4711"], "action": "x"})
    assert "Zebra-4711" in str(caught.value)  # pydantic's own text quotes it ...
    text = error_text(caught.value)
    assert "Zebra-4711" not in text and "notes" in text  # ... ours names the fields only


def _client(ring: MemoryKeyring, doc: dict[str, object], token: str) -> Any:
    from collections.abc import Iterator

    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse, StreamingResponse
    from fastapi.testclient import TestClient

    from tsop_events.http import OpenPersonal
    from tsop_events.settings import ServiceSettings

    app = FastAPI()

    @app.get("/one")
    def one() -> dict[str, object]:
        return doc

    @app.get("/stream")
    def stream() -> StreamingResponse:
        body = json.dumps([doc, doc]).encode()
        cut = body.index(token.encode()) + 9  # inside the first token

        def chunks() -> Iterator[bytes]:
            yield body[:cut]
            yield body[cut:cut + 3]
            yield body[cut + 3:]

        return StreamingResponse(chunks(), media_type="application/json")

    @app.get("/csv")
    def csv() -> PlainTextResponse:
        return PlainTextResponse(token, media_type="text/csv")

    app.add_middleware(OpenPersonal, settings=ServiceSettings(), keyring=ring)
    return TestClient(app)


def test_answers_open_personal_data_whole_or_streamed_and_nothing_else() -> None:
    ring = MemoryKeyring()
    text = 'Flat "3" \u2014 ' + MARK
    token = ring.seal("t", "c", text)
    doc = {"description": token, "n": 1}
    client = _client(ring, doc, token)
    r = client.get("/one")
    assert r.json() == {"description": text, "n": 1} and int(r.headers["content-length"]) == len(r.content)
    streamed = client.get("/stream")
    assert streamed.json() == [{"description": text, "n": 1}] * 2
    assert client.get("/csv").text == token  # only JSON answers are opened: an export never shows plaintext
    ring.erase("c")
    assert client.get("/one").json()["description"] == ERASED
    assert client.get("/stream").json()[1]["description"] == ERASED


def test_data_written_for_an_erased_subject_is_erased_at_birth() -> None:
    """A rating comment or a work-log note sealed for a ticket whose customer was erased (rules that seal without
    a customer) must not get a fresh key that no erasure destroys: the subject's tombstone makes it ``[erased]``."""
    ring = MemoryKeyring()
    before = ring.seal("ticket-a", "cust-a", "the customer's words")
    assert ring.erase("cust-a") == 1
    later = ring.seal("ticket-a", None, {"comment": "a late rating comment " + MARK, "score": 2})
    assert MARK not in json.dumps(later) and later["score"] == 2
    assert ring.open(later) == {"comment": ERASED, "score": 2} and ring.open(before) == ERASED
    ring.prepare({"ticket-a": None})  # a batch's keys: none for an erased subject
    assert ring.open(ring.seal("ticket-a", "cust-a", "again")) == ERASED
    assert ring.erase("cust-a") == 0  # no key was created since
    assert ring.open(ring.seal("ticket-b", "cust-a", "a new request")) == "a new request"  # a new subject reads


def test_an_update_stored_after_the_erasure_of_its_ticket_is_erased() -> None:
    app = _app()
    r = _request(customer="")
    app.save(r)
    r.apply_decision(review(Catalogue.load(), r.fields(), Facts(now=NOW)), NOW)
    r.update({"customer_id": "cust-a"}, "portal", NOW)  # the ticket's key is assigned to cust-a
    app.save(r)
    assert app.keyring.erase("cust-a") == 1
    app.forget_opened()
    r = app.repository.get(r.id)
    r.apply_decision(review(Catalogue.load(), r.fields(), Facts(now=NOW)), NOW)
    assert r.status in ("pending_information", "queued_for_review")
    r.update({"description": "written after the erasure: " + MARK}, "portal", NOW)
    app.save(r)
    assert all(MARK.encode() not in bytes(s.state) for s in app.recorder.select_events(r.id))
    app.forget_opened()
    assert app.repository.get(r.id).description == ERASED
