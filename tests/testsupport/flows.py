"""Flows the bus accepts: plausible values, ended a minute ago (inside the bus's time window)."""

from __future__ import annotations

import time

from appliance.wire import FlowEvent


def recent_flow(i: int = 0, proto: str = "TCP", dst_port: int = 443) -> FlowEvent:
    """Flow number i between two documentation addresses, ended a minute ago."""
    end_ms = time.time_ns() // 1_000_000 - 60_000
    return FlowEvent(
        src_ip="192.0.2.10", dst_ip="198.51.100.20", src_port=40000 + i % 20000,
        dst_port=dst_port, proto=proto, bytes_tx=1000 + i, bytes_rx=2000, packets_tx=3,
        packets_rx=4, start_time=end_ms - 1000, end_time=end_ms,
    )  # fmt: skip
