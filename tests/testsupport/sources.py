"""Scripted capture sources with the agent's FlowSource / CounterSource contracts."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from appliance.agent.clock import ClockFollower
from appliance.agent.health import CaptureCounts
from appliance.wire import FlowEvent, InterfaceCounters, InterfaceStats


class ScriptedFlows:
    """Hands out `ended` flows in chunks, then holds `open_flows` until close()."""

    def __init__(self, ended: list[FlowEvent], open_flows: list[FlowEvent], chunk: int = 50):
        self.ended = list(ended)
        self.open_flows = list(open_flows)
        self.chunk = chunk
        self.closed = False

    def follow_clock(self, follower: ClockFollower) -> None:
        pass  # scripted flows carry their own times

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


class PcapFlows:
    """The agent's FlowSource over a capture file: each poll() meters the file on to the next
    flows it ends (appliance.capture.offline, the capture's own clock); at the end of the file
    every open flow has ended (SHUTDOWN), so close() has nothing left."""

    def __init__(self, path: Path, interface: str = "eth1") -> None:
        from appliance.capture.offline import OfflineSummary, iter_pcap_flows

        self.interface = interface
        self._items = iter_pcap_flows(path)
        self._summary_type = OfflineSummary
        self.summary: OfflineSummary | None = None
        self.flows = 0

    def follow_clock(self, follower: ClockFollower) -> None:
        pass  # the capture file's own clock drives the meter

    def poll(self, timeout_s: float) -> Sequence[FlowEvent]:
        from appliance.capture.flows import to_flow_event

        if self.summary is not None:
            time.sleep(min(timeout_s, 0.01))
            return []
        item = next(self._items)
        if isinstance(item, self._summary_type):
            self.summary = item
            return []
        events = [to_flow_event(r, self.interface) for r in item.records()]
        self.flows += len(events)
        return events

    def close(self) -> Sequence[FlowEvent]:
        return []

    def stats(self) -> dict[str, float]:
        frames = self.summary.frames if self.summary is not None else 0
        return {"packets": float(frames), "kernel_drops": 0.0, "flows_active": 0.0}

    def capture_counts(self) -> Sequence[CaptureCounts]:
        frames = self.summary.frames if self.summary is not None else 0
        return [CaptureCounts(self.interface, packets=frames, drops=0, own_frames=0)]
