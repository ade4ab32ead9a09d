"""Who is calling, and may they: bearer tokens → a principal with roles.

Every endpoint that is not an operations probe declares the roles it admits
with ``Depends(requires(...))``. Tokens are never stored, only their SHA-256.

Two sources resolve a token:

* staff tokens from configuration (``TSOP_AUTH_TOKENS``, a JSON object mapping
  the SHA-256 hex of a token to ``{"subject": ..., "roles": [...]}``, or
  ``TSOP_AUTH_TOKENS_FILE`` naming a file with that object) — agents,
  supervisors, technicians, auditors, incident managers, admins;
* resolvers a service adds at run time (``Runtime.token_resolvers``), e.g.
  intake's registered channel systems, whose credentials are revocable data.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from fastapi import Request


class Role(StrEnum):
    channel = "channel"
    agent = "agent"
    technician = "technician"
    supervisor = "supervisor"
    incident_manager = "incident_manager"
    auditor = "auditor"
    admin = "admin"


@dataclass(frozen=True)
class Principal:
    subject: str
    roles: frozenset[Role]
    channel_id: str | None = None  # set when the caller is a registered channel system
    attributes: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def has(self, *roles: Role) -> bool:
        return Role.admin in self.roles or any(r in self.roles for r in roles)


TokenResolver = Callable[[str], Awaitable[Principal | None]]
"""Given a token's SHA-256 hex, the principal it belongs to, or None."""


def followed_resolver(
    lookup: Callable[[str], Principal | None], refresh: Callable[[], None], min_interval: float = 0.1
) -> TokenResolver:
    """Resolve credentials from a view that follows the service's own log (issued and revoked as events).

    A miss may be a credential another instance issued a moment ago, so it reads the newer events, but
    at most once per ``min_interval`` and one read at a time: made-up tokens cannot flood the database.
    """
    gate = asyncio.Lock()
    last = -min_interval

    async def resolve(token_hash: str) -> Principal | None:
        nonlocal last
        found = lookup(token_hash)
        if found is not None:
            return found
        async with gate:
            found = lookup(token_hash)  # a read that finished while this one waited may have brought it
            if found is None and time.monotonic() - last >= min_interval:
                last = time.monotonic()
                await asyncio.to_thread(refresh)
                found = lookup(token_hash)
        return found

    return resolve


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(prefix: str) -> tuple[str, str]:
    """A new credential and the hash to store: the token is shown once, only the hash is kept."""
    token = f"{prefix}_{secrets.token_urlsafe(32)}"
    return token, hash_token(token)


def parse_token_table(raw: str) -> dict[str, Principal]:
    """The configured staff tokens; raises ValueError naming what is wrong."""
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"TSOP_AUTH_TOKENS is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("TSOP_AUTH_TOKENS must be a JSON object of sha256-hex → {subject, roles}")
    table: dict[str, Principal] = {}
    for digest, entry in data.items():
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"TSOP_AUTH_TOKENS key {digest[:12]}… is not a lowercase SHA-256 hex digest")
        try:
            roles = frozenset(Role(r) for r in entry["roles"])
            table[digest] = Principal(str(entry["subject"]), roles)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"TSOP_AUTH_TOKENS entry for {digest[:12]}…: {exc}") from None
    return table


def load_token_table(inline: str, file: Path | None) -> dict[str, Principal]:
    table = parse_token_table(inline)
    if file is not None:
        table.update(parse_token_table(file.read_text()))
    return table


def token_table_json(tokens: Iterable[tuple[str, str, Iterable[str]]]) -> str:
    """``TSOP_AUTH_TOKENS`` for (token, subject, roles) triples: what launchers and tests hand to services."""
    return json.dumps({hash_token(t): {"subject": s, "roles": sorted(roles)} for t, s, roles in tokens})


class AuthError(Exception):
    """401 (no or unknown credentials) or 403 (known, not allowed)."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def requires(*roles: Role) -> Callable[[Request], Awaitable[Principal]]:
    """A FastAPI dependency: the caller's principal, if it holds one of ``roles`` (admin holds all)."""
    wanted = ", ".join(r.value for r in roles) or "any role"
    admitted = frozenset(roles) | {Role.admin}  # admin holds all (``Principal.has``)

    async def dependency(request: Request) -> Principal:
        token = bearer_token(request)
        if token is None:
            raise AuthError(401, "Unauthorized", "an Authorization: Bearer <token> header is required")
        principal: Principal | None = await request.app.state.runtime.authenticate(hash_token(token))
        if principal is None:
            raise AuthError(401, "Unauthorized", "the bearer token is unknown or revoked")
        if roles and admitted.isdisjoint(principal.roles):
            raise AuthError(403, "Forbidden", f"this needs the role {wanted}; {principal.subject} does not hold it")
        request.state.principal = principal
        return principal

    dependency.__name__ = f"requires_{'_'.join(r.value for r in roles) or 'any'}"
    return dependency
