"""What aiokafka gets wrong under uvloop, put right for every Kafka client of the platform (imported, not called).

aiokafka's connection catches only ``OSError`` when it writes a request. uvloop (the services' event loop) raises
``RuntimeError`` ("unable to perform operation on <TCPTransport closed=True ...>; the handler is closed") for a write
on a transport the broker has reset before the connection's reader noticed, e.g. right after the broker was killed
(aio-libs/aiokafka#1038, open). The error then escaped wherever the request was made, and in one place silently
killed a background task for good: a client's metadata synchronizer. Every later wait of that client for metadata (a
forced refresh after a broker epoch change, the group leader's assignment in a rebalance) then waited for ever, so
its consumer's group never got an assignment again and its fetch never came back (seen in CI after the empty-broker
restart: the consumer watch restarted it after 30 s, see ``tsop_events.consumer``).

Put right: such a write closes the connection and raises ``KafkaConnectionError``, as a broken pipe does, which every
caller in aiokafka handles (a reconnection, a retry, a metadata refresh). ``tests/unit/test_kafka_connection.py``
checks it on uvloop, with a connection really reset.
"""

from __future__ import annotations

import functools
from typing import Any

from aiokafka.conn import AIOKafkaConnection, CloseReason
from aiokafka.errors import KafkaConnectionError

_PATCHED = "_tsop_reset_is_a_broken_connection"


def install() -> None:
    """Make ``AIOKafkaConnection.send`` raise ``KafkaConnectionError`` for a transport already closed (idempotent)."""
    original = AIOKafkaConnection.send
    if getattr(original, _PATCHED, False):
        return

    @functools.wraps(original)
    def send(self: AIOKafkaConnection, request: Any, expect_response: bool = True) -> Any:
        writer = self._writer
        try:
            return original(self, request, expect_response)
        except RuntimeError as exc:
            if writer is None or not writer.transport.is_closing():
                raise  # not a closed transport: not ours to reinterpret
            self.close(reason=CloseReason.CONNECTION_BROKEN, exc=exc)
            raise KafkaConnectionError(f"Connection at {self._host}:{self._port} broken: {exc}") from exc

    setattr(send, _PATCHED, True)
    AIOKafkaConnection.send = send


install()
