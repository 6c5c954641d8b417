"""Scripted capture sources with the agent's FlowSource / CounterSource contracts."""

from __future__ import annotations

import time
from collections.abc import Sequence

from appliance.agent.health import CaptureCounts
from appliance.wire import FlowEvent, InterfaceCounters, InterfaceStats


class ScriptedFlows:
    """Hands out `ended` flows in chunks, then holds `open_flows` until close()."""

    def __init__(self, ended: list[FlowEvent], open_flows: list[FlowEvent], chunk: int = 50):
        self.ended = list(ended)
        self.open_flows = list(open_flows)
        self.chunk = chunk
        self.closed = False

    def poll(self, timeout_s: float) -> Sequence[FlowEvent]:
        if not self.ended:
            time.sleep(min(timeout_s, 0.01))
            return []
        out, self.ended = self.ended[: self.chunk], self.ended[self.chunk :]
        return out

    def close(self) -> Sequence[FlowEvent]:
        self.closed = True
        for f in self.open_flows:
            f.end_reason = FlowEvent.SHUTDOWN
        return self.open_flows

    def stats(self) -> dict[str, float]:
        return {"packets": 10.0, "kernel_drops": 0.0, "flows_active": float(len(self.open_flows))}

    def capture_counts(self) -> Sequence[CaptureCounts]:
        return [CaptureCounts("mirror0", packets=10, drops=0, own_frames=0)]


class FixedCounters:
    def sample(self) -> InterfaceCounters:
        return InterfaceCounters(
            sample_ns=time.time_ns(), interfaces=[InterfaceStats(ifname="mirror0", rx_bytes=1)]
        )
