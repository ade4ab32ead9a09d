"""A tiny HTTP/1.1 server on 127.0.0.1 for the tests of the bench's client and driver (bench/client.py).

Each request is answered by a handler that sees the method, path, headers and body and returns a ``Reply``:
a status and body, sent with a Content-Length or in chunks, the connection kept or closed, or no answer at
all (the connection dropped after the request, or held open without an answer). The server records every
request with the number of the connection it came on, so a test can see connections reused.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import orjson


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    connection: int  # 1 for the first connection the server accepted, 2 for the next, ...

    def json(self) -> object:
        return orjson.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    chunked: bool = False  # sent as three chunks (one with an extension) and a trailer
    close: bool = False  # "Connection: close", then closed
    close_silently: bool = False  # answered as if kept alive, then closed without a word
    no_answer: Literal["drop", "hang"] | None = None  # closed without an answer, or never answered
    raw: bytes | None = None  # written as it is instead of an answer, then the connection is closed
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, value: object) -> Reply:
        return cls(status, orjson.dumps(value), headers={"Content-Type": "application/json"})


Handler = Callable[[Request], Reply]


class LocalServer:
    """``async with LocalServer(handler) as server:`` serves on ``server.url`` until the block ends."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[Request] = []
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def __aenter__(self) -> LocalServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.accepted += 1
        number = self.accepted
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return  # the client closed the connection
                lines = head[:-4].decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                request = Request(method, path, headers, body, number)
                self.requests.append(request)
                reply = self.handler(request)
                if reply.no_answer == "drop":
                    return
                if reply.no_answer == "hang":
                    await asyncio.sleep(3600)
                if reply.raw is not None:
                    writer.write(reply.raw)
                    await writer.drain()
                    return
                writer.write(self._encode(reply))
                await writer.drain()
                if reply.close or reply.close_silently:
                    return
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self._tasks.discard(task)

    @staticmethod
    def _encode(reply: Reply) -> bytes:
        head = [f"HTTP/1.1 {reply.status} Whatever"]
        head += [f"{k}: {v}" for k, v in reply.headers.items()]
        if reply.close:
            head.append("Connection: close")
        if reply.chunked:
            head.append("Transfer-Encoding: chunked")
            third = max(1, len(reply.body) // 3)
            parts = [reply.body[:third], reply.body[third:2 * third], reply.body[2 * third:]]
            chunks = b"".join(
                f"{len(p):x}{';ext=1' if i == 1 else ''}\r\n".encode() + p + b"\r\n"
                for i, p in enumerate(parts) if p
            )
            payload = chunks + b"0\r\nX-Trailer: yes\r\n\r\n"
        else:
            head.append(f"Content-Length: {len(reply.body)}")
            payload = reply.body
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload
