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

import numpy as np

from appliance.capture.config import MeterConfig
from appliance.capture.decode import Decoder, FrameBatch, PacketColumns
from appliance.capture.flows import FlowBatch
from appliance.capture.meter import FlowMeter

#: Clock steps a live meter remembers: the ring holds a few seconds of packets at most, and
#: the agent steps at most once a minute.
_KEPT_STEPS = 4


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
        self._steps: list[tuple[int, int]] = []  # (before_ns, delta_ns), oldest first

    def rebase(self, before_ns: int, delta_ns: int) -> None:
        """The clock stepped forward by delta_ns when it read before_ns (agent.clock): the
        open flows move with it, and so does every packet stamped before the step that the
        ring still holds. Call it before step() is given a time read after the step."""
        self.meter.rebase(before_ns, delta_ns)
        self._steps = [*self._steps[-(_KEPT_STEPS - 1) :], (before_ns, delta_ns)]

    def _on_current_clock(self, pk: PacketColumns) -> PacketColumns:
        for before, delta in self._steps:  # a packet from before several steps takes each
            ts = pk.ts_ns
            old = ts < before
            if old.any():
                pk.ts_ns = np.where(old, ts + delta, ts)
        return pk

    def step(self, now_ns: int, timeout_s: float = 0.5) -> Iterator[FlowBatch]:
        """Meter the ready batches; yield every non-empty FlowBatch of ended flows."""
        for batch in self.source.batches(timeout_s):
            ended = self.meter.add(self._on_current_clock(self.decoder.decode(batch)))
            if len(ended):
                yield ended
        expired = self.meter.expire(now_ns - self.lag_ns)
        if len(expired):
            yield expired

    def close(self) -> FlowBatch:
        """End every open flow (SHUTDOWN, or the reason already due)."""
        return self.meter.flush()
