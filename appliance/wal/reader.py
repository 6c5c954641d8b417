"""The read side: pending records from the low mark in append order, and acks.

Owns how records come back: a record still in the group-commit buffer is returned as framed
(nothing to verify yet); a written one is read back (neighbours in one pread of at most
_READ_SPAN bytes) and checked against its crc on every read. A record that fails is never
returned: it is counted in corrupt_records, logged, and treated as acked so that it is not
tried again. Acks mark records in the LogIndex and tell the AckCursor; releasing segments
that became fully acked, and writing the cursor, is the caller's next step (Wal._after_acks).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from appliance.wal.cursor import AckCursor
from appliance.wal.format import RECORD_HEADER, parse_record
from appliance.wal.index import LogIndex, Record, Segment, Tail
from appliance.wal.stats import Counters

log = logging.getLogger(__name__)

_READ_SPAN = 1024 * 1024  # at most this much is read back in one pread


class Reader:
    """read(), ack() and the checksum check of every record read back. Caller holds the lock."""

    def __init__(self, index: LogIndex, tail: Tail, cursor: AckCursor, counters: Counters) -> None:
        self._index = index
        self._tail = tail
        self._cursor = cursor
        self._c = counters

    def read(self, limit: int) -> list[Record]:
        """Up to limit pending records from the low mark, in append order (not consumed)."""
        out: list[Record] = []
        segs = self._index.segs
        si, i = self._index.position(self._index.low)
        while si < len(segs) and len(out) < limit:
            seg = segs[si]
            idx: list[int] = []
            n = len(seg.seqs)
            acked = seg.acked
            while i < n and len(out) + len(idx) < limit:
                if not acked[i]:
                    idx.append(i)
                i += 1
            if idx:
                out.extend(self.load(seg, idx))
            si, i = si + 1, 0
        return out

    def read_live(self, seg: Segment) -> list[Record]:
        """Every pending record of seg (compaction's input)."""
        return self.load(seg, [i for i in range(len(seg.seqs)) if not seg.acked[i]])

    def load(self, seg: Segment, idx: list[int]) -> list[Record]:
        """Records idx of seg (ascending), verified; a record failing its checksum is dropped."""
        out: list[Record] = []
        tail = self._tail
        in_buf = seg is tail.seg
        j = 0
        while j < len(idx):
            i = idx[j]
            off = seg.offs[i]
            if in_buf and i >= tail.first:
                # still in memory, exactly as framed: no checksum to verify yet
                base = tail.off
                for i2 in idx[j:]:
                    start = seg.offs[i2] - base + RECORD_HEADER + len(seg.keys[i2])
                    end = seg.offs[i2] - base + seg.lens[i2]
                    out.append(Record(seg.seqs[i2], seg.keys[i2], bytes(tail.buf[start:end])))
                break
            k = j + 1
            limit_i = tail.first if in_buf else len(seg.seqs)
            while (
                k < len(idx)
                and idx[k] < limit_i
                and seg.offs[idx[k]] + seg.lens[idx[k]] - off <= _READ_SPAN
            ):
                k += 1
            last = idx[k - 1]
            try:
                data = seg.slot.file.pread(seg.offs[last] + seg.lens[last] - off, off)
            except OSError:
                data = b""
            for i2 in idx[j:k]:
                rec = parse_record(data, seg.offs[i2] - off, seg.number, seg.first_seq)
                if rec is None or rec.seq != seg.seqs[i2]:
                    self._drop_corrupt(seg, i2)
                    continue
                out.append(Record(rec.seq, rec.key, rec.payload))
            j = k
        return out

    def _drop_corrupt(self, seg: Segment, i: int) -> None:
        self._c.corrupt_records += 1
        log.warning("WAL record %d in %s fails its checksum: skipped", seg.seqs[i], seg.slot.name)
        self._mark_acked(seg, i)

    def ack(self, seqs: Iterable[int]) -> int:
        """Mark records delivered; returns how many were pending. Unknown seqs are ignored."""
        n = 0
        locate = self._index.locate
        for seq in seqs:
            loc = locate(seq)
            if loc is not None and not loc[0].acked[loc[1]]:
                self._mark_acked(*loc)
                n += 1
        return n

    def seqs_of(self, keys: Iterable[bytes | str]) -> list[int]:
        """The seqs of the pending records holding these idempotency keys (unknown: skipped)."""
        pending = self._index.pending
        found = (pending.get(k.encode() if isinstance(k, str) else bytes(k)) for k in keys)
        return [s for s in found if s is not None]

    def _mark_acked(self, seg: Segment, i: int) -> None:
        self._index.mark_acked(seg, i)
        self._cursor.note_ack()
