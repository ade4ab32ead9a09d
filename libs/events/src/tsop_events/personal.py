"""A customer's personal data, sealed under a data key of its own (crypto-shredding, §1.4, §7.4).

Personal data (what the customer wrote or where they are: a request's description, special needs, location,
details and attributes, a rating's comment, a complaint's text) is stored and travels only *sealed*: each string
becomes a token ``pd1.<key id>.<base64url(nonce ‖ AES-256-GCM ciphertext)>`` under a data key that belongs to one
subject (a ticket, or a complaint) of one customer. The keys live in the *keyring*, a small PostgreSQL database of
their own (``TSOP_KEYRING_DATABASE``) that stands in for the operator's KMS: never on Kafka, never in a service's
own database, never in the archive.

Erasing a customer (``CustomerDataErased``) destroys their keys. From then on every copy of their personal data,
in every event store, topic, projection and the archive, is ciphertext without a key: it opens to ``ERASED``.
Nothing immutable has to change, so the archive's chain and sealed dossiers (which hash the sealed form) stay
verifiable.

Who reads plaintext: a service's own aggregates (the event store's mapper opens what it loads, see
``SealingMapper``), and the HTTP answers of every service (``open_json``, applied to every JSON answer by
``tsop_events.http``), and outbound notifications to a channel's listeners. Everything else keeps tokens.
See docs/erasure.md.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.persistence import Mapper, StoredEvent
from pydantic import ValidationError

from tsop_events.settings import ServiceSettings

log = logging.getLogger(__name__)

PREFIX = "pd1."
ERASED = "[erased]"
"""What a sealed value opens to once its customer's data was erased (the key destroyed)."""

TOKEN = re.compile(r"pd1\.([0-9a-f]{16})\.([A-Za-z0-9_-]+)")
TOKEN_BYTES = re.compile(rb"pd1\.([0-9a-f]{16})\.([A-Za-z0-9_-]+)")
_NONCE = 12


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def is_sealed(value: object) -> bool:
    return isinstance(value, str) and TOKEN.fullmatch(value) is not None


# ------------------------------------------------------------------------------------------------ the keyring


class Keyring(ABC):
    """Data keys per subject (a ticket, a complaint), each belonging to one customer. Thread-safe."""

    @abstractmethod
    def key_for(self, subject: str, customer_id: str | None) -> tuple[str, bytes] | None:
        """The subject's live key (id, bytes), created for ``customer_id`` if it has none; None when the subject
        was erased (it has a tombstone): what is sealed for it from then on is ``ERASED``, gone at birth."""

    def prepare(self, wanted: Mapping[str, str | None]) -> None:
        """Make sure each subject (→ its customer) has a key, at once for many: one round trip, not one each
        (an erased subject gets none)."""
        for subject, customer in wanted.items():
            self.key_for(subject, customer)

    @abstractmethod
    def key(self, key_id: str) -> bytes | None:
        """A key by its id; None when it was destroyed (erased) or never existed."""

    def load(self, key_ids: Iterable[str]) -> None:  # noqa: B027 - a keyring in memory has nothing to load
        """Bring many keys into the cache at once (replaying a log opens many)."""

    @abstractmethod
    def assign(self, subject: str, customer_id: str) -> None:
        """Name the customer of a subject's keys that had none (a request completed with its customer)."""

    @abstractmethod
    def erase(self, customer_id: str) -> int:
        """Destroy every key of the customer and leave a tombstone for each of their subjects (customer and time,
        no key), so that no later key is created for them; how many keys were destroyed (0 on a repeat)."""

    def seal(self, subject: str, customer_id: str | None, value: Any) -> Any:
        """``value`` with every string in it sealed (mapping keys, numbers and booleans stay as they are)."""
        if value is None:
            return None
        found = self.key_for(subject, customer_id)
        if found is None:  # an erased subject: what is written for it now is erased at once
            return _erase_tree(value)
        key_id, key = found
        return _seal_tree(AESGCM(key), key_id, value)

    def open(self, value: Any) -> Any:
        """``value`` with every token in it opened; a token whose key is gone opens to ``ERASED``."""
        if isinstance(value, str):
            return self._open_text(value) if value.startswith(PREFIX) else value
        if isinstance(value, Mapping):
            return {k: self.open(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.open(v) for v in value]
        return value

    def _open_text(self, token: str) -> str:
        m = TOKEN.fullmatch(token)
        if m is None:
            return token
        return self._open_parts(m.group(1), m.group(2))

    def _open_parts(self, key_id: str, body: str) -> str:
        key = self.key(key_id)
        if key is None:
            return ERASED
        try:
            raw = _unb64(body)
            return AESGCM(key).decrypt(raw[:_NONCE], raw[_NONCE:], key_id.encode()).decode("utf-8")
        except (InvalidTag, ValueError):
            return ERASED

    def open_json(self, body: bytes) -> bytes:
        """A JSON document with each token opened in place (tokens need no JSON escaping; plaintext is escaped)."""
        if b"pd1." not in body:
            return body

        def opened(m: re.Match[bytes]) -> bytes:
            text = self._open_parts(m.group(1).decode(), m.group(2).decode())
            return orjson.dumps(text)[1:-1]

        return TOKEN_BYTES.sub(opened, body)


def _seal_tree(aes: AESGCM, key_id: str, value: Any) -> Any:
    if isinstance(value, str):
        if value.startswith(PREFIX) and TOKEN.fullmatch(value):
            return value  # already sealed (a relayed copy)
        nonce = os.urandom(_NONCE)
        return PREFIX + key_id + "." + _b64(nonce + aes.encrypt(nonce, value.encode("utf-8"), key_id.encode()))
    if isinstance(value, Mapping):
        return {k: _seal_tree(aes, key_id, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_seal_tree(aes, key_id, v) for v in value]
    return value


def erase_tree(value: Any) -> Any:
    """``value`` as it opens once its key is destroyed: every string ``ERASED`` (keys, numbers, nulls stay)."""
    return _erase_tree(value)


def _erase_tree(value: Any) -> Any:
    if isinstance(value, str):
        return ERASED
    if isinstance(value, Mapping):
        return {k: _erase_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_erase_tree(v) for v in value]
    return value


def _new_key_id() -> str:
    return secrets.token_hex(8)


class MemoryKeyring(Keyring):
    """A keyring in memory: for tests and for event stores without PostgreSQL."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[str, str, bytes]] = {}  # key id -> (subject, customer, key)
        self._live: dict[str, str] = {}  # subject -> key id
        self._tombstones: dict[str, str] = {}  # erased subject -> its customer

    def key_for(self, subject: str, customer_id: str | None) -> tuple[str, bytes] | None:
        with self._lock:
            if subject in self._tombstones:
                return None
            key_id = self._live.get(subject)
            if key_id is not None and key_id in self._keys:
                return key_id, self._keys[key_id][2]
            key_id, key = _new_key_id(), AESGCM.generate_key(256)
            self._keys[key_id] = (subject, customer_id or "", key)
            self._live[subject] = key_id
            return key_id, key

    def key(self, key_id: str) -> bytes | None:
        found = self._keys.get(key_id)
        return None if found is None else found[2]

    def assign(self, subject: str, customer_id: str) -> None:
        with self._lock:
            for kid, (subj, cust, key) in list(self._keys.items()):
                if subj == subject and not cust:
                    self._keys[kid] = (subj, customer_id, key)

    def erase(self, customer_id: str) -> int:
        with self._lock:
            gone = [kid for kid, (_, cust, _) in self._keys.items() if cust == customer_id]
            for kid in gone:
                subject = self._keys.pop(kid)[0]
                self._tombstones.setdefault(subject, customer_id)
            return len(gone)


KEYRING_DDL = """
CREATE TABLE IF NOT EXISTS tsop_data_keys (
    key_id text PRIMARY KEY,
    subject text NOT NULL,
    customer_id text NOT NULL,
    key bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS tsop_data_keys_subject ON tsop_data_keys (subject, created_at);
CREATE INDEX IF NOT EXISTS tsop_data_keys_customer ON tsop_data_keys (customer_id);
CREATE TABLE IF NOT EXISTS tsop_erased_subjects (
    subject text PRIMARY KEY,
    customer_id text NOT NULL,
    erased_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS tsop_erased_subjects_customer ON tsop_erased_subjects (customer_id)
"""


class PostgresKeyring(Keyring):
    """The platform's keyring: table ``tsop_data_keys`` in a database of its own (the operator's KMS in
    production: see docs/erasure.md). Keys are cached for ``cache_seconds``; a destroyed key is known at once in
    the process that destroyed it and within ``cache_seconds`` everywhere else (sooner where the service heard
    ``CustomerDataErased`` and called ``forget``)."""

    def __init__(self, admin_dsn: str, dsn: str, database: str, cache_seconds: float = 5.0) -> None:
        import psycopg
        from psycopg_pool import ConnectionPool

        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is None:
                try:
                    admin.execute(f'CREATE DATABASE "{database}"')
                except (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
                    pass  # another service created it meanwhile
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_advisory_lock(hashtext('tsop-keyring-ddl'))")
            try:
                for stmt in KEYRING_DDL.split(";"):
                    conn.execute(stmt)
            finally:
                conn.execute("SELECT pg_advisory_unlock(hashtext('tsop-keyring-ddl'))")
        self.pool = ConnectionPool(dsn, min_size=1, max_size=4, open=True, kwargs={"autocommit": True})
        self.cache_seconds = cache_seconds
        self.max_cached = 100_000
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, bytes | None]] = {}
        # subject -> (when read, its live key id; None: the subject is erased, which is forever)
        self._live: dict[str, tuple[float, str | None]] = {}

    def close(self) -> None:
        self.pool.close()

    def _fresh(self, at: float) -> bool:
        return time.monotonic() - at < self.cache_seconds

    def _known(self, subject: str) -> bool:
        live = self._live.get(subject)
        return live is not None and (live[1] is None or self._fresh(live[0]))

    def key_for(self, subject: str, customer_id: str | None) -> tuple[str, bytes] | None:
        live = self._live.get(subject)
        if live is not None:
            at, key_id = live
            if key_id is None:
                return None  # erased: a tombstone never goes away
            if self._fresh(at) and (key := self.key(key_id)) is not None:
                return key_id, key
        self.prepare({subject: customer_id}, force=True)
        live = self._live.get(subject)
        key_id = None if live is None else live[1]
        if key_id is None:
            return None
        key = self.key(key_id)
        return None if key is None else (key_id, key)

    def prepare(self, wanted: Mapping[str, str | None], force: bool = False) -> None:
        missing = [s for s in wanted if force or not self._known(s)]
        if not missing:
            return
        fresh = {s: (_new_key_id(), AESGCM.generate_key(256)) for s in missing}
        with self.pool.connection() as conn:
            # a subject's first key is created here; one that has a key already keeps its newest; an erased
            # subject (a tombstone) gets none: what is sealed for it is erased at once
            conn.execute(
                "INSERT INTO tsop_data_keys (key_id, subject, customer_id, key) "
                "SELECT n.key_id, n.subject, n.customer_id, n.key "
                "FROM unnest(%s::text[], %s::text[], %s::text[], %s::bytea[]) AS n(key_id, subject, customer_id, key) "
                "WHERE NOT EXISTS (SELECT 1 FROM tsop_data_keys k WHERE k.subject = n.subject) "
                "AND NOT EXISTS (SELECT 1 FROM tsop_erased_subjects e WHERE e.subject = n.subject)",
                ([k for k, _ in fresh.values()], list(fresh), [wanted[s] or "" for s in fresh],
                 [key for _, key in fresh.values()]),
            )
            rows = conn.execute(
                "SELECT DISTINCT ON (subject) subject, key_id, key FROM tsop_data_keys k WHERE subject = ANY(%s) "
                "AND NOT EXISTS (SELECT 1 FROM tsop_erased_subjects e WHERE e.subject = k.subject) "
                "ORDER BY subject, created_at DESC",
                (missing,),
            ).fetchall()
        self._remember({str(key_id): bytes(key) for _, key_id, key in rows})
        now = time.monotonic()
        keyed = {str(subject) for subject, _, _ in rows}
        with self._lock:
            for subject, key_id, _ in rows:
                self._live[str(subject)] = (now, str(key_id))
            for subject in missing:
                if subject not in keyed:  # no key and none created: the subject is erased
                    self._live[subject] = (now, None)

    def key(self, key_id: str) -> bytes | None:
        cached = self._cache.get(key_id)
        if cached is not None and (cached[1] is None or self._fresh(cached[0])):
            return cached[1]  # a destroyed key never comes back
        with self.pool.connection() as conn:
            row = conn.execute("SELECT key FROM tsop_data_keys WHERE key_id = %s", (key_id,)).fetchone()
        key = None if row is None else bytes(row[0])
        self._remember({key_id: key})
        return key

    def load(self, key_ids: Iterable[str]) -> None:
        wanted = [k for k in set(key_ids) if (c := self._cache.get(k)) is None or (c[1] and not self._fresh(c[0]))]
        if not wanted:
            return
        with self.pool.connection() as conn:
            rows = conn.execute(
                "SELECT key_id, key FROM tsop_data_keys WHERE key_id = ANY(%s)", (wanted,)
            ).fetchall()
        found: dict[str, bytes | None] = dict.fromkeys(wanted)
        found.update({str(r[0]): bytes(r[1]) for r in rows})
        self._remember(found)

    def _remember(self, keys: Mapping[str, bytes | None]) -> None:
        now = time.monotonic()
        with self._lock:
            for key_id, key in keys.items():
                self._cache[key_id] = (now, key)
            if len(self._cache) > self.max_cached:  # bounded: the oldest half goes (read again when needed)
                for key_id in list(self._cache)[: len(self._cache) // 2]:
                    del self._cache[key_id]

    def assign(self, subject: str, customer_id: str) -> None:
        with self.pool.connection() as conn:
            conn.execute(
                "UPDATE tsop_data_keys SET customer_id = %s WHERE subject = %s AND customer_id = ''",
                (customer_id, subject),
            )

    def erase(self, customer_id: str) -> int:
        with self.pool.connection() as conn:
            with conn.transaction():
                # tombstones first (customer and time, no key): no key is created for these subjects any more
                conn.execute(
                    "INSERT INTO tsop_erased_subjects (subject, customer_id) "
                    "SELECT DISTINCT subject, customer_id FROM tsop_data_keys WHERE customer_id = %s "
                    "ON CONFLICT (subject) DO NOTHING",
                    (customer_id,),
                )
                # and keys of an erased subject that a writer created meanwhile (before it saw the tombstone)
                gone = conn.execute(
                    "DELETE FROM tsop_data_keys WHERE customer_id = %s "
                    "OR subject IN (SELECT subject FROM tsop_erased_subjects WHERE customer_id = %s) "
                    "RETURNING key_id, subject",
                    (customer_id, customer_id),
                ).fetchall()
            if gone:
                # a plain VACUUM (no ACCESS EXCLUSIVE lock: seals and opens go on) prunes the dead row versions;
                # their bytes may still linger in free page space and in the WAL (docs/erasure.md)
                conn.execute("VACUUM tsop_data_keys")
        self.forget([str(r[0]) for r in gone], [str(r[1]) for r in gone])
        return len(gone)

    def forget(self, key_ids: Iterable[str] = (), subjects: Iterable[str] = ()) -> None:
        """Drop cached keys (all when none are named): the next use reads the keyring again."""
        with self._lock:
            ids, subs = list(key_ids), list(subjects)
            if not ids and not subs:
                self._cache.clear()
                self._live.clear()
                return
            for kid in ids:
                self._cache[kid] = (time.monotonic(), None)
            for sub in subs:
                self._live[sub] = (time.monotonic(), None)  # erased: its tombstone is forever


_KEYRINGS: dict[str, Keyring] = {}
_KEYRINGS_LOCK = threading.Lock()


def keyring_of(settings: ServiceSettings | None) -> Keyring:
    """The process's keyring for these settings (one per keyring database, shared by the event store's mapper
    and the HTTP answers); without settings, one in memory."""
    if settings is None:
        return MemoryKeyring()
    dsn = settings.pg_dsn(settings.keyring_database)
    with _KEYRINGS_LOCK:
        found = _KEYRINGS.get(dsn)
        if found is None:
            found = _KEYRINGS[dsn] = PostgresKeyring(
                settings.pg_dsn("postgres"), dsn, settings.keyring_database, settings.keyring_cache_seconds
            )
        return found


# ------------------------------------------------------------------------------------------------ event stores


@dataclass(frozen=True)
class PersonalFields:
    """Which attributes of a domain event are personal.

    ``fields``: attributes sealed whole (every string in them). ``within``: a mapping attribute (a change set)
    whose keys named in ``fields`` are sealed. ``customer``: the attribute naming the customer, when the event
    carries it. ``subject``: the key's subject (default: the aggregate's id). ``keep``: keys of a sealed mapping
    whose values stay plain (a TMF ticket's severity and type in its attributes: the service record).
    """

    fields: frozenset[str]
    within: str | None = None
    customer: str | None = None
    subject: Callable[[Any], str] | None = None
    keep: frozenset[str] = frozenset()


class SealingMapper(Mapper[Any]):
    """The event store's mapper, sealing personal attributes on the way in and opening them on the way out.

    ``to_sealed_domain_event`` gives the event as stored (tokens): what the relay publishes.
    """

    def __init__(self, inner: Mapper[Any], keyring: Keyring, rules: Mapping[type, PersonalFields]) -> None:
        super().__init__(inner.transcoder, inner.compressor, inner.cipher)
        self.keyring = keyring
        self.rules = dict(rules)

    def _subject(self, rule: PersonalFields, event: Any) -> str:
        return rule.subject(event) if rule.subject is not None else str(event.originator_id)

    def _transform(self, event: Any, rule: PersonalFields, fn: Callable[[str, str | None, Any], Any]) -> None:
        customer = getattr(event, rule.customer, None) if rule.customer else None
        subject = self._subject(rule, event)

        def each(value: Any) -> Any:
            if rule.keep and isinstance(value, Mapping):
                return {k: (v if k in rule.keep else fn(subject, customer, v)) for k, v in value.items()}
            return fn(subject, customer, value)

        if rule.within is not None:
            changes = getattr(event, rule.within)
            if isinstance(changes, Mapping):
                new = {k: (each(v) if k in rule.fields else v) for k, v in changes.items()}
                object.__setattr__(event, rule.within, new)
            return
        for name in rule.fields:
            object.__setattr__(event, name, each(getattr(event, name, None)))

    def prepare(self, events: Iterable[Any]) -> None:
        """Create the keys a batch of events will be sealed with, in one round trip (before it is stored)."""
        wanted: dict[str, str | None] = {}
        for e in events:
            rule = self.rules.get(type(e))
            if rule is not None and rule.within is None and any(getattr(e, f, None) is not None for f in rule.fields):
                wanted.setdefault(self._subject(rule, e), getattr(e, rule.customer, None) if rule.customer else None)
        if wanted:
            self.keyring.prepare(wanted)

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        rule = self.rules.get(type(domain_event))
        if rule is None:
            return super().to_stored_event(domain_event)
        sealed = copy.copy(domain_event)  # the saved aggregate keeps its plaintext event
        if rule.within is not None and rule.customer is None:
            changes = getattr(domain_event, rule.within, None)
            if isinstance(changes, Mapping) and isinstance(changes.get("customer_id"), str) and changes["customer_id"]:
                self.keyring.assign(self._subject(rule, domain_event), changes["customer_id"])
        self._transform(sealed, rule, self.keyring.seal)
        return super().to_stored_event(sealed)

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        event = super().to_domain_event(stored_event)
        rule = self.rules.get(type(event))
        if rule is not None:
            self._transform(event, rule, lambda _s, _c, v: self.keyring.open(v))
        return event

    def prefetch(self, stored_events: Iterable[StoredEvent]) -> None:
        """Load the keys a batch of stored events was sealed with, in one round trip (a log being replayed)."""
        ids = {m.group(1).decode() for s in stored_events for m in TOKEN_BYTES.finditer(bytes(s.state))}
        if ids:
            self.keyring.load(ids)

    def to_sealed_domain_event(self, stored_event: StoredEvent) -> Any:
        return super().to_domain_event(stored_event)


# ------------------------------------------------------------------------------------------------ fingerprints

ERASED_FINGERPRINT = "erased"
"""The fingerprint of a body whose subject was erased: nothing can be compared with it any more."""


def keyed_digest(key: bytes, raw: bytes) -> str:
    """An HMAC-SHA256 of ``raw`` under a key derived from a data key (never the AES key itself)."""
    derived = hmac.new(key, b"tsop-fingerprint-v1", hashlib.sha256).digest()
    return "hk1." + hmac.new(derived, raw, hashlib.sha256).hexdigest()


def fingerprint(keyring: Keyring, subject: str, customer_id: str | None, raw: bytes) -> str:
    """A fingerprint of a body that holds personal data (an idempotency record's, a submission's), keyed by the
    subject's data key: it tells two bodies apart while the key lives, and once the customer's data is erased (the
    key destroyed) nobody can recompute it from guessed plaintext (a phone number, an address: few enough to try
    them all against a plain hash). ``ERASED_FINGERPRINT`` when the subject is erased already."""
    found = keyring.key_for(subject, customer_id)
    return ERASED_FINGERPRINT if found is None else keyed_digest(found[1], raw)


# ------------------------------------------------------------------------------------------------ logs


def error_text(exc: BaseException) -> str:
    """An error as text for logs and dead letters, without the input values a validation error would quote
    (they may be a customer's personal data)."""
    if isinstance(exc, ValidationError):
        parts = [
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors(include_input=False)
        ]
        return f"{exc.error_count()} validation error(s) for {exc.title}: " + "; ".join(parts)
    return str(exc)
