"""The bench driver's HTTP client (bench/client.py) against a real HTTP/1.1 server on 127.0.0.1 (in-process).

Kept-alive connections reused across requests, answers read by Content-Length, in chunks or to the end of the
connection, a connection the server closed not reused, and every failure named with its request.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from bench.client import Client, ConnectFailed, ConnectionDropped, ProtocolError, StatusError, Timeout, split_url
from tests.bench_server import LocalServer, Reply, Request


def echo(request: Request) -> Reply:
    return Reply.json(201, {"path": request.path, "got": request.json() if request.body else None})


async def test_requests_share_one_kept_alive_connection_and_carry_json_and_headers() -> None:
    async with LocalServer(echo) as server:
        client = Client(timeout=5)
        for i in range(5):
            answer = await client.post(f"{server.url}/v1/things/{i}?x=1", {"n": i, "name": "é"},
                                       {"Authorization": "Bearer t", "Idempotency-Key": f"k{i}"})
            assert answer.status == 201
            assert answer.json() == {"path": f"/v1/things/{i}?x=1", "got": {"n": i, "name": "é"}}
        assert [r.connection for r in server.requests] == [1, 1, 1, 1, 1] and server.accepted == 1
        assert client.connections_opened == 1
        first = server.requests[0]
        assert first.method == "POST" and first.headers["content-type"] == "application/json"
        assert first.headers["authorization"] == "Bearer t" and first.headers["idempotency-key"] == "k0"
        assert first.headers["host"] == server.url.removeprefix("http://")
        assert int(first.headers["content-length"]) == len(first.body)
        await client.post(f"{server.url}/v1/work-orders/W/accept", None, {"Authorization": "Bearer t"})
        accept = server.requests[-1]
        assert accept.body == b"" and accept.headers["content-length"] == "0" and "content-type" not in accept.headers
        assert accept.connection == 1
        await client.aclose()


async def test_chunked_answers_and_answers_without_a_body_are_read_whole_and_the_connection_kept() -> None:
    big = bytes(range(256)) * 400  # 100 KiB, more than one read

    def answer(request: Request) -> Reply:
        if request.path == "/chunked":
            return Reply(200, big, chunked=True)
        if request.path == "/empty":
            return Reply(204)
        return Reply(200, b"plain")

    async with LocalServer(answer) as server:
        client = Client(timeout=5)
        assert (await client.get(server.url + "/chunked")).body == big
        assert (await client.get(server.url + "/empty")).body == b""
        assert (await client.get(server.url + "/plain")).text == "plain"
        assert (await client.get(server.url + "/chunked")).body == big
        assert server.accepted == 1 and len(server.requests) == 4
        await client.aclose()


async def test_an_answer_without_a_length_runs_to_the_end_of_the_connection_which_is_not_reused() -> None:
    def answer(request: Request) -> Reply:
        return Reply(raw=b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")

    async with LocalServer(answer) as server:
        client = Client(timeout=5)
        assert (await client.get(server.url + "/a")).text == "all of it"
        assert (await client.get(server.url + "/b")).text == "all of it"
        assert server.accepted == 2
        await client.aclose()


async def test_connection_close_is_honoured_and_a_connection_the_server_closed_while_idle_is_not_used() -> None:
    def answer(request: Request) -> Reply:
        return Reply(200, b"ok", close=request.path == "/close", close_silently=request.path == "/quiet")

    async with LocalServer(answer) as server:
        client = Client(timeout=5)
        await client.get(server.url + "/close")
        await client.get(server.url + "/quiet")  # answered as if kept alive, then closed by the server
        await asyncio.sleep(0.05)  # the end of the connection reaches the client
        assert (await client.get(server.url + "/after")).status == 200
        assert [r.connection for r in server.requests] == [1, 2, 3]
        await client.aclose()


async def test_a_connection_idle_longer_than_the_expiry_is_replaced() -> None:
    async with LocalServer(echo) as server:
        client = Client(timeout=5, keepalive_expiry=0.05)
        await client.get(server.url + "/1")
        await client.get(server.url + "/2")
        await asyncio.sleep(0.1)
        await client.get(server.url + "/3")
        assert [r.connection for r in server.requests] == [1, 1, 2]
        await client.aclose()


async def test_a_connection_dropped_before_the_answer_is_named_and_the_next_request_gets_a_new_one() -> None:
    drops = {"/x"}

    def answer(request: Request) -> Reply:
        if request.path in drops:
            drops.discard(request.path)
            return Reply(no_answer="drop")
        return Reply(200, b"ok")

    async with LocalServer(answer) as server:
        client = Client(timeout=5)
        with pytest.raises(ConnectionDropped) as caught:
            await client.post(server.url + "/x", {"a": 1})
        assert str(caught.value) == f"POST {server.url}/x: the connection closed before an answer"
        assert (await client.post(server.url + "/x", {"a": 1})).status == 200  # sent again: answered
        assert [r.connection for r in server.requests] == [1, 2]
        await client.aclose()


async def test_a_timeout_names_itself_and_the_request_and_the_connection_is_not_reused() -> None:
    def answer(request: Request) -> Reply:
        return Reply(no_answer="hang") if request.path == "/slow" else Reply(200, b"ok")

    async with LocalServer(answer) as server:
        client = Client(timeout=0.2)
        with pytest.raises(Timeout) as caught:
            await client.post(server.url + "/slow", {})
        assert str(caught.value) == f"no whole answer within 0.2s (POST {server.url}/slow)"
        assert (await client.get(server.url + "/fast")).status == 200
        assert [r.connection for r in server.requests] == [1, 2]
        await client.aclose()


async def test_no_server_is_a_connect_failure_naming_the_request() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        client = Client(timeout=5)
        with pytest.raises(ConnectFailed, match=rf"^POST http://127.0.0.1:{port}/v1/requests: ConnectionRefusedError"):
            await client.post(f"http://127.0.0.1:{port}/v1/requests", {})
        await client.aclose()


async def test_a_garbled_answer_is_a_protocol_error_and_a_refusal_a_status_error_with_the_body() -> None:
    def answer(request: Request) -> Reply:
        if request.path == "/garbled":
            return Reply(raw=b"SMTP ready\r\n\r\n")
        return Reply.json(409, {"detail": "already accepted"})

    async with LocalServer(answer) as server:
        client = Client(timeout=5)
        with pytest.raises(ProtocolError, match=r"^GET http://.*/garbled: not an HTTP/1.x status line"):
            await client.get(server.url + "/garbled")
        refused = await client.post(server.url + "/v1/work-orders/W/accept", None)
        with pytest.raises(StatusError) as caught:
            refused.check()
        assert str(caught.value) == 'HTTP 409: {"detail":"already accepted"}'
        await client.aclose()


async def test_at_most_max_connections_are_open_at_once() -> None:
    async with LocalServer(echo) as server:
        client = Client(timeout=5, max_connections=3)
        answers = await asyncio.gather(*(client.post(f"{server.url}/{i}", {"i": i}) for i in range(20)))
        assert [a.json()["got"] for a in answers] == [{"i": i} for i in range(20)]
        assert server.accepted <= 3 and client.connections_opened == server.accepted
        await client.aclose()


def test_urls_are_split_into_host_port_and_path() -> None:
    assert split_url("http://127.0.0.1:8001/v1/requests?a=1") == ("127.0.0.1", 8001, "/v1/requests?a=1")
    assert split_url("http://intake") == ("intake", 80, "/")
    assert split_url("http://[::1]:9000/x") == ("::1", 9000, "/x")
    with pytest.raises(ValueError, match="only http://"):
        split_url("https://example.com/")
