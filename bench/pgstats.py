"""PostgreSQL's own counters over a phase of a bench: transactions and rows per database, and (``--pg-statements``)
the statements themselves, from ``pg_stat_statements`` (the embedded server preloads it only when asked).

``before = await snapshot(dsn, statements)`` … work … ``report(before, await snapshot(dsn, statements), n)``: every
figure is per unit of work (``n`` lifecycles, ratings, tickets)."""

from __future__ import annotations

from typing import Any

import asyncpg

PRELOAD = {"shared_preload_libraries": "pg_stat_statements", "pg_stat_statements.max": "2000",
           "pg_stat_statements.track": "all"}

_DATABASES = """
SELECT datname, xact_commit + xact_rollback AS xacts, tup_returned, tup_fetched, tup_inserted, tup_updated,
       tup_deleted, blks_hit + blks_read AS blocks
  FROM pg_stat_database WHERE datname LIKE 'tsop%'"""

_STATEMENTS = """
SELECT d.datname, s.queryid, s.query, s.calls, s.total_exec_time, s.rows
  FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
 WHERE d.datname LIKE 'tsop%'"""


async def snapshot(dsn: str, statements: bool) -> dict[str, Any]:
    """The counters now; with ``statements`` the extension is created (once) and its statements read."""
    conn = await asyncpg.connect(dsn)
    try:
        out: dict[str, Any] = {"databases": {r["datname"]: dict(r) for r in await conn.fetch(_DATABASES)}}
        if statements:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            out["statements"] = {(r["datname"], r["queryid"]): dict(r) for r in await conn.fetch(_STATEMENTS)}
        return out
    finally:
        await conn.close()


def report(before: dict[str, Any], after: dict[str, Any], n: int, top: int = 25) -> dict[str, Any]:
    """Per unit of work: each database's transactions and rows; the statements, most time first."""
    per = max(n, 1)
    dbs: dict[str, dict[str, float]] = {}
    for name, row in after["databases"].items():
        old = before["databases"].get(name, {})
        dbs[name] = {k: round((v - old.get(k, 0)) / per, 2) for k, v in row.items() if k != "datname"}
    out: dict[str, Any] = {"per": n, "databases": dbs,
                           "transactions": round(sum(d["xacts"] for d in dbs.values()), 2)}
    if "statements" in after:
        rows = []
        for key, row in after["statements"].items():
            old = before.get("statements", {}).get(key, {})
            calls = row["calls"] - old.get("calls", 0)
            if calls <= 0:
                continue
            ms = row["total_exec_time"] - old.get("total_exec_time", 0.0)
            rows.append({"database": key[0], "calls": calls, "ms": ms, "rows": row["rows"] - old.get("rows", 0),
                         "query": " ".join(row["query"].split())[:160]})
        total_ms = sum(r["ms"] for r in rows) or 1.0
        by_db: dict[str, float] = {}
        for r in rows:
            by_db[r["database"]] = by_db.get(r["database"], 0) + r["calls"] / per
        out["statements"] = round(sum(r["calls"] for r in rows) / per, 2)
        out["statements_by_database"] = {k: round(v, 2) for k, v in sorted(by_db.items())}
        out["exec_ms"] = round(total_ms / per, 3)
        out["top"] = [
            {"database": r["database"], "calls": round(r["calls"] / per, 2),
             "mean_us": round(1000 * r["ms"] / r["calls"], 1),
             "share": round(r["ms"] / total_ms, 3), "rows": round(r["rows"] / per, 2), "query": r["query"]}
            for r in sorted(rows, key=lambda r: -r["ms"])[:top]
        ]
    return out


_TABLES = """
SELECT relname, seq_scan, seq_tup_read, coalesce(idx_scan, 0) AS idx_scan, coalesce(idx_tup_fetch, 0) AS idx_tup_fetch,
       n_tup_ins, n_tup_upd, n_tup_del
  FROM pg_stat_user_tables"""


async def tables(dsn_of: dict[str, str]) -> dict[str, dict[str, dict[str, int]]]:
    """Each database's tables' counters now (``pg_stat_user_tables`` is per database: one connection each)."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    for db, dsn in dsn_of.items():
        conn = await asyncpg.connect(dsn)
        try:
            out[db] = {r["relname"]: {k: int(v) for k, v in r.items() if k != "relname"}
                       for r in await conn.fetch(_TABLES)}
        finally:
            await conn.close()
    return out


def tables_report(before: dict[str, Any], after: dict[str, Any], n: int, least: float = 0.5) -> dict[str, Any]:
    """Per unit of work, per database and table: scans and the rows they read (sequential, by index) and wrote;
    tables with less than ``least`` of every figure per unit left out."""
    per = max(n, 1)
    out: dict[str, Any] = {}
    for db, tabs in after.items():
        for name, row in tabs.items():
            old = before.get(db, {}).get(name, {})
            figs = {k: round((v - old.get(k, 0)) / per, 2) for k, v in row.items()}
            if any(v >= least for v in figs.values()):
                out.setdefault(db, {})[name] = figs
    return out
