"""A receiver chooses what it answers: a delivery keeps at most a few KB of it, within an overall deadline."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tsop_events.outbound import RESPONSE_BYTES, OutboundGuard, client, parse_rules


async def test_an_endless_answer_is_cut_and_a_slow_one_times_out() -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 500 Oops\r\nContent-Type: text/plain\r\n\r\n")  # no length: until close
        try:
            for _ in range(64):
                writer.write(b"x" * (1 << 20))
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        writer.close()

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        try:
            for _ in range(100):  # one byte every 0.2 s: each read is quick, the whole is not
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.2)
        except (ConnectionError, asyncio.CancelledError):
            pass
        writer.close()

    big = await asyncio.start_server(endless, "127.0.0.1", 0)
    slow = await asyncio.start_server(trickle, "127.0.0.1", 0)
    guard = OutboundGuard(parse_rules("127.0.0.1"), ())
    try:
        async with client(1.0) as c:
            port = big.sockets[0].getsockname()[1]
            r = await guard.post(c, f"http://127.0.0.1:{port}/hook", content=b"{}", headers={}, timeout=1.0)
            assert r.status_code == 500 and len(r.content) == RESPONSE_BYTES
            port = slow.sockets[0].getsockname()[1]
            with pytest.raises(httpx.TimeoutException):
                await guard.post(c, f"http://127.0.0.1:{port}/hook", content=b"{}", headers={}, timeout=1.0)
    finally:
        big.close()
        slow.close()
