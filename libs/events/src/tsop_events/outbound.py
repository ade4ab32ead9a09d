"""Outbound HTTP calls the platform makes on a client's behalf (webhooks, TMF621 hub listeners).

A client chooses where the platform sends its notifications, so that address is
untrusted input. ``OutboundGuard`` refuses, unless the operator's allow-list
(``TSOP_OUTBOUND_ALLOW``) says otherwise:

* any scheme but http/https, credentials in the URL, a missing host;
* loopback, link-local (incl. 169.254.169.254, fe80::/10), private (10/8,
  172.16/12, 192.168/16, fc00::/7), shared address space (100.64/10),
  unspecified, multicast, reserved and other not globally routable addresses,
  in every spelling the resolver accepts (``2130706433``, ``0x7f.1``,
  ``0177.0.0.1``, ``127.1``, IPv4-mapped/-compatible/6to4/NAT64 IPv6 forms) and
  the ``localhost`` names (with or without a trailing dot);
* the platform's own endpoints (``TSOP_PLATFORM_ENDPOINTS``; this service's HTTP
  port, PostgreSQL and the brokers are always included).

The allow-list is comma-separated: CIDRs (``10.1.0.0/16``), addresses, host
names, each optionally with ``:port`` (``[::1]:9000`` for IPv6). An entry
without a port lifts the address-class refusal for everything it matches but
never opens one of the platform's own ports; an entry naming a port opens that
port. So ``TSOP_OUTBOUND_ALLOW=127.0.0.1`` lets webhooks reach local receivers
while intake, PostgreSQL and the broker on 127.0.0.1 stay out of reach.

``check`` is used when a URL is registered (what can be known then: a name that
does not resolve yet is accepted and judged at delivery); ``post`` resolves the
name again at delivery, checks every address it resolves to and connects to the
checked address itself (Host header and TLS SNI carry the name, certificates are
verified against it), so a name cannot resolve to something else between the
check and the connection. Redirects are not followed, proxies from the
environment are not used.

``Connections`` is the lean client of workers that post many small messages to many receivers: HTTP/1.1 on
asyncio streams, kept-alive connections per receiver and checked address, with the same guards as ``post``
(connected to the checked address, the answer read up to ``RESPONSE_BYTES``, the overall deadline) at a
fraction of httpx's cost per request.

``send`` is the one delivery attempt every outbound worker makes: the guarded POST
(signed with ``X-TSOP-Signature`` when given a secret) and its outcome, classified
once (delivered; failed, to be retried; refused, never to be retried).

``RetryPolicy`` is the one bounded back-off of outbound deliveries (exponential,
with jitter); ``dead_letter`` records a delivery given up on the ``deadletter``
topic, counts it and logs it once.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import ipaddress
import logging
import random
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from prometheus_client import Counter

from tsop_events.envelope import derived_id, wrap
from tsop_events.news import announce
from tsop_events.schemas import DeadLettered
from tsop_events.settings import ServiceSettings
from tsop_events.topics import Topic

log = logging.getLogger(__name__)

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]

OUTBOUND_REFUSED = Counter("tsop_outbound_refused_total", "Outbound calls refused by the guard", ["purpose", "when"])
OUTBOUND_ATTEMPTS = Counter("tsop_outbound_attempts_total", "Outbound delivery attempts", ["purpose", "outcome"])
OUTBOUND_DEAD = Counter("tsop_outbound_deadlettered_total", "Outbound deliveries given up after the last attempt",
                        ["purpose"])

SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


class Refused(ValueError):
    """An outbound destination the guard does not allow; ``reason`` says why."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url, self.reason = url, reason


# ---------------------------------------------------------------- addresses


def embedded_ipv4(ip: IP) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, 6to4, NAT64), if any."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64 or (ip in IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_class(ip: IP) -> str | None:
    """Why a destination address is not one a client may send the platform to; None if it may."""
    inner = embedded_ipv4(ip)
    if inner is not None:
        why = address_class(inner)
        return f"{why} (as {ip})" if why else None
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip in SHARED_ADDRESS_SPACE:
        return "a shared (carrier-grade NAT) address"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved or not ip.is_global:
        return "a reserved, not globally routable address"
    if isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address("255.255.255.255"):
        return "a broadcast address"
    return None


def literal_ip(host: str) -> IP | None:
    """The address a host spells, in any form the system resolver takes literally (decimal, octal, hex, short)."""
    bare = host.strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    if bare and all(c in "0123456789abcdefxABCDEFX." for c in bare) and bare[0].isdigit():
        try:
            return ipaddress.IPv4Address(socket.inet_aton(bare))
        except OSError:
            return None
    return None


def normal_host(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


def _split_host_port(entry: str) -> tuple[str, int | None]:
    entry = entry.strip()
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    if entry.count(":") == 1:
        host, port = entry.split(":")
        return host, int(port)
    return entry, None  # a bare IPv6 address or CIDR, or a name


@dataclass(frozen=True)
class Rule:
    """One allow-list or platform entry: a network or a host name, with or without a port."""

    network: Network | None
    name: str | None
    port: int | None

    @classmethod
    def parse(cls, entry: str) -> Rule:
        if entry.strip().isdigit():  # a bare port
            return cls(None, None, int(entry))
        host, port = _split_host_port(entry)
        if host == "" or host == "*":
            return cls(None, None, port)
        try:
            return cls(ipaddress.ip_network(host, strict=False), None, port)
        except ValueError:
            ip = literal_ip(host)
            if ip is not None:
                return cls(ipaddress.ip_network(ip), None, port)
            return cls(None, normal_host(host), port)

    def matches(self, name: str, ip: IP | None, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            return ip is not None and ip.version == self.network.version and ip in self.network
        if self.name is not None:
            return self.name == name
        return True  # a bare port


def parse_rules(text: str | Iterable[str]) -> tuple[Rule, ...]:
    entries = text.split(",") if isinstance(text, str) else list(text)
    return tuple(Rule.parse(e) for e in entries if e.strip())


# ---------------------------------------------------------------- the guard


@dataclass(frozen=True)
class Target:
    """A checked destination: connect to ``ip``; ``host`` goes in the Host header and TLS SNI."""

    url: httpx.URL
    host: str
    ip: str
    port: int

    @property
    def pinned(self) -> httpx.URL:
        return self.url.copy_with(host=self.ip)

    @property
    def host_header(self) -> str:
        default = 443 if self.url.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


# name lookups get threads of their own: slow DNS (a client's choice of name) cannot take the threads every other
# blocking call of the service runs on (asyncio.to_thread), only queue here
_RESOLVER_THREADS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="outbound-dns")


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().run_in_executor(
        _RESOLVER_THREADS, functools.partial(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    )
    return sorted({str(info[4][0]) for info in infos})


class OutboundGuard:
    def __init__(
        self,
        allow: Iterable[Rule] = (),
        platform: Iterable[Rule] = (),
        resolver: Resolver = system_resolver,
        resolve_timeout: float = 5.0,
    ) -> None:
        self.allow = tuple(allow)
        self.platform = tuple(platform)
        self.resolver, self.resolve_timeout = resolver, resolve_timeout
        # URL → what its static check found: a pure function of the URL and this guard's rules, so kept
        # (a refused URL is not kept: it raises each time); a name is still resolved and judged at each delivery
        self._static: dict[str, tuple[httpx.URL, str, int, IP | None]] = {}

    @classmethod
    def from_settings(cls, settings: ServiceSettings, resolver: Resolver = system_resolver) -> OutboundGuard:
        return cls(parse_rules(settings.outbound_allow), platform_rules(settings), resolver)

    # -- static checks (no resolution)

    def parse(self, url: str) -> tuple[httpx.URL, str, int]:
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise Refused(url, f"is not a URL ({exc})") from None
        if parsed.scheme not in ("http", "https"):
            raise Refused(url, "only http and https URLs are allowed")
        if parsed.userinfo:
            raise Refused(url, "a URL may not carry credentials")
        host = normal_host(parsed.host)
        if not host:
            raise Refused(url, "the URL has no host")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        return parsed, host, port

    def judge(self, url: str, host: str, ip: IP | None, port: int) -> None:
        """Refuse ``ip`` (or, with no address yet, the name) at ``port`` unless allowed."""
        allowed = [r for r in self.allow if r.matches(host, ip, port)]
        if any(r.port is not None for r in allowed):
            return  # the operator named this port: allowed, even one of the platform's own
        for rule in self.platform:
            if rule.network is None and rule.name is None:  # a bare port: on this machine
                hit = rule.port == port and self._local(host, ip)
            else:
                hit = rule.matches(host, ip, port)
            if hit:
                raise Refused(url, f"port {port} there is one of the platform's own endpoints")
        if allowed:
            return
        if ip is None:
            if host in LOCAL_NAMES or host.endswith(".localhost"):
                raise Refused(url, f"{host!r} names this machine (loopback)")
            return
        why = address_class(ip)
        if why:
            raise Refused(url, f"{host} is {why}" if host != str(ip) else f"it is {why}")

    @staticmethod
    def _local(host: str, ip: IP | None) -> bool:
        if ip is None:
            return host in LOCAL_NAMES or host.endswith(".localhost")
        inner = embedded_ipv4(ip) or ip
        return inner.is_loopback or inner.is_unspecified or inner in _own_addresses()

    def check_static(self, url: str) -> tuple[httpx.URL, str, int, IP | None]:
        found = self._static.get(url)
        if found is not None:
            return found
        parsed, host, port = self.parse(url)
        ip = literal_ip(host)
        self.judge(url, host, ip, port)
        if len(self._static) >= STATIC_CHECKS_KEPT:
            self._static.clear()
        self._static[url] = found = (parsed, host, port, ip)
        return found

    # -- with resolution

    async def resolve(self, url: str) -> Target:
        """Resolve and check every address; the address to connect to. Raises ``Refused``."""
        parsed, host, port, ip = self.check_static(url)
        if ip is not None:
            return Target(parsed, host, str(ip), port)
        try:
            found = await asyncio.wait_for(self.resolver(host, port), self.resolve_timeout)
        except (OSError, TimeoutError) as exc:
            raise Unresolved(url, f"{host} does not resolve ({exc})") from None
        if not found:
            raise Unresolved(url, f"{host} does not resolve")
        for address in found:
            resolved = ipaddress.ip_address(address.split("%", 1)[0])
            self.judge(url, host, resolved, port)
        return Target(parsed, host, found[0].split("%", 1)[0], port)

    async def check(self, url: str) -> None:
        """At registration: refuse what is known to be refused; a name that does not resolve yet passes."""
        try:
            await self.resolve(url)
        except Unresolved:
            pass

    async def post(
        self, client: httpx.AsyncClient, url: str, *, content: bytes | str, headers: dict[str, str],
        timeout: float | None = None,
    ) -> httpx.Response:
        """POST to ``url`` after checking where it leads, connected to the checked address."""
        target = await self.resolve(url)
        extensions: dict[str, Any] = {}
        if target.url.scheme == "https" and literal_ip(target.host) is None:
            extensions["sni_hostname"] = target.host
        request = client.build_request(
            "POST", target.pinned, content=content, headers={**headers, "Host": target.host_header},
            extensions=extensions, timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
        )
        # a receiver chooses what it answers: read at most RESPONSE_BYTES of it, within an overall deadline
        # (httpx's timeout is per read, so a body that keeps streaming would otherwise never end)
        deadline = DELIVERY_DEADLINE_FACTOR * (timeout or 5.0)
        try:
            async with asyncio.timeout(deadline):
                response = await client.send(request, stream=True, follow_redirects=False)
                try:
                    kept = bytearray()
                    async for chunk in response.aiter_bytes():
                        kept += chunk[: RESPONSE_BYTES - len(kept)]
                        if len(kept) >= RESPONSE_BYTES:
                            break
                finally:
                    await response.aclose()
        except TimeoutError:
            raise httpx.ReadTimeout(f"the delivery took longer than {deadline:g} s", request=request) from None
        kept_headers = [(k, v) for k, v in response.headers.items() if k not in ("content-encoding", "content-length")]
        return httpx.Response(response.status_code, headers=kept_headers, content=bytes(kept), request=request)


STATIC_CHECKS_KEPT = 65536  # URLs whose static check a guard keeps
RESPONSE_BYTES = 4096  # of a receiver's answer, kept for the record (its status is what counts)
DELIVERY_DEADLINE_FACTOR = 3  # a whole delivery may take this many times the per-read timeout


class Unresolved(Refused):
    """The name does not resolve (now): a delivery fails and is retried; a registration passes."""


def client(timeout: float = 5.0, max_connections: int = 100) -> httpx.AsyncClient:
    """The HTTP client for outbound deliveries: no redirects, no proxies from the environment."""
    return httpx.AsyncClient(
        timeout=timeout, follow_redirects=False, trust_env=False,
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
    )


def sign(secret: str, body: bytes) -> str:
    """The ``X-TSOP-Signature`` header: HMAC-SHA256 of the body with the shared secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class Sent:
    """One delivery attempt's outcome: delivered (a 2xx), or why not and whether a retry can help."""

    status: int | None = None
    error: str | None = None  # None: delivered
    final: bool = False  # the guard refused where the URL leads now: no retry helps

    @property
    def ok(self) -> bool:
        return self.error is None


async def send(
    guard: OutboundGuard, client: httpx.AsyncClient | Connections, url: str, body: bytes | str, *, purpose: str,
    headers: dict[str, str] | None = None, secret: str | None = None, timeout: float | None = None,
) -> Sent:
    """POST ``body`` (JSON) to ``url`` through ``guard``, signed with ``secret`` if given; the outcome, classified.

    A name that does not resolve now, a connection or read failure and an answer other than 2xx are failures
    a retry may cure; a destination the guard refuses is final (and counted under ``purpose``).
    """
    sent_headers = {"content-type": "application/json", **(headers or {})}
    if secret is not None:
        sent_headers["X-TSOP-Signature"] = sign(secret, body.encode() if isinstance(body, str) else body)
    try:
        if isinstance(client, Connections):
            status, answer = await client.post(await guard.resolve(url), body, sent_headers, timeout)
        else:
            resp = await guard.post(client, url, content=body, headers=sent_headers, timeout=timeout)
            status, answer = resp.status_code, resp.text
    except Unresolved as exc:
        return Sent(error=exc.reason)
    except Refused as exc:  # where the URL leads now is not allowed: no retry helps
        OUTBOUND_REFUSED.labels(purpose, "delivery").inc()
        return Sent(error=f"refused: {exc.reason}", final=True)
    except (httpx.HTTPError, OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
            ProtocolError) as exc:
        return Sent(error=f"{type(exc).__name__}: {exc}")
    if 200 <= status < 300:
        return Sent(status)
    return Sent(status, f"HTTP {status}: {answer[:300]}")


def receiver_of(url: str) -> str:
    """The receiver a URL names, for per-receiver concurrency: scheme, host and port (``http://a.example:8080``).

    Parsed once per origin (the URL up to its path, query or fragment), not once per URL: every callback URL of a
    receiver differs in its path, and a ``httpx.URL`` costs more than the rest of queueing a notification."""
    start = url.find("://")
    origin = url
    if start > 0:
        ends = [i for i in (url.find(c, start + 3) for c in "/?#") if i != -1]
        if ends:
            origin = url[: min(ends)]
    return _receiver_of_origin(origin) or url


@functools.lru_cache(maxsize=4096)
def _receiver_of_origin(origin: str) -> str | None:
    """``receiver_of`` an origin, None if it does not parse (the URL itself is then its receiver, as before)."""
    return parse_receiver(origin)


def parse_receiver(url: str) -> str | None:
    """A URL's receiver, parsed (``receiver_of`` keeps them per origin); None if the URL does not parse."""
    try:
        u = httpx.URL(url)
        port = u.port or (443 if u.scheme == "https" else 80)
        return f"{u.scheme}://{u.host.lower()}:{port}"
    except (httpx.InvalidURL, TypeError, ValueError):
        return None


class ProtocolError(ValueError):
    """A receiver's answer that is not HTTP/1.x as this client reads it (or a request that cannot be written)."""


HEADER_BYTES = 64 * 1024  # of a receiver's status line and headers, at most
KEEPALIVE_SECONDS = 5.0  # an idle kept-alive connection is closed after this long (as httpx's default)

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Connections:
    """A lean HTTP/1.1 client for small POSTs to many receivers: kept-alive connections on asyncio streams.

    httpx spends most of a small delivery's CPU on its layers (URL objects, the pool's bookkeeping, anyio
    streams, cookies, response models); this client writes the request and reads the answer itself. It keeps
    every guard of ``OutboundGuard.post``: it is given the checked ``Target`` and connects to its address
    (Host header and TLS SNI name the host, certificates are verified against it), it reads at most
    ``HEADER_BYTES`` of status and headers and ``RESPONSE_BYTES`` of the body, each read within ``timeout``
    and the whole within ``DELIVERY_DEADLINE_FACTOR`` times it; it follows no redirect and uses no proxy.

    Idle connections are kept per receiver address (scheme, checked address, port, host), at most ``keep``
    receivers (the least recently used ones' idle connections are closed first), each for
    ``KEEPALIVE_SECONDS``. A connection is kept only after a complete answer that allows it (HTTP/1.1, no
    ``Connection: close``, the body read to its end); a kept connection the receiver closed meanwhile fails
    before any answer, and the request is sent once more on a new connection (receivers de-duplicate on
    their delivery id; an answer started is never sent again).
    """

    def __init__(self, timeout: float = 5.0, keep: int = 512, tls: ssl.SSLContext | None = None) -> None:
        self.timeout, self.keep = timeout, keep
        self.idle: dict[tuple[str, str, int, str], list[tuple[Stream, float]]] = {}  # in order of last use
        self._swept = 0.0
        self._tls = tls  # None: certifi's roots (httpx's), certificates and host names verified

    def _context(self) -> ssl.SSLContext:
        if self._tls is None:
            try:
                import certifi  # httpx's CA bundle, so both clients trust the same roots

                self._tls = ssl.create_default_context(cafile=certifi.where())
            except ImportError:  # pragma: no cover - certifi comes with httpx
                self._tls = ssl.create_default_context()
        return self._tls

    async def post(self, target: Target, body: bytes | str, headers: dict[str, str],
                   timeout: float | None = None) -> tuple[int, str]:
        """POST ``body`` to the checked ``target``: (status, the start of the answer's body as text)."""
        content = body.encode() if isinstance(body, str) else body
        request = self._request(target, content, headers)
        per_read = timeout if timeout is not None else self.timeout
        key = (target.url.scheme, target.ip, target.port, target.host)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DELIVERY_DEADLINE_FACTOR * per_read
        try:
            async with asyncio.timeout_at(deadline) as whole:
                while True:
                    stream, reused = self._take(key, loop.time()), True
                    if stream is None:
                        reused = False
                        whole.reschedule(min(deadline, loop.time() + per_read))
                        stream = await self._connect(target)
                    try:
                        status, answer, keep = await self._exchange(stream, request, per_read, deadline, whole, reused)
                    except _Stale:
                        stream[1].transport.abort()
                        continue  # a kept connection the receiver had closed: once more on a new one
                    except BaseException:
                        stream[1].transport.abort()
                        raise
                    if keep and not stream[0]._buffer:  # type: ignore[attr-defined]
                        # nothing beyond the answer is waiting: bytes past it would be taken for the next answer
                        self._give_back(key, stream, loop.time())
                    else:
                        stream[1].transport.abort()
                    return status, answer
        except TimeoutError:
            raise TimeoutError(f"no complete answer within the deadline ({per_read:g} s per read, "
                               f"{DELIVERY_DEADLINE_FACTOR * per_read:g} s in all)") from None

    @staticmethod
    def _request(target: Target, content: bytes, headers: dict[str, str]) -> bytes:
        path = target.url.raw_path or b"/"
        lines = [b"POST " + path + b" HTTP/1.1", b"Host: " + target.host_header.encode("ascii")]
        for name, value in headers.items():
            if name.lower() in ("host", "content-length", "transfer-encoding", "connection"):
                continue
            if any(c in name or c in value for c in "\r\n\0"):
                raise ProtocolError(f"header {name!r} carries a line break")  # never split a request
            lines.append(f"{name}: {value}".encode("latin-1"))
        lines.append(b"Content-Length: " + str(len(content)).encode())
        return b"\r\n".join(lines) + b"\r\n\r\n" + content

    async def _connect(self, target: Target) -> Stream:
        if target.url.scheme == "https":
            return await asyncio.open_connection(target.ip, target.port, ssl=self._context(),
                                                 server_hostname=target.host, limit=HEADER_BYTES)
        return await asyncio.open_connection(target.ip, target.port, limit=HEADER_BYTES)

    def _take(self, key: tuple[str, str, int, str], now: float) -> Stream | None:
        kept = self.idle.pop(key, None)
        if not kept:
            return None
        found = None
        while kept:
            stream, since = kept.pop()
            if (now - since < KEEPALIVE_SECONDS and not stream[0].at_eof() and not stream[1].transport.is_closing()
                    and not stream[0]._buffer):  # type: ignore[attr-defined]  # bytes sent unasked: not an answer
                found = stream
                break
            stream[1].transport.abort()
        if kept:
            self.idle[key] = kept  # back at the end: the most recently used
        return found

    def _give_back(self, key: tuple[str, str, int, str], stream: Stream, now: float) -> None:
        kept = self.idle.pop(key, [])
        kept.append((stream, now))
        for (_, writer), _since in kept[:-PER_RECEIVER_IDLE]:  # the oldest beyond the cap are closed
            writer.transport.abort()
        del kept[:-PER_RECEIVER_IDLE]
        self.idle[key] = kept
        self._sweep(now)
        while len(self.idle) > self.keep:
            oldest = next(iter(self.idle))
            for (_, writer), _since in self.idle.pop(oldest):
                writer.transport.abort()

    def _sweep(self, now: float) -> None:
        """Close the idle connections kept longer than ``KEEPALIVE_SECONDS`` (at most once a second): a receiver
        that closed its side leaves no socket open here until it is used again."""
        if now - self._swept < 1.0:
            return
        self._swept = now
        for key in list(self.idle):
            kept = self.idle[key]
            fresh = [(s, since) for s, since in kept if now - since < KEEPALIVE_SECONDS and not s[0].at_eof()]
            for s, since in kept:
                if (s, since) not in fresh:
                    s[1].transport.abort()
            if fresh:
                self.idle[key] = fresh
            else:
                del self.idle[key]

    async def _exchange(self, stream: Stream, request: bytes, per_read: float, deadline: float,
                        whole: asyncio.Timeout, reused: bool) -> tuple[int, str, bool]:
        reader, writer = stream
        loop = asyncio.get_running_loop()

        def next_read() -> None:
            whole.reschedule(min(deadline, loop.time() + per_read))

        writer.write(request)
        next_read()
        try:
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            if reused and (not isinstance(exc, asyncio.IncompleteReadError) or not exc.partial):
                raise _Stale from None
            raise
        while True:
            status, version, fields = _parse_head(head)
            if status >= 200:
                break
            next_read()  # 1xx: an interim answer, the real one follows
            head = await reader.readuntil(b"\r\n\r\n")
        keep = version == "HTTP/1.1" and "close" not in fields.get("connection", "").lower()
        kept = bytearray()
        encoding = fields.get("transfer-encoding", "").lower()
        if status in (204, 304):
            pass
        elif "chunked" in encoding:
            while True:
                next_read()
                size_line = await reader.readuntil(b"\r\n")
                digits = size_line.split(b";", 1)[0].strip()
                if not HEX.fullmatch(digits):
                    raise ProtocolError("a chunk size that is not a hexadecimal number")
                size = int(digits, 16)
                if size == 0:
                    next_read()
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers, up to the blank line
                        next_read()
                    break
                if len(kept) + size > RESPONSE_BYTES:  # more than is kept: read what is kept, drop the connection
                    next_read()
                    kept += await reader.readexactly(RESPONSE_BYTES - len(kept))
                    keep = False
                    break
                next_read()
                chunk = await reader.readexactly(size + 2)
                if chunk[size:] != b"\r\n":
                    raise ProtocolError("a chunk that does not end where its size says")
                kept += chunk[:size]
        elif "content-length" in fields:
            if not DIGITS.fullmatch(fields["content-length"]):  # one value, ASCII digits only (no 1_0, +5, "5, 5")
                raise ProtocolError("a Content-Length that is not one number")
            length = int(fields["content-length"])
            if length > RESPONSE_BYTES:
                length, keep = RESPONSE_BYTES, False
            while len(kept) < length:
                next_read()
                chunk = await reader.read(length - len(kept))
                if not chunk:
                    raise asyncio.IncompleteReadError(bytes(kept), length)
                kept += chunk
        else:  # the body ends when the receiver closes: read what is kept, no more
            keep = False
            while len(kept) < RESPONSE_BYTES:
                next_read()
                chunk = await reader.read(RESPONSE_BYTES - len(kept))
                if not chunk:
                    break
                kept += chunk
        return status, kept.decode("utf-8", "replace"), keep

    async def aclose(self) -> None:
        for kept in self.idle.values():
            for (_, writer), _since in kept:
                writer.transport.abort()
        self.idle.clear()


HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
DIGITS = re.compile(r"[0-9]{1,18}")
STATUS = re.compile(r"[1-9][0-9]{2}")  # ASCII digits: str.isdigit() takes "²²²" too
PER_RECEIVER_IDLE = 16  # idle connections kept per receiver, at most


class _Stale(Exception):
    """A kept connection was closed by the receiver before it answered: the request goes on a new one."""


def _parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    """(status, HTTP version, header fields by lower-case name) of an answer's head."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not STATUS.fullmatch(parts[1]):
        raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:100]!r}")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError(f"a header line without a colon: {line[:100]!r}")
        name = name.strip().lower()
        value = value.strip()
        fields[name] = f"{fields[name]}, {value}" if name in fields else value
    return int(parts[1]), parts[0], fields


@functools.lru_cache(maxsize=1)
def _own_addresses() -> frozenset[IP]:
    """This machine's addresses as its host name resolves (best effort, no network beyond the resolver)."""
    found: set[IP] = set()
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            found.add(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]))
    except OSError:
        pass
    return frozenset(found)


def platform_rules(settings: ServiceSettings) -> tuple[Rule, ...]:
    """The platform's own endpoints: the setting, plus this service, its PostgreSQL and its brokers."""
    entries = [e for e in settings.platform_endpoints.split(",") if e.strip()]
    entries.append(str(settings.http_port))
    entries.append(str(settings.pg_port))
    if settings.pg_host not in ("", "127.0.0.1", "localhost", "::1"):
        entries.append(_host_port(settings.pg_host, settings.pg_port))
    for broker in settings.kafka_bootstrap.split(","):
        host, port = _split_host_port(broker)
        if port is not None:
            entries.append(str(port))
            entries.append(_host_port(host, port))
    return parse_rules(entries)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@functools.lru_cache(maxsize=8)
def _cached(allow: str, platform: str, http_port: int, pg: str, kafka: str) -> OutboundGuard:
    s = ServiceSettings(outbound_allow=allow, platform_endpoints=platform, http_port=http_port,
                        pg_host=pg.rsplit(":", 1)[0], pg_port=int(pg.rsplit(":", 1)[1]), kafka_bootstrap=kafka)
    return OutboundGuard.from_settings(s)


def guard_for(settings: ServiceSettings | None) -> OutboundGuard:
    """The guard of a service's settings (defaults when there are none, as in unit tests)."""
    s = settings or ServiceSettings()
    return _cached(s.outbound_allow, s.platform_endpoints, s.http_port, f"{s.pg_host}:{s.pg_port}",
                   s.kafka_bootstrap)


# ---------------------------------------------------------------- retries and dead letters


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential back-off with jitter: ``max_attempts`` in all, then the delivery is given up."""

    max_attempts: int = 12
    base_seconds: float = 0.5
    max_seconds: float = 600.0

    @classmethod
    def from_settings(cls, settings: ServiceSettings | None) -> RetryPolicy:
        s = settings or ServiceSettings()
        return cls(s.outbound_max_attempts, s.outbound_backoff_base_seconds, s.outbound_backoff_max_seconds)

    def delay(self, attempts: int, rand: Callable[[], float] = random.random) -> float | None:
        """Seconds to wait after ``attempts`` failed attempts; None once no attempt is left.

        The n-th wait is drawn from [d/2, d] with d = min(max, base * 2^(n-1)), so receivers that failed
        together do not all come back at once, and no wait is shorter than half its step.
        """
        if attempts >= self.max_attempts:
            return None
        step = min(self.max_seconds, self.base_seconds * 2.0 ** min(max(attempts - 1, 0), 60))
        return step / 2 + rand() * step / 2

    def worst_case_seconds(self) -> float:
        """The longest a delivery can take from its first attempt to being given up (waits only)."""
        return sum(min(self.max_seconds, self.base_seconds * 2.0 ** min(n, 60)) for n in range(self.max_attempts - 1))


async def dead_letter(
    producer: Any, settings: ServiceSettings, *, purpose: str, key: str, url: str, payload: str | bytes,
    attempts: int, error: str, subject: str | None = None,
) -> None:
    """Record a delivery given up: a ``deadletter`` record (consumer ``outbound:<purpose>``), a metric, one log line.

    The record's ``source_topic`` is ``outbound`` (no topic record was lost: the delivery was), its headers carry
    the destination and the attempts; ``subject`` (a ticket id) lets a reader find it by ticket.
    """
    body = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
    headers = {"url": url, "attempts": str(attempts)}
    if subject:
        headers["ticket_id"] = subject
    letter = DeadLettered(
        consumer=f"outbound:{purpose}", source_topic="outbound", source_partition=0, source_offset=attempts,
        source_key=key, source_headers=headers, source_value=body[:100_000], error=error[:4000],
        failed_at=datetime.now(UTC),
    )
    env = wrap(letter, event_id=str(derived_id("outbound", purpose, key)), source=settings.service_name)
    OUTBOUND_DEAD.labels(purpose).inc()
    log.error("outbound %s %s to %s given up after %s attempts: %s", purpose, key, url, attempts, error)
    try:
        await producer.send_and_wait(Topic.deadletter.qualified(settings.topic_prefix), value=env.data,
                                     key=key.encode(), headers=env.headers())
    except Exception:  # the row/event and the metric already say it; the topic record is extra
        log.exception("outbound %s %s: the dead-letter record could not be published", purpose, key)
        return
    try:  # rare (a delivery given up): a connection of its own; unannounced, the archive finds it at its safety net
        await announce(settings, {Topic.deadletter.qualified(settings.topic_prefix)})
    except Exception as exc:  # noqa: BLE001 - an announcement only hastens a consumer: never the delivery's failure
        log.warning("outbound %s %s: the dead letter was not announced: %s", purpose, key, exc)
