"""The in-memory index: which segments make up the log, in order, and where each record is.

Owns: `Segment` (a slot's header fields plus the position, length, key, append time and acked
flag of each record in it), `Slot` (a segment file), `Tail` (the active segment and its
group-commit buffer of framed records not yet written) and `LogIndex` (the segments in log
order, the pending-key map, seq and segment-number allocation, and the acked set: the low mark
below which everything is acked plus the acked ranges above it, which the cursor persists).

Nothing here does I/O. The other parts of the package (recovery, writer, reader, space) all
work on one LogIndex, under the WAL's lock.
"""

from __future__ import annotations

import bisect
from array import array
from dataclasses import dataclass
from typing import NamedTuple

from appliance.wal.format import PAGE, SegmentHeader
from appliance.wal.ranges import RangeSet
from appliance.wal.storage import StorageFile


class Record(NamedTuple):
    """A pending record as read() returns it."""

    seq: int
    key: bytes
    payload: bytes


@dataclass
class Slot:
    """One segment file (free, or holding a segment) and its fixed size."""

    name: str
    file: StorageFile
    size: int


class Segment:
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

    def __init__(self, slot: Slot, header: SegmentHeader) -> None:
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
        """Index one more record (the last one in the segment)."""
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
        """Forget records n and after (the caller has already adjusted live counts)."""
        for arr in (self.seqs, self.offs, self.lens, self.times):
            del arr[n:]
        del self.keys[n:]
        del self.acked[n:]

    def find(self, seq: int) -> int:
        """The record index of seq in this segment, or -1."""
        i = bisect.bisect_left(self.seqs, seq)
        return i if i < len(self.seqs) and self.seqs[i] == seq else -1


class Tail:
    """The active segment (where appends go) and the framed records not yet written to it.

    `buf` starts at offset `off` of the segment (a page boundary); records `first` and after of
    `seg` are in it; `since` is when its oldest record was appended (the flush deadline).
    """

    __slots__ = ("buf", "first", "off", "seg", "since")

    def __init__(self) -> None:
        self.seg: Segment | None = None
        self.buf = bytearray()
        self.off = 0
        self.first = 0
        self.since = 0.0

    def holds(self, seg: Segment, i: int) -> bool:
        """Whether record i of seg is still only in the buffer."""
        return seg is self.seg and i >= self.first


class LogIndex:
    """The segments in log order, pending keys, seq allocation and what is acked."""

    def __init__(self) -> None:
        self.segs: list[Segment] = []
        self.pending: dict[bytes, int] = {}  # key -> seq of the pending record holding it
        self.next_seq = 1
        self.next_number = 1  # the next segment number (epoch); only ever increases
        self.low = 1  # every seq below it is acked
        self.acked = RangeSet()  # acked seqs at or above low
        self._hint: Segment | None = None  # where the last locate() found its seq

    # -- finding records

    def position(self, seq: int) -> tuple[int, int]:
        """(segment index, record index) of the first record with seq >= seq."""
        for si, seg in enumerate(self.segs):
            if seg.seqs and seg.seqs[-1] >= seq:
                return si, bisect.bisect_left(seg.seqs, seq)
        return len(self.segs), 0

    def locate(self, seq: int) -> tuple[Segment, int] | None:
        """(segment, record index) of seq, or None if no segment holds it."""
        hint = self._hint
        if hint is not None and hint.seqs and hint.seqs[0] <= seq <= hint.seqs[-1]:
            i = hint.find(seq)
            return (hint, i) if i >= 0 else None
        for seg in self.segs:
            if seg.seqs and seg.seqs[0] <= seq <= seg.seqs[-1]:
                self._hint = seg
                i = seg.find(seq)
                return (seg, i) if i >= 0 else None
        return None

    def first_unacked_from(self, seq: int) -> int:
        """The lowest pending seq >= seq (next_seq if there is none)."""
        si, i = self.position(seq)
        while si < len(self.segs):
            seg = self.segs[si]
            acked = seg.acked
            n = len(acked)
            while i < n:
                if not acked[i]:
                    return seg.seqs[i]
                i += 1
            si, i = si + 1, 0
        return self.next_seq

    # -- acks

    def mark_acked(self, seg: Segment, i: int) -> None:
        """Record i of seg is delivered (or dropped as corrupt): no longer pending."""
        seg.acked[i] = 1
        seg.live -= 1
        seg.live_bytes -= seg.lens[i]
        key = seg.keys[i]
        seq = seg.seqs[i]
        if self.pending.get(key) == seq:
            del self.pending[key]
        self.acked.add(seq)

    def fix_low(self) -> None:
        """Move the low mark up to the first pending record."""
        self.low = self.first_unacked_from(self.low)
        self.acked.trim_below(self.low)

    # -- segments leaving the log

    def remove(self, seg: Segment) -> None:
        """Take seg out of the log; its pending records are no longer pending."""
        self.segs.remove(seg)
        self.forget(seg)

    def forget(self, seg: Segment) -> None:
        """Drop seg's pending keys and any cached reference to it (it has left the log)."""
        if self._hint is seg:
            self._hint = None
        pending = self.pending
        for i, key in enumerate(seg.keys):
            if not seg.acked[i] and pending.get(key) == seg.seqs[i]:
                del pending[key]

    # -- gauges

    def backlog(self) -> tuple[int, int]:
        """(records, framed bytes) not yet acked."""
        return sum(s.live for s in self.segs), sum(s.live_bytes for s in self.segs)

    def oldest_time(self) -> float | None:
        """The append time (WAL clock) of the oldest pending record, None if none is pending."""
        si, i = self.position(self.low)
        return self.segs[si].times[i] if si < len(self.segs) else None
