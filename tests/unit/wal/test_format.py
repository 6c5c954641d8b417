"""The WAL's on-disk codec: every damage is detected, residue of old lives never passes."""

from __future__ import annotations

import struct
import zlib

import pytest

from appliance.wal.format import (
    CURSOR_SLOT,
    MAX_RANGES,
    PAGE,
    RECORD_HEADER,
    CursorState,
    FormatError,
    SegmentHeader,
    frame_into,
    frame_record,
    is_padding,
    parse_record,
)


def test_record_roundtrip_gives_back_seq_key_payload() -> None:
    frame = frame_record(7, 42, b"key-1", b"payload bytes")
    rec = parse_record(frame, 0, 7)
    assert rec is not None
    assert (rec.seq, rec.key, rec.payload, rec.end) == (42, b"key-1", b"payload bytes", len(frame))
    assert len(frame) == RECORD_HEADER + 5 + 13


def test_record_layout_is_the_documented_one_and_frame_into_appends_it() -> None:
    # crc32 seeded with the epoch | payload_len u24 + kind 0xA7 | seq - first_seq | key_len
    body = struct.pack("<IIB", 3 | 0xA7 << 24, 42 - 40, 2) + b"kk" + b"abc"
    expected = struct.pack("<I", zlib.crc32(body, 7)) + body
    assert frame_record(7, 42, b"kk", b"abc", 40) == expected
    buf = bytearray(b"before")
    assert frame_into(buf, 7, 2, b"kk", b"abc") == len(expected)
    assert bytes(buf) == b"before" + expected


def test_record_of_previous_segment_life_fails_checksum() -> None:
    frame = frame_record(7, 42, b"k", b"p" * 100)
    assert parse_record(frame, 0, 8) is None


def test_every_single_bit_flip_in_a_record_is_detected() -> None:
    frame = frame_record(3, 9, b"abc", bytes(range(200)))
    for pos in range(len(frame)):
        for bit in range(8):
            damaged = bytearray(frame)
            damaged[pos] ^= 1 << bit
            rec = parse_record(bytes(damaged), 0, 3)
            assert rec is None or rec.end > len(frame), (pos, bit)


def test_truncated_record_is_not_parsed() -> None:
    frame = frame_record(1, 1, b"k", b"x" * 50)
    for cut in range(len(frame)):
        assert parse_record(frame[:cut], 0, 1) is None


def test_zero_bytes_read_as_padding_and_page_tail_is_padding() -> None:
    page = bytes(PAGE)
    assert is_padding(page, 0)
    frame = frame_record(1, 1, b"k", b"x")
    buf = frame + bytes(PAGE - len(frame))
    assert not is_padding(buf, 0)
    assert is_padding(buf, len(frame))
    assert is_padding(buf, PAGE - RECORD_HEADER + 1)
    garbage = bytearray(buf)
    garbage[PAGE - 100] = 1
    assert not is_padding(bytes(garbage), len(frame))


def test_segment_header_roundtrip_and_zero_page_is_free() -> None:
    head = SegmentHeader(number=5, order_key=3, first_seq=100, created_ns=123, kind=1)
    assert SegmentHeader.decode(head.encode()) == head
    with pytest.raises(FormatError):
        SegmentHeader.decode(bytes(PAGE))
    damaged = bytearray(head.encode())
    damaged[20] ^= 1
    with pytest.raises(FormatError):
        SegmentHeader.decode(bytes(damaged))


def test_cursor_slot_roundtrip_and_membership() -> None:
    state = CursorState(gen=9, ack_low=100, ranges=((105, 3), (200, 1)))
    data = state.encode()
    assert len(data) == CURSOR_SLOT
    back = CursorState.decode(data)
    assert back == state
    assert [s for s in range(95, 210) if back.is_acked(s)] == [
        *range(95, 100),
        105,
        106,
        107,
        200,
    ]


def test_torn_cursor_slot_is_rejected() -> None:
    data = bytearray(CursorState(gen=2, ack_low=10, ranges=((12, 1),)).encode())
    data[30] ^= 0x10
    with pytest.raises(FormatError):
        CursorState.decode(bytes(data))


def test_cursor_refuses_more_ranges_than_fit_a_slot() -> None:
    too_many = tuple((i * 10, 1) for i in range(MAX_RANGES + 1))
    with pytest.raises(FormatError):
        CursorState(gen=1, ack_low=0, ranges=too_many).encode()
