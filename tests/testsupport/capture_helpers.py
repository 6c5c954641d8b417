"""Helpers for the capture tests: scapy frames -> pcap file -> metered records.

Ground truth in these tests is written by hand from what the packets are (the IP length is
scapy's own `len(pkt[IP])`), never by running the decoder.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from appliance.capture import _fastpath
from appliance.capture.config import MeterConfig
from appliance.capture.decode import FrameBatch
from appliance.capture.flows import FlowRecord
from appliance.capture.offline import OfflineSummary, iter_pcap_ordered, meter_pcap
from appliance.capture.pcap import write_pcap

T0 = 1_790_000_000_000_000_000  # ns
MS = 1_000_000
S = 1_000_000_000


def frame_bytes(pkt: Any) -> bytes:
    """The frame as it is on the wire: Ethernet pads to 60 bytes (not counted as IP bytes)."""
    raw: bytes = pkt.build()
    return raw + bytes(max(0, 60 - len(raw)))


MeterFn = Callable[..., tuple[list[FlowRecord], OfflineSummary]]


@pytest.fixture
def meter_frames(tmp_path: Path) -> MeterFn:
    """meter_frames([(t_offset_ns, scapy_pkt), ...], **MeterConfig fields) -> (records, summary)."""
    counter = [0]

    def run(
        frames: Sequence[tuple[int, Any]], batch_size: int = 16384, **cfg: Any
    ) -> tuple[list[FlowRecord], OfflineSummary]:
        counter[0] += 1
        path = tmp_path / f"cap{counter[0]}.pcap"
        write_pcap(
            path,
            [(T0 + t, p if isinstance(p, bytes) else frame_bytes(p)) for t, p in frames],
        )
        config = MeterConfig(**cfg)
        flows, summary = meter_pcap(path, config, batch_size=batch_size)
        assert_native_matches_numpy(path, config)  # every capture here, both `flows` paths
        return sorted(flows.records(), key=lambda r: (r.start_ns, r.src_ip, r.src_port)), summary

    return run


def eth(**kw: Any) -> Any:
    """An Ethernet header with fixed addresses (scapy would otherwise resolve them: slow)."""
    from scapy.layers.l2 import Ether

    fields = {"src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02", **kw}
    return Ether(**fields)


def frame_batch(frames: list[tuple[int, bytes]]) -> FrameBatch:
    """One FrameBatch of (timestamp, frame bytes), as a ring block hands them over."""
    data = b"".join(f for _, f in frames)
    sizes = np.array([len(f) for _, f in frames], dtype=np.int64)
    return FrameBatch(
        data=np.frombuffer(data, dtype=np.uint8),
        offsets=np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64),
        caplen=sizes,
        ts_ns=np.array([t for t, _ in frames], dtype=np.int64),
    )


class QueuedRing:
    """Hands out the batches queued since the last call; a queued callable is called instead
    (what happens while the ring is read)."""

    def __init__(self) -> None:
        self.queued: list[FrameBatch | Callable[[], object]] = []

    def batches(self, timeout_s: float = 0.5) -> Iterator[FrameBatch]:
        out, self.queued = self.queued, []
        for item in out:
            if isinstance(item, FrameBatch):
                yield item
            else:
                item()


def numpy_flows_json(path: Path, config: MeterConfig) -> tuple[bytes, dict[str, Any]]:
    """`flows --pcap path --json`'s lines as the numpy path writes them, and its summary's
    counts under the names _fastpath.meter_json returns them."""
    lines: list[bytes] = []
    counts: dict[str, Any] = {}
    for item in iter_pcap_ordered(path, config):
        if isinstance(item, OfflineSummary):
            d, m = item.decode, item.meter
            counts = {
                "flows": sum(line.count(b"\n") for line in lines),
                "frames": item.frames,
                "packets": m.packets,
                "bytes": m.bytes,
                "evicted": m.evicted,
                "peak_flows": m.peak_flows,
                "cut_bytes": item.cut_bytes,
                "malformed": d.malformed,
                "fragments": d.fragments,
                "non_ip": dict(d.non_ip),
            }
        else:
            lines.append(item.json_lines())
    return b"".join(lines), counts


def native_flows_json(path: Path, config: MeterConfig) -> tuple[bytes, dict[str, Any] | None]:
    """The same from the native meter (_fastpath.meter_json); None for a file it leaves to
    the numpy path."""
    import tempfile

    ns = [int(v * 1e9) for v in (config.idle_timeout_s, config.active_timeout_s)]
    ns.append(int(config.close_linger_s * 1e9))
    with tempfile.TemporaryFile() as out:
        counts = _fastpath.meter_json(str(path), out.fileno(), *ns, config.max_flows)
        out.seek(0)
        return out.read(), counts


def assert_native_matches_numpy(path: Path, config: MeterConfig) -> dict[str, Any] | None:
    """Both paths of `flows --json` on one capture: byte for byte, and the same summary,
    unless the table overflowed (then the paths evict differently, docs/FLOWS.md: packets
    and bytes are conserved, evictions counted, the table stays within max_flows).
    Returns the native counts (None: a file the native meter leaves to numpy)."""
    text, counts = native_flows_json(path, config)
    want_text, want = numpy_flows_json(path, config)
    if counts is None:
        assert text == b""
        return None
    if want["evicted"] or counts["evicted"]:
        assert_overflow_invariants(text, counts, want, config)
        return counts
    assert counts == want
    assert text == want_text
    return counts


def assert_overflow_invariants(
    text: bytes, counts: dict[str, Any], want: dict[str, Any], config: MeterConfig
) -> None:
    """What the native meter keeps when its table overflows (docs/FLOWS.md)."""
    import json

    rows = [json.loads(line) for line in text.splitlines()]
    same = ("frames", "packets", "bytes", "cut_bytes", "malformed", "fragments", "non_ip")
    assert {k: counts[k] for k in same} == {k: want[k] for k in same}
    assert counts["flows"] == len(rows)
    assert sum(r["packets_tx"] + r["packets_rx"] for r in rows) == counts["packets"]
    assert sum(r["bytes_tx"] + r["bytes_rx"] for r in rows) == counts["bytes"]
    assert sum(r["end_reason"] == "EVICTED" for r in rows) == counts["evicted"]
    assert counts["peak_flows"] <= config.max_flows
    ends = [(r["end_ns"], r["start_ns"]) for r in rows]
    assert ends == sorted(ends)
