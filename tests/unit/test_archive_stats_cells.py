"""The statistics' per-day cells, kept in step batch by batch (``cell_deltas``), equal the cells computed at once
from the final facts: every ticket's contribution moved, never lost or counted twice, whatever the batches and
redeliveries (the SQL applies the same deltas: counters added, reasons added, values moved as a multiset)."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.stats_data import lifecycle
from tsop_archive.stats.domain import (
    Cell,
    CellKey,
    TicketFacts,
    ValueKey,
    cell_deltas,
    contributions,
    fold_once,
    value_deltas,
)

D0 = datetime(2026, 5, 25, tzinfo=UTC)
Held = dict[CellKey, dict[str, Any]]


def apply(cells: Held, deltas: dict[CellKey, Cell]) -> None:
    """What ``UPSERT_CELL`` does to a row."""
    for key, d in deltas.items():
        row = cells.setdefault(key, {"counts": Counter(), "reasons": Counter(), "assign": Counter(),
                                     "resolve": Counter()})
        row["counts"].update(d.counts)
        row["reasons"].update(d.reasons)
        for name in ("assign", "resolve"):
            row[name].update(getattr(d, name))
            row[name].subtract(getattr(d, f"{name}_gone"))
            assert all(v >= 0 for v in row[name].values()), "a value taken out that the cell did not hold"


def normal(cells: Held) -> dict[CellKey, Any]:
    out = {}
    for key, row in cells.items():
        n = {k: {x: v for x, v in c.items() if v} for k, c in row.items()}
        if any(n.values()):
            out[key] = n
    return out


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(1, 20), days=st.integers(1, 6))
def test_cells_kept_batch_by_batch_equal_the_cells_of_the_final_facts(seed: int, n: int, days: int) -> None:
    rng = random.Random(seed)
    events = [e for _ in range(n) for e in lifecycle(rng, D0, timedelta(days=days), reopen=True)]
    rng.shuffle(events)  # tickets interleave; one ticket's events may even arrive out of order
    facts: dict[str, TicketFacts] = {}
    cells: Held = {}
    i = 0
    while i < len(events):
        batch = events[i:i + rng.randint(1, 9)]
        for _ in range(2 if rng.random() < 0.3 else 1):  # a redelivery after a crash: the same batch again
            before = {t: facts[t] for t, *_ in batch if t in facts}
            for ticket, event_id, event_type, body, at in batch:
                facts[ticket] = fold_once(facts.get(ticket) or TicketFacts(ticket), event_id, event_type, body, at)
            apply(cells, cell_deltas(before.values(), [facts[t] for t in {t for t, *_ in batch}]))
        i += len(batch)
    want: Held = {}
    for f in facts.values():
        for key, part in contributions(f):  # a ticket that ends on its submission day adds twice to one cell
            apply(want, {key: part})
    assert normal(cells) == normal(want)
    assert sum(r["counts"]["submitted"] for r in cells.values()) == sum(
        f.submitted_at is not None for f in facts.values())


def test_a_ticket_accepted_moves_from_the_cell_without_priority_to_its_priority() -> None:
    f0 = TicketFacts("t1", channel="web", service_type="x", region="north", submitted_at=D0 + timedelta(hours=3))
    f1 = TicketFacts("t1", channel="web", service_type="x", region="north", priority=2,
                     submitted_at=D0 + timedelta(hours=3), accepted_at=D0 + timedelta(hours=4),
                     first_assigned_at=D0 + timedelta(hours=5))
    d = cell_deltas([f0], [f1])
    assert d[(D0, "web", "x", "north", None)].counts == {"submitted": -1, "self_service": -1}
    moved = d[(D0, "web", "x", "north", 2)]
    assert moved.counts == {"submitted": 1, "accepted": 1, "self_service": 1} and moved.assign == [7200.0]
    assert cell_deltas([f1], [f1]) == {}  # nothing changed (a redelivered event): nothing to write


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(1, 15))
def test_values_counted_batch_by_batch_equal_the_values_of_the_final_facts(seed: int, n: int) -> None:
    """``value_deltas`` (what ``stats_daily_values`` is upserted with): each value's count moved by the batches,
    out-of-order and redelivered, ends as the final facts' contributions count it, never below 0."""
    rng = random.Random(seed)
    events = [e for _ in range(n) for e in lifecycle(rng, D0, timedelta(days=2), reopen=True)]
    rng.shuffle(events)
    facts: dict[str, TicketFacts] = {}
    counted: Counter[ValueKey] = Counter()
    i = 0
    while i < len(events):
        batch = events[i:i + rng.randint(1, 9)]
        for _ in range(2 if rng.random() < 0.3 else 1):
            before = {t: facts[t] for t, *_ in batch if t in facts}
            for ticket, event_id, event_type, body, at in batch:
                facts[ticket] = fold_once(facts.get(ticket) or TicketFacts(ticket), event_id, event_type, body, at)
            changes = value_deltas(cell_deltas(before.values(), [facts[t] for t in {t for t, *_ in batch}]))
            assert all(d for d in changes.values())  # nothing written for a value whose count stays
            counted.update(changes)
            assert all(c >= 0 for c in counted.values())
        i += len(batch)
    want: Counter[ValueKey] = Counter()
    for f in facts.values():
        for key, part in contributions(f):
            want.update((*key, "assign", v) for v in part.assign)
            want.update((*key, "resolve", v) for v in part.resolve)
    assert +counted == want
