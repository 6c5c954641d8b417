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

from appliance.capture.config import MeterConfig
from appliance.capture.decode import FrameBatch
from appliance.capture.flows import FlowRecord
from appliance.capture.offline import OfflineSummary, meter_pcap
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
        flows, summary = meter_pcap(path, MeterConfig(**cfg), batch_size=batch_size)
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
