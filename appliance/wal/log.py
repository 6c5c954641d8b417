"""The write-ahead log's facade: `Wal`, its lifecycle, its lock, its timers and its stats.

Lifecycle: `Wal.open(config)` runs recovery (appliance.wal.recovery: an explicit state machine,
RecoveryState) and returns a ready log; the caller appends, reads, acks; `close()` flushes data
and cursor. One process at a time: the directory is locked with flock. All methods are
thread-safe (one lock, held here, around every call into the parts); a daemon thread (unless
background=False) performs the interval flush and cursor write, so a caller that goes idle
still gets its records durable within flush_interval_ms.

Guarantees: a record is durable once flush() returns or flush_interval_ms after its append
(the loss window); a record that was durable is delivered by read() until it is acked, unless
the full policy dropped it (counted in stats().dropped_records, logged); a record acked before
the last cursor write is never delivered again; acks after it may be (at-least-once); read()
never returns a record that fails its checksum.

The parts, each in its own module and all working on one in-memory LogIndex (index.py):
format.py (the on-disk format, its spec and codec), recovery.py (opening), writer.py (append,
group commit, failed writes), reader.py (read, ack, checksum on read), cursor.py (the ack
cursor file), space.py (slots, the bound, the full policy, compaction), stats.py (counters and
the metric definitions).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable

from appliance.wal.config import WalConfig
from appliance.wal.cursor import CURSOR_NAME, AckCursor
from appliance.wal.errors import WalFull, WalLocked, WalUnavailable
from appliance.wal.format import CURSOR_FILE_BYTES, MAX_KEY, MAX_PAYLOAD, PAGE
from appliance.wal.index import LogIndex, Record, Tail
from appliance.wal.reader import Reader
from appliance.wal.recovery import (
    Recovery,
    RecoveryEvent,
    RecoveryReport,
    RecoveryState,
    lifecycle,
)
from appliance.wal.space import Space
from appliance.wal.stats import Counters, WalStats
from appliance.wal.storage import FileStorage, ReadOnlyFileStorage, Storage
from appliance.wal.writer import Writer

__all__ = [
    "CURSOR_NAME",
    "Record",
    "RecoveryReport",
    "RecoveryState",
    "Wal",
    "WalFull",
    "WalLocked",
    "WalStats",
    "WalUnavailable",
]

log = logging.getLogger(__name__)

_READY = RecoveryState.READY


class Wal:
    """A bounded, flash-friendly write-ahead log of opaque records with idempotency keys."""

    def __init__(
        self,
        config: WalConfig,
        storage: Storage,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], int] = time.time_ns,
    ) -> None:
        """Use Wal.open(); the constructor only sets up an empty, closed log."""
        self.config = config
        self.recovery: RecoveryReport | None = None
        self._machine = lifecycle(f"WAL {config.path}")
        self._storage = storage
        self._clock = clock
        self._wall = wall_clock
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._kick = threading.Event()  # a new deadline: the flusher recomputes its wait
        self._read_only = False
        self._max_payload = min(MAX_PAYLOAD, config.segment_bytes - 2 * PAGE)
        # the parts, in dependency order; each holds the ones it uses, none holds the lock
        self._c = Counters()
        self._index = LogIndex()
        self._tail = Tail()
        self._cursor = AckCursor(storage, config.path, self._c, clock, self._kick.set)
        self._reader = Reader(self._index, self._tail, self._cursor, self._c)
        self._space = Space(config, storage, self._index, self._tail, self._reader, self._c, clock)
        self._writer = Writer(
            self._index,
            self._tail,
            self._space,
            self._c,
            flush_bytes=config.flush_bytes,
            clock=clock,
            wall_clock=wall_clock,
            wake=self._kick.set,
        )

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def open(
        cls,
        config: WalConfig,
        *,
        storage: Storage | None = None,
        background: bool = True,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], int] = time.time_ns,
    ) -> Wal:
        """Open (creating if needed) and recover the WAL at config.path (or in storage)."""
        wal = cls(
            config,
            storage if storage is not None else FileStorage(config.path),
            clock=clock,
            wall_clock=wall_clock,
        )
        wal._recover()
        if background:
            wal._thread = threading.Thread(target=wal._run, name="wal-flusher", daemon=True)
            wal._thread.start()
        return wal

    @classmethod
    def open_read_only(cls, config: WalConfig) -> Wal:
        """Recover the WAL at config.path without changing a byte of its directory.

        For `wal inspect` and other readers: no bound is enforced (nothing is dropped or
        removed), no segment is preallocated, no `.tmp` leftover is deleted, there is no
        flusher; append() and flush() fail with EROFS and close() writes nothing. Raises
        WalLocked while a writer holds the directory.
        """
        if not (config.path / CURSOR_NAME).is_file():
            raise WalUnavailable(f"no WAL at {config.path} (no {CURSOR_NAME} file)")
        unbounded = dataclasses.replace(config, max_wal_bytes=1 << 62, preallocate=False)
        wal = cls(unbounded, ReadOnlyFileStorage(config.path))
        wal._read_only = True
        wal._recover()
        return wal

    def _recover(self) -> None:
        self.recovery = Recovery(
            self._machine,
            self.config,
            self._storage,
            index=self._index,
            tail=self._tail,
            space=self._space,
            cursor=self._cursor,
            counters=self._c,
            clock=self._clock,
            wall_clock=self._wall,
        ).run()

    @property
    def state(self) -> RecoveryState:
        """Where the log is in its lifecycle (READY between open and close)."""
        return self._machine.state

    def __enter__(self) -> Wal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Flush buffered records and the cursor, stop the flusher, release the directory."""
        self._shut(graceful=True)

    def abandon(self) -> None:
        """Let go of the log as a killed process would: nothing buffered is written.

        For crash tests in one process; what is on disk is exactly what a SIGKILL leaves.
        """
        self._shut(graceful=False)

    def _shut(self, *, graceful: bool) -> None:
        graceful = graceful and not self._read_only
        self._stop.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            if self.state is RecoveryState.CLOSED:
                return
            if graceful and self.state is _READY:
                self._writer.flush()
                if self._cursor.unpersisted:
                    self._cursor.write(self._index)
            for slot in self._space.all_slots():
                slot.file.close()
            self._index.segs.clear()
            self._space.free.clear()
            self._cursor.close()
            self._storage.unlock()
            self._machine.move(RecoveryEvent.CLOSE)

    def _check_ready(self) -> None:
        if self.state is not _READY:
            raise RuntimeError(f"WAL is {self.state.value}, not ready")

    # ------------------------------------------------------------------ append / flush

    def append(self, key: bytes | str, payload: bytes) -> bool:
        """Buffer one record; False if a record with this key is already pending.

        Raises WalFull when the log is at its bound under policy `refuse` (or when not even
        one segment fits on the filesystem), ValueError for an oversized key or payload.
        """
        k = key.encode() if isinstance(key, str) else bytes(key)
        if len(k) > MAX_KEY:
            raise ValueError(f"WAL key of {len(k)} bytes exceeds {MAX_KEY}")
        if len(payload) > self._max_payload:
            raise ValueError(f"WAL record of {len(payload)} bytes exceeds the segment size")
        if self._read_only:
            raise WalUnavailable(f"WAL {self.config.path} is open read-only")
        with self._lock:
            if self._machine.state is not _READY:
                self._check_ready()
            return self._writer.append(k, payload)

    def flush(self) -> None:
        """Make every appended record durable now (write + fdatasync)."""
        with self._lock:
            self._check_ready()
            self._writer.flush()

    # ------------------------------------------------------------------ read / ack

    def read(self, limit: int) -> list[Record]:
        """Up to limit pending records from the ack cursor, in append order (not consumed)."""
        with self._lock:
            self._check_ready()
            out = self._reader.read(limit)
            self._after_acks()  # records that failed their checksum were dropped
        return out

    def ack(self, seqs: Iterable[int]) -> int:
        """Mark records delivered; returns how many were pending. Unknown seqs are ignored."""
        with self._lock:
            self._check_ready()
            n = self._reader.ack(seqs)
            self._after_acks()
        return n

    def ack_keys(self, keys: Iterable[bytes | str]) -> int:
        """ack() by idempotency key (the pending record holding each key)."""
        with self._lock:
            seqs = self._reader.seqs_of(keys)
        return self.ack(seqs)

    def _after_acks(self) -> None:
        """Release what acks emptied, move the low mark, write the cursor if enough piled up."""
        if not self._cursor.unpersisted:
            return
        self._space.release_acked()
        self._index.fix_low()
        if self._cursor.unpersisted >= self.config.cursor_every_acks:
            self._cursor.write(self._index)

    def sync_cursor(self) -> None:
        """Persist the ack cursor now if any ack is not yet persisted."""
        with self._lock:
            self._check_ready()
            if self._cursor.unpersisted:
                self._cursor.write(self._index)

    @property
    def cursor_writes(self) -> int:
        """How many cursor writes completed (a test hook for "acks persisted up to here")."""
        return self._c.cursor_writes

    # ------------------------------------------------------------------ timers

    def tick(self) -> None:
        """Run due interval work (flush, cursor); the background thread calls this."""
        with self._lock:
            if self.state is not _READY:
                return
            now = self._clock()
            if self._tail.buf and now - self._tail.since >= self.config.flush_interval_ms / 1000:
                self._writer.flush()
            if (
                self._cursor.unpersisted
                and now - self._cursor.dirty_since >= self.config.cursor_interval_ms / 1000
            ):
                self._cursor.write(self._index)

    def _run(self) -> None:
        wait = 0.0
        while True:
            self._kick.wait(wait)
            self._kick.clear()
            if self._stop.is_set():
                return
            try:
                self.tick()
            except Exception:  # pragma: no cover - keep flushing whatever went wrong once
                log.exception("WAL background flush failed")
            wait = self._until_due()

    def _until_due(self) -> float:
        """Seconds until the next interval flush or cursor write is due (at most 0.5)."""
        with self._lock:
            now = self._clock()
            due = now + 0.5
            if self._tail.buf:
                due = min(due, self._tail.since + self.config.flush_interval_ms / 1000)
            if self._cursor.unpersisted:
                due = min(due, self._cursor.dirty_since + self.config.cursor_interval_ms / 1000)
        return max(0.002, due - now)

    # ------------------------------------------------------------------ stats

    def stats(self) -> WalStats:
        """A consistent snapshot of counters and gauges."""
        with self._lock:
            c = self._c
            backlog, backlog_bytes = self._index.backlog()
            oldest = self._index.oldest_time()
            disk = CURSOR_FILE_BYTES + sum(s.size for s in self._space.all_slots())
            return WalStats(
                records_appended=c.records_appended,
                payload_bytes=c.payload_bytes,
                bytes_written=c.bytes_written,
                fsyncs=c.fsyncs,
                write_amplification=c.bytes_written / c.payload_bytes if c.payload_bytes else 0.0,
                backlog_records=backlog,
                backlog_bytes=backlog_bytes,
                oldest_age_s=0.0 if oldest is None else max(0.0, self._clock() - oldest),
                dropped_records=c.dropped_records,
                refused_records=c.refused_records,
                duplicate_appends=c.duplicate_appends,
                corrupt_records=c.corrupt_records,
                compaction_bytes=c.compaction_bytes,
                compactions=c.compactions,
                cursor_writes=c.cursor_writes,
                write_errors=c.write_errors,
                segments_in_use=len(self._index.segs),
                segments_free=len(self._space.free),
                disk_bytes=disk,
                prealloc_bytes=c.prealloc_bytes,
                recovery_s=self.recovery.duration_s if self.recovery else 0.0,
            )
