"""The agent's real sources: the mirror-port ring metered into flows, and netlink counters.

Both are thin adapters from appliance.capture to the agent's FlowSource / CounterSource
contracts (runtime.py). The ring's kernel counters are read only on the pipeline thread (reading
PACKET_STATISTICS resets it); /metrics gets the last values read.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from appliance.agent.health import CaptureCounts
from appliance.capture.config import CaptureConfig
from appliance.capture.counters import CountersPoller, NetlinkSource
from appliance.capture.flows import FlowBatch, to_flow_event
from appliance.capture.ring import PacketRing, open_capture
from appliance.capture.source import LiveMeter
from appliance.wire import FlowEvent, InterfaceCounters

log = logging.getLogger(__name__)


class LiveFlowSource:
    """The mirror port's ring, metered; poll() returns flows that ended."""

    def __init__(
        self,
        config: CaptureConfig,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.interface = config.interface
        self.ring: PacketRing = open_capture(config, config.netns or None)
        self.live = LiveMeter(self.ring, config.meter)
        self._clock_ns = clock_ns
        self._packets = 0
        self._drops = 0
        self._own_reported = 0

    def _events(self, batch: FlowBatch) -> list[FlowEvent]:
        return [to_flow_event(rec, self.interface) for rec in batch.records()]

    def poll(self, timeout_s: float) -> Sequence[FlowEvent]:
        out: list[FlowEvent] = []
        for batch in self.live.step(self._clock_ns(), timeout_s):
            out.extend(self._events(batch))
        self._report_own_frames()
        return out

    def _report_own_frames(self) -> None:
        """One warning when the box starts transmitting on its mirror port (and again, with the
        total, at each tenfold): a tap must be silent there, and this says it is not."""
        own = self.ring.own_frames
        if own and own >= 10 * self._own_reported:
            log.warning(
                "the box transmitted %d frames on its mirror port %s (counted, not metered): "
                "bring it up receive-only (docs/IMAGE.md, Mirror ports)",
                own,
                self.interface,
            )
            self._own_reported = max(own, 1)

    def kernel_counts(self) -> tuple[int, int]:
        """(packets, drops) from the kernel, accumulated; pipeline thread only."""
        self._packets, self._drops = self.ring.counts()
        return self._packets, self._drops

    def capture_counts(self) -> list[CaptureCounts]:
        """The mirror port's kernel counters and own frames, for a health sample; pipeline
        thread only (it reads PACKET_STATISTICS)."""
        packets, drops = self.kernel_counts()
        return [CaptureCounts(self.interface, packets, drops, self.ring.own_frames)]

    def close(self) -> Sequence[FlowEvent]:
        flows = self._events(self.live.close())
        self.kernel_counts()
        self.ring.close()
        return flows

    def stats(self) -> dict[str, float]:
        m = self.live.meter.stats
        return {
            "kernel_packets": float(self._packets),
            "kernel_drops": float(self._drops),
            "own_frames": float(self.ring.own_frames),
            "packets_metered": float(m.packets),
            "bytes_metered": float(m.bytes),
            "flows_started": float(m.flows_started),
            "flows_evicted": float(m.evicted),
            "flows_active": float(self.live.meter.active_flows),
        }


class NetlinkCounters:
    """Interface counters over netlink, with the capture ring's kernel counters attached."""

    def __init__(
        self,
        config: CaptureConfig,
        kernel_counts: Callable[[], tuple[int, int]] | None,
    ) -> None:
        self.poller = CountersPoller(
            NetlinkSource(config.netns or None),
            config.counters_interfaces,
            capture_stats=kernel_counts,
        )

    def sample(self) -> InterfaceCounters:
        return self.poller.poll().to_wire()
