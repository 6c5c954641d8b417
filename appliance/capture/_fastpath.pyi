from typing import Any

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
