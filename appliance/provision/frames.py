"""The provisioning frames exchanged over the serial console.

Format (one frame per line, printable ASCII, so a terminal shows it and console noise cannot
break it):

    @IS1 KIND SEQ PAYLOAD CRC\\r\\n

- `@IS1 ` opens a frame. Anything before it on the line (an echo, a kernel message without its
  line end) and every line without it are ignored: that is how the reader resynchronises.
- KIND is one of KINDS; SEQ a decimal 0..2^31-1 chosen by the host, echoed by the device's
  reply; PAYLOAD the standard base64 of a UTF-8 JSON object; CRC the CRC-32 (zlib) of the text
  `KIND SEQ PAYLOAD`, 8 lowercase hex digits.
- A line is at most MAX_LINE bytes. A longer run without a line end is dropped up to the next
  line end; a frame whose CRC, base64, JSON or kind is wrong is dropped and counted. Nothing is
  ever acknowledged negatively: the host retransmits the same SEQ when no reply came in time,
  and the device answers a retransmission with its cached reply, without acting twice.
- CR is optional on input; output always ends with CR LF.
"""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from dataclasses import dataclass, field
from typing import Any

MAGIC = b"@IS1 "
MAX_LINE = 16384
MAX_SEQ = 2**31 - 1
#: host -> device: HELLO, ENROLL, INSTALL; device -> host: INFO, CSR, DONE, ERROR
KINDS = frozenset({"HELLO", "INFO", "ENROLL", "CSR", "INSTALL", "DONE", "ERROR"})


@dataclass(frozen=True)
class Frame:
    """One decoded frame."""

    kind: str
    seq: int
    body: dict[str, Any]


def encode(kind: str, seq: int, body: dict[str, Any]) -> bytes:
    """The line for one frame (ValueError when it would break a limit)."""
    if kind not in KINDS:
        raise ValueError(f"unknown frame kind {kind!r}")
    if not 0 <= seq <= MAX_SEQ:
        raise ValueError(f"frame sequence {seq} out of range")
    payload = base64.b64encode(json.dumps(body, separators=(",", ":")).encode()).decode()
    text = f"{kind} {seq} {payload}"
    line = MAGIC + f"{text} {zlib.crc32(text.encode()):08x}\r\n".encode()
    if len(line) > MAX_LINE:
        raise ValueError(f"frame of {len(line)} bytes exceeds {MAX_LINE}")
    return line


def decode_line(line: bytes) -> Frame | None:
    """The frame in one line (without its line end), or None when it holds no valid frame."""
    start = line.rfind(MAGIC)
    if start < 0:
        return None
    parts = line[start + len(MAGIC) :].rstrip(b"\r").split(b" ")
    if len(parts) != 4:
        return None
    kind_b, seq_b, payload_b, crc_b = parts
    text = b" ".join((kind_b, seq_b, payload_b))
    try:
        if int(crc_b, 16) != zlib.crc32(text) or len(crc_b) != 8:
            return None
        kind = kind_b.decode("ascii")
        seq = int(seq_b)
        body = json.loads(base64.b64decode(payload_b, validate=True))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    if kind not in KINDS or not 0 <= seq <= MAX_SEQ or not isinstance(body, dict):
        return None
    return Frame(kind, seq, body)


@dataclass
class Reader:
    """Splits a byte stream into frames (feed what arrived, get the frames it completed).

    `noise_lines` counts lines that held no frame marker (a human typing, boot messages),
    `corrupt` the lines that had the marker but failed a check, `overlong` the runs dropped
    for exceeding MAX_LINE.
    """

    noise_lines: int = 0
    corrupt: int = 0
    overlong: int = 0
    _buf: bytearray = field(default_factory=bytearray)
    _skipping: bool = False

    def feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        self._buf += data
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > MAX_LINE:
                    self._buf.clear()
                    if not self._skipping:
                        self.overlong += 1
                    self._skipping = True
                return frames
            line = bytes(self._buf[:end])
            del self._buf[: end + 1]
            if self._skipping:  # the tail of an overlong run
                self._skipping = False
                continue
            frame = decode_line(line)
            if frame is not None:
                frames.append(frame)
            elif MAGIC in line:
                self.corrupt += 1
            elif line.strip():
                self.noise_lines += 1
