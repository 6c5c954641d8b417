"""The agent's real sources: the mirror ports' rings metered into flows, and netlink counters.

Both are thin adapters from appliance.capture to the agent's FlowSource / CounterSource
contracts (runtime.py). Every configured mirror port (`capture.interface: eth1,eth2`) has a
ring and a meter of its own; its flows carry its name (FlowEvent.interface) and its kernel
counters and own frames are reported per port in the health records (CaptureCounts). The
rings' kernel counters are read only on the pipeline thread (reading PACKET_STATISTICS resets
it); /metrics gets the last values read, summed over the ports.
"""

from __future__ import annotations

import logging
import select
import time
from collections.abc import Callable, Sequence

from appliance.agent.clock import ClockFollower
from appliance.agent.health import CaptureCounts
from appliance.capture.config import CaptureConfig
from appliance.capture.counters import CountersPoller, NetlinkSource
from appliance.capture.flows import FlowBatch, to_flow_event
from appliance.capture.ring import PacketRing, open_capture
from appliance.capture.source import LiveMeter
from appliance.wire import FlowEvent, InterfaceCounters

log = logging.getLogger(__name__)


class _MirrorPort:
    """One mirror port: its ring, metered on its own (a flow seen on two ports is two flows,
    each labelled with its port, as NetFlow exporters report per interface)."""

    def __init__(self, config: CaptureConfig, interface: str) -> None:
        self.interface = interface
        self.ring: PacketRing = open_capture(config, config.netns or None, interface)
        self.live = LiveMeter(self.ring, config.meter)
        self.packets = 0
        self.drops = 0
        self._own_reported = 0

    def events(self, batch: FlowBatch) -> list[FlowEvent]:
        return [to_flow_event(rec, self.interface) for rec in batch.records()]

    def report_own_frames(self) -> None:
        """One warning when the box starts transmitting on this mirror port (and again, with
        the total, at each tenfold): a tap must be silent there, and this says it is not."""
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
        self.packets, self.drops = self.ring.counts()
        return self.packets, self.drops


class LiveFlowSource:
    """Every configured mirror port's ring, each metered; poll() returns flows that ended,
    each labelled with the port it was seen on (FlowEvent.interface)."""

    def __init__(
        self,
        config: CaptureConfig,
        *,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.interfaces = config.interfaces
        self.ports: list[_MirrorPort] = []
        try:
            for name in self.interfaces:
                self.ports.append(_MirrorPort(config, name))
        except BaseException:
            for port in self.ports:
                port.ring.close()
            raise
        self._clock_ns = clock_ns
        self._poll = select.poll()
        for port in self.ports:
            self._poll.register(port.ring.fileno(), select.POLLIN | select.POLLERR)

    @property
    def interface(self) -> str:
        """The mirror ports, comma-separated (as configured)."""
        return ",".join(self.interfaces)

    def follow_clock(self, follower: ClockFollower) -> None:
        """Read the time through the follower; every meter applies its steps (rebase)."""
        self._clock_ns = follower.now

        def steps(seen: int) -> list[tuple[int, int]]:
            return [(s.before_ns, s.delta_ns) for s in follower.steps_since(seen)]

        for port in self.ports:
            port.live.clock_steps = steps
            port.live.skip_steps(len(follower.step_log))

    def poll(self, timeout_s: float) -> Sequence[FlowEvent]:
        """Wait up to timeout_s for any port's ring, then meter what every port has ready."""
        if len(self.ports) > 1:
            self._poll.poll(int(timeout_s * 1000))
            timeout_s = 0.0  # each port's own wait: the one above was for all of them
        out: list[FlowEvent] = []
        now = self._clock_ns()
        for port in self.ports:
            for batch in port.live.step(now, timeout_s):
                out.extend(port.events(batch))
            port.report_own_frames()
        return out

    def kernel_counts(self) -> tuple[int, int]:
        """(packets, drops) from the kernel over every port, accumulated; pipeline thread only."""
        counts = [port.kernel_counts() for port in self.ports]
        return sum(c[0] for c in counts), sum(c[1] for c in counts)

    def capture_counts(self) -> list[CaptureCounts]:
        """Each mirror port's kernel counters and own frames, for a health sample; pipeline
        thread only (it reads PACKET_STATISTICS)."""
        out = []
        for port in self.ports:
            packets, drops = port.kernel_counts()
            out.append(CaptureCounts(port.interface, packets, drops, port.ring.own_frames))
        return out

    def close(self) -> Sequence[FlowEvent]:
        flows: list[FlowEvent] = []
        for port in self.ports:
            flows.extend(port.events(port.live.close()))
            port.kernel_counts()
            port.ring.close()
        return flows

    def stats(self) -> dict[str, float]:
        """Totals over every port (per port: capture_counts, in the health records)."""
        meters = [port.live.meter for port in self.ports]
        return {
            "kernel_packets": float(sum(p.packets for p in self.ports)),
            "kernel_drops": float(sum(p.drops for p in self.ports)),
            "own_frames": float(sum(p.ring.own_frames for p in self.ports)),
            "packets_metered": float(sum(m.stats.packets for m in meters)),
            "bytes_metered": float(sum(m.stats.bytes for m in meters)),
            "flows_started": float(sum(m.stats.flows_started for m in meters)),
            "flows_evicted": float(sum(m.stats.evicted for m in meters)),
            "flows_active": float(sum(m.active_flows for m in meters)),
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
