"""Settings from environment variables, the same names in every mode."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """What every service reads. Variables are prefixed ``TSOP_``."""

    model_config = SettingsConfigDict(env_prefix="TSOP_", extra="ignore")

    service_name: str = "tsop"
    http_host: str = "127.0.0.1"
    http_port: int = 8000

    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_idempotence: bool = Field(
        default=False, description="On for Apache Kafka; the embedded broker lacks InitProducerId."
    )
    topic_prefix: str = "tsop."
    topic_partitions: int = 6
    topic_replication: int = 1
    topic_min_insync_replicas: int = Field(
        default=0, description="min.insync.replicas of the topics created (0: the broker's default)."
    )
    consumer_batch: int = 500
    fetch_max_wait_ms: int = 50
    epoch_check_seconds: float = 2.0

    pg_host: str = "127.0.0.1"
    pg_port: int = 5432
    pg_user: str = "postgres"
    pg_password: str = ""
    pg_database: str = ""  # default: tsop_<service_name>
    pg_pool_size: int = 8

    relay_batch: int = 500
    relay_idle_seconds: float = 0.05
    aggregate_cache_size: int = 10000
    max_body_bytes: int = 64 * 1024
    log_level: str = "INFO"
    auth_tokens: str = Field(
        default="", description="JSON: sha256-hex of a staff token → {subject, roles}; see tsop_events.auth."
    )
    auth_tokens_file: Path | None = None

    @property
    def database(self) -> str:
        return self.pg_database or f"tsop_{self.service_name}"

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    def pg_dsn(self, database: str | None = None) -> str:
        auth = self.pg_user + (f":{self.pg_password}" if self.pg_password else "")
        return f"postgresql://{auth}@{self.pg_host}:{self.pg_port}/{database or self.database}"

    def eventsourcing_env(self) -> dict[str, str]:
        """The eventsourcing library's own configuration, derived from ours."""
        return {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
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
