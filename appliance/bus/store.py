"""The embedded store: SQLite in WAL mode, group commit, dedupe by (agent, idempotency key).

Contract:
- `submit(rows)` returns a Future that completes after the rows are committed (durable per
  `sync`); the bus acks OK only then. A row whose (agent_id, idempotency_key) is already stored is
  ignored (counted as a duplicate), so a retransmission stores nothing twice.
- One writer thread owns the write connection. It takes every submission waiting in the queue
  and commits them in one transaction: under load many requests share one fsync.
- Readers (appliance.bus.query) open their own connections; WAL mode lets them run beside the
  writer.
- `close()` commits everything submitted before it and stops the writer.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    agent_id TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts_ns INTEGER NOT NULL,
    received_ns INTEGER NOT NULL,
    kind TEXT NOT NULL,
    src_ip TEXT, dst_ip TEXT, src_port INTEGER, dst_port INTEGER, proto TEXT,
    bytes_tx INTEGER, bytes_rx INTEGER, packets_tx INTEGER, packets_rx INTEGER,
    start_ms INTEGER, end_ms INTEGER, vlan INTEGER,
    envelope BLOB NOT NULL,
    UNIQUE (agent_id, idem_key)
);
CREATE INDEX IF NOT EXISTS records_ts ON records (ts_ns);
CREATE INDEX IF NOT EXISTS records_agent_ts ON records (agent_id, ts_ns);
CREATE INDEX IF NOT EXISTS records_src ON records (src_ip);
CREATE INDEX IF NOT EXISTS records_dst ON records (dst_ip);
"""

COLUMNS = (
    "agent_id", "idem_key", "seq", "ts_ns", "received_ns", "kind", "src_ip", "dst_ip",
    "src_port", "dst_port", "proto", "bytes_tx", "bytes_rx", "packets_tx", "packets_rx",
    "start_ms", "end_ms", "vlan", "envelope",
)  # fmt: skip
INSERT = (
    f"INSERT OR IGNORE INTO records ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in COLUMNS)})"
)

#: One row, in COLUMNS order.
Row = tuple[Any, ...]


@dataclass(frozen=True)
class CommitResult:
    """What one submission became: rows newly stored and rows that were duplicates."""

    inserted: int
    duplicates: int


class StoreClosed(RuntimeError):
    """submit() after close()."""


class FlowStore:
    """The SQLite store with its writer thread (see the module docstring for the contract)."""

    def __init__(self, path: Path, *, sync: str = "full", max_group_rows: int = 20000) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._sync = sync.upper()
        self._max_group_rows = max_group_rows
        self._queue: queue.SimpleQueue[tuple[Sequence[Row], Future[CommitResult]] | None] = (
            queue.SimpleQueue()
        )
        self._pending_rows = 0
        self._lock = threading.Lock()
        self._closed = False
        self.commit_seconds_total = 0.0
        self.commits = 0
        conn = self._connect()  # create the schema before accepting work: fail at start-up
        conn.executescript(SCHEMA)
        conn.close()
        self._thread = threading.Thread(target=self._run, name="bus-store-writer", daemon=True)
        self._thread.start()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._sync}")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    @property
    def pending_rows(self) -> int:
        """Rows submitted and not yet committed (admission control reads it)."""
        return self._pending_rows

    def submit(self, rows: Sequence[Row]) -> Future[CommitResult]:
        """Queue rows for the next group commit; the future completes after the commit."""
        fut: Future[CommitResult] = Future()
        with self._lock:
            if self._closed:
                raise StoreClosed("the store is closed")
            self._pending_rows += len(rows)
            self._queue.put((rows, fut))
        return fut

    def _run(self) -> None:
        conn = self._connect()
        try:
            while True:
                item = self._queue.get()
                if item is None:
                    return
                group = [item]
                n = len(item[0])
                stop = False
                while n < self._max_group_rows:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stop = True
                        break
                    group.append(nxt)
                    n += len(nxt[0])
                self._commit(conn, group)
                if stop:
                    return
        finally:
            conn.close()

    def _commit(
        self, conn: sqlite3.Connection, group: list[tuple[Sequence[Row], Future[CommitResult]]]
    ) -> None:
        started = time.perf_counter()
        results: list[CommitResult] = []
        try:
            conn.execute("BEGIN")
            for rows, _ in group:
                cur = conn.executemany(INSERT, rows)
                inserted = max(cur.rowcount, 0)
                results.append(CommitResult(inserted, len(rows) - inserted))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            log.error("store commit failed: %s", exc)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for rows, fut in group:
                self._done(len(rows))
                fut.set_exception(exc)
            return
        self.commit_seconds_total += time.perf_counter() - started
        self.commits += 1
        for (rows, fut), result in zip(group, results, strict=True):
            self._done(len(rows))
            fut.set_result(result)

    def _done(self, n: int) -> None:
        with self._lock:
            self._pending_rows -= n

    def close(self) -> None:
        """Commit what was submitted, then stop the writer (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join()

    def size_bytes(self) -> int:
        """The database's size on disk, WAL file included."""
        total = 0
        for suffix in ("", "-wal"):
            p = Path(str(self.path) + suffix)
            if p.exists():
                total += p.stat().st_size
        return total
