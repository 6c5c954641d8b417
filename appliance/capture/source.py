"""The seam the agent wires: a frame source, and a live metering loop around it.

    source = PacketRing(RingOptions(...))            # or PcapReader(path) for replay
    live = LiveMeter(source, MeterConfig(...))
    while running:
        for flows in live.step(now_ns=time.time_ns()):   # FlowBatches ended this step
            seal(flows.records())
    seal(live.close().records())                     # SHUTDOWN flush

Ownership: LiveMeter owns the decoder and the meter; the caller owns the source (and closes
it after LiveMeter.close). Nothing here blocks longer than the source's poll timeout.

Two meters, one set of rules: where _fastpath is built (`make venv`), LiveMeter meters with
CompiledMeter, the C decoder and flow table `flows --pcap --json` uses (_fastpath.Meter), packet
by packet; otherwise with Decoder + FlowMeter (numpy). Their records are the same except when
the table overflows (docs/FLOWS.md "The native meter"): the per-packet table evicts the least
recently active flow for each new one, the numpy one per batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import numpy as np

from appliance.capture.config import MeterConfig
from appliance.capture.decode import Decoder, DecodeStats, FrameBatch, PacketColumns
from appliance.capture.flows import FLOW_COLUMNS, FlowBatch
from appliance.capture.meter import FlowMeter, MeterStats

try:
    from appliance.capture import _fastpath
except ImportError:  # a checkout without `make venv`: the numpy meter
    _fastpath = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

#: A log of forward clock steps: steps(seen) -> the (before_ns, delta_ns) after the first seen.
StepLog = Callable[[int], Sequence[tuple[int, int]]]

#: Clock steps a live meter remembers: the ring holds a few seconds of packets at most, and
#: the agent steps at most once a minute.
_KEPT_STEPS = 4


class FrameSource(Protocol):
    """Something that hands out FrameBatches (the ring, a pcap reader).

    Contract: a batch's buffer is valid until the next batch is requested; `batches` returns
    (ends the iteration) when nothing is ready within timeout_s, so the caller keeps control.
    """

    def batches(self, timeout_s: float = 0.5) -> Iterator[FrameBatch]: ...


#: The counters of _fastpath.Meter.stats() that make MeterStats and DecodeStats.
_METER_STATS = ("packets", "bytes", "flows_started", "flows_ended", "evicted", "peak_flows")
_DECODE_STATS = ("frames", "metered", "slow_path", "fragments", "malformed", "non_ip")


class CompiledMeter:
    """Decoder + FlowMeter in one compiled object (_fastpath.Meter): FrameBatches in, ended
    flows out as FlowBatches, with FlowMeter's rules applied packet by packet.

    Why: at 2,000 packets/s FlowMeter.add's fixed cost per call (a few hundred numpy
    operations per ring block) was the largest part of the agent's CPU; metering a block here
    costs ~5x less (docs/PERFORMANCE.md, "The compiled meter on the live path"). The decoder's state
    (the fragment memory) lives in the object too. rebase() moves the open flows, as
    FlowMeter.rebase, and also remembers the step (the last _KEPT_STEPS): a frame stamped
    before it is metered at its stamp plus the step, which LiveMeter does for FlowMeter.
    Memory is bounded by max_flows: preallocated slots and index, plus the flows ended by one
    call until they are taken.
    """

    def __init__(self, config: MeterConfig | None = None) -> None:
        if _fastpath is None:
            raise RuntimeError("the compiled meter is not built: run `make venv`")
        self.config = config or MeterConfig()
        c = self.config
        self._m = _fastpath.Meter(
            int(c.idle_timeout_s * 1e9),
            int(c.active_timeout_s * 1e9),
            int(c.close_linger_s * 1e9),
            c.max_flows,
        )

    def add(self, batch: FrameBatch) -> FlowBatch:
        """Decode and meter a batch of frames (arrival order); returns the flows it ended."""
        return self._take(self._m.add(*batch.native_args()))

    def expire(self, now_ns: int) -> FlowBatch:
        """End every flow whose idle, close-linger or active time has passed at now_ns."""
        return self._take(self._m.expire(now_ns))

    def flush(self) -> FlowBatch:
        """End every open flow (FlowMeter.flush's reasons)."""
        return self._take(self._m.flush())

    def rebase(self, before_ns: int, delta_ns: int) -> None:
        """The clock stepped forward by delta_ns at before_ns (LiveMeter.rebase)."""
        self._m.rebase(before_ns, delta_ns)

    @property
    def active_flows(self) -> int:
        """Open flows in the table (never more than max_flows)."""
        return int(self._m.active_flows)

    @property
    def stats(self) -> MeterStats:
        """FlowMeter's counters (no hash collisions or slow groups: the table keys are whole)."""
        s = self._m.stats()
        return MeterStats(**{k: s[k] for k in _METER_STATS})

    @property
    def decode_stats(self) -> DecodeStats:
        """Decoder's counters (slow_path: frames the per-frame rules read)."""
        s = self._m.stats()
        return DecodeStats(**{k: s[k] for k in _DECODE_STATS})

    @property
    def clock_ns(self) -> int:
        """The latest packet time seen; 0 before the first packet."""
        return int(self._m.stats()["clock_ns"])

    @property
    def oldest_open_ns(self) -> int | None:
        """The earliest last-packet time of the open flows (None when none is open)."""
        return self._m.oldest_open()

    def _take(self, held: int) -> FlowBatch:
        if not held:
            return FlowBatch.empty()
        cols = {k: np.empty(held, dtype=t) for k, t in FLOW_COLUMNS.items()}
        self._m.take(tuple(cols.values()))
        return FlowBatch(cols)


class LiveMeter:
    """Source -> CompiledMeter (or Decoder -> FlowMeter), with expiry driven by the caller's
    clock.

    step(now_ns) meters whatever the source has ready, then expires at now_ns - lag_ns: a
    block the kernel has not handed over yet holds packets up to the ring's retire timeout
    old, so expiry stays `lag_ns` (default 1 s, keep it above retire_timeout_ms) behind the
    clock and never ends a flow that such a packet would extend (meter docstring). It expires
    at most once per `expire_every_ns` (default 1 s): when expiry runs never changes a record,
    only how soon it is emitted, and each run costs a pass over the open flows, which at low
    packet rates was a large part of the agent's CPU.

    Clock steps: when the caller's clock can step forward (the agent following the bus's time),
    clock_steps tells of each step; before every batch the meter applies the new ones (rebase),
    so a flow open across a step, or a packet stamped before it and read after, stays on one
    clock. now_ns given to step() must be read so that every step before it is already logged.
    """

    def __init__(
        self,
        source: FrameSource,
        config: MeterConfig | None = None,
        lag_ns: int = 1_000_000_000,
        clock_steps: StepLog | None = None,
        expire_every_ns: int = 1_000_000_000,
        compiled: bool = True,
    ) -> None:
        """compiled=False keeps Decoder + FlowMeter where CompiledMeter is built (the tests
        compare both)."""
        self.source = source
        self.decoder = Decoder()
        self.meter: FlowMeter | CompiledMeter = (
            CompiledMeter(config) if compiled and _fastpath is not None else FlowMeter(config)
        )
        self.lag_ns = lag_ns
        self.expire_every_ns = expire_every_ns
        self._expired_at: int | None = None  # the time the last expire ran at
        self.clock_steps = clock_steps
        self._seen = 0  # steps of clock_steps already applied
        self._steps: list[tuple[int, int]] = []  # (before_ns, delta_ns), oldest first

    def rebase(self, before_ns: int, delta_ns: int) -> None:
        """The clock stepped forward by delta_ns when it read before_ns (agent.clock): the
        open flows move with it, and so does every packet stamped before the step that the
        ring still holds."""
        self.meter.rebase(before_ns, delta_ns)  # CompiledMeter remembers the step itself
        self._steps = [*self._steps[-(_KEPT_STEPS - 1) :], (before_ns, delta_ns)]

    def skip_steps(self, count: int) -> None:
        """The first count steps of clock_steps happened before this meter saw a packet."""
        self._seen = count

    def _catch_up(self) -> None:
        """Apply the steps clock_steps logged since the last look. Called before every batch:
        a batch can hold packets stamped after a step that happened while it was read."""
        if self.clock_steps is None:
            return
        for before, delta in self.clock_steps(self._seen):
            log.info("clock stepped %.1f s: the open flows follow it", delta / 1e9)
            self.rebase(before, delta)
            self._seen += 1

    def _on_current_clock(self, pk: PacketColumns) -> PacketColumns:
        for before, delta in self._steps:  # a packet from before several steps takes each
            ts = pk.ts_ns
            old = ts < before
            if old.any():
                pk.ts_ns = np.where(old, ts + delta, ts)
        return pk

    def step(self, now_ns: int, timeout_s: float = 0.5) -> Iterator[FlowBatch]:
        """Meter the ready batches; yield every non-empty FlowBatch of ended flows."""
        self._catch_up()
        for batch in self.source.batches(timeout_s):
            self._catch_up()
            if isinstance(self.meter, CompiledMeter):
                ended = self.meter.add(batch)
            else:
                ended = self.meter.add(self._on_current_clock(self.decoder.decode(batch)))
            if len(ended):
                yield ended
        due = now_ns - self.lag_ns
        if self._expired_at is None or due - self._expired_at >= self.expire_every_ns:
            self._expired_at = due
            expired = self.meter.expire(due)
            if len(expired):
                yield expired

    @property
    def compiled(self) -> bool:
        """Whether this meter is the compiled one (CompiledMeter)."""
        return isinstance(self.meter, CompiledMeter)

    @property
    def decode_stats(self) -> DecodeStats:
        """What the decoder saw (DecodeStats), whichever meter runs."""
        if isinstance(self.meter, CompiledMeter):
            return self.meter.decode_stats
        return self.decoder.stats

    def close(self) -> FlowBatch:
        """End every open flow (SHUTDOWN, or the reason already due)."""
        return self.meter.flush()
