"""Settings from environment variables, the same names in every mode."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ProcessRole = Literal["all", "api", "worker"]
"""What one process of a service does (``TSOP_ROLE``, see docs/operations.md, "Process roles")."""


class ServiceSettings(BaseSettings):
    """What every service reads. Variables are prefixed ``TSOP_``."""

    model_config = SettingsConfigDict(env_prefix="TSOP_", extra="ignore", use_attribute_docstrings=True)

    service_name: str = "tsop"
    """Names the service in events (`ce_source`) and its database `tsop_<name>` unless `TSOP_PG_DATABASE` is set."""
    role: ProcessRole = "all"
    """What this process does: `all` (the default) everything; `api` serves the HTTP routes (with the views and
    credentials they read) and runs no consumers, no relay and no timers or delivery workers; `worker` runs the
    consumers, the relay and the timers and delivery workers, and serves only `/healthz`, `/readyz` and
    `/metrics` (every other path: 421). Any mix of processes of one service works together through its database
    (see docs/operations.md, "Process roles")."""
    http_host: str = "127.0.0.1"
    """Where the service listens."""
    http_port: int = 8000
    """The service's HTTP port (8001 to 8005 by default, one per service)."""

    kafka_bootstrap: str = "127.0.0.1:9092"
    """Kafka bootstrap servers, comma-separated."""
    kafka_idempotence: bool = False
    """Idempotent producer: on for Apache Kafka; the embedded broker lacks InitProducerId. Correctness never
    depends on it."""
    topic_prefix: str = "tsop."
    """Prefix of every topic name."""
    topic_partitions: int = 6
    """Partitions of each topic the platform creates."""
    topic_replication: int = 1
    """Replication factor of each topic the platform creates."""
    topic_min_insync_replicas: int = 0
    """`min.insync.replicas` of each topic the platform creates (0: the broker's default); with `acks=all`
    a write succeeds once that many replicas hold it."""
    consumer_batch: int = 500
    """Most records a consumer applies in one transaction."""
    fetch_max_wait_ms: int = 50
    """How long a consumer's fetch waits for records."""
    consumer_safety_net_seconds: Annotated[float, Field(gt=0)] = 10.0
    """Longest a quiet consumer stays paused without news. Every publisher of the platform announces what it
    published (relays after each batch, dead letters as they go), so this bounds only the delay of a lost
    announcement (a process killed between the broker's acknowledgement and its announcement) and of records
    published by anything else (tests, tools: they may announce with `tsop_events.runtime.announce`)."""
    consumer_shared: bool = False
    """One Kafka consumer for all of a process's sinks (each record fetched once per process; it is decoded once per
    process either way) instead of one per sink. Cheaper, but the sinks then move together: a sink that lags (a new
    or rebuilt read model) or keeps failing transiently holds back its siblings, and one sink's crash restarts them
    all. Off: each sink has its own consumer and its own pace (the default)."""
    epoch_check_seconds: float = 2.0
    """How often the broker epoch is checked (see the README's design section)."""

    pg_host: str = "127.0.0.1"
    """PostgreSQL host."""
    pg_port: int = 5432
    """PostgreSQL port."""
    pg_user: str = "postgres"
    """PostgreSQL user."""
    pg_password: str = ""
    """PostgreSQL password."""
    pg_database: str = ""
    """The service's database; empty means `tsop_<service_name>`. Created if missing."""
    pg_pool_size: int = 8
    """Connections per pool."""

    relay_batch: int = 500
    """Most outbox notifications the relay publishes in one batch."""
    relay_idle_seconds: Annotated[float, Field(gt=0)] = 10.0
    """Longest an idle relay waits before reading its outbox (and its backlog and set-aside count) again: a save by
    any instance of the service, an operator's republish request and the loss of its leadership connection wake it
    at once (NOTIFYs on the connection it leads with), so this is only a safety net."""
    aggregate_cache_size: int = 10000
    """Aggregates cached in memory (always brought up to date from the store on read)."""
    max_body_bytes: int = 64 * 1024
    """Largest accepted request body; larger ones get 413."""
    keyring_database: str = "tsop_keyring"
    """The keyring's database (customers' data keys for crypto-shredding, see docs/erasure.md): shared by every
    service on the same PostgreSQL, never one service's own. Created if missing."""
    keyring_cache_seconds: Annotated[float, Field(ge=0)] = 5.0
    """How long a service keeps a data key in memory: a key destroyed by an erasure elsewhere stops opening here
    within this time at the latest (at once where it was destroyed)."""
    log_level: str = "INFO"
    """Logging level."""
    auth_tokens: str = ""
    """JSON: SHA-256 hex of a staff token → `{subject, roles}` (see the README's roles)."""
    auth_tokens_file: Path | None = None
    """A file holding the same JSON as `TSOP_AUTH_TOKENS`."""

    # outbound calls (webhooks, TMF621 hub listeners): see tsop_events.outbound and the README's "Outbound calls"
    outbound_allow: str = ""
    """Comma-separated CIDRs, addresses or host names, each optionally `:port` (`[::1]:9000` for IPv6), that
    webhooks and hub listeners may reach although loopback, private or link-local. An entry without a port never
    opens one of the platform's own endpoints; one with a port opens that port."""
    platform_endpoints: str = "8001,8002,8003,8004,8005"
    """The platform's own endpoints no callback may reach: `host:port`, or a bare port (on this machine). This
    service's HTTP port, PostgreSQL and the Kafka bootstrap servers are always added; `make run` sets all its ports."""
    outbound_max_attempts: Annotated[int, Field(ge=1)] = 12
    """Delivery attempts of one webhook or hub notification before it is dead-lettered."""
    outbound_backoff_base_seconds: Annotated[float, Field(gt=0)] = 0.5
    """First back-off step between delivery attempts; the n-th wait is drawn from [d/2, d], d = min(max, base·2ⁿ⁻¹)."""
    outbound_backoff_max_seconds: Annotated[float, Field(gt=0)] = 600.0
    """Longest back-off step between delivery attempts (the defaults give up after at most ~17 min of waiting)."""

    @property
    def database(self) -> str:
        return self.pg_database or f"tsop_{self.service_name}"

    def pg_dsn(self, database: str | None = None) -> str:
        auth = self.pg_user + (f":{self.pg_password}" if self.pg_password else "")
        return f"postgresql://{auth}@{self.pg_host}:{self.pg_port}/{database or self.database}"

    def eventsourcing_env(self) -> dict[str, str]:
        """The eventsourcing library's own configuration, derived from ours."""
        return {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "PROCESS_RECORDER_TOPIC": "tsop_events.store:ArrayInsertRecorder",  # binary arrays, not a composite
            "POSTGRES_DBNAME": self.database,
            "POSTGRES_HOST": self.pg_host,
            "POSTGRES_PORT": str(self.pg_port),
            "POSTGRES_USER": self.pg_user,
            "POSTGRES_PASSWORD": self.pg_password,
            "POSTGRES_POOL_SIZE": str(self.pg_pool_size),
            "POSTGRES_SCHEMA": "public",
            "CREATE_TABLE": "y",
            # hot aggregates (technicians) stay in memory; each read still fetches newer events,
            # so several instances of a service never act on a stale copy
            "AGGREGATE_CACHE_MAXSIZE": str(self.aggregate_cache_size),
            "AGGREGATE_CACHE_FASTFORWARD": "y",
        }
