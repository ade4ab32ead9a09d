"""The bench driver's HTTP client: HTTP/1.1 over asyncio streams, kept-alive connections per host and port.

httpx cost the lifecycle driver most of its CPU (about 20 ms per lifecycle of six requests): its pool looks
at every pooled connection on each request (``has_expired`` asks each socket for its peer), and a request
goes through several layers of streams and events. The driver needs little of that: plain ``http://`` to the
stack's own services, JSON in and out, no redirects, no proxies, no TLS. This client does that much:

* a request is one write (request line, headers, body) on a connection taken from the host's idle ones
  (newest first; one idle longer than ``keepalive_expiry`` or already closed by the server is dropped), or
  a new one when none is idle, at most ``max_connections`` at a time;
* the answer is read by its ``Content-Length``, in chunks (``Transfer-Encoding: chunked``, trailers
  skipped) or, without either, to the end of the connection; the connection goes back to the idle ones
  unless the answer said ``Connection: close`` (or was HTTP/1.0 without keep-alive);
* what can go wrong is one of a few exceptions, each with a message naming the request: ``ConnectFailed``
  (no connection), ``ConnectionDropped`` (the connection closed or broke before the whole answer came: a
  kept-alive connection the server has just closed; the caller may send the request again),
  ``Timeout`` (no whole answer within ``timeout`` seconds; never sent again by the driver),
  ``ProtocolError`` (an answer that is not HTTP/1.1) and ``StatusError`` (raised by ``Answer.check``).

It is not a general client and is not used by the platform: the platform's outbound calls go through
``tsop_events.outbound``, which refuses loopback addresses, where the bench's services live.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import orjson

HEAD_LIMIT = 64 * 1024  # the status line and headers of an answer; a longer head is a ProtocolError


class HTTPFailure(Exception):
    """Any failure of a request; the message names the request (``POST http://host:port/path``)."""


class ConnectFailed(HTTPFailure):
    """No connection could be opened; nothing was sent."""


class ConnectionDropped(HTTPFailure):
    """The connection closed or broke before the whole answer came."""


class Timeout(HTTPFailure):
    """No whole answer within the client's timeout."""


class ProtocolError(HTTPFailure):
    """The answer is not one this client reads (a bad status line, length or chunk)."""


class StatusError(HTTPFailure):
    """An answer outside 2xx, where the caller wanted a success (``Answer.check``)."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(f"HTTP {answer.status}: {answer.text[:200]}")
        self.answer = answer


class Answer:
    """An HTTP answer, read whole: status, headers (names in lower case) and body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return orjson.loads(self.body)

    def check(self) -> Answer:
        """This answer if it is a success (2xx); otherwise ``StatusError`` (``HTTP 409: <body>``)."""
        if not 200 <= self.status < 300:
            raise StatusError(self)
        return self


class _Connection:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.idle_since = 0.0

    def close(self) -> None:
        self.writer.close()


def split_url(url: str) -> tuple[str, int, str]:
    """``http://host:port/path?query`` as host, port (80 when absent) and path with its query."""
    if not url.startswith("http://"):
        raise ValueError(f"{url}: only http:// URLs are supported")
    rest = url[7:]
    slash = rest.find("/")
    authority, path = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
    if authority.startswith("["):  # [IPv6]:port
        host, _, rest = authority[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else 80, path
    host, colon, port = authority.partition(":")
    return host, int(port) if colon else 80, path


async def _read_head(reader: asyncio.StreamReader) -> tuple[bytes, int, dict[str, str]]:
    """The status line and headers: version, status, headers by lower-case name."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError as exc:
        raise ProtocolError(f"an answer head longer than {HEAD_LIMIT} bytes") from exc
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            raise ProtocolError(f"not a header line: {line[:80]!r}")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return parts[0], int(parts[1]), headers


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    while True:
        line = await reader.readuntil(b"\r\n")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise ProtocolError(f"not a chunk size: {line[:80]!r}") from exc
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, up to the empty line
                pass
            return b"".join(chunks)
        chunk = await reader.readexactly(size + 2)
        if chunk[-2:] != b"\r\n":
            raise ProtocolError("a chunk not followed by CRLF")
        chunks.append(chunk[:-2])


async def read_answer(reader: asyncio.StreamReader, method: str = "POST") -> tuple[Answer, bool]:
    """One whole answer from ``reader``, and whether the connection may carry another request."""
    version, status, headers = await _read_head(reader)
    while 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
        version, status, headers = await _read_head(reader)
    connection = headers.get("connection", "").lower()
    keep = connection != "close" if version == b"HTTP/1.1" else connection == "keep-alive"
    if method == "HEAD" or status in (204, 304):
        body = b""
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    elif "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError as exc:
            raise ProtocolError(f"a bad Content-Length: {headers['content-length']!r}") from exc
        body = await reader.readexactly(length)
    else:  # the body runs to the end of the connection
        body = await reader.read()
        keep = False
    return Answer(status, headers, body), keep


class Client:
    """Kept-alive HTTP/1.1 connections to a few local services; see the module's docstring."""

    def __init__(self, timeout: float = 30.0, max_connections: int = 256, keepalive_expiry: float = 2.0) -> None:
        self.timeout = timeout
        self.keepalive_expiry = keepalive_expiry
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._slots = asyncio.Semaphore(max_connections)
        self.connections_opened = 0  # how many connections this client opened (kept-alive ones are reused)

    async def post(self, url: str, body: Any, headers: Mapping[str, str] | None = None) -> Answer:
        """POST ``body`` as JSON; ``None`` sends an empty body (as httpx's ``json=None`` did)."""
        if body is None:
            return await self.request("POST", url, b"", headers)
        return await self.request("POST", url, orjson.dumps(body), headers, "application/json")

    async def get(self, url: str, headers: Mapping[str, str] | None = None) -> Answer:
        return await self.request("GET", url, None, headers)

    async def request(self, method: str, url: str, body: bytes | None = None,
                      headers: Mapping[str, str] | None = None, content_type: str | None = None) -> Answer:
        host, port, path = split_url(url)
        head = [f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"]
        if body is not None:
            if content_type:
                head.append(f"Content-Type: {content_type}\r\n")
            head.append(f"Content-Length: {len(body)}\r\n")
        if headers:
            head.extend(f"{name}: {value}\r\n" for name, value in headers.items())
        head.append("\r\n")
        data = "".join(head).encode("latin-1")
        if body:
            data += body
        try:
            async with asyncio.timeout(self.timeout), self._slots:
                return await self._exchange(method, url, (host, port), data)
        except TimeoutError:
            raise Timeout(f"no whole answer within {self.timeout:g}s ({method} {url})") from None

    def _take(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # the newest: the least likely to be closed by the server
            if now - conn.idle_since < self.keepalive_expiry and not conn.reader.at_eof():
                return conn
            self._drop(conn)
        return None

    def _drop(self, conn: _Connection) -> None:
        self._open.discard(conn)
        conn.close()

    async def _exchange(self, method: str, url: str, key: tuple[str, int], data: bytes) -> Answer:
        conn = self._take(key)
        if conn is None:
            try:
                reader, writer = await asyncio.open_connection(key[0], key[1], limit=HEAD_LIMIT)
            except OSError as exc:
                raise ConnectFailed(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
            conn = _Connection(reader, writer)
            self._open.add(conn)
            self.connections_opened += 1
        try:
            conn.writer.write(data)
            await conn.writer.drain()
            answer, keep = await read_answer(conn.reader, method)
        except asyncio.IncompleteReadError as exc:
            self._drop(conn)
            when = "before an answer" if not exc.partial else "in the middle of the answer"
            raise ConnectionDropped(f"{method} {url}: the connection closed {when}") from exc
        except (ConnectionError, OSError) as exc:
            self._drop(conn)
            raise ConnectionDropped(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        except ProtocolError as exc:
            self._drop(conn)
            raise ProtocolError(f"{method} {url}: {exc}") from exc
        except BaseException:  # cancelled or timed out mid-exchange: the connection's state is unknown
            self._drop(conn)
            raise
        if keep:
            conn.idle_since = time.monotonic()
            self._idle.setdefault(key, []).append(conn)
        else:
            self._drop(conn)
        return answer

    async def aclose(self) -> None:
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        self._idle.clear()
