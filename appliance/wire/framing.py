"""Building a PublishBatchRequest from already-serialized envelopes, without parsing them.

A PublishBatchRequest is `repeated Envelope envelopes = 1`; on the wire each element is the tag
byte 0x0A, the element's length as a varint, then the element's bytes. Framing the sealed bytes
this way sends exactly what was signed and stored (a retransmission is byte-identical) and
costs no protobuf work on the sender.
"""

from __future__ import annotations

from collections.abc import Sequence


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def frame_batch(payloads: Sequence[bytes]) -> bytes:
    """PublishBatchRequest bytes holding payloads (serialized Envelopes) as field 1, verbatim."""
    return b"".join(b"\x0a" + _varint(len(p)) + p for p in payloads)
