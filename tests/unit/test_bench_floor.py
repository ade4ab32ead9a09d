"""bench.floor's arithmetic: medians and spreads per layer over runs, HTTP rows split into client and receiver, and
the per-unit sums of ``UNITS``; the bare receiver answers 200 only to a body signed with the shared secret."""

from __future__ import annotations

import asyncio

from bench.floor import SECRET, UNITS, RawReceiver, Sample, summarise, unit_sums
from tsop_events import outbound


def test_layers_are_summarised_as_median_least_and_greatest_over_the_runs() -> None:
    runs = [[Sample("kafka_produce", 100, 1.0, p, {"broker": b})] for p, b in ((40.0, 5.0), (50.0, 7.0), (44.0, 6.0))]
    (row,) = summarise(runs)
    assert row["python"] == {"min": 40.0, "median": 44.0, "max": 50.0}
    assert row["broker"] == {"min": 5.0, "median": 6.0, "max": 7.0}
    assert row["total_median_us"] == 50.0


def test_unit_sums_split_http_rows_and_multiply_each_layer_by_its_count() -> None:
    samples = [
        Sample("kafka_produce", 10, 1.0, 40.0, {"broker": 10.0}),
        Sample("kafka_consume_decode", 10, 1.0, 30.0, {"broker": 0.0}),
        Sample("http_raw->raw", 10, 1.0, 60.0, {"receiver_raw": 40.0}),
        Sample("http_lean->raw", 10, 1.0, 150.0, {"receiver_raw": 70.0}),  # the bare client's row sets the receiver
        Sample("asyncpg_copy_b500", 10, 1.0, 3.0, {"postgres": 10.0}),
    ]
    sums = unit_sums(summarise([samples]))
    parts = sums["delivery (issue 11), floor, no event store on the path"]["parts_us"]
    counts = UNITS["delivery (issue 11)"]["floor, no event store on the path"]
    assert parts["kafka_produce"] == round(counts["kafka_produce"] * 50.0, 1)
    assert parts["http_raw"] == round(counts["http_raw"] * 60.0, 1)
    assert parts["receiver_raw"] == round(counts["receiver_raw"] * 40.0, 1)
    assert parts["asyncpg_copy_b500"] == round(counts["asyncpg_copy_b500"] * 13.0, 1)
    assert sums["delivery (issue 11), floor, no event store on the path"]["missing"] == []
    assert "store_insert_b100" in sums["delivery (issue 11), floor, this architecture"]["missing"]


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)


def test_the_bare_receiver_checks_the_signature_and_reads_requests_split_across_reads() -> None:
    receiver, transport = RawReceiver(), _Transport()
    receiver.connection_made(transport)
    body = b'{"ticket_id": "t-1"}'
    good = (b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: " + str(len(body)).encode()
            + b"\r\nX-TSOP-Signature: " + outbound.sign(SECRET, body).encode() + b"\r\n\r\n" + body)
    bad = good.replace(body, b'{"ticket_id": "t-2"}')
    receiver.data_received(good[:30])
    assert transport.written == b""
    receiver.data_received(good[30:] + bad)
    assert transport.written.count(b"200 OK") == 1
    assert transport.written.count(b"401") == 1
