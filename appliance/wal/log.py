"""The write-ahead log: append, read from the ack cursor, ack, flush; recovery on open.

The on-disk format and its invariants are in appliance.wal.format. This module owns the
in-memory index, the write path (group commit into page-aligned chunks), the ack cursor, the
size bound with its full policy, segment recycling and wear-aware compaction.

Lifecycle: `Wal.open(config)` runs recovery (an explicit state machine, RecoveryState) and
returns a ready log; the caller appends, reads, acks; `close()` flushes data and cursor. One
process at a time: the directory is locked with flock. All methods are thread-safe; a daemon
thread (unless background=False) performs the interval flush and cursor write, so a caller
that goes idle still gets its records durable within flush_interval_ms.

Guarantees: a record is durable once flush() returns or flush_interval_ms after its append
(the loss window); a record that was durable is delivered by read() until it is acked, unless
the full policy dropped it (counted in stats().dropped_records, logged); a record acked before
the last cursor write is never delivered again; acks after it may be (at-least-once); read()
never returns a record that fails its checksum.
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import errno
import logging
import re
import struct
import threading
import time
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, NamedTuple
from zlib import crc32

from appliance.errors import CommandError
from appliance.wal.config import WalConfig
from appliance.wal.format import (
    CURSOR_FILE_BYTES,
    CURSOR_SLOT,
    KIND_APPEND,
    KIND_BYTE_OFFSET,
    KIND_COMPACTED,
    MAX_KEY,
    MAX_PAYLOAD,
    MAX_RANGES,
    MAX_SEQ_DELTA,
    PAGE,
    RECORD_HEADER,
    RECORD_KIND,
    CursorState,
    FormatError,
    ParsedRecord,
    SegmentHeader,
    align_up,
    frame_record,
    is_padding,
    next_page,
    parse_record,
    peek_seq,
)
from appliance.wal.ranges import RangeSet
from appliance.wal.storage import FileStorage, ReadOnlyFileStorage, Storage, StorageFile

log = logging.getLogger(__name__)

_BODY = struct.Struct("<IIB")
_CRC = struct.Struct("<I")
_KIND_WORD = RECORD_KIND << 24

CURSOR_NAME: Final = "cursor"
_SEG_NAME = re.compile(r"^seg-(\d{4,})\.wal$")
_READ_SPAN = 1024 * 1024
_MAX_MERGE = 16  # longest run of segments one compaction merges


class WalFull(Exception):
    """The log is at its bound and its policy is `refuse`: the caller must hold the record."""


class WalUnavailable(CommandError):
    """The WAL directory cannot be used (locked by another process, unwritable, full)."""


class WalLocked(WalUnavailable):
    """Another process has this WAL open."""


class Record(NamedTuple):
    """A pending record as read() returns it."""

    seq: int
    key: bytes
    payload: bytes


class RecoveryState(enum.Enum):
    """Steps of opening a WAL; FAILED is terminal (the directory could not be used)."""

    CLOSED = "closed"
    LOCKING = "locking"
    READING_CURSOR = "reading_cursor"
    SCANNING = "scanning"
    RESOLVING = "resolving"
    READY = "ready"
    FAILED = "failed"


_TRANSITIONS: dict[RecoveryState, frozenset[RecoveryState]] = {
    RecoveryState.CLOSED: frozenset({RecoveryState.LOCKING}),
    RecoveryState.LOCKING: frozenset({RecoveryState.READING_CURSOR, RecoveryState.FAILED}),
    RecoveryState.READING_CURSOR: frozenset({RecoveryState.SCANNING, RecoveryState.FAILED}),
    RecoveryState.SCANNING: frozenset({RecoveryState.RESOLVING, RecoveryState.FAILED}),
    RecoveryState.RESOLVING: frozenset({RecoveryState.READY, RecoveryState.FAILED}),
    RecoveryState.READY: frozenset({RecoveryState.CLOSED}),
    RecoveryState.FAILED: frozenset({RecoveryState.CLOSED}),
}


@dataclass(frozen=True)
class RecoveryReport:
    """What opening found. corrupt_records were skipped and will never be delivered."""

    duration_s: float
    segments: int
    records_pending: int
    records_acked: int
    corrupt_records: int
    torn_tails: int
    duplicates_skipped: int
    unusable_files: int
    cursor_gen: int


@dataclass(frozen=True)
class WalStats:
    """A snapshot of the log's counters (cumulative since open) and gauges."""

    records_appended: int
    payload_bytes: int
    bytes_written: int
    fsyncs: int
    write_amplification: float
    backlog_records: int
    backlog_bytes: int
    oldest_age_s: float
    dropped_records: int
    refused_records: int
    duplicate_appends: int
    corrupt_records: int
    compaction_bytes: int
    compactions: int
    cursor_writes: int
    write_errors: int
    segments_in_use: int
    segments_free: int
    disk_bytes: int
    prealloc_bytes: int
    recovery_s: float


@dataclass
class _Slot:
    name: str
    file: StorageFile
    size: int


class _Segment:
    """One segment in the log: its slot, header fields and the index of its records."""

    __slots__ = (
        "acked",
        "created_ns",
        "first_seq",
        "head",
        "keys",
        "kind",
        "lens",
        "live",
        "live_bytes",
        "number",
        "offs",
        "order_key",
        "replaces_to",
        "seqs",
        "slot",
        "times",
    )

    def __init__(self, slot: _Slot, header: SegmentHeader) -> None:
        self.slot = slot
        self.number = header.number
        self.order_key = header.order_key
        self.replaces_to = header.replaces_to
        self.kind = header.kind
        self.first_seq = header.first_seq
        self.created_ns = header.created_ns
        self.head = PAGE
        self.seqs = array("Q")
        self.offs = array("I")
        self.lens = array("I")
        self.times = array("d")
        self.keys: list[bytes] = []
        self.acked = bytearray()
        self.live = 0
        self.live_bytes = 0

    def add(self, seq: int, key: bytes, off: int, length: int, when: float, acked: bool) -> None:
        self.seqs.append(seq)
        self.offs.append(off)
        self.lens.append(length)
        self.times.append(when)
        self.keys.append(key)
        self.acked.append(1 if acked else 0)
        if not acked:
            self.live += 1
            self.live_bytes += length

    def truncate(self, n: int) -> None:
        for arr in (self.seqs, self.offs, self.lens, self.times):
            del arr[n:]
        del self.keys[n:]
        del self.acked[n:]

    def find(self, seq: int) -> int:
        i = bisect.bisect_left(self.seqs, seq)
        return i if i < len(self.seqs) and self.seqs[i] == seq else -1


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
        self.state = RecoveryState.CLOSED
        self.recovery: RecoveryReport | None = None
        self._storage = storage
        self._clock = clock
        self._wall = wall_clock
        self._lock = threading.Lock()
        self._segs: list[_Segment] = []
        self._free: list[_Slot] = []
        self._slot_names: set[str] = set()
        self._max_slots = config.max_segments
        self._fs_full_logged = False
        self._active: _Segment | None = None
        self._buf = bytearray()
        self._buf_off = 0
        self._buf_first = 0
        self._buf_since = 0.0
        self._pending: dict[bytes, int] = {}
        self._next_seq = 1
        self._next_number = 1
        self._low = 1
        self._hint: _Segment | None = None
        self._acked = RangeSet()
        self._cursor: StorageFile | None = None
        self._cursor_gen = 0
        self._acks_unpersisted = 0
        self._ack_dirty_since = 0.0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._kick = threading.Event()  # a new deadline: the flusher recomputes its wait
        self._read_only = False
        self._max_payload = min(MAX_PAYLOAD, config.segment_bytes - 2 * PAGE)
        self._flush_bytes = config.flush_bytes
        self._appended = 0  # hot counters, kept out of the dict below
        self._payload_bytes = 0
        self._c = dict.fromkeys(
            (
                "bytes_written",
                "fsyncs",
                "dropped_records",
                "refused_records",
                "duplicate_appends",
                "corrupt_records",
                "compaction_bytes",
                "compactions",
                "cursor_writes",
                "write_errors",
                "prealloc_bytes",
            ),
            0,
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

    def __enter__(self) -> Wal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _enter(self, state: RecoveryState) -> None:
        if state not in _TRANSITIONS[self.state]:
            raise RuntimeError(f"WAL state {self.state.value} cannot go to {state.value}")
        self.state = state

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
            if graceful and self.state is RecoveryState.READY:
                self._flush_locked()
                if self._acks_unpersisted:
                    self._write_cursor_locked()
            files = [seg.slot.file for seg in self._segs] + [s.file for s in self._free]
            if self._cursor is not None:
                files.append(self._cursor)
            for f in files:
                f.close()
            self._segs.clear()
            self._free.clear()
            self._cursor = None
            self._storage.unlock()
            self._enter(RecoveryState.CLOSED)

    # ------------------------------------------------------------------ recovery

    def _recover(self) -> None:
        started = self._clock()
        self._enter(RecoveryState.LOCKING)
        try:
            self._storage.lock()
        except OSError as exc:
            self._enter(RecoveryState.FAILED)
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise WalLocked(
                    f"WAL {self.config.path} is in use by another process; "
                    "stop the other agent or set wal.path"
                ) from exc
            raise WalUnavailable(
                f"cannot use WAL directory {self.config.path} ({exc.strerror}); "
                "free space on the data partition, fix its permissions or set wal.path"
            ) from exc
        try:
            self._enter(RecoveryState.READING_CURSOR)
            cursor = self._open_cursor()
            self._enter(RecoveryState.SCANNING)
            found, counts = self._scan_slots(cursor)
            self._enter(RecoveryState.RESOLVING)
            self._resolve(found, cursor)
            if self.config.preallocate:
                while len(self._slot_names) < self._max_slots and self._create_slot(free=True):
                    pass
        except BaseException:
            self._enter(RecoveryState.FAILED)
            self._storage.unlock()
            raise
        self._enter(RecoveryState.READY)
        pending = sum(seg.live for seg in self._segs)
        total = sum(len(seg.seqs) for seg in self._segs)
        self.recovery = RecoveryReport(
            duration_s=self._clock() - started,
            segments=len(self._segs),
            records_pending=pending,
            records_acked=total - pending,
            corrupt_records=counts["corrupt"],
            torn_tails=counts["torn"],
            duplicates_skipped=counts["dup"],
            unusable_files=counts["unusable"],
            cursor_gen=cursor.gen,
        )
        self._c["corrupt_records"] += counts["corrupt"]
        log.info(
            "WAL recovered in %.3f s: %d pending records, %d segments, %d corrupt skipped, "
            "%d torn tails",
            self.recovery.duration_s,
            pending,
            len(self._segs),
            counts["corrupt"],
            counts["torn"],
        )

    def _open_cursor(self) -> CursorState:
        names = set(self._storage.names())
        if CURSOR_NAME in names:
            try:
                self._cursor = self._storage.open(CURSOR_NAME)
            except OSError as exc:
                raise WalUnavailable(
                    f"cannot open the WAL cursor in {self.config.path} ({exc.strerror}); "
                    "move the damaged cursor aside (everything pending is then delivered again)"
                ) from exc
        else:
            try:
                self._cursor = self._storage.create(CURSOR_NAME, CURSOR_FILE_BYTES)
            except OSError as exc:
                raise WalUnavailable(
                    f"cannot create the WAL cursor in {self.config.path} ({exc.strerror}); "
                    "free space on the data partition or set wal.path"
                ) from exc
            self._c["prealloc_bytes"] += CURSOR_FILE_BYTES
        best = CursorState(gen=0, ack_low=0)
        for slot in range(2):
            try:
                state = CursorState.decode(self._cursor.pread(CURSOR_SLOT, slot * CURSOR_SLOT))
            except FormatError:
                continue
            if state.gen > best.gen:
                best = state
        self._cursor_gen = best.gen
        return best

    def _scan_slots(self, cursor: CursorState) -> tuple[list[_Segment], dict[str, int]]:
        """Read every segment header, then scan the segments in log order, one at a time.

        A segment wholly below the cursor (the next segment in the log starts at or below
        ack_low) is not read at all: everything in it is acked.
        """
        counts = {"corrupt": 0, "torn": 0, "dup": 0, "unusable": 0}
        used: list[_Segment] = []
        for name in self._storage.names():
            if not _SEG_NAME.match(name):
                continue
            try:
                f = self._storage.open(name)
                size = f.size()
            except OSError as exc:
                log.warning("WAL file %s cannot be opened (%s): ignored", name, exc.strerror)
                counts["unusable"] += 1
                continue
            if size < 4 * PAGE or size % PAGE:
                log.warning("WAL file %s has an impossible size %d: ignored", name, size)
                f.close()
                counts["unusable"] += 1
                continue
            slot = _Slot(name, f, size)
            self._slot_names.add(name)
            try:
                header = SegmentHeader.decode(f.pread(PAGE, 0))
            except (OSError, FormatError):
                self._free.append(slot)
                continue
            self._next_number = max(self._next_number, header.number + 1)
            self._next_seq = max(self._next_seq, header.first_seq)
            used.append(_Segment(slot, header))
        used.sort(key=lambda seg: (seg.order_key, seg.number))
        # a complete merge supersedes the older segments of its order_key range
        merged = [t for t in used if t.kind == KIND_COMPACTED]
        live: list[_Segment] = []
        for seg in used:
            if any(
                t.order_key <= seg.order_key <= t.replaces_to and seg.number < t.number
                for t in merged
            ):
                self._free.append(seg.slot)
            else:
                live.append(seg)
        used = live
        for i, seg in enumerate(used):
            later = [s for s in used[i + 1 :] if s.order_key > seg.order_key]
            if later and later[0].first_seq <= cursor.ack_low:
                continue  # wholly acked: released by _resolve without a read
            try:
                data = seg.slot.file.pread(seg.slot.size, 0)
            except OSError as exc:
                log.warning("WAL file %s cannot be read (%s): ignored", seg.slot.name, exc)
                counts["unusable"] += 1
                continue
            top = self._scan_segment(seg, data, cursor, counts)
            self._next_seq = max(self._next_seq, top + 1)
        # a later segment's first_seq cuts off copies left behind by a re-placed write
        limit = None
        for seg in reversed(used):
            if limit is not None and seg.seqs and seg.seqs[-1] >= limit:
                keep = bisect.bisect_left(seg.seqs, limit)
                counts["dup"] += len(seg.seqs) - keep
                for i in range(keep, len(seg.seqs)):
                    if not seg.acked[i]:
                        seg.live -= 1
                        seg.live_bytes -= seg.lens[i]
                seg.truncate(keep)
            limit = seg.first_seq if limit is None else min(limit, seg.first_seq)
        return used, counts

    def _scan_segment(
        self, seg: _Segment, data: bytes, cursor: CursorState, counts: dict[str, int]
    ) -> int:
        """Index the valid records of one segment; returns its highest seq (or first_seq-1)."""
        view = memoryview(data)
        size = len(data)
        pos = PAGE
        last_end = PAGE
        last = seg.first_seq - 1
        # append times are not stored; a recovered record is taken to be as old as its segment
        when = self._clock() - max(0.0, (self._wall() - seg.created_ns) / 1e9)
        while pos + RECORD_HEADER <= size:
            if is_padding(view, pos):
                pos = next_page(pos)
                continue
            rec = parse_record(view, pos, seg.number, seg.first_seq)
            if rec is not None and rec.seq <= last:
                counts["dup"] += 1
                pos = last_end = rec.end
                continue
            if rec is None:
                if peek_seq(view, pos, seg.first_seq) == last + 1:
                    counts["torn"] += 1
                resync = _resync(view, pos + 1, seg, last)
                if resync is None:
                    break
                pos, rec = resync
                lost = rec.seq - last - 1 if seg.kind == KIND_APPEND else 1
                counts["corrupt"] += max(1, lost)
                log.warning(
                    "WAL segment %s: corrupt records before offset %d skipped",
                    seg.slot.name,
                    pos,
                )
            acked = cursor.is_acked(rec.seq)
            seg.add(rec.seq, rec.key, pos, rec.end - pos, when, acked)
            last = rec.seq
            pos = last_end = rec.end
        seg.head = align_up(last_end)
        return last

    def _resolve(self, used: list[_Segment], cursor: CursorState) -> None:
        self._segs.extend(used)
        if cursor.ranges:
            last = cursor.ranges[-1]
            self._next_seq = max(self._next_seq, last[0] + last[1])
        self._next_seq = max(self._next_seq, cursor.ack_low)
        for seg in self._segs:
            for i, key in enumerate(seg.keys):
                if not seg.acked[i]:
                    self._pending[key] = seg.seqs[i]
        last_seg = self._segs[-1] if self._segs else None
        for seg in list(self._segs):
            if seg.live == 0 and seg is not last_seg:
                self._release(seg)
        if (
            last_seg is not None
            and last_seg.kind == KIND_APPEND
            and last_seg.head + 2 * PAGE <= last_seg.slot.size
        ):
            self._active = last_seg
            self._buf_off = last_seg.head
            self._buf_first = len(last_seg.seqs)
        elif last_seg is not None and last_seg.live == 0:
            self._release(last_seg)
        self._low = self._first_unacked_from(cursor.ack_low)
        self._acked = RangeSet(tuple(r for r in cursor.ranges if r[0] + r[1] > self._low))
        self._acked.trim_below(self._low)
        # slots over a lowered bound are removed as soon as they are free
        while len(self._slot_names) > self._max_slots and self._free:
            self._drop_slot_file(self._free.pop())

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
            if self.state is not RecoveryState.READY:
                self._check_ready()
            if k in self._pending:
                self._c["duplicate_appends"] += 1
                return False
            seq = self._next_seq
            self._place(seq, k, payload)
            self._next_seq = seq + 1
            self._pending[k] = seq
            self._appended += 1
            self._payload_bytes += len(payload)
            if len(self._buf) >= self._flush_bytes:
                self._flush_locked()
            return True

    def _place(self, seq: int, key: bytes, payload: bytes) -> None:
        """Frame a record into the active segment's buffer (rolling segments as needed)."""
        need = RECORD_HEADER + len(key) + len(payload)
        seg = self._active
        pos = self._buf_off + len(self._buf)
        if PAGE - pos % PAGE < RECORD_HEADER:
            pos = align_up(pos)
        if seg is None or pos + need > seg.slot.size or seq - seg.first_seq > MAX_SEQ_DELTA:
            if seg is not None:
                self._flush_locked()
                self._active = None
            seg = self._start_segment(seq)
            pos = self._buf_off + len(self._buf)
        buf = self._buf
        now = self._clock()
        if len(seg.seqs) == self._buf_first:
            self._buf_since = now
            self._kick.set()
        pad = pos - self._buf_off - len(buf)
        if pad:
            buf += bytes(pad)
        # frame_record, inlined: this is the hot path of every append
        body = _BODY.pack(len(payload) | _KIND_WORD, seq - seg.first_seq, len(key))
        buf += _CRC.pack(crc32(payload, crc32(key, crc32(body, seg.number & 0xFFFFFFFF))))
        buf += body
        buf += key
        buf += payload
        seg.seqs.append(seq)
        seg.offs.append(pos)
        seg.lens.append(need)
        seg.times.append(now)
        seg.keys.append(key)
        seg.acked.append(0)
        seg.live += 1
        seg.live_bytes += need

    def _start_segment(self, first_seq: int) -> _Segment:
        slot = self._take_slot()
        header = SegmentHeader(
            number=self._next_number,
            order_key=self._next_number,
            first_seq=first_seq,
            created_ns=self._wall(),
        )
        self._next_number += 1
        seg = _Segment(slot, header)
        self._segs.append(seg)
        self._active = seg
        self._buf = bytearray(header.encode())
        self._buf += bytes(PAGE - len(self._buf))
        self._buf_off = 0
        self._buf_first = 0
        self._buf_since = self._clock()
        return seg

    def flush(self) -> None:
        """Make every appended record durable now (write + fdatasync)."""
        with self._lock:
            self._check_ready()
            self._flush_locked()

    def _flush_locked(self) -> None:
        seg = self._active
        if seg is None or (len(seg.seqs) == self._buf_first and len(self._buf) == 0):
            return
        try:
            self._write_buffer(seg)
        except OSError as exc:
            self._write_failed(seg, exc)

    def _write_buffer(self, seg: _Segment) -> None:
        """pwrite the buffer (padded to whole pages) at its offset, then fdatasync."""
        buf = self._buf
        if not buf:
            return
        tail = len(buf) % PAGE
        if tail:
            buf += bytes(PAGE - tail)
        seg.slot.file.pwrite(buf, self._buf_off)
        seg.slot.file.sync()
        self._c["bytes_written"] += len(buf)
        self._c["fsyncs"] += 1
        self._buf_off += len(buf)
        seg.head = self._buf_off
        self._buf = bytearray()
        self._buf_first = len(seg.seqs)
        if self._buf_off + 2 * PAGE > seg.slot.size:
            self._active = None

    def _write_failed(self, seg: _Segment, exc: OSError) -> None:
        """The active segment's write or fdatasync failed: move its unsynced records on.

        After a failed fdatasync the page cache cannot be trusted, so every record since the
        last successful flush is written again into another segment (same seq: if both copies
        survive, recovery keeps one). If that fails too, they are dropped and counted.
        """
        self._c["write_errors"] += 1
        orphans = self._take_buffer(seg)
        log.warning(
            "WAL write to %s failed (%s): moving %d unsynced records to another segment",
            seg.slot.name,
            exc.strerror,
            len(orphans),
        )
        if not orphans:
            return
        try:
            for seq, key, payload in orphans:
                self._place(seq, key, payload)
            nxt = self._active
            if nxt is None:
                raise OSError(exc.errno, "no segment to move to")
            self._write_buffer(nxt)
        except (OSError, WalFull) as again:
            if self._active is not None:
                self._take_buffer(self._active)
            lost = 0
            for seq, key, _ in orphans:
                if self._pending.get(key) == seq:
                    del self._pending[key]
                    lost += 1
            self._c["dropped_records"] += lost
            log.warning(
                "WAL dropped %d records that could not be written anywhere (%s)",
                lost,
                getattr(again, "strerror", None) or again,
            )
            self._fix_low()

    def _take_buffer(self, seg: _Segment) -> list[tuple[int, bytes, bytes]]:
        """Remove seg's unwritten records from the index; returns the unacked ones."""
        n = self._buf_first
        buf = bytes(self._buf)
        out = []
        for i in range(n, len(seg.seqs)):
            if not seg.acked[i]:
                seg.live -= 1
                seg.live_bytes -= seg.lens[i]
                rec = parse_record(buf, seg.offs[i] - self._buf_off, seg.number, seg.first_seq)
                if rec is not None:
                    out.append((rec.seq, rec.key, rec.payload))
        seg.truncate(n)
        self._buf = bytearray()
        self._active = None
        if not seg.seqs:
            self._release(seg, reuse_last=True)
        return out

    # ------------------------------------------------------------------ space

    def _take_slot(self) -> _Slot:
        """A slot for a new segment: free, new, freed by compaction, or (policy) the oldest.

        With three or more segments, one slot is held back as compaction's target (as a
        log-structured filesystem keeps free segments for its cleaner): without it, a log
        full of partly acked segments could only drop.
        """
        reserve = 1 if self._max_slots >= 3 else 0
        if self._spare() <= reserve:
            self._maybe_compact()
        if self._spare() > reserve or reserve == 0:
            if self._free:
                return self._free.pop()
            if len(self._slot_names) < self._max_slots and self._create_slot(free=True):
                return self._free.pop()
        victims = [s for s in self._segs if s is not self._active]
        if self.config.full_policy == "refuse" or not victims:
            self._c["refused_records"] += 1
            raise WalFull(
                f"WAL at its bound ({len(self._slot_names)} segments of "
                f"{self.config.segment_bytes} B): record refused"
            )
        victim = victims[0]
        dropped = victim.live
        self._c["dropped_records"] += dropped
        log.warning(
            "WAL full: dropped the oldest segment %s with %d unacked records (policy drop_oldest)",
            victim.slot.name,
            dropped,
        )
        self._release(victim)
        self._fix_low()
        return self._free.pop()

    def _spare(self) -> int:
        """Slots free now or still creatable under the bound."""
        return len(self._free) + max(0, self._max_slots - len(self._slot_names))

    def _create_slot(self, *, free: bool) -> bool:
        n = 0
        while f"seg-{n:04d}.wal" in self._slot_names:
            n += 1
        name = f"seg-{n:04d}.wal"
        size = self.config.segment_bytes
        try:
            f = self._storage.create(name, size)
        except OSError as exc:
            self._c["write_errors"] += 1
            self._max_slots = len(self._slot_names)
            if not self._fs_full_logged:
                self._fs_full_logged = True
                log.warning(
                    "WAL cannot create segment %s (%s): bound lowered to %d segments",
                    name,
                    exc.strerror,
                    self._max_slots,
                )
            return False
        self._c["prealloc_bytes"] += size
        self._slot_names.add(name)
        if free:
            self._free.append(_Slot(name, f, size))
        return True

    def _release(self, seg: _Segment, *, reuse_last: bool = False) -> None:
        """Take a segment out of the log and give its slot back (kept, never erased).

        Its unacked records are gone (the caller counted them as dropped); a slot whose write
        just failed is queued last so that another slot is tried first.
        """
        self._segs.remove(seg)
        self._forget(seg, reuse_last=reuse_last)

    def _forget(self, seg: _Segment, *, reuse_last: bool = False) -> None:
        if self._hint is seg:
            self._hint = None
        for i, key in enumerate(seg.keys):
            if not seg.acked[i] and self._pending.get(key) == seg.seqs[i]:
                del self._pending[key]
        if len(self._slot_names) > self._max_slots:
            self._drop_slot_file(seg.slot)
        elif reuse_last:
            self._free.insert(0, seg.slot)
        else:
            self._free.append(seg.slot)

    def _drop_slot_file(self, slot: _Slot) -> None:
        slot.file.close()
        try:
            self._storage.remove(slot.name)
        except OSError as exc:
            log.warning("WAL cannot remove %s (%s)", slot.name, exc.strerror)
        self._slot_names.discard(slot.name)

    def _maybe_compact(self) -> None:
        """Merge the run of partly acked segments whose rewrite pays best, if one pays at all.

        The bound counts whole segments, so rewriting pays only when the live records of k
        consecutive sealed segments fit in one: that frees k - 1 segments (the benefit) for the
        live bytes written again (the cost). The run with the best benefit/cost is merged if
        that ratio reaches compaction_min_gain; a mostly live log is left alone rather than
        wear the card. Runs are consecutive so the merged segment takes their place in the log
        and append order is kept.
        """
        if not self._free and (
            len(self._slot_names) >= self._max_slots or not self._create_slot(free=True)
        ):
            return  # no slot to write the merged segment into
        size = self._free[-1].size
        room = size - PAGE - RECORD_HEADER * (size // PAGE)  # worst-case page-tail padding
        sealed = [seg for seg in self._segs if seg is not self._active]
        best: tuple[int, int] | None = None
        best_ratio = self.config.compaction_min_gain
        for i in range(len(sealed)):
            live = 0
            for j in range(i, min(len(sealed), i + _MAX_MERGE)):
                live += sealed[j].live_bytes
                if live > room:
                    break
                ratio = (j - i) * size / max(1, live)
                if j > i and ratio >= best_ratio:
                    best, best_ratio = (i, j), ratio
        if best is None:
            return
        victims = sealed[best[0] : best[1] + 1]
        slot = self._free.pop()
        live_records = [r for victim in victims for r in self._read_live(victim)]
        header = SegmentHeader(
            number=self._next_number,
            order_key=victims[0].order_key,
            first_seq=live_records[0][0] if live_records else victims[0].first_seq,
            created_ns=victims[0].created_ns,
            kind=KIND_COMPACTED,
            replaces_to=victims[-1].order_key,
        )
        target = _Segment(slot, header)
        out = bytearray(header.encode())
        out += bytes(PAGE - len(out))
        now = self._clock()
        for seq, key, payload in live_records:
            pos = len(out)
            if PAGE - pos % PAGE < RECORD_HEADER:
                out += bytes(align_up(pos) - pos)
                pos = len(out)
            frame = frame_record(target.number, seq, key, payload, target.first_seq)
            out += frame
            target.add(seq, key, pos, len(frame), now, False)
        if len(out) % PAGE:
            out += bytes(PAGE - len(out) % PAGE)
        try:
            # records first, header last: a valid compacted header means a complete merge
            slot.file.pwrite(memoryview(out)[PAGE:], PAGE)
            slot.file.sync()
            slot.file.pwrite(memoryview(out)[:PAGE], 0)
            slot.file.sync()
        except OSError as exc:
            self._c["write_errors"] += 1
            self._free.append(slot)
            log.warning("WAL compaction into %s failed (%s)", slot.name, exc.strerror)
            return
        # records keep their append times, so the oldest-age gauge stays true
        ages = {}
        for victim in victims:
            for i in range(len(victim.seqs)):
                if not victim.acked[i]:
                    ages[victim.seqs[i]] = victim.times[i]
        for i, seq in enumerate(target.seqs):
            target.times[i] = ages.get(seq, now)
        self._next_number += 1
        target.head = len(out)
        self._c["bytes_written"] += len(out)
        self._c["compaction_bytes"] += len(out)
        self._c["compactions"] += 1
        self._c["fsyncs"] += 2
        at = self._segs.index(victims[0])
        self._segs[at : at + len(victims)] = [target]
        for victim in victims:
            for i in range(len(victim.acked)):
                victim.acked[i] = 1
            victim.live = victim.live_bytes = 0
            self._forget(victim)
        log.info(
            "WAL compacted %d segments (%s...) into %s: %d live records moved, %d bytes written",
            len(victims),
            victims[0].slot.name,
            slot.name,
            len(target.seqs),
            len(out),
        )

    def _read_live(self, seg: _Segment) -> list[tuple[int, bytes, bytes]]:
        idx = [i for i in range(len(seg.seqs)) if not seg.acked[i]]
        return [(r.seq, r.key, r.payload) for r in self._load(seg, idx)]

    # ------------------------------------------------------------------ read / ack

    def read(self, limit: int) -> list[Record]:
        """Up to limit pending records from the ack cursor, in append order (not consumed)."""
        out: list[Record] = []
        with self._lock:
            self._check_ready()
            si, i = self._position(self._low)
            while si < len(self._segs) and len(out) < limit:
                seg = self._segs[si]
                idx: list[int] = []
                n = len(seg.seqs)
                acked = seg.acked
                while i < n and len(out) + len(idx) < limit:
                    if not acked[i]:
                        idx.append(i)
                    i += 1
                if idx:
                    out.extend(self._load(seg, idx))
                si, i = si + 1, 0
            self._after_acks()  # records that failed their checksum were dropped
        return out

    def _load(self, seg: _Segment, idx: list[int]) -> list[Record]:
        """Read and verify records idx of seg; a record failing its checksum is dropped."""
        out: list[Record] = []
        j = 0
        in_buf = seg is self._active
        while j < len(idx):
            i = idx[j]
            off = seg.offs[i]
            if in_buf and i >= self._buf_first:
                data: bytes | bytearray = self._buf
                base = self._buf_off
                k = len(idx)
            else:
                k = j + 1
                limit_i = self._buf_first if in_buf else len(seg.seqs)
                while (
                    k < len(idx)
                    and idx[k] < limit_i
                    and seg.offs[idx[k]] + seg.lens[idx[k]] - off <= _READ_SPAN
                ):
                    k += 1
                last = idx[k - 1]
                span = seg.offs[last] + seg.lens[last] - off
                try:
                    data = seg.slot.file.pread(span, off)
                except OSError:
                    data = b""
                base = off
            if data is self._buf:
                # still in memory, exactly as framed: no checksum to verify yet
                for i2 in idx[j:k]:
                    start = seg.offs[i2] - base + RECORD_HEADER
                    key = seg.keys[i2]
                    end = seg.offs[i2] - base + seg.lens[i2]
                    out.append(Record(seg.seqs[i2], key, bytes(data[start + len(key) : end])))
                j = k
                continue
            for i2 in idx[j:k]:
                rec = parse_record(data, seg.offs[i2] - base, seg.number, seg.first_seq)
                if rec is None or rec.seq != seg.seqs[i2]:
                    self._c["corrupt_records"] += 1
                    log.warning(
                        "WAL record %d in %s fails its checksum: skipped",
                        seg.seqs[i2],
                        seg.slot.name,
                    )
                    self._mark_acked(seg, i2)
                    continue
                out.append(Record(rec.seq, rec.key, rec.payload))
            j = k
        return out

    def ack(self, seqs: Iterable[int]) -> int:
        """Mark records delivered; returns how many were pending. Unknown seqs are ignored."""
        n = 0
        with self._lock:
            self._check_ready()
            for seq in seqs:
                loc = self._locate(seq)
                if loc is not None and not loc[0].acked[loc[1]]:
                    self._mark_acked(*loc)
                    n += 1
            self._after_acks()
        return n

    def ack_keys(self, keys: Iterable[bytes | str]) -> int:
        """ack() by idempotency key (the pending record holding each key)."""
        with self._lock:
            seqs = [
                s
                for s in (
                    self._pending.get(k.encode() if isinstance(k, str) else bytes(k)) for k in keys
                )
                if s is not None
            ]
        return self.ack(seqs)

    def _mark_acked(self, seg: _Segment, i: int) -> None:
        seg.acked[i] = 1
        seg.live -= 1
        seg.live_bytes -= seg.lens[i]
        key = seg.keys[i]
        seq = seg.seqs[i]
        if self._pending.get(key) == seq:
            del self._pending[key]
        self._acked.add(seq)
        if not self._acks_unpersisted:
            self._ack_dirty_since = self._clock()
            self._kick.set()
        self._acks_unpersisted += 1

    def _after_acks(self) -> None:
        if not self._acks_unpersisted:
            return
        for seg in [s for s in self._segs if s.live == 0 and s is not self._active]:
            self._release(seg)
        self._fix_low()
        if self._acks_unpersisted >= self.config.cursor_every_acks:
            self._write_cursor_locked()

    def _fix_low(self) -> None:
        self._low = self._first_unacked_from(self._low)
        self._acked.trim_below(self._low)

    def _first_unacked_from(self, seq: int) -> int:
        si, i = self._position(seq)
        while si < len(self._segs):
            seg = self._segs[si]
            acked = seg.acked
            n = len(acked)
            while i < n:
                if not acked[i]:
                    return seg.seqs[i]
                i += 1
            si, i = si + 1, 0
        return self._next_seq

    def _position(self, seq: int) -> tuple[int, int]:
        """(segment index, record index) of the first record with seq >= seq."""
        for si, seg in enumerate(self._segs):
            if seg.seqs and seg.seqs[-1] >= seq:
                return si, bisect.bisect_left(seg.seqs, seq)
        return len(self._segs), 0

    def _locate(self, seq: int) -> tuple[_Segment, int] | None:
        hint = self._hint
        if hint is not None and hint.seqs and hint.seqs[0] <= seq <= hint.seqs[-1]:
            i = hint.find(seq)
            return (hint, i) if i >= 0 else None
        for seg in self._segs:
            if seg.seqs and seg.seqs[0] <= seq <= seg.seqs[-1]:
                self._hint = seg
                i = seg.find(seq)
                return (seg, i) if i >= 0 else None
        return None

    # ------------------------------------------------------------------ cursor

    def _write_cursor_locked(self) -> None:
        ranges = self._acked.as_counts()
        if len(ranges) > MAX_RANGES:
            log.warning(
                "WAL cursor: %d ack ranges above the low mark, %d persisted; acks beyond "
                "may be delivered again after a crash",
                len(ranges),
                MAX_RANGES,
            )
            ranges = ranges[:MAX_RANGES]
        state = CursorState(gen=self._cursor_gen + 1, ack_low=self._low, ranges=ranges)
        assert self._cursor is not None
        try:
            self._cursor.pwrite(state.encode(), (state.gen % 2) * CURSOR_SLOT)
            self._cursor.sync()
        except OSError as exc:
            self._c["write_errors"] += 1
            log.warning("WAL cursor write failed (%s): will retry", exc.strerror)
            return
        self._cursor_gen = state.gen
        self._acks_unpersisted = 0
        self._c["bytes_written"] += CURSOR_SLOT
        self._c["fsyncs"] += 1
        self._c["cursor_writes"] += 1

    def sync_cursor(self) -> None:
        """Persist the ack cursor now if any ack is not yet persisted."""
        with self._lock:
            self._check_ready()
            if self._acks_unpersisted:
                self._write_cursor_locked()

    @property
    def cursor_writes(self) -> int:
        """How many cursor writes completed (a test hook for "acks persisted up to here")."""
        return self._c["cursor_writes"]

    # ------------------------------------------------------------------ timers

    def tick(self) -> None:
        """Run due interval work (flush, cursor); the background thread calls this."""
        with self._lock:
            if self.state is not RecoveryState.READY:
                return
            now = self._clock()
            if self._buf and now - self._buf_since >= self.config.flush_interval_ms / 1000:
                self._flush_locked()
            if (
                self._acks_unpersisted
                and now - self._ack_dirty_since >= self.config.cursor_interval_ms / 1000
            ):
                self._write_cursor_locked()

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
            if self._buf:
                due = min(due, self._buf_since + self.config.flush_interval_ms / 1000)
            if self._acks_unpersisted:
                due = min(due, self._ack_dirty_since + self.config.cursor_interval_ms / 1000)
        return max(0.002, due - now)

    def _check_ready(self) -> None:
        if self.state is not RecoveryState.READY:
            raise RuntimeError(f"WAL is {self.state.value}, not ready")

    # ------------------------------------------------------------------ stats

    def stats(self) -> WalStats:
        """A consistent snapshot of counters and gauges."""
        with self._lock:
            c = self._c
            backlog = sum(seg.live for seg in self._segs)
            backlog_bytes = sum(seg.live_bytes for seg in self._segs)
            oldest = 0.0
            si, i = self._position(self._low)
            if si < len(self._segs):
                oldest = max(0.0, self._clock() - self._segs[si].times[i])
            disk = CURSOR_FILE_BYTES + sum(s.size for s in self._all_slots())
            return WalStats(
                records_appended=self._appended,
                payload_bytes=self._payload_bytes,
                bytes_written=c["bytes_written"],
                fsyncs=c["fsyncs"],
                write_amplification=(
                    c["bytes_written"] / self._payload_bytes if self._payload_bytes else 0.0
                ),
                backlog_records=backlog,
                backlog_bytes=backlog_bytes,
                oldest_age_s=oldest,
                dropped_records=c["dropped_records"],
                refused_records=c["refused_records"],
                duplicate_appends=c["duplicate_appends"],
                corrupt_records=c["corrupt_records"],
                compaction_bytes=c["compaction_bytes"],
                compactions=c["compactions"],
                cursor_writes=c["cursor_writes"],
                write_errors=c["write_errors"],
                segments_in_use=len(self._segs),
                segments_free=len(self._free),
                disk_bytes=disk,
                prealloc_bytes=c["prealloc_bytes"],
                recovery_s=self.recovery.duration_s if self.recovery else 0.0,
            )

    def _all_slots(self) -> list[_Slot]:
        return [seg.slot for seg in self._segs] + self._free


def _resync(
    view: memoryview, start: int, seg: _Segment, last: int
) -> tuple[int, ParsedRecord] | None:
    """The next valid record of this segment newer than last at or after start.

    Looks at every byte position whose kind byte matches (a fast C search), so one damaged
    record costs only itself, not the rest of its page.
    """
    data = view.obj if isinstance(view.obj, bytes) else bytes(view)
    kind = bytes([RECORD_KIND])
    at = data.find(kind, start + KIND_BYTE_OFFSET)
    while at != -1:
        pos = at - KIND_BYTE_OFFSET
        rec = parse_record(view, pos, seg.number, seg.first_seq)
        if rec is not None and rec.seq > last:
            return pos, rec
        at = data.find(kind, at + 1)
    return None
