"""The live meter expires at most once per expire_every_ns of the caller's clock: fewer passes
over the open flows at low packet rates, and the same records, only emitted up to that much
later."""

from __future__ import annotations

from itertools import pairwise

from scapy.layers.inet import IP, UDP
from testsupport.capture_helpers import MS, QueuedRing, S, eth, frame_batch, frame_bytes

from appliance.capture.config import MeterConfig
from appliance.capture.flows import FlowBatch
from appliance.capture.source import LiveMeter

T0 = 1_700_000_000 * S


def _udp(sport: int) -> bytes:
    return frame_bytes(eth() / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=sport, dport=53))


def _records(batches: list[FlowBatch]) -> list[tuple[int, int, int, str]]:
    rows = [r for b in batches for r in b.records()]
    return sorted((r.src_port, r.packets_tx, r.end_ns, r.end_reason.name) for r in rows)


def _run(every_ns: int, tick_ns: int) -> tuple[list[FlowBatch], list[int]]:
    """Three one-packet flows 2 s apart (idle timeout 1 s), the clock read every tick_ns;
    returns what each step emitted and how many expire passes ran."""
    ring = QueuedRing()
    live = LiveMeter(ring, MeterConfig(idle_timeout_s=1), lag_ns=0, expire_every_ns=every_ns)
    passes = []
    expire = live.meter.expire

    def counting(now_ns: int) -> FlowBatch:
        passes.append(now_ns)
        return expire(now_ns)

    live.meter.expire = counting  # type: ignore[method-assign]
    out: list[FlowBatch] = []
    for i in range(3):
        ring.queued.append(frame_batch([(T0 + i * 2 * S, _udp(1000 + i))]))
    now = T0
    while now <= T0 + 8 * S:
        out += list(live.step(now))
        now += tick_ns
    return out, passes


def test_expiry_runs_once_a_second_whatever_the_poll_rate() -> None:
    out, passes = _run(every_ns=1 * S, tick_ns=50 * MS)
    # 161 steps over 8 s of clock, one expire pass per second of it
    assert len(passes) == 9
    assert all(b - a >= 1 * S for a, b in pairwise(passes))
    assert [n for _, n, _, _ in _records(out)] == [1, 1, 1]


def test_the_records_are_those_of_an_expire_at_every_step() -> None:
    slow, _ = _run(every_ns=1 * S, tick_ns=50 * MS)
    every, passes = _run(every_ns=0, tick_ns=50 * MS)
    assert len(passes) == 161
    assert _records(slow) == _records(every)
    assert [reason for *_, reason in _records(slow)] == ["IDLE_TIMEOUT"] * 3
