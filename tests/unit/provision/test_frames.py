"""The provisioning line framing: round trips, noise, corruption, resynchronisation."""

from __future__ import annotations

import random

import pytest

from appliance.provision.frames import MAX_LINE, Frame, Reader, decode_line, encode


def test_frame_round_trips_through_the_reader() -> None:
    line = encode("ENROLL", 7, {"agent_id": "branch-1", "replace": False})
    assert line.startswith(b"@IS1 ENROLL 7 ") and line.endswith(b"\r\n")
    assert Reader().feed(line) == [Frame("ENROLL", 7, {"agent_id": "branch-1", "replace": False})]


def test_frames_split_at_every_byte_are_reassembled() -> None:
    lines = [encode("HELLO", i, {"host_time_ns": i * 10**9}) for i in range(3)]
    reader = Reader()
    got = [frame for byte in b"".join(lines) for frame in reader.feed(bytes([byte]))]
    assert [f.seq for f in got] == [0, 1, 2]


def test_console_noise_around_frames_is_ignored_and_counted() -> None:
    reader = Reader()
    stream = (
        b"[   12.3] usb 1-1: new device\r\n"
        + b"login: "  # a prompt without a line end, then a frame on the same line
        + encode("HELLO", 1, {})
        + b"\r\n\r\nhelp\n"
        + encode("HELLO", 2, {})
    )
    assert [f.seq for f in reader.feed(stream)] == [1, 2]
    assert reader.noise_lines == 2
    assert reader.corrupt == 0


@pytest.mark.parametrize("damage", ["flip", "drop", "insert"])
def test_a_damaged_frame_is_dropped_and_the_next_one_still_arrives(damage: str) -> None:
    first = bytearray(encode("INSTALL", 5, {"certificate": "x" * 300, "ca": "y"}))
    i = len(first) // 2
    if damage == "flip":
        first[i] ^= 0x01
    elif damage == "drop":
        del first[i]
    else:
        first.insert(i, ord("Q"))
    reader = Reader()
    frames = reader.feed(bytes(first) + encode("INSTALL", 5, {"certificate": "x", "ca": "y"}))
    assert [(f.kind, f.seq, f.body["certificate"]) for f in frames] == [("INSTALL", 5, "x")]
    assert reader.corrupt == 1


def test_random_damage_never_yields_a_frame_that_was_not_sent() -> None:
    rng = random.Random(11)
    sent = [encode("CSR", i, {"csr": "-----BEGIN" + "A" * rng.randrange(50)}) for i in range(200)]
    reader = Reader()
    got: list[Frame] = []
    for line in sent:
        raw = bytearray(line)
        for _ in range(rng.randrange(0, 3)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        got += reader.feed(bytes(raw))
    originals = {(f.kind, f.seq, str(f.body)) for f in (decode_line(x.rstrip()) for x in sent) if f}
    assert got, "some frames survive light damage"
    assert all((f.kind, f.seq, str(f.body)) in originals for f in got)


def test_an_overlong_run_is_dropped_up_to_the_next_line_end() -> None:
    reader = Reader()
    assert reader.feed(b"@IS1 " + b"A" * (MAX_LINE + 10)) == []
    assert reader.feed(b"B" * 100 + b"\n" + encode("HELLO", 9, {})) == [Frame("HELLO", 9, {})]
    assert reader.overlong == 1


@pytest.mark.parametrize(
    "line",
    [
        b"@IS1 HELLO 1 e30=",  # three fields
        b"@IS1 SHELL 1 e30= 00000000",  # unknown kind (and wrong CRC)
        b"@IS1 HELLO -1 e30= 00000000",
        b"@IS1 HELLO x e30= 00000000",
        b"@IS1 HELLO 1 !!!! 00000000",
    ],
)
def test_malformed_lines_are_not_frames(line: bytes) -> None:
    assert decode_line(line) is None


def test_valid_crc_over_bad_content_is_still_refused() -> None:
    import zlib

    for text in (b"SHELL 1 e30=", b"HELLO 1 WzFd", b"HELLO 99999999999 e30="):  # e30= is {}
        line = b"@IS1 " + text + b" " + f"{zlib.crc32(text):08x}".encode()
        assert decode_line(line) is None, text


def test_encode_refuses_what_decode_would() -> None:
    with pytest.raises(ValueError, match="kind"):
        encode("SHELL", 1, {})
    with pytest.raises(ValueError, match="range"):
        encode("HELLO", -1, {})
    with pytest.raises(ValueError, match="exceeds"):
        encode("INSTALL", 1, {"certificate": "x" * MAX_LINE})
