"""The outbound guard (where callbacks may go) and the bounded retry policy; a fake resolver, no network."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from tsop_events.outbound import (
    Connections,
    OutboundGuard,
    Refused,
    RetryPolicy,
    Sent,
    Unresolved,
    guard_for,
    parse_rules,
    platform_rules,
    receiver_of,
    send,
    sign,
)
from tsop_events.settings import ServiceSettings

DNS: dict[str, list[str]] = {
    "hooks.example": ["93.184.216.34"],
    "v6.example": ["2606:2800:220:1:248:1893:25c8:1946"],
    "internal.example": ["10.0.0.7"],
    "metadata.example": ["169.254.169.254"],
    "mixed.example": ["93.184.216.34", "127.0.0.1"],  # one bad address is enough to refuse
    "rebind.example": ["93.184.216.34"],
    "localhost": ["127.0.0.1", "::1"],
}


async def fake_resolver(host: str, port: int) -> list[str]:
    if host not in DNS:
        raise OSError(f"no such name {host}")
    return DNS[host]


def guard(allow: str = "", platform: str = "") -> OutboundGuard:
    return OutboundGuard(parse_rules(allow), parse_rules(platform), fake_resolver)


def refused(g: OutboundGuard, url: str) -> str | None:
    try:
        asyncio.run(g.resolve(url))
    except Unresolved:
        raise
    except Refused as exc:
        return exc.reason
    return None


REFUSED = [
    "http://127.0.0.1/cb",
    "http://127.1/cb",
    "http://2130706433/cb",  # decimal
    "http://0x7f000001/cb",  # hex
    "http://0x7f.1/cb",
    "http://0177.0.0.1/cb",  # octal
    "http://017700000001/cb",
    "http://localhost/cb",
    "http://LOCALHOST./cb",  # trailing dot, any case
    "http://api.localhost/cb",
    "http://localhost.localdomain/cb",
    "http://[::1]/cb",
    "http://[::]/cb",
    "http://0.0.0.0/cb",
    "http://0/cb",
    "http://[::ffff:127.0.0.1]/cb",  # IPv4-mapped
    "http://[::ffff:7f00:1]/cb",
    "http://[::ffff:169.254.169.254]/latest/meta-data",
    "http://[::127.0.0.1]/cb",  # IPv4-compatible
    "http://[64:ff9b::a00:1]/cb",  # NAT64 of 10.0.0.1
    "http://[2002:7f00:1::]/cb",  # 6to4 of 127.0.0.1
    "http://169.254.169.254/latest/meta-data",
    "http://[fe80::1]/cb",
    "http://[fe80::1%25eth0]/cb",
    "http://10.1.2.3/cb",
    "http://172.16.0.1/cb",
    "http://172.31.255.255/cb",
    "http://192.168.1.1/cb",
    "http://[fc00::1]/cb",
    "http://[fd12:3456::1]/cb",
    "http://100.64.0.1/cb",  # carrier-grade NAT
    "http://100.127.255.254/cb",
    "http://224.0.0.1/cb",
    "http://239.255.255.250/cb",
    "http://[ff02::1]/cb",
    "http://255.255.255.255/cb",
    "http://240.0.0.1/cb",
    "http://198.18.0.1/cb",  # benchmarking, not global
    "http://internal.example/cb",  # a name resolving to a private address
    "http://metadata.example/cb",
    "http://mixed.example/cb",
    "ftp://hooks.example/cb",
    "file:///etc/passwd",
    "gopher://hooks.example/",
    "http://user:pass@hooks.example/cb",
    "http://user@hooks.example/cb",
]

ALLOWED = [
    "http://hooks.example/cb",
    "https://hooks.example:8443/cb",
    "http://93.184.216.34/cb",
    "http://[2606:2800:220:1:248:1893:25c8:1946]/cb",
    "https://v6.example/cb",
    "http://8.8.8.8:8001/cb",  # a platform port, but not on the platform's machine
    "http://[::ffff:8.8.8.8]/cb",
    "http://172.32.0.1/cb",  # just outside 172.16/12
    "http://100.128.0.1/cb",  # just outside 100.64/10
]


@pytest.mark.parametrize("url", REFUSED)
def test_what_a_callback_may_not_reach(url: str) -> None:
    assert refused(guard(), url) is not None, url


@pytest.mark.parametrize("url", ALLOWED)
def test_what_a_callback_may_reach(url: str) -> None:
    assert refused(guard(), url) is None, url


def test_reasons_name_the_class() -> None:
    g = guard()
    assert "loopback" in (refused(g, "http://2130706433/") or "")
    assert "link-local" in (refused(g, "http://169.254.169.254/") or "")
    assert "private" in (refused(g, "http://internal.example/") or "")
    assert "carrier-grade" in (refused(g, "http://100.64.0.1/") or "")
    assert "multicast" in (refused(g, "http://224.0.0.1/") or "")
    assert "unspecified" in (refused(g, "http://0.0.0.0/") or "")
    assert "credentials" in (refused(g, "http://a:b@hooks.example/") or "")
    assert "http and https" in (refused(g, "ftp://hooks.example/") or "")
    assert "loopback" in (refused(g, "http://[::ffff:127.0.0.1]/") or "")


def test_the_allow_list_opens_addresses_but_not_the_platforms_own_ports() -> None:
    g = guard(allow="127.0.0.1,10.0.0.0/8", platform="8001,15432,127.0.0.1:9092")
    assert refused(g, "http://127.0.0.1:40000/cb") is None
    assert refused(g, "http://internal.example/cb") is None  # 10.0.0.7, inside the allowed CIDR
    assert refused(g, "http://10.9.9.9:5000/cb") is None
    assert refused(g, "http://192.168.1.1/cb") is not None  # not on the list
    assert refused(g, "http://[::1]:40000/cb") is not None  # ::1 is not 127.0.0.1
    for own in ("http://127.0.0.1:8001/", "http://127.0.0.1:15432/", "http://127.0.0.1:9092/",
                "http://localhost:8001/", "http://[::ffff:127.0.0.1]:8001/", "http://2130706433:15432/"):
        reason = refused(g, own)
        assert reason is not None and "platform's own" in reason, own
    # an entry naming the port opens it
    assert refused(guard(allow="127.0.0.1:8001", platform="8001"), "http://127.0.0.1:8001/") is None
    # host names, with ports, and IPv6 entries
    g = guard(allow="localhost:9000,[::1]:9001,internal.example")
    assert refused(g, "http://localhost:9000/") is None
    assert refused(g, "http://localhost:9001/") is not None
    assert refused(g, "http://[::1]:9001/") is None
    assert refused(g, "http://internal.example/x") is None


def test_platform_endpoints_come_from_the_settings() -> None:
    s = ServiceSettings(http_port=18001, pg_host="db.internal", pg_port=15432, kafka_bootstrap="127.0.0.1:19092",
                        platform_endpoints="18002", outbound_allow="127.0.0.1")
    g = OutboundGuard(parse_rules(s.outbound_allow), platform_rules(s), fake_resolver)
    for port in (18001, 18002, 15432, 19092):
        assert "platform's own" in (refused(g, f"http://127.0.0.1:{port}/") or ""), port
    assert refused(g, "http://127.0.0.1:18003/") is None
    assert guard_for(s) is guard_for(s)  # built once per configuration


def test_a_name_that_does_not_resolve_passes_registration_but_not_delivery() -> None:
    g = guard()
    asyncio.run(g.check("https://nowhere.example/cb"))  # judged again at delivery
    with pytest.raises(Unresolved):
        asyncio.run(g.resolve("https://nowhere.example/cb"))
    with pytest.raises(Refused):
        asyncio.run(g.check("http://internal.example/cb"))


def test_delivery_connects_to_the_checked_address_with_the_name_in_host_and_sni() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            r = await guard().post(client, "https://hooks.example:8443/cb?x=1", content=b"{}", headers={"a": "b"})
            assert r.status_code == 204
            DNS["rebind.example"] = ["127.0.0.1"]  # the name now resolves elsewhere: refused, nothing sent
            with pytest.raises(Refused):
                await guard().post(client, "http://rebind.example/cb", content=b"{}", headers={})

    asyncio.run(go())
    assert len(seen) == 1
    req = seen[0]
    assert req.url.host == "93.184.216.34" and req.url.port == 8443 and req.url.path == "/cb"
    assert req.url.query == b"x=1"
    assert req.headers["host"] == "hooks.example:8443" and req.headers["a"] == "b"
    assert req.extensions["sni_hostname"] == "hooks.example"


def test_retries_are_bounded_exponential_and_jittered() -> None:
    p = RetryPolicy(max_attempts=5, base_seconds=1.0, max_seconds=5.0)
    low = [p.delay(n, lambda: 0.0) for n in range(1, 6)]
    high = [p.delay(n, lambda: 1.0) for n in range(1, 6)]
    assert low == [0.5, 1.0, 2.0, 2.5, None]  # half of each step at least
    assert high == [1.0, 2.0, 4.0, 5.0, None]  # capped at max_seconds; none after the last attempt
    import random

    rng = random.Random(7)
    draws = {p.delay(3, rng.random) for _ in range(50)}
    assert len(draws) > 40 and all(2.0 <= d <= 4.0 for d in draws if d is not None)
    assert p.worst_case_seconds() == 1 + 2 + 4 + 5
    assert RetryPolicy(max_attempts=1).delay(1) is None
    s = ServiceSettings(outbound_max_attempts=3, outbound_backoff_base_seconds=0.1, outbound_backoff_max_seconds=1)
    assert RetryPolicy.from_settings(s) == RetryPolicy(3, 0.1, 1.0)


def test_defaults_refuse_loopback(monkeypatch: Any) -> None:
    monkeypatch.delenv("TSOP_OUTBOUND_ALLOW", raising=False)
    with pytest.raises(Refused):
        asyncio.run(guard_for(None).check("http://127.0.0.1:9999/cb"))


def test_one_attempt_is_signed_and_its_outcome_classified_once_for_every_worker() -> None:
    answers = {"/ok": 204, "/busy": 503}
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/down":
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(answers[request.url.path], text="busy" if request.url.path == "/busy" else "")

    async def go() -> list[Sent]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return [await send(guard(), client, url, b'{"a":1}', purpose="test", secret="k", headers={"X-Id": "1"})
                    for url in ("https://hooks.example/ok", "https://hooks.example/busy", "https://hooks.example/down",
                                "http://internal.example/ok", "https://nowhere.example/ok")]

    ok, busy, down, refused_, unresolved = asyncio.run(go())
    assert ok == Sent(204) and ok.ok
    assert busy == Sent(503, "HTTP 503: busy") and not busy.final
    assert not down.ok and down.status is None and down.error is not None and down.error.startswith("ConnectError")
    assert refused_.final and refused_.error is not None and refused_.error.startswith("refused: ")
    assert not unresolved.final and unresolved.error is not None and "does not resolve" in unresolved.error
    assert len(seen) == 3  # nothing was sent where the guard refused or the name did not resolve
    assert seen[0].headers["x-tsop-signature"] == sign("k", b'{"a":1}') == (
        "sha256=" + hmac.new(b"k", b'{"a":1}', hashlib.sha256).hexdigest())
    assert seen[0].headers["x-id"] == "1" and seen[0].headers["content-type"] == "application/json"


def test_a_receiver_is_its_scheme_host_and_port_and_the_lean_client_keeps_the_recently_used_ones() -> None:
    assert receiver_of("http://A.example/x") == receiver_of("http://a.example:80/y") == "http://a.example:80"
    assert receiver_of("http://a.example:8080/x") != receiver_of("http://a.example:8081/x")
    assert receiver_of("https://a.example/x") == "https://a.example:443"

    class Transport:
        def __init__(self) -> None:
            self.aborted = False

        def abort(self) -> None:
            self.aborted = True

        def is_closing(self) -> bool:
            return self.aborted

    def stream() -> Any:
        reader = asyncio.StreamReader()
        writer = SimpleNamespace(transport=Transport())
        return reader, writer

    async def go() -> None:
        conns = Connections(keep=2)
        a, b, c = stream(), stream(), stream()
        key = {name: ("http", "93.184.216.34", port, "hooks.example") for name, port in (("a", 1), ("b", 2), ("c", 3))}
        conns._give_back(key["a"], a, 0.0)
        conns._give_back(key["b"], b, 0.0)
        assert conns._take(key["a"], 1.0) is a  # a is in use again (and the most recently used receiver)
        conns._give_back(key["a"], a, 1.0)
        conns._give_back(key["c"], c, 1.0)  # a third receiver: the least recently used one's connections are closed
        assert b[1].transport.aborted and not a[1].transport.aborted and list(conns.idle) == [key["a"], key["c"]]
        assert conns._take(key["a"], 1.0 + 60) is None and a[1].transport.aborted  # idle too long: closed, not used
        c[0].feed_eof()  # the receiver closed it
        assert conns._take(key["c"], 1.5) is None and c[1].transport.aborted

    asyncio.run(go())


def test_a_receiver_is_parsed_once_per_origin_and_the_same_as_parsing_each_url() -> None:
    from tsop_events import outbound

    urls = [
        "http://A.example/x", "http://a.example:80/y?z=1", "https://a.example/x#f", "https://a.example:8443",
        "http://127.0.0.10:8080/cb/1", "http://127.0.0.10:8080/cb/2?x=/y", "http://[::1]:9000/p", "http://u:p@h.example/",
        "HTTP://H.example?q", "http://h.example#frag", "not a url", "http://bad port:x/", "http://a.example:99999/",
        "ftp://f.example/file", "http://h.example\\\\@evil.example/", "",
    ]
    for url in urls:
        assert outbound.receiver_of(url) == (outbound.parse_receiver(url) or url), url
    outbound._receiver_of_origin.cache_clear()
    for n in range(200):
        assert outbound.receiver_of(f"http://127.0.0.11:8080/cb/{n}?ticket=T-{n}") == "http://127.0.0.11:8080"
    info = outbound._receiver_of_origin.cache_info()
    assert (info.misses, info.hits) == (1, 199)
