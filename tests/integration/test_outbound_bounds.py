"""A receiver chooses what it answers: a delivery keeps at most a few KB of it, within an overall deadline."""

from __future__ import annotations

import asyncio
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tsop_events.outbound import (
    DELIVERY_DEADLINE_FACTOR,
    RESPONSE_BYTES,
    Connections,
    OutboundGuard,
    client,
    parse_rules,
    send,
)


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


async def test_the_lean_client_keeps_the_same_bounds_and_deadline() -> None:
    """``Connections`` (the notifier's client) cuts an endless answer and times out a trickling one, like ``post``."""

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
            for _ in range(100):
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.2)
        except (ConnectionError, asyncio.CancelledError):
            pass
        writer.close()

    async def huge_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        try:
            writer.write(b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"y" * (1 << 20) + b"\r\n\r\n")
            await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    servers = [await asyncio.start_server(h, "127.0.0.1", 0) for h in (endless, trickle, huge_head)]
    guard = OutboundGuard(parse_rules("127.0.0.1"), ())
    conns = Connections(1.0)
    big, slow, head = (s.sockets[0].getsockname()[1] for s in servers)
    try:
        status, answer = await conns.post(await guard.resolve(f"http://127.0.0.1:{big}/hook"), b"{}", {})
        assert status == 500 and len(answer) == RESPONSE_BYTES
        t0 = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError):
            await conns.post(await guard.resolve(f"http://127.0.0.1:{slow}/hook"), b"{}", {}, 1.0)
        assert asyncio.get_running_loop().time() - t0 < DELIVERY_DEADLINE_FACTOR * 1.0 + 0.5  # the whole deadline
        sent = await send(guard, conns, f"http://127.0.0.1:{head}/hook", b"{}", purpose="test")
        assert not sent.ok and sent.status is None and sent.error is not None  # a head beyond the bound: failed
        assert not conns.idle  # nothing kept of a cut or failed exchange
    finally:
        await conns.aclose()
        for s in servers:
            s.close()


async def test_the_lean_client_keeps_connections_alive_reads_every_framing_and_resends_on_a_stale_one() -> None:
    requests: list[bytes] = []
    accepted: list[int] = []
    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbusy\r\n0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    ]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                requests.append(head + await reader.readexactly(length))
                writer.write(answers[(len(requests) - 1) % len(answers)])
                await writer.drain()
                if len(requests) == 5:  # closes a kept connection without answering the next request
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    guard = OutboundGuard(parse_rules("127.0.0.1"), (), resolver=lambda host, p: _answer(["127.0.0.1"]))
    conns = Connections(2.0)
    url = f"http://hooks.example:{port}/cb?x=1"
    try:
        got = [await conns.post(await guard.resolve(url), b'{"n":1}', {"X-TSOP-Delivery": "d1"}) for _ in range(4)]
        assert got == [(200, "ok"), (503, "busy"), (204, ""), (200, "")]
        assert len(accepted) == 1  # one connection for all four; the fourth said close
        assert not conns.idle
        assert await conns.post(await guard.resolve(url), b"{}", {}) == (200, "ok")  # a new connection (2nd)
        await asyncio.sleep(0.05)  # the receiver closed it after answering
        assert await conns.post(await guard.resolve(url), b"{}", {}) == (503, "busy")  # sent again on a third
        assert len(accepted) == 3
        first = requests[0].split(b"\r\n")
        assert first[0] == b"POST /cb?x=1 HTTP/1.1" and f"Host: hooks.example:{port}".encode() in first
        assert b"X-TSOP-Delivery: d1" in first and requests[0].endswith(b'\r\n\r\n{"n":1}')
        with pytest.raises(ValueError):
            await conns.post(await guard.resolve(url), b"{}", {"X-Bad": "a\r\nInjected: 1"})
    finally:
        await conns.aclose()
        server.close()


async def _answer(found: list[str]) -> list[str]:
    return found


def _certificates(tmp: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for ``name`` signed by it: (CA file, certificate file, key file)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
          .not_valid_after(now + timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"
    files[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return files


async def test_the_lean_client_speaks_tls_to_the_checked_address_with_the_name_in_sni_and_verifies_it(
    tmp_path: Path,
) -> None:
    ca_file, cert_file, key_file = _certificates(tmp_path, "hooks.example")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert_file, key_file)
    names: list[str | None] = []
    server_tls.sni_callback = lambda sock, name, ctx: names.append(name)  # type: ignore[assignment,misc,func-returns-value]
    heads: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            heads.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_tls)
    port = server.sockets[0].getsockname()[1]
    guard = OutboundGuard(parse_rules("127.0.0.1"), (), resolver=lambda host, p: _answer(["127.0.0.1"]))
    trusting = Connections(2.0, tls=ssl.create_default_context(cafile=str(ca_file)))
    try:
        got = await trusting.post(await guard.resolve(f"https://hooks.example:{port}/cb"), b"{}", {})
        assert got == (204, "") and names == ["hooks.example"]
        assert f"Host: hooks.example:{port}".encode() in heads[0]
        # a certificate that is not for the name the URL gives: refused by the client, nothing delivered
        other = await send(guard, trusting, f"https://other.example:{port}/cb", b"{}", purpose="test")
        assert not other.ok and other.error is not None and "certificate" in other.error.lower()
        # a CA the client does not trust (certifi's roots, as in production): refused too
        default = await send(guard, Connections(2.0), f"https://hooks.example:{port}/cb", b"{}", purpose="test")
        assert not default.ok and default.error is not None and "certificate" in default.error.lower()
        assert len(heads) == 1
    finally:
        await trusting.aclose()
        server.close()


async def test_a_receiver_cannot_answer_ahead_nor_break_the_client_with_odd_numbers() -> None:
    """Bytes past an answer are never taken for the next one (the connection is dropped), and a status, a length
    or a chunk size that is not plain ASCII digits is a protocol error (a failed attempt), never a crash."""
    from tsop_events.outbound import ProtocolError

    answers = {
        b"/extra": b"HTTP/1.1 500 Oops\r\nContent-Length: 2\r\n\r\nnoHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfake",
        b"/real": b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nreal",
        b"/neg": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n",
        b"/sup": "HTTP/1.1 ²²² OK\r\nContent-Length: 0\r\n\r\n".encode(),
        b"/under": b"HTTP/1.1 200 OK\r\nContent-Length: 1_0\r\n\r\n0123456789",
        b"/crlf": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n",
    }

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                await reader.readexactly(length)
                writer.write(answers[head.split(b" ")[1]])
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    guard = OutboundGuard(parse_rules("127.0.0.1"), (), resolver=lambda host, p: _answer(["127.0.0.1"]))
    conns = Connections(2.0)
    try:
        assert await conns.post(await guard.resolve(f"http://hooks.example:{port}/extra"), b"{}", {}) == (500, "no")
        await asyncio.sleep(0.05)
        assert await conns.post(await guard.resolve(f"http://hooks.example:{port}/real"), b"{}", {}) == (503, "real")
        for path in ("/neg", "/sup", "/under", "/crlf"):
            with pytest.raises(ProtocolError):
                await conns.post(await guard.resolve(f"http://hooks.example:{port}{path}"), b"{}", {})
    finally:
        await conns.aclose()
        server.close()
