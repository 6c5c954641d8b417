"""The write path: append into the group-commit buffer, flush whole pages, survive failed writes.

Owns placing records in the active segment (the Tail): a record is framed (format.frame_into)
straight into the buffer, never starts in the last RECORD_HEADER - 1 bytes of a page, and
rolls over to a new segment when the active one is full or its seq deltas would overflow.
A flush pads the buffer to whole pages, writes it at its page-aligned offset and fdatasyncs,
so a page holding durable records is never written again. When a write or fdatasync fails,
the unsynced records are placed again in another segment under the same seqs (recovery keeps
one copy); if that fails too they are dropped, counted and logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from appliance.wal.errors import WalFull
from appliance.wal.format import (
    MAX_SEQ_DELTA,
    PAGE,
    RECORD_HEADER,
    SegmentHeader,
    align_up,
    frame_into,
    parse_record,
)
from appliance.wal.index import LogIndex, Segment, Tail
from appliance.wal.space import Space
from appliance.wal.stats import Counters

log = logging.getLogger(__name__)


class Writer:
    """append() and flush() for one WAL. Caller holds the WAL's lock."""

    def __init__(
        self,
        index: LogIndex,
        tail: Tail,
        space: Space,
        counters: Counters,
        *,
        flush_bytes: int,
        clock: Callable[[], float],
        wall_clock: Callable[[], int],
        wake: Callable[[], None],
    ) -> None:
        """wake() tells the flusher thread that a new flush deadline started."""
        self._index = index
        self._tail = tail
        self._space = space
        self._c = counters
        self._flush_bytes = flush_bytes
        self._clock = clock
        self._wall = wall_clock
        self._wake = wake

    def append(self, key: bytes, payload: bytes) -> bool:
        """Buffer one record under a new seq; False if key is already pending."""
        index = self._index
        if key in index.pending:
            self._c.duplicate_appends += 1
            return False
        seq = index.next_seq
        self._place(seq, key, payload)
        index.next_seq = seq + 1
        index.pending[key] = seq
        c = self._c
        c.records_appended += 1
        c.payload_bytes += len(payload)
        if len(self._tail.buf) >= self._flush_bytes:
            self.flush()
        return True

    def _place(self, seq: int, key: bytes, payload: bytes) -> None:
        """Frame a record into the active segment's buffer (rolling segments as needed)."""
        need = RECORD_HEADER + len(key) + len(payload)
        tail = self._tail
        seg = tail.seg
        pos = tail.off + len(tail.buf)
        if PAGE - pos % PAGE < RECORD_HEADER:
            pos = align_up(pos)
        if seg is None or pos + need > seg.slot.size or seq - seg.first_seq > MAX_SEQ_DELTA:
            if seg is not None:
                self.flush()
                tail.seg = None
            seg = self._start_segment(seq)
            pos = tail.off + len(tail.buf)
        buf = tail.buf
        now = self._clock()
        if len(seg.seqs) == tail.first:
            tail.since = now
            self._wake()
        pad = pos - tail.off - len(buf)
        if pad:
            buf += bytes(pad)
        frame_into(buf, seg.number, seq - seg.first_seq, key, payload)
        seg.seqs.append(seq)
        seg.offs.append(pos)
        seg.lens.append(need)
        seg.times.append(now)
        seg.keys.append(key)
        seg.acked.append(0)
        seg.live += 1
        seg.live_bytes += need

    def _start_segment(self, first_seq: int) -> Segment:
        slot = self._space.take_slot()
        index = self._index
        header = SegmentHeader(
            number=index.next_number,
            order_key=index.next_number,
            first_seq=first_seq,
            created_ns=self._wall(),
        )
        index.next_number += 1
        seg = Segment(slot, header)
        index.segs.append(seg)
        tail = self._tail
        tail.seg = seg
        tail.buf = bytearray(header.encode())
        tail.buf += bytes(PAGE - len(tail.buf))
        tail.off = 0
        tail.first = 0
        tail.since = self._clock()
        return seg

    def flush(self) -> None:
        """Write and fdatasync whatever the buffer holds (a failure moves it elsewhere)."""
        tail = self._tail
        seg = tail.seg
        if seg is None or (len(seg.seqs) == tail.first and len(tail.buf) == 0):
            return
        try:
            self._write_buffer(seg)
        except OSError as exc:
            self._write_failed(seg, exc)

    def _write_buffer(self, seg: Segment) -> None:
        """pwrite the buffer (padded to whole pages) at its offset, then fdatasync."""
        tail = self._tail
        buf = tail.buf
        if not buf:
            return
        rest = len(buf) % PAGE
        if rest:
            buf += bytes(PAGE - rest)
        seg.slot.file.pwrite(buf, tail.off)
        seg.slot.file.sync()
        self._c.bytes_written += len(buf)
        self._c.fsyncs += 1
        tail.off += len(buf)
        seg.head = tail.off
        tail.buf = bytearray()
        tail.first = len(seg.seqs)
        if tail.off + 2 * PAGE > seg.slot.size:
            tail.seg = None

    def _write_failed(self, seg: Segment, exc: OSError) -> None:
        """The active segment's write or fdatasync failed: move its unsynced records on.

        After a failed fdatasync the page cache cannot be trusted, so every record since the
        last successful flush is written again into another segment (same seq: if both copies
        survive, recovery keeps one). If that fails too, they are dropped and counted.
        """
        self._c.write_errors += 1
        orphans = self._take_buffer(seg)
        log.warning(
            "WAL write to %s failed (%s): moving %d unsynced records to another segment",
            seg.slot.name,
            exc.strerror,
            len(orphans),
        )
        if not orphans:
            return
        tail = self._tail
        try:
            for seq, key, payload in orphans:
                self._place(seq, key, payload)
            nxt = tail.seg
            if nxt is None:
                raise OSError(exc.errno, "no segment to move to")
            self._write_buffer(nxt)
        except (OSError, WalFull) as again:
            if tail.seg is not None:
                self._take_buffer(tail.seg)
            pending = self._index.pending
            lost = 0
            for seq, key, _ in orphans:
                if pending.get(key) == seq:
                    del pending[key]
                    lost += 1
            self._c.dropped_records += lost
            log.warning(
                "WAL dropped %d records that could not be written anywhere (%s)",
                lost,
                getattr(again, "strerror", None) or again,
            )
            self._index.fix_low()

    def _take_buffer(self, seg: Segment) -> list[tuple[int, bytes, bytes]]:
        """Remove seg's unwritten records from the index; returns the unacked ones."""
        tail = self._tail
        n = tail.first
        buf = bytes(tail.buf)
        out = []
        for i in range(n, len(seg.seqs)):
            if not seg.acked[i]:
                seg.live -= 1
                seg.live_bytes -= seg.lens[i]
                rec = parse_record(buf, seg.offs[i] - tail.off, seg.number, seg.first_seq)
                if rec is not None:
                    out.append((rec.seq, rec.key, rec.payload))
        seg.truncate(n)
        tail.buf = bytearray()
        tail.seg = None
        if not seg.seqs:
            self._space.release(seg, reuse_last=True)
        return out
