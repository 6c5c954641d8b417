"""Interface counters: 64-bit netlink statistics in, InterfaceCounters records out.

Two parts, so that the rules are tested without root:
- `CounterTracker` (pure): fed samples of raw counters, returns `CounterSample`s with deltas.
- `NetlinkSource`: reads IFLA_STATS64 of every link with pyroute2 (optionally inside a named
  network namespace); about 1 ms per call.

The agent runs `CountersPoller.poll()` every capture.counters_interval_s and seals the result
(`to_wire()` gives the InterfaceCounters message, with the ring's accumulated kernel drops).

Delta rules, per interface, identified by (ifindex, name):
- first sample of an interface (new, renamed, re-created): baseline, all deltas 0;
- a counter lower than before: the interface was reset (driver reload, counters cleared):
  the delta is the new value (counted from zero) and `reset` is set, except that a counter
  that was above 2^31 and is now below its old value with the 2^32 sum plausible is taken as
  a 32-bit wrap (drivers that fill the 64-bit fields from 32-bit hardware registers);
- an interface missing from a sample is forgotten; it is a new interface if it comes back.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.wire import InterfaceCounters

COUNTER_FIELDS = (
    "rx_bytes",
    "tx_bytes",
    "rx_packets",
    "tx_packets",
    "rx_errors",
    "tx_errors",
    "rx_dropped",
    "tx_dropped",
)
_WRAP32 = 1 << 32


@dataclass(frozen=True)
class RawStats:
    """One interface's counters as read, cumulative since the interface came up."""

    ifname: str
    ifindex: int
    oper_up: bool
    counters: dict[str, int]  # COUNTER_FIELDS + "multicast"


@dataclass
class InterfaceSample:
    """Counters and deltas of one interface at one sample."""

    ifname: str
    ifindex: int
    oper_up: bool
    counters: dict[str, int]
    deltas: dict[str, int]
    reset: bool = False


@dataclass
class CounterSample:
    """Every watched interface at one time, plus the capture ring's kernel counters."""

    sample_ns: int
    interval_ms: int
    interfaces: list[InterfaceSample] = field(default_factory=list)
    capture_packets: int = 0
    capture_drops: int = 0

    def to_wire(self) -> InterfaceCounters:
        """The wire InterfaceCounters message."""
        from appliance.wire import InterfaceCounters, InterfaceStats

        msg = InterfaceCounters(
            sample_ns=self.sample_ns,
            interval_ms=self.interval_ms,
            capture_packets=self.capture_packets,
            capture_drops=self.capture_drops,
        )
        for s in self.interfaces:
            stats = InterfaceStats(
                ifname=s.ifname,
                ifindex=s.ifindex,
                oper_up=s.oper_up,
                multicast=s.counters.get("multicast", 0),
                reset=s.reset,
                **{k: s.counters.get(k, 0) for k in COUNTER_FIELDS},
                **{f"delta_{k}": s.deltas.get(k, 0) for k in COUNTER_FIELDS},
            )
            msg.interfaces.append(stats)
        return msg


def counter_delta(old: int, new: int) -> tuple[int, bool]:
    """(delta, reset) between two readings of one cumulative counter (module rules)."""
    if new >= old:
        return new - old, False
    if old >= 1 << 31 and old < _WRAP32 and new < old and (new + _WRAP32 - old) < (1 << 31):
        return new + _WRAP32 - old, False  # a 32-bit counter wrapped
    return new, True


class CounterTracker:
    """Turns successive raw samples into deltas (pure; the caller supplies times)."""

    def __init__(self, interfaces: Sequence[str] = ()) -> None:
        self.watch = set(interfaces)
        self._prev: dict[tuple[int, str], dict[str, int]] = {}
        self._prev_ns: int | None = None

    def update(self, sample_ns: int, raws: Iterable[RawStats]) -> CounterSample:
        interval = 0 if self._prev_ns is None else max(sample_ns - self._prev_ns, 0) // 1_000_000
        self._prev_ns = sample_ns
        out = CounterSample(sample_ns=sample_ns, interval_ms=interval)
        seen: dict[tuple[int, str], dict[str, int]] = {}
        for raw in raws:
            if self.watch and raw.ifname not in self.watch:
                continue
            key = (raw.ifindex, raw.ifname)
            prev = self._prev.get(key)
            deltas: dict[str, int] = {}
            reset = False
            for name in COUNTER_FIELDS:
                new = raw.counters.get(name, 0)
                if prev is None:
                    deltas[name] = 0
                else:
                    deltas[name], was_reset = counter_delta(prev.get(name, 0), new)
                    reset |= was_reset
            seen[key] = dict(raw.counters)
            out.interfaces.append(
                InterfaceSample(
                    ifname=raw.ifname,
                    ifindex=raw.ifindex,
                    oper_up=raw.oper_up,
                    counters=dict(raw.counters),
                    deltas=deltas,
                    reset=reset,
                )
            )
        self._prev = seen
        return out


class NetlinkSource:
    """Reads every link's IFLA_STATS64 via pyroute2 (in `netns` when given)."""

    def __init__(self, netns: str | None = None) -> None:
        from pyroute2 import IPRoute, NetNS

        self._ipr = NetNS(netns) if netns else IPRoute()

    def read(self) -> list[RawStats]:
        out: list[RawStats] = []
        for msg in self._ipr.get_links():
            stats = msg.get_attr("IFLA_STATS64") or msg.get_attr("IFLA_STATS") or {}
            counters = {k: int(stats.get(k, 0)) for k in (*COUNTER_FIELDS, "multicast")}
            out.append(
                RawStats(
                    ifname=str(msg.get_attr("IFLA_IFNAME")),
                    ifindex=int(msg["index"]),
                    oper_up=msg.get_attr("IFLA_OPERSTATE") == "UP",
                    counters=counters,
                )
            )
        return out

    def close(self) -> None:
        self._ipr.close()


class CountersPoller:
    """Source + tracker + the ring's drop counters: one CounterSample per poll()."""

    def __init__(
        self,
        source: NetlinkSource,
        interfaces: Sequence[str] = (),
        capture_stats: Callable[[], tuple[int, int]] | None = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.source = source
        self.tracker = CounterTracker(interfaces)
        self.capture_stats = capture_stats
        self.clock_ns = clock_ns

    def poll(self) -> CounterSample:
        sample = self.tracker.update(self.clock_ns(), self.source.read())
        if self.capture_stats is not None:
            sample.capture_packets, sample.capture_drops = self.capture_stats()
        return sample
