"""The embedded store: SQLite in WAL mode, group commit, one outcome per record.

Contract:
- `submit(records)` returns a Future that completes after the records' transaction commits
  (durable per `sync`) with one `Outcome` per record; the bus acks OK only for STORED and
  DUPLICATE. A record whose (agent_id, idempotency_key) is stored with the same bytes is a
  DUPLICATE (a retransmission: stored once); with other bytes, a CONFLICT (the first is kept).
  A (agent, key id, seq) stored with another idempotency key is SEQ_REUSED; an envelope whose
  prev_sig contradicts its stored neighbour is CHAIN_BROKEN (appliance/bus/chain.py); a value
  SQLite cannot hold is UNSTORABLE. None of these stores anything.
- One writer thread owns the write connection. It takes every submission waiting in the queue
  and commits them in one transaction: under load many requests share one fsync. Each
  submission runs inside a savepoint: the fast path inserts it with one executemany; when that
  cannot take every record as it is (a duplicate, a chain question, a bad value), the savepoint
  is rolled back and the submission is inserted record by record to give each its outcome.
- The writer never dies of data. An error of the database itself (disk full, I/O error, a
  locked or corrupt file) fails the whole group with `StoreUnavailable` (the bus answers
  RETRY) and marks the store unhealthy until a commit, or the writer's probe once a second,
  succeeds again; `healthy()` is what /ready reports. Any other exception fails its group the
  same way, is logged with its traceback, and the writer carries on.
- Chain state (runs, events) lives in the same transactions as the records it describes, so it
  is exactly as durable. A sweep every few seconds records holes that stayed open past
  `gap_settle_s` as GAP events.
- Readers (appliance.bus.query) open their own connections; WAL mode lets them run beside the
  writer.
- `close()` commits everything submitted before it and stops the writer.

Schema version 2 (PRAGMA user_version) adds `records.key_id`, the unique (agent, key id, seq)
index and the chain tables; a version-1 store is upgraded in place at start-up (its old rows have
no key id, so their sequence numbers are not checked).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.bus.chain import Chain, Event, EventKind, Run, Verdict

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
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
CREATE TABLE IF NOT EXISTS chain_runs (
    agent_id TEXT NOT NULL, key_id TEXT NOT NULL,
    lo INTEGER NOT NULL, lo_prev BLOB NOT NULL, hi INTEGER NOT NULL, hi_sig BLOB NOT NULL,
    PRIMARY KEY (agent_id, key_id, lo)
);
CREATE TABLE IF NOT EXISTS chain_events (
    id INTEGER PRIMARY KEY,
    agent_id TEXT NOT NULL, key_id TEXT NOT NULL, kind TEXT NOT NULL,
    seq_lo INTEGER NOT NULL, seq_hi INTEGER NOT NULL, at_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS chain_events_agent ON chain_events (agent_id, id);
CREATE TABLE IF NOT EXISTS probe (id INTEGER PRIMARY KEY CHECK (id = 1), at_ns INTEGER);
CREATE TABLE IF NOT EXISTS agents (
    agent_id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    first_seen_ns INTEGER NOT NULL,
    last_seen_ns INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    records INTEGER NOT NULL,
    health BLOB,
    health_ns INTEGER,
    gaps INTEGER NOT NULL DEFAULT 0,
    restarts INTEGER NOT NULL DEFAULT 0,
    rekeys INTEGER NOT NULL DEFAULT 0
);
"""
UPSERT_AGENT = """
INSERT INTO agents (agent_id, key_id, first_seen_ns, last_seen_ns, last_seq, records, health,
                    health_ns, gaps, restarts, rekeys)
VALUES (:agent_id, :key_id, :first_seen_ns, :last_seen_ns, :last_seq, :records, :health,
        :health_ns, :gaps, :restarts, :rekeys)
ON CONFLICT (agent_id) DO UPDATE SET
    key_id = excluded.key_id, last_seen_ns = excluded.last_seen_ns,
    last_seq = excluded.last_seq, records = excluded.records, health = excluded.health,
    health_ns = excluded.health_ns, gaps = excluded.gaps, restarts = excluded.restarts,
    rekeys = excluded.rekeys
"""
# Created after the key_id column exists (a version-1 table gains it first).
SEQ_INDEX = """
CREATE UNIQUE INDEX IF NOT EXISTS records_chain_seq ON records (agent_id, key_id, seq)
    WHERE key_id IS NOT NULL
"""

COLUMNS = (
    "agent_id", "idem_key", "seq", "ts_ns", "received_ns", "kind", "src_ip", "dst_ip",
    "src_port", "dst_port", "proto", "bytes_tx", "bytes_rx", "packets_tx", "packets_rx",
    "start_ms", "end_ms", "vlan", "envelope", "key_id",
)  # fmt: skip
INSERT = (
    f"INSERT OR IGNORE INTO records ({', '.join(COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in COLUMNS)})"
)
_ENVELOPE = COLUMNS.index("envelope")
#: Exceptions a record's values can cause; anything else from sqlite3 is the database's own.
DATA_ERRORS = (
    OverflowError, ValueError, TypeError, sqlite3.IntegrityError, sqlite3.DataError,
    sqlite3.InterfaceError, sqlite3.ProgrammingError,
)  # fmt: skip

#: One row, in COLUMNS order.
Row = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Record:
    """One verified envelope to store: its row, and its chain link."""

    row: Row
    prev_sig: bytes
    sig: bytes
    #: The serialized AgentHealth of a health record, and its sample time.
    health: bytes | None = None
    health_ns: int = 0

    @property
    def chain(self) -> tuple[str, str]:
        return self.row[0], self.row[-1]

    @property
    def seq(self) -> int:
        return int(self.row[2])


class Outcome(enum.Enum):
    """What became of one record (see the module docstring)."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    SEQ_REUSED = "seq_reused"
    CHAIN_BROKEN = "chain_broken"
    UNSTORABLE = "unstorable"


@dataclass(frozen=True)
class CommitResult:
    """One outcome per submitted record, in order."""

    outcomes: list[Outcome]

    @property
    def inserted(self) -> int:
        return self.outcomes.count(Outcome.STORED)

    @property
    def duplicates(self) -> int:
        return self.outcomes.count(Outcome.DUPLICATE)


@dataclass
class AgentSummary:
    """What the bus knows of one agent (table agents): kept by the writer, read by metrics and
    `bus agents`. Times are UNIX ns; `last_seq` is the highest seq stored under `key_id`."""

    agent_id: str
    key_id: str
    first_seen_ns: int
    last_seen_ns: int
    last_seq: int
    records: int
    health: bytes | None = None
    health_ns: int = 0
    gaps: int = 0
    restarts: int = 0
    rekeys: int = 0

    def absorb(self, r: Record, received_ns: int) -> None:
        """Count one newly stored record."""
        if r.row[-1] != self.key_id:
            self.key_id, self.last_seq = r.row[-1], 0
        self.records += 1
        self.last_seen_ns = max(self.last_seen_ns, received_ns)
        self.last_seq = max(self.last_seq, r.seq)
        if r.health is not None and r.health_ns >= self.health_ns:
            self.health, self.health_ns = r.health, r.health_ns

    def note(self, kind: EventKind) -> None:
        if kind is EventKind.GAP:
            self.gaps += 1
        elif kind is EventKind.RESTART:
            self.restarts += 1
        elif kind is EventKind.REKEY:
            self.rekeys += 1


@dataclass(frozen=True)
class Retention:
    """How much the store keeps: records older than max_age_s, and the oldest records past
    max_bytes of used pages, are deleted in batches of batch_rows between commits."""

    max_age_s: float = 90 * 86400.0
    max_bytes: int = 2 << 30
    batch_rows: int = 5000


class StoreClosed(RuntimeError):
    """submit() after close()."""


class StoreUnavailable(RuntimeError):
    """The database failed a commit (disk full, I/O error, ...): retry later."""


Submission = tuple[Sequence[Record], "Future[CommitResult]"]
ChainKey = tuple[str, str]


class FlowStore:
    """The SQLite store with its writer thread (see the module docstring for the contract)."""

    def __init__(
        self,
        path: Path,
        *,
        sync: str = "full",
        max_group_rows: int = 20000,
        gap_settle_s: float = 60.0,
        on_event: Callable[[EventKind], None] | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
        retention: Retention | None = None,
    ) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._sync = sync.upper()
        self._max_group_rows = max_group_rows
        self._settle_ns = int(gap_settle_s * 1e9)
        self._on_event = on_event or (lambda kind: None)
        self._clock_ns = clock_ns
        self._queue: queue.SimpleQueue[Submission | None] = queue.SimpleQueue()
        self._pending_rows = 0
        self._lock = threading.Lock()
        self._closed = False
        self._failing: str | None = None
        self._chains: dict[ChainKey, Chain] = {}
        self._last_sweep = time.monotonic()
        self._retention = retention
        self._prune_due = retention is not None
        self._inserted_since_prune = 0
        self.pruned_total = 0
        self.commit_seconds_total = 0.0
        self.commits = 0
        conn = self._connect()  # create or upgrade the schema before accepting work
        try:
            _migrate(conn)
            self._agents = _load_agents(conn)
        finally:
            conn.close()
        self._thread = threading.Thread(target=self._run, name="bus-store-writer", daemon=True)
        self._thread.start()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self._sync}")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA journal_size_limit=67108864")  # the -wal file shrinks back to 64 MiB
        return conn

    def agents(self) -> list[AgentSummary]:
        """A snapshot of every agent's summary (thread-safe: copies)."""
        with self._lock:
            return [dataclasses.replace(a) for a in self._agents.values()]

    @property
    def pending_rows(self) -> int:
        """Rows submitted and not yet committed (admission control reads it)."""
        return self._pending_rows

    def healthy(self) -> bool:
        """The writer runs and its last commit (or probe) succeeded: what /ready reports."""
        return self._thread.is_alive() and self._failing is None

    @property
    def failure(self) -> str | None:
        """Why the store is unhealthy (None when it is not)."""
        if not self._thread.is_alive() and not self._closed:
            return "store writer stopped"
        return self._failing

    def submit(self, records: Sequence[Record]) -> Future[CommitResult]:
        """Queue records for the next group commit; the future completes after the commit."""
        fut: Future[CommitResult] = Future()
        with self._lock:
            if self._closed:
                raise StoreClosed("the store is closed")
            self._pending_rows += len(records)
            self._queue.put((records, fut))
        return fut

    # -- the writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        conn = self._connect()
        try:
            while True:
                try:
                    item = self._queue.get(timeout=1.0)
                except queue.Empty:
                    self._idle(conn)
                    continue
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
                if self._prune_due:
                    self._prune(conn)
                if time.monotonic() - self._last_sweep > 5.0:
                    self._idle(conn)
        finally:
            conn.close()

    def _idle(self, conn: sqlite3.Connection) -> None:
        """Between commits: probe a failing database, sweep settled gaps into events."""
        self._last_sweep = time.monotonic()
        try:
            if self._failing is not None:
                with _transaction(conn):
                    conn.execute(
                        "INSERT OR REPLACE INTO probe (id, at_ns) VALUES (1, ?)",
                        (self._clock_ns(),),
                    )
                log.info("store commits again after: %s", self._failing)
                self._failing = None
            self._sweep(conn)
            self._prune_due = self._retention is not None
            if self._prune_due:
                self._prune(conn)
        except sqlite3.Error as exc:
            self._fail(exc)
        except Exception:
            log.exception("store sweep failed")

    def _sweep(self, conn: sqlite3.Connection) -> None:
        now = self._clock_ns()
        due = [
            (key, gap)
            for key, chain in self._chains.items()
            for gap in chain.settled_gaps(now, self._settle_ns)
        ]
        if not due:
            return
        try:
            with _transaction(conn):
                for key, (lo, hi) in due:
                    _insert_event(conn, key, Event(EventKind.GAP, lo, hi), now)
        except BaseException:  # not recorded: report them at the next sweep
            for key, gap in due:
                self._chains[key].reported.remove(gap)
            raise
        with self._lock:
            for (agent, _), _gap in due:
                if agent in self._agents:
                    self._agents[agent].note(EventKind.GAP)
            self._save_agents(conn, {agent for (agent, _), _gap in due})
        for _ in due:
            self._on_event(EventKind.GAP)

    def _fail(self, exc: BaseException) -> None:
        if self._failing is None:
            log.error("store cannot commit: %s", exc)
        self._failing = str(exc) or type(exc).__name__

    def _commit(self, conn: sqlite3.Connection, group: list[Submission]) -> None:
        started = time.perf_counter()
        work: dict[ChainKey, Chain] = {}
        events: list[tuple[ChainKey, Event]] = []
        try:
            with _transaction(conn):
                results = [
                    CommitResult(self._apply(conn, records, work, events)) for records, _ in group
                ]
                _save_chains(conn, work)
                agents = self._summarise(group, results, events)
                conn.executemany(UPSERT_AGENT, [dataclasses.asdict(a) for a in agents.values()])
        except Exception as exc:
            if isinstance(exc, sqlite3.Error):
                self._fail(exc)
            else:  # our own bug, whatever the data: fail this group, keep the writer
                log.exception("store commit failed")
            error = StoreUnavailable(f"store commit failed: {exc}")
            for records, fut in group:
                self._done(len(records))
                fut.set_exception(error)
            return
        self._failing = None
        self._chains.update(work)
        with self._lock:
            self._agents.update(agents)
        inserted = sum(r.inserted for r in results)
        self._inserted_since_prune += inserted
        if self._retention is not None and (
            self._inserted_since_prune * 2 >= self._retention.batch_rows
        ):  # a pass deletes up to batch_rows: pruning keeps up with twice the ingest
            self._prune_due = True
        self.commit_seconds_total += time.perf_counter() - started
        self.commits += 1
        for _, event in events:
            self._on_event(event.kind)
        for (records, fut), result in zip(group, results, strict=True):
            self._done(len(records))
            fut.set_result(result)

    def _chain(self, conn: sqlite3.Connection, work: dict[ChainKey, Chain], key: ChainKey) -> Chain:
        chain = work.get(key)
        if chain is None:
            cached = self._chains.get(key)
            chain = cached.copy() if cached is not None else _load_chain(conn, key)
            work[key] = chain
        return chain

    def _apply(
        self,
        conn: sqlite3.Connection,
        records: Sequence[Record],
        work: dict[ChainKey, Chain],
        events: list[tuple[ChainKey, Event]],
    ) -> list[Outcome]:
        """Insert one submission inside the open transaction; an outcome per record."""
        keys = {r.chain for r in records}
        saved = {k: self._chain(conn, work, k).copy() for k in keys}
        conn.execute("SAVEPOINT submission")
        fast = self._fast(conn, records, work)
        if fast is not None:
            conn.execute("RELEASE submission")
            self._record_events(conn, fast, events)
            return [Outcome.STORED] * len(records)
        conn.execute("ROLLBACK TO submission")
        work.update(saved)
        outcomes: list[Outcome] = []
        made: list[tuple[ChainKey, Event]] = []
        for record in records:
            outcomes.append(self._one(conn, record, work[record.chain], made))
        conn.execute("RELEASE submission")
        self._record_events(conn, made, events)
        return outcomes

    def _fast(
        self, conn: sqlite3.Connection, records: Sequence[Record], work: dict[ChainKey, Chain]
    ) -> list[tuple[ChainKey, Event]] | None:
        """Every record fits its chain and inserts: the events made, else None (nothing kept
        in the chains; the caller rolls the savepoint back)."""
        made: list[tuple[ChainKey, Event]] = []
        for r in records:
            chain = work[r.chain]
            if chain.check(r.seq, r.prev_sig, r.sig) is not Verdict.FITS:
                return None
            made += [(r.chain, e) for e in chain.add(r.seq, r.prev_sig, r.sig)]
        try:
            inserted = conn.executemany(INSERT, [r.row for r in records]).rowcount
        except DATA_ERRORS:
            return None
        return made if inserted == len(records) else None

    def _one(
        self,
        conn: sqlite3.Connection,
        r: Record,
        chain: Chain,
        made: list[tuple[ChainKey, Event]],
    ) -> Outcome:
        verdict = chain.check(r.seq, r.prev_sig, r.sig)
        if verdict in (Verdict.BROKEN_PREV, Verdict.BROKEN_NEXT):
            # a byte-identical retransmission is a duplicate whatever the chain says now
            same = _stored_envelope(conn, r)
            return Outcome.DUPLICATE if same == r.row[_ENVELOPE] else Outcome.CHAIN_BROKEN
        try:
            inserted = conn.execute(INSERT, r.row).rowcount == 1
        except DATA_ERRORS as exc:
            log.warning("record %s of %s cannot be stored: %s", r.row[1], r.row[0], exc)
            return Outcome.UNSTORABLE
        if inserted:
            if verdict is Verdict.FITS:
                made += [(r.chain, e) for e in chain.add(r.seq, r.prev_sig, r.sig)]
            return Outcome.STORED
        stored = _stored_envelope(conn, r)
        if stored is None:
            return Outcome.SEQ_REUSED
        return Outcome.DUPLICATE if stored == r.row[_ENVELOPE] else Outcome.CONFLICT

    def _record_events(
        self,
        conn: sqlite3.Connection,
        made: list[tuple[ChainKey, Event]],
        events: list[tuple[ChainKey, Event]],
    ) -> None:
        now = self._clock_ns()
        for key, event in made:
            if event.kind is EventKind.START and _has_other_key(conn, key):
                event = Event(EventKind.REKEY, event.seq_lo, event.seq_hi)
            _insert_event(conn, key, event, now)
            events.append((key, event))

    def _summarise(
        self,
        group: list[Submission],
        results: list[CommitResult],
        events: list[tuple[ChainKey, Event]],
    ) -> dict[str, AgentSummary]:
        """The summaries of the agents this group touched, updated (copies: the cache takes
        them only once the transaction commits)."""
        touched: dict[str, AgentSummary] = {}

        def summary(r: Record) -> AgentSummary:
            agent = r.row[0]
            s = touched.get(agent)
            if s is None:
                with self._lock:
                    known = self._agents.get(agent)
                s = (
                    dataclasses.replace(known)
                    if known is not None
                    else AgentSummary(agent, r.row[-1], r.row[4], r.row[4], 0, 0)
                )
                touched[agent] = s
            return s

        for (records, _), result in zip(group, results, strict=True):
            for r, outcome in zip(records, result.outcomes, strict=True):
                if outcome is Outcome.STORED:
                    summary(r).absorb(r, int(r.row[4]))
        for (agent, _), event in events:
            if agent in touched:
                touched[agent].note(event.kind)
        return touched

    def _save_agents(self, conn: sqlite3.Connection, agents: set[str]) -> None:
        rows = [dataclasses.asdict(self._agents[a]) for a in agents if a in self._agents]
        with _transaction(conn):
            conn.executemany(UPSERT_AGENT, rows)

    def _prune(self, conn: sqlite3.Connection) -> None:
        """One bounded batch of retention: records past max_age, else the oldest records while
        the used pages exceed max_bytes. Sets _prune_due while more is left to delete."""
        retention = self._retention
        assert retention is not None
        cutoff = self._clock_ns() - int(retention.max_age_s * 1e9)
        try:
            with _transaction(conn):
                deleted = conn.execute(
                    "DELETE FROM records WHERE id IN (SELECT id FROM records WHERE ts_ns < ? "
                    "ORDER BY ts_ns LIMIT ?)",
                    (cutoff, retention.batch_rows),
                ).rowcount
                if deleted < retention.batch_rows and _used_bytes(conn) > retention.max_bytes:
                    deleted += conn.execute(
                        "DELETE FROM records WHERE id IN (SELECT id FROM records ORDER BY id "
                        "LIMIT ?)",
                        (retention.batch_rows,),
                    ).rowcount
        except sqlite3.Error as exc:
            self._fail(exc)
            return
        self.pruned_total += deleted
        self._inserted_since_prune = 0
        self._prune_due = deleted >= retention.batch_rows

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


class _transaction:
    """BEGIN ... COMMIT, or ROLLBACK when the body raises."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:
            try:
                self.conn.execute("ROLLBACK")
            except sqlite3.Error as err:  # the original error is the one to report
                log.error("rollback failed: %s", err)


def _migrate(conn: sqlite3.Connection) -> None:
    """Create the schema, or bring a version-1 store to version 2 (idempotent)."""
    conn.executescript(SCHEMA)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(records)")}
    if "key_id" not in columns:
        conn.execute("ALTER TABLE records ADD COLUMN key_id TEXT")
    conn.execute(SEQ_INDEX)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")


def _load_agents(conn: sqlite3.Connection) -> dict[str, AgentSummary]:
    names = [f.name for f in dataclasses.fields(AgentSummary)]
    rows = conn.execute(f"SELECT {', '.join(names)} FROM agents")
    return {row[0]: AgentSummary(*row) for row in rows}


def _used_bytes(conn: sqlite3.Connection) -> int:
    """Bytes of the database's pages in use (free pages are reused before the file grows)."""
    pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
    free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    return (pages - free) * int(conn.execute("PRAGMA page_size").fetchone()[0])


def _load_chain(conn: sqlite3.Connection, key: ChainKey) -> Chain:
    rows = conn.execute(
        "SELECT lo, lo_prev, hi, hi_sig FROM chain_runs WHERE agent_id = ? AND key_id = ? "
        "ORDER BY lo",
        key,
    )
    chain = Chain([Run(int(lo), bytes(lp), int(hi), bytes(hs)) for lo, lp, hi, hs in rows])
    chain.reported = [
        (int(lo), int(hi))
        for lo, hi in conn.execute(
            "SELECT seq_lo, seq_hi FROM chain_events WHERE agent_id = ? AND key_id = ? "
            "AND kind = 'gap'",
            key,
        )
    ]
    return chain


def _save_chains(conn: sqlite3.Connection, work: dict[ChainKey, Chain]) -> None:
    for (agent, key_id), chain in work.items():
        conn.execute("DELETE FROM chain_runs WHERE agent_id = ? AND key_id = ?", (agent, key_id))
        conn.executemany(
            "INSERT INTO chain_runs (agent_id, key_id, lo, lo_prev, hi, hi_sig) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            [(agent, key_id, r.lo, r.lo_prev, r.hi, r.hi_sig) for r in chain.runs],
        )


def _insert_event(conn: sqlite3.Connection, key: ChainKey, event: Event, at_ns: int) -> None:
    conn.execute(
        "INSERT INTO chain_events (agent_id, key_id, kind, seq_lo, seq_hi, at_ns) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (*key, event.kind.value, event.seq_lo, event.seq_hi, at_ns),
    )


def _has_other_key(conn: sqlite3.Connection, key: ChainKey) -> bool:
    row = conn.execute(
        "SELECT 1 FROM chain_runs WHERE agent_id = ? AND key_id != ? LIMIT 1", key
    ).fetchone()
    return row is not None


def _stored_envelope(conn: sqlite3.Connection, r: Record) -> bytes | None:
    row = conn.execute(
        "SELECT envelope FROM records WHERE agent_id = ? AND idem_key = ?", (r.row[0], r.row[1])
    ).fetchone()
    return None if row is None else bytes(row[0])
