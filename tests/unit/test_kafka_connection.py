"""A connection the broker reset, written to under uvloop, fails as a broken connection (tsop_events.kafka_fixes).

Seen in CI after the empty-broker restart (tests/e2e/test_crash_recovery.py): aiokafka's connection catches only
``OSError`` when it writes a request, and uvloop raises ``RuntimeError`` ("the handler is closed") for a write on a
transport the peer has reset before the connection's reader noticed (aio-libs/aiokafka#1038). The error killed the
client's metadata synchronizer, silently; the consumer's every later wait for metadata (a refresh, the group
leader's assignment) then waited for ever, so its group never got an assignment again and its fetch never came back.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import sys

import uvloop
from aiokafka.client import AIOKafkaClient
from aiokafka.conn import AIOKafkaConnection
from aiokafka.errors import KafkaConnectionError
from aiokafka.protocol.metadata import MetadataRequest, MetadataResponse_v0

import tsop_events.kafka_fixes  # noqa: F401 - what is tested: importing it puts the connection right

METADATA = 3  # the Metadata API key


async def _reset_connection(client: AIOKafkaClient | None = None) -> tuple[AIOKafkaConnection, asyncio.Server]:
    """A connection to a "broker" that has already reset it (a SIGKILLed broker), its reader not yet run."""

    async def reset(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # with linger 0: a reset, not an orderly close

    server = await asyncio.start_server(reset, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    conn = AIOKafkaConnection(
        "127.0.0.1", port, client_id="test", request_timeout_ms=60_000,
        on_close=client._on_connection_closed if client is not None else None,
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn._reader, conn._writer, conn._protocol = reader, writer, writer._protocol  # type: ignore[attr-defined]
    conn._versions = {METADATA: (0, 0)}
    conn._read_task = asyncio.ensure_future(asyncio.Event().wait())  # the reader, not yet woken by the reset
    for _ in range(100):
        if writer.transport.is_closing():
            break
        await asyncio.sleep(0.01)
    assert writer.transport.is_closing() and conn.connected()  # reset, and the connection does not know yet
    return conn, server


def test_a_request_on_a_connection_the_broker_reset_fails_as_a_broken_connection() -> None:
    async def scenario() -> None:
        conn, server = await _reset_connection()
        try:
            try:
                conn.send(MetadataRequest([]))
            except KafkaConnectionError:
                pass  # what aiokafka handles everywhere (a reconnection, a retry)
            else:
                raise AssertionError("the request was written to a closed transport")
            assert not conn.connected()  # closed: the next request opens a new connection
        finally:
            if conn._read_task is not None:  # closed with the connection (cancelled)
                conn._read_task.cancel()
            server.close()

    uvloop.run(scenario())


def test_a_clients_metadata_synchronizer_survives_a_connection_the_broker_reset() -> None:
    async def scenario() -> None:
        client = AIOKafkaClient(bootstrap_servers="127.0.0.1:1")
        conn, server = await _reset_connection(client)
        client.cluster.update_metadata(MetadataResponse_v0([(0, "127.0.0.1", conn._port)], []))
        client._conns[(0, 0)] = conn  # the node's connection (ConnectionGroup.DEFAULT)
        client._sync_task = asyncio.ensure_future(client._md_synchronizer())
        try:
            # before the fix the synchronizer died of the RuntimeError and this waited for ever
            updated = await asyncio.wait_for(client.force_metadata_update(), 10)
            assert updated is False  # the broker was gone: not updated, and said so
            assert not client._sync_task.done(), client._sync_task.exception()
            assert not conn.connected()  # closed; the next update connects anew
        finally:
            client._sync_task.cancel()
            server.close()

    uvloop.run(scenario())


def test_the_platforms_kafka_clients_get_it_without_importing_it_themselves() -> None:
    # a fresh interpreter: this module's own import of the fix must not be what makes it hold
    for module in ("tsop_events.consumer", "tsop_events.epoch", "tsop_events.topics"):
        code = f"import {module}; from aiokafka.conn import AIOKafkaConnection as C; print(C.send.__name__, " \
               "getattr(C.send, '_tsop_reset_is_a_broken_connection', False))"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
        assert out.stdout.split() == ["send", "True"], (module, out.stdout, out.stderr)
