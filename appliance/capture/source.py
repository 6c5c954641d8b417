"""The seam the agent wires: a frame source, and a live metering loop around it.

    source = PacketRing(RingOptions(...))            # or PcapReader(path) for replay
    live = LiveMeter(source, MeterConfig(...))
    while running:
        for flows in live.step(now_ns=time.time_ns()):   # FlowBatches ended this step
            seal(flows.records())
    seal(live.close().records())                     # SHUTDOWN flush

Ownership: LiveMeter owns the decoder and the meter; the caller owns the source (and closes
it after LiveMeter.close). Nothing here blocks longer than the source's poll timeout.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from appliance.capture.config import MeterConfig
from appliance.capture.decode import Decoder, FrameBatch
from appliance.capture.flows import FlowBatch
from appliance.capture.meter import FlowMeter


class FrameSource(Protocol):
    """Something that hands out FrameBatches (the ring, a pcap reader).

    Contract: a batch's buffer is valid until the next batch is requested; `batches` returns
    (ends the iteration) when nothing is ready within timeout_s, so the caller keeps control.
    """

    def batches(self, timeout_s: float = 0.5) -> Iterator[FrameBatch]: ...


class LiveMeter:
    """Source -> Decoder -> FlowMeter, with expiry driven by the caller's clock.

    step(now_ns) meters whatever the source has ready, then expires at now_ns - lag_ns: a
    block the kernel has not handed over yet holds packets up to the ring's retire timeout
    old, so expiry stays `lag_ns` (default 1 s, keep it above retire_timeout_ms) behind the
    clock and never ends a flow that such a packet would extend (meter docstring).
    """

    def __init__(
        self, source: FrameSource, config: MeterConfig | None = None, lag_ns: int = 1_000_000_000
    ) -> None:
        self.source = source
        self.decoder = Decoder()
        self.meter = FlowMeter(config)
        self.lag_ns = lag_ns

    def step(self, now_ns: int, timeout_s: float = 0.5) -> Iterator[FlowBatch]:
        """Meter the ready batches; yield every non-empty FlowBatch of ended flows."""
        for batch in self.source.batches(timeout_s):
            ended = self.meter.add(self.decoder.decode(batch))
            if len(ended):
                yield ended
        expired = self.meter.expire(now_ns - self.lag_ns)
        if len(expired):
            yield expired

    def close(self) -> FlowBatch:
        """End every open flow (SHUTDOWN, or the reason already due)."""
        return self.meter.flush()
