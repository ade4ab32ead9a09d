"""Prometheus metrics shared by every service (one process = one service)."""

from prometheus_client import Counter, Gauge, Histogram

RELAY_PUBLISHED = Counter("tsop_relay_published_total", "Events published by the outbox relay", ["relay"])
RELAY_BACKLOG = Gauge(
    "tsop_relay_backlog", "Notifications after the relay's position (latest notification id minus position)", ["relay"]
)
RELAY_SET_ASIDE_TOTAL = Counter(
    "tsop_relay_set_aside_total", "Notifications the relay set aside because they could not be published", ["relay"]
)
RELAY_SET_ASIDE = Gauge(
    "tsop_relay_set_aside_pending", "Notifications set aside and not yet republished (tsop_relay_set_aside)", ["relay"]
)
RELAY_LEADER = Gauge("tsop_relay_leader", "1 while this instance leads its service's relay, else 0", ["relay"])
CONSUMED = Counter("tsop_consumer_records_total", "Records consumed", ["consumer", "outcome"])
CONSUMER_LAG = Gauge("tsop_consumer_lag", "Records behind the end of the partition", ["consumer", "topic", "partition"])
DEAD_LETTERED = Counter("tsop_deadlettered_total", "Records sent to the dead-letter topic", ["consumer"])
CONSUMER_RESTARTS = Counter(
    "tsop_consumer_restarts_total",
    "Kafka consumers found stuck (a fetch not back, its client's background work dead) and started again; the log says"
    " where each hung",
    ["consumer"],
)
HTTP_REQUESTS = Counter("tsop_http_requests_total", "HTTP requests", ["method", "route", "status"])
HTTP_LATENCY = Histogram("tsop_http_request_seconds", "HTTP request latency", ["method", "route"])
