"""The WAL's on-disk format: a pure codec (bytes in, values out), no I/O.

Directory layout (everything under `wal.path`)
----------------------------------------------
- `cursor`: the ack cursor, 2 slots of one page (4096 B) each, written in place.
- `seg-NNNN.wal`: segment files, all `segment_bytes` long, pre-zeroed once when first created
  and then recycled for the life of the card (never unlinked in steady state, so steady state
  costs no metadata writes). NNNN is a slot number, not an order: the order is in the header.
- `*.tmp`: a segment being pre-zeroed; a leftover one is deleted on open.

Segment file
------------
- Page 0 is the segment header (little-endian, rest of the page zero):
  magic `b"ISWALSEG"` | version u16 (=1) | kind u8 (0 append, 1 compacted) | reserved u8 |
  page_size u32 | number u64 | order_key u64 | first_seq u64 | created_ns u64 |
  replaces_to u64 | crc32 u32 over the preceding bytes. An all-zero or invalid header means
  "free slot". `number` is unique for every life of every slot (it only ever increases) and
  acts as the segment's epoch; `order_key` places the segment in the log (an appended
  segment's is its own number). A compacted segment merges a run of consecutive segments: it
  takes the run's first order_key, `replaces_to` is the run's last, and its header is written
  only after its records are durable, so a valid compacted header means the merge is complete
  and every older segment of that order_key range is superseded.
- From page 1 on: records, each framed as
  crc32 u32 | payload_len u24 + kind u8 (0xA7) as one u32 | seq - first_seq u32 | key_len u8
  | key | payload (a 13-byte header; seq is stored relative to the header's first_seq).
  crc32 is CRC-32 (zlib) of everything after the crc field, *seeded with the segment's
  number*: residue of a previous life of a recycled file can never pass as a record of the
  current life, so recycling never needs to erase anything.
- A record never starts in the last 12 bytes of a page; zeros from a record boundary to the
  end of its page are padding ("continue at the next page boundary"). Every flush writes
  whole pages, padded with zeros, and the next flush starts on a fresh page: a page holding
  durable records is never rewritten, so a torn write during power loss can only damage
  records that were not yet durable.

Invariants
----------
- seq numbers are unique over the life of the WAL and increase in append order; inside one
  segment they increase and are >= the header's first_seq; across segments sorted by
  (order_key, number), after superseded segments are set aside, they increase. A segment's
  first_seq also cuts off every record of an earlier segment with seq >= it (the copy left
  behind when a failed write was placed again in a new segment): recovery keeps one copy.
- The cursor slot `ack_low` says: every record with seq < ack_low is acked. `ranges` lists
  acked seqs above it as (start, count). The slot with the higher valid `gen` wins; a torn slot
  fails its crc and the other one (the previous state) is used.

Cursor slot (one page each, slot = gen % 2)
-------------------------------------------
magic `b"ISWC"` | version u16 | n_ranges u16 | gen u64 | ack_low u64 | n_ranges x (start u64,
count u32) | crc32 u32 over the preceding bytes. At most MAX_RANGES ranges fit.
"""

from __future__ import annotations

import bisect
import struct
import zlib
from dataclasses import dataclass
from zlib import crc32

PAGE = 4096
VERSION = 1

SEGMENT_MAGIC = b"ISWALSEG"
KIND_APPEND = 0
KIND_COMPACTED = 1
_SEG_HEAD = struct.Struct("<8sHBBIQQQQQ")
SEGMENT_HEADER_BYTES = _SEG_HEAD.size + 4

RECORD_KIND = 0xA7
_REC_HEAD = struct.Struct("<IIIB")
RECORD_HEADER = _REC_HEAD.size  # 13
_REC_BODY_HEAD = struct.Struct("<IIB")  # the header after the crc field
_CRC = struct.Struct("<I")
_KIND_WORD = RECORD_KIND << 24
KIND_BYTE_OFFSET = 7  # the top byte of the little-endian length word
MAX_KEY = 255
MAX_PAYLOAD = 16 * 1024 * 1024 - 1
MAX_SEQ_DELTA = 0xFFFFFFFF

CURSOR_MAGIC = b"ISWC"
CURSOR_SLOT = PAGE
CURSOR_FILE_BYTES = 2 * CURSOR_SLOT
_CUR_HEAD = struct.Struct("<4sHHQQ")
_RANGE = struct.Struct("<QI")
MAX_RANGES = (CURSOR_SLOT - _CUR_HEAD.size - 4) // _RANGE.size


_ZERO_PAGE = bytes(PAGE)


class FormatError(ValueError):
    """Bytes that are not a valid structure of this format."""


@dataclass(frozen=True)
class SegmentHeader:
    """Page 0 of a segment file."""

    number: int
    order_key: int
    first_seq: int
    created_ns: int
    kind: int = KIND_APPEND
    replaces_to: int = 0  # compacted: the last order_key of the run it replaces

    def encode(self) -> bytes:
        head = _SEG_HEAD.pack(
            SEGMENT_MAGIC,
            VERSION,
            self.kind,
            0,
            PAGE,
            self.number,
            self.order_key,
            self.first_seq,
            self.created_ns,
            self.replaces_to,
        )
        return head + struct.pack("<I", zlib.crc32(head))

    @classmethod
    def decode(cls, data: bytes) -> SegmentHeader:
        """Parse page 0; FormatError if it is free (zeros), torn or of another format."""
        if len(data) < SEGMENT_HEADER_BYTES:
            raise FormatError("short segment header")
        head = data[: _SEG_HEAD.size]
        (crc,) = struct.unpack_from("<I", data, _SEG_HEAD.size)
        (magic, version, kind, _, page, number, order_key, first_seq, created, replaces_to) = (
            _SEG_HEAD.unpack(head)
        )
        if magic != SEGMENT_MAGIC:
            raise FormatError("no segment magic")
        if zlib.crc32(head) != crc:
            raise FormatError("segment header checksum mismatch")
        if version != VERSION or page != PAGE or kind not in (KIND_APPEND, KIND_COMPACTED):
            raise FormatError(f"unsupported segment format version {version} page {page}")
        return cls(number, order_key, first_seq, created, kind, replaces_to)


def frame_into(buf: bytearray, epoch: int, delta: int, key: bytes, payload: bytes) -> int:
    """Append one framed record to buf; returns its framed length (header + key + payload).

    The one implementation of the record layout, shaped for the append path: it appends to
    the caller's buffer, and the crc is chained over header, key and payload, so nothing is
    concatenated or copied twice. delta is seq - first_seq; the caller keeps key and payload
    within MAX_KEY and MAX_PAYLOAD (struct.error otherwise for the key and the delta).
    """
    body = _REC_BODY_HEAD.pack(len(payload) | _KIND_WORD, delta, len(key))
    buf += _CRC.pack(crc32(payload, crc32(key, crc32(body, epoch & 0xFFFFFFFF))))
    buf += body
    buf += key
    buf += payload
    return RECORD_HEADER + len(key) + len(payload)


def frame_record(epoch: int, seq: int, key: bytes, payload: bytes, base: int = 0) -> bytes:
    """One record's bytes for a segment of this epoch (number) and first_seq (base)."""
    out = bytearray()
    frame_into(out, epoch, seq - base, key, payload)
    return bytes(out)


@dataclass(frozen=True)
class ParsedRecord:
    """A record found by parse_record: where it ends and what it holds."""

    seq: int
    key: bytes
    payload: bytes
    end: int


def parse_record(
    buf: bytes | bytearray | memoryview, pos: int, epoch: int, base: int = 0
) -> ParsedRecord | None:
    """The valid record of this epoch starting at buf[pos], or None (torn, corrupt, residue)."""
    if pos + RECORD_HEADER > len(buf):
        return None
    crc, len_kind, delta, klen = _REC_HEAD.unpack_from(buf, pos)
    if len_kind >> 24 != RECORD_KIND:
        return None
    end = pos + RECORD_HEADER + klen + (len_kind & 0xFFFFFF)
    if end > len(buf):
        return None
    if zlib.crc32(buf[pos + 4 : end], epoch & 0xFFFFFFFF) != crc:
        return None
    start = pos + RECORD_HEADER
    key = bytes(buf[start : start + klen])
    return ParsedRecord(base + delta, key, bytes(buf[start + klen : end]), end)


def peek_seq(buf: bytes | bytearray | memoryview, pos: int, base: int) -> int | None:
    """The seq a record header at pos claims, without checking it (None: not a header)."""
    if pos + RECORD_HEADER > len(buf) or buf[pos + KIND_BYTE_OFFSET] != RECORD_KIND:
        return None
    return base + int(_REC_HEAD.unpack_from(buf, pos)[2])


def is_padding(buf: bytes | bytearray | memoryview, pos: int) -> bool:
    """True when the rest of pos's page is padding: too short for a header, or all zeros."""
    rest = PAGE - pos % PAGE
    if rest < RECORD_HEADER:
        return True
    return bool(buf[pos : pos + rest] == _ZERO_PAGE[:rest])


def next_page(pos: int) -> int:
    """The first page boundary strictly after pos."""
    return (pos // PAGE + 1) * PAGE


def align_up(pos: int) -> int:
    """pos rounded up to a page boundary."""
    return -(-pos // PAGE) * PAGE


@dataclass(frozen=True)
class CursorState:
    """One persisted ack cursor: seq < ack_low acked, plus acked ranges above it."""

    gen: int
    ack_low: int
    ranges: tuple[tuple[int, int], ...] = ()

    def encode(self) -> bytes:
        if len(self.ranges) > MAX_RANGES:
            raise FormatError(f"{len(self.ranges)} ack ranges exceed the slot's {MAX_RANGES}")
        head = _CUR_HEAD.pack(CURSOR_MAGIC, VERSION, len(self.ranges), self.gen, self.ack_low)
        body = head + b"".join(_RANGE.pack(s, c) for s, c in self.ranges)
        body += struct.pack("<I", zlib.crc32(body))
        return body + bytes(CURSOR_SLOT - len(body))

    @classmethod
    def decode(cls, data: bytes) -> CursorState:
        if len(data) < _CUR_HEAD.size + 4:
            raise FormatError("short cursor slot")
        magic, version, n, gen, low = _CUR_HEAD.unpack_from(data, 0)
        if magic != CURSOR_MAGIC:
            raise FormatError("no cursor magic")
        if version != VERSION or n > MAX_RANGES:
            raise FormatError(f"unsupported cursor version {version}")
        end = _CUR_HEAD.size + n * _RANGE.size
        (crc,) = struct.unpack_from("<I", data, end)
        if zlib.crc32(data[:end]) != crc:
            raise FormatError("cursor slot checksum mismatch")
        ranges = tuple(_RANGE.unpack_from(data, _CUR_HEAD.size + i * _RANGE.size) for i in range(n))
        return cls(gen, low, ranges)

    def is_acked(self, seq: int) -> bool:
        """Whether this cursor says seq was acked."""
        if seq < self.ack_low:
            return True
        i = bisect.bisect_right(self.ranges, (seq, 0xFFFFFFFF)) - 1
        return i >= 0 and seq < self.ranges[i][0] + self.ranges[i][1]
