"""Reading the store: `bus query`, `bus tail` and anything else that looks at stored records.

Readers open their own read-only connections; the store's WAL mode lets them run beside the
bus's writer (appliance.bus.store), which owns the schema.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Query:
    """Filters of `bus query` / `bus tail`; None means no filter."""

    agent: str | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    address: str | None = None
    port: int | None = None
    proto: str | None = None
    kind: str | None = "flow"
    after_id: int = 0
    limit: int | None = 1000


def _where(q: Query) -> tuple[str, list[Any]]:
    clauses: list[str] = ["id > ?"]
    args: list[Any] = [q.after_id]
    if q.kind is not None:
        clauses.append("kind = ?")
        args.append(q.kind)
    if q.agent is not None:
        clauses.append("agent_id = ?")
        args.append(q.agent)
    if q.since_ns is not None:
        clauses.append("ts_ns >= ?")
        args.append(q.since_ns)
    if q.until_ns is not None:
        clauses.append("ts_ns < ?")
        args.append(q.until_ns)
    if q.address is not None:
        clauses.append("(src_ip = ? OR dst_ip = ?)")
        args += [q.address, q.address]
    if q.port is not None:
        clauses.append("(src_port = ? OR dst_port = ?)")
        args += [q.port, q.port]
    if q.proto is not None:
        clauses.append("proto = ?")
        args.append(q.proto.upper())
    return " AND ".join(clauses), args


def open_reader(path: Path) -> sqlite3.Connection:
    """A read-only connection to an existing store (clear error if there is none)."""
    if not path.exists():
        from appliance.errors import CommandError

        raise CommandError(f"no bus store at {path}: is storage.data_dir right?")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def query(conn: sqlite3.Connection, q: Query) -> list[sqlite3.Row]:
    """Rows matching q, oldest first."""
    where, args = _where(q)
    sql = f"SELECT * FROM records WHERE {where} ORDER BY id"
    if q.limit is not None:
        sql += " LIMIT ?"
        args.append(q.limit)
    return list(conn.execute(sql, args))


def follow(
    conn: sqlite3.Connection, q: Query, *, poll_s: float = 0.5, stop: threading.Event | None = None
) -> Iterator[sqlite3.Row]:
    """Yield matching rows as they are stored, forever or until stop is set."""
    while stop is None or not stop.is_set():
        rows = query(conn, q)
        for row in rows:
            q.after_id = row["id"]
            yield row
        if not rows:
            if stop is not None:
                stop.wait(poll_s)
            else:
                time.sleep(poll_s)


def count(conn: sqlite3.Connection) -> int:
    """Number of stored records."""
    return int(conn.execute("SELECT count(*) FROM records").fetchone()[0])
