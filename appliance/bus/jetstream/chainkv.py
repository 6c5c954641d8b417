"""A chain's runs (appliance/bus/chain.py) as the value of a key-value entry.

Layout: a version byte (1), then per run, lowest first: lo (8 bytes, big-endian), hi (8),
the length of lo_prev (1 byte: 0 or 64), lo_prev, the length of hi_sig (1), hi_sig. A chain of
MAX_RUNS runs is at most ~134 KB, under NATS's default 1 MB message limit. Anything else is a
ValueError: a value this code did not write.
"""

from __future__ import annotations

import struct

from appliance.bus.chain import Chain, Run

VERSION = 1
_HEAD = struct.Struct(">QQ")


def encode(chain: Chain) -> bytes:
    """The entry value of a chain (its runs only: gaps are the store consumer's to report)."""
    out = bytearray([VERSION])
    for r in chain.runs:
        out += _HEAD.pack(r.lo, r.hi)
        out += bytes([len(r.lo_prev)]) + r.lo_prev + bytes([len(r.hi_sig)]) + r.hi_sig
    return bytes(out)


def decode(value: bytes) -> Chain:
    """The chain of an entry value; ValueError when it is not one."""
    if not value or value[0] != VERSION:
        raise ValueError("chain entry: unknown version")
    runs: list[Run] = []
    i = 1
    try:
        while i < len(value):
            lo, hi = _HEAD.unpack_from(value, i)
            i += _HEAD.size
            n = value[i]
            lo_prev = value[i + 1 : i + 1 + n]
            i += 1 + n
            m = value[i]
            hi_sig = value[i + 1 : i + 1 + m]
            i += 1 + m
            if len(lo_prev) != n or len(hi_sig) != m or lo > hi:
                raise ValueError("chain entry: truncated or inconsistent run")
            runs.append(Run(lo, bytes(lo_prev), hi, bytes(hi_sig)))
    except (struct.error, IndexError):
        raise ValueError("chain entry: truncated") from None
    return Chain(runs)
