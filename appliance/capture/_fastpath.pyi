from typing import Any

#: Bytes per table slot of Meter and meter_json: the flow and its index entries.
SLOT_BYTES: int

# Buffers: anything with the buffer protocol (bytearray, numpy arrays).
def walk_le(buf: Any, pos: int, end: int, limit: int, out: Any, /) -> tuple[int, int]: ...
def flows_json(columns: tuple[Any, ...], /) -> bytes: ...
def decode(
    data: Any,
    offsets: Any,
    caplen: Any,
    ts_ns: Any,
    vlan: Any,
    linktype: int,
    columns: tuple[Any, ...],
    fast: Any,
    slow: Any,
    non_ip: Any,
    /,
) -> tuple[int, int, int]: ...
def meter_json(
    path: str,
    fd: int,
    idle_ns: int,
    active_ns: int,
    linger_ns: int,
    max_flows: int,
    /,
) -> dict[str, Any] | None: ...
def native_reads(path: str, /) -> bool: ...

class Meter:
    """meter_json's decoder and flow table for FrameBatches (source.CompiledMeter)."""

    active_flows: int
    def __init__(self, idle_ns: int, active_ns: int, linger_ns: int, max_flows: int) -> None: ...
    def add(
        self, data: Any, offsets: Any, caplen: Any, ts_ns: Any, vlan: Any, linktype: int, /
    ) -> int: ...
    def expire(self, now_ns: int, /) -> int: ...
    def flush(self) -> int: ...
    def rebase(self, before_ns: int, delta_ns: int, /) -> None: ...
    def take(self, columns: tuple[Any, ...], /) -> int: ...
    def stats(self) -> dict[str, Any]: ...
    def oldest_open(self) -> int | None: ...
