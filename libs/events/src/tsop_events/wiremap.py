"""Domain events to wire events, driven by a table.

Each service's ``wire.py`` builds one ``WireMap``: a row per domain event
class that crosses the boundary, naming its wire model. A wire field takes the
domain event's attribute of the same name; only real differences are written
out, as ``fields`` (a wire field from another attribute, or computed). The map
is the relay's mapper: ``wire_map(domain_event)`` gives the ``Outgoing``
record, or None for events that stay inside the service. ``publishes`` tells from a stored event's topic
alone whether the map can publish it: the relay skips the others without decoding them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from eventsourcing.utils import resolve_topic

from tsop_events.envelope import stable_event_id
from tsop_events.relay import Outgoing
from tsop_events.schemas import WireEvent

E = TypeVar("E")
Source = str | Callable[[Any], Any]
Causation = Callable[[Any], str | None]


def previous_event(e: Any) -> str:
    """The ``ce_id`` of the aggregate's event before this one: the usual cause of a reaction."""
    return stable_event_id(e.originator_id, e.originator_version - 1)


@dataclass(frozen=True, slots=True)
class _Row(Generic[E]):
    wire: type[WireEvent]
    fields: dict[str, Source]
    causation: Causation | None
    correlation: Causation | None
    when: Callable[[Any], bool] | None
    names: tuple[str, ...]

    def build(self, e: Any) -> Outgoing | None:
        if self.when is not None and not self.when(e):
            return None
        data: dict[str, Any] = {}
        for name in self.names:
            source = self.fields.get(name, name)
            if callable(source):
                data[name] = source(e)
            elif hasattr(e, source):
                data[name] = getattr(e, source)
        return Outgoing(
            self.wire(**data),
            causation_id=self.causation(e) if self.causation else getattr(e, "causation_id", None),
            correlation_id=self.correlation(e) if self.correlation else None,
        )


class WireMap:
    """The table of a service's outgoing events; call it with a domain event."""

    def __init__(self) -> None:
        self._rows: dict[type, _Row[Any]] = {}
        self._topics: dict[str, bool] = {}  # stored topic -> whether its class has a row (``publishes``)

    def add(
        self,
        domain: type[E],
        wire: type[WireEvent],
        *,
        fields: dict[str, Source] | None = None,
        causation: Causation | None = None,
        correlation: Causation | None = None,
        when: Callable[[E], bool] | None = None,
    ) -> WireMap:
        """Map ``domain`` events to ``wire`` events. ``fields`` names only what differs from same-named attributes.

        Without ``causation``, the domain event's own ``causation_id`` attribute (if any) is the cause.
        """
        fields = fields or {}
        unknown = set(fields) - set(wire.model_fields)
        if unknown:
            raise ValueError(f"{wire.__name__} has no field(s) {sorted(unknown)}")
        if domain in self._rows:
            raise ValueError(f"{domain.__qualname__} is mapped twice")
        self._rows[domain] = _Row(wire, fields, causation, correlation, when, tuple(wire.model_fields))
        self._topics.clear()
        return self

    def including(self, other: WireMap) -> WireMap:
        """A map with this one's rows and ``other``'s (one relay for two contexts); a class in both is an error."""
        both = WireMap()
        for rows in (self._rows, other._rows):
            for domain, row in rows.items():
                if domain in both._rows:
                    raise ValueError(f"{domain.__qualname__} is mapped twice")
                both._rows[domain] = row
        return both

    def publishes(self, topic: str) -> bool:
        """Whether an event stored under ``topic`` (eventsourcing's ``module:Class``) may be published: False only
        when the topic names a class this map has no row for, so the relay skips it without decoding its state. A
        topic that does not resolve answers True: decoding it then fails as before (the record is set aside)."""
        known = self._topics.get(topic)
        if known is None:
            try:
                known = resolve_topic(topic) in self._rows
            except Exception:  # noqa: BLE001 - not ours to judge here: the decode reports it
                return True
            self._topics[topic] = known
        return known

    def __call__(self, e: Any) -> Outgoing | None:
        row = self._rows.get(type(e))
        return None if row is None else row.build(e)

    def mapped(self) -> dict[type, type[WireEvent]]:
        """Which domain event class becomes which wire event (for tests and the catalogue)."""
        return {domain: row.wire for domain, row in self._rows.items()}
