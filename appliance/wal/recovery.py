"""Recovery: turning a WAL directory, as any crash left it, into a ready index. Never crashes on
a bad file and never delivers a torn or corrupt record.

Owns the opening lifecycle as an explicit state machine (appliance.fsm; TRANSITIONS below):

    CLOSED -OPEN-> LOCKING -LOCKED-> READING_CURSOR -CURSOR_READ-> SCANNING -SCANNED->
    RESOLVING -RESOLVED-> READY -CLOSE-> CLOSED
    LOCKING | READING_CURSOR | SCANNING | RESOLVING -ERROR-> FAILED -CLOSE-> CLOSED

Steps (the format's invariants are in appliance.wal.format):
1. LOCKING: flock the directory (WalLocked if another process holds it).
2. READING_CURSOR: the cursor slot with the highest valid gen (gen 0 for a new WAL).
3. SCANNING: read every slot's header (zero or invalid: a free slot); drop segments a complete
   merge supersedes; scan the rest in log order, except one wholly below the cursor, which is
   not read at all. Inside a segment, a record failing its check is resynchronised past (byte
   by byte from the next kind byte, so damage costs only the damaged records, counted as
   corrupt); no valid record after it is the torn tail. A later segment's first_seq cuts off
   the copies a re-placed write left behind (counted as duplicates).
4. RESOLVING: mark acked records from the cursor, index pending keys, release fully acked
   segments, continue appending in the last segment if it has room, and remove free slot
   files over a lowered bound.
"""

from __future__ import annotations

import bisect
import enum
import errno
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from appliance.fsm import Machine
from appliance.wal.config import WalConfig
from appliance.wal.cursor import AckCursor
from appliance.wal.errors import WalLocked, WalUnavailable
from appliance.wal.format import (
    KIND_APPEND,
    KIND_BYTE_OFFSET,
    KIND_COMPACTED,
    PAGE,
    RECORD_HEADER,
    RECORD_KIND,
    CursorState,
    FormatError,
    ParsedRecord,
    SegmentHeader,
    align_up,
    is_padding,
    next_page,
    parse_record,
    peek_seq,
)
from appliance.wal.index import LogIndex, Segment, Slot, Tail
from appliance.wal.ranges import RangeSet
from appliance.wal.space import Space
from appliance.wal.stats import Counters
from appliance.wal.storage import Storage

log = logging.getLogger(__name__)

_SEG_NAME = re.compile(r"^seg-(\d{4,})\.wal$")


class RecoveryState(enum.Enum):
    """Steps of opening a WAL; FAILED is terminal (the directory could not be used)."""

    CLOSED = "closed"
    LOCKING = "locking"
    READING_CURSOR = "reading_cursor"
    SCANNING = "scanning"
    RESOLVING = "resolving"
    READY = "ready"
    FAILED = "failed"


class RecoveryEvent(enum.Enum):
    """What moves a WAL through its lifecycle."""

    OPEN = "open"
    LOCKED = "locked"
    CURSOR_READ = "cursor_read"
    SCANNED = "scanned"
    RESOLVED = "resolved"
    ERROR = "error"
    CLOSE = "close"


_S, _E = RecoveryState, RecoveryEvent
TRANSITIONS: dict[tuple[RecoveryState, RecoveryEvent], RecoveryState] = {
    (_S.CLOSED, _E.OPEN): _S.LOCKING,
    (_S.LOCKING, _E.LOCKED): _S.READING_CURSOR,
    (_S.READING_CURSOR, _E.CURSOR_READ): _S.SCANNING,
    (_S.SCANNING, _E.SCANNED): _S.RESOLVING,
    (_S.RESOLVING, _E.RESOLVED): _S.READY,
    **{
        (s, _E.ERROR): _S.FAILED for s in (_S.LOCKING, _S.READING_CURSOR, _S.SCANNING, _S.RESOLVING)
    },
    (_S.READY, _E.CLOSE): _S.CLOSED,
    (_S.FAILED, _E.CLOSE): _S.CLOSED,
}


def lifecycle(name: str) -> Machine[RecoveryState, RecoveryEvent]:
    """A WAL's lifecycle machine, CLOSED."""
    return Machine(name, TRANSITIONS, RecoveryState.CLOSED)


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


@dataclass
class _Found:
    """Damage counted while scanning."""

    corrupt: int = 0
    torn: int = 0
    dup: int = 0
    unusable: int = 0


class Recovery:
    """One run of recovery, filling the (empty) parts of a WAL being opened."""

    def __init__(
        self,
        machine: Machine[RecoveryState, RecoveryEvent],
        config: WalConfig,
        storage: Storage,
        *,
        index: LogIndex,
        tail: Tail,
        space: Space,
        cursor: AckCursor,
        counters: Counters,
        clock: Callable[[], float],
        wall_clock: Callable[[], int],
    ) -> None:
        self._machine = machine
        self._config = config
        self._storage = storage
        self._index = index
        self._tail = tail
        self._space = space
        self._cursor = cursor
        self._c = counters
        self._clock = clock
        self._wall = wall_clock
        self._found = _Found()

    def run(self) -> RecoveryReport:
        """Lock, read the cursor, scan and resolve; READY, or FAILED with the lock released."""
        started = self._clock()
        move = self._machine.move
        move(_E.OPEN)
        try:
            self._storage.lock()
        except OSError as exc:
            move(_E.ERROR)
            where = self._config.path
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise WalLocked(
                    f"WAL {where} is in use by another process; "
                    "stop the other agent or set wal.path"
                ) from exc
            raise WalUnavailable(
                f"cannot use WAL directory {where} ({exc.strerror}); "
                "free space on the data partition, fix its permissions or set wal.path"
            ) from exc
        move(_E.LOCKED)
        try:
            cursor = self._cursor.open()
            move(_E.CURSOR_READ)
            used = self._scan_slots(cursor)
            move(_E.SCANNED)
            self._resolve(used, cursor)
            if self._config.preallocate:
                self._space.preallocate()
        except BaseException:
            move(_E.ERROR)
            self._storage.unlock()
            raise
        move(_E.RESOLVED)
        found = self._found
        segs = self._index.segs
        pending = sum(seg.live for seg in segs)
        total = sum(len(seg.seqs) for seg in segs)
        report = RecoveryReport(
            duration_s=self._clock() - started,
            segments=len(segs),
            records_pending=pending,
            records_acked=total - pending,
            corrupt_records=found.corrupt,
            torn_tails=found.torn,
            duplicates_skipped=found.dup,
            unusable_files=found.unusable,
            cursor_gen=cursor.gen,
        )
        self._c.corrupt_records += found.corrupt
        log.info(
            "WAL recovered in %.3f s: %d pending records, %d segments, %d corrupt skipped, "
            "%d torn tails",
            report.duration_s,
            pending,
            len(segs),
            found.corrupt,
            found.torn,
        )
        return report

    def _scan_slots(self, cursor: CursorState) -> list[Segment]:
        """Read every segment header, then scan the segments in log order, one at a time.

        A segment wholly below the cursor (the next segment in the log starts at or below
        ack_low) is not read at all: everything in it is acked.
        """
        found, index, space = self._found, self._index, self._space
        used: list[Segment] = []
        for name in self._storage.names():
            if not _SEG_NAME.match(name):
                continue
            try:
                f = self._storage.open(name)
                size = f.size()
            except OSError as exc:
                log.warning("WAL file %s cannot be opened (%s): ignored", name, exc.strerror)
                found.unusable += 1
                continue
            if size < 4 * PAGE or size % PAGE:
                log.warning("WAL file %s has an impossible size %d: ignored", name, size)
                f.close()
                found.unusable += 1
                continue
            slot = Slot(name, f, size)
            space.names.add(name)
            try:
                header = SegmentHeader.decode(f.pread(PAGE, 0))
            except (OSError, FormatError):
                space.free.append(slot)
                continue
            index.next_number = max(index.next_number, header.number + 1)
            index.next_seq = max(index.next_seq, header.first_seq)
            used.append(Segment(slot, header))
        used.sort(key=lambda seg: (seg.order_key, seg.number))
        # a complete merge supersedes the older segments of its order_key range
        merged = [t for t in used if t.kind == KIND_COMPACTED]
        live: list[Segment] = []
        for seg in used:
            if any(
                t.order_key <= seg.order_key <= t.replaces_to and seg.number < t.number
                for t in merged
            ):
                space.free.append(seg.slot)
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
                found.unusable += 1
                continue
            top = self._scan_segment(seg, data, cursor)
            index.next_seq = max(index.next_seq, top + 1)
        # a later segment's first_seq cuts off copies left behind by a re-placed write
        limit = None
        for seg in reversed(used):
            if limit is not None and seg.seqs and seg.seqs[-1] >= limit:
                keep = bisect.bisect_left(seg.seqs, limit)
                found.dup += len(seg.seqs) - keep
                for i in range(keep, len(seg.seqs)):
                    if not seg.acked[i]:
                        seg.live -= 1
                        seg.live_bytes -= seg.lens[i]
                seg.truncate(keep)
            limit = seg.first_seq if limit is None else min(limit, seg.first_seq)
        return used

    def _scan_segment(self, seg: Segment, data: bytes, cursor: CursorState) -> int:
        """Index the valid records of one segment; returns its highest seq (or first_seq-1)."""
        found = self._found
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
                found.dup += 1
                pos = last_end = rec.end
                continue
            if rec is None:
                if peek_seq(view, pos, seg.first_seq) == last + 1:
                    found.torn += 1
                resync = _resync(view, pos + 1, seg, last)
                if resync is None:
                    break
                pos, rec = resync
                lost = rec.seq - last - 1 if seg.kind == KIND_APPEND else 1
                found.corrupt += max(1, lost)
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

    def _resolve(self, used: list[Segment], cursor: CursorState) -> None:
        index, space, tail = self._index, self._space, self._tail
        index.segs.extend(used)
        if cursor.ranges:
            last = cursor.ranges[-1]
            index.next_seq = max(index.next_seq, last[0] + last[1])
        index.next_seq = max(index.next_seq, cursor.ack_low)
        for seg in index.segs:
            for i, key in enumerate(seg.keys):
                if not seg.acked[i]:
                    index.pending[key] = seg.seqs[i]
        last_seg = index.segs[-1] if index.segs else None
        for seg in list(index.segs):
            if seg.live == 0 and seg is not last_seg:
                space.release(seg)
        if (
            last_seg is not None
            and last_seg.kind == KIND_APPEND
            and last_seg.head + 2 * PAGE <= last_seg.slot.size
        ):
            tail.seg = last_seg
            tail.off = last_seg.head
            tail.first = len(last_seg.seqs)
        elif last_seg is not None and last_seg.live == 0:
            space.release(last_seg)
        index.low = index.first_unacked_from(cursor.ack_low)
        index.acked = RangeSet(tuple(r for r in cursor.ranges if r[0] + r[1] > index.low))
        index.acked.trim_below(index.low)
        # slots over a lowered bound are removed as soon as they are free
        space.trim_to_bound()


def _resync(
    view: memoryview, start: int, seg: Segment, last: int
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
