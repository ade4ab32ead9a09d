"""Announcements of published records: relays (and dead-letter publishers) tell the platform's paused consumers.

A record published to a topic is announced with ``NOTIFY tsop_published`` (payload: the topics' qualified names,
comma-separated) on the ``postgres`` database, which every service's PostgreSQL user reaches (NOTIFY does not cross
databases); each process listens once (``Runtime._publish_news``) and wakes its consumers of those topics.
"""

from __future__ import annotations

from collections.abc import Iterable

import asyncpg

from tsop_events.settings import ServiceSettings

NEWS_CHANNEL = "tsop_published"  # relays' announcements: the topics of each batch the broker acknowledged


async def announce(settings: ServiceSettings, topics: Iterable[str]) -> None:
    """Tell every paused consumer of the platform that records were published to ``topics`` (qualified names), as
    relays do after each batch, on a connection of its own. For tests and tools that publish directly, and for rare
    publishers (a delivery given up): without it their records wait for the consumers' safety net
    (``TSOP_CONSUMER_SAFETY_NET_SECONDS``)."""
    conn = await asyncpg.connect(settings.pg_dsn("postgres"), timeout=5)
    try:
        await conn.execute("SELECT pg_notify($1, $2)", NEWS_CHANNEL, ",".join(sorted(set(topics))))
    finally:
        await conn.close()
