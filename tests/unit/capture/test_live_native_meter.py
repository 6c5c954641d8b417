"""The live agent's compiled meter (source.CompiledMeter, _fastpath.Meter) against the numpy
one (Decoder + FlowMeter) inside LiveMeter, on the same sequence of ring batches: captures cut
into batches of varied sizes, VLAN tags moved from the bytes to the ring's metadata, clock
steps with frames stamped before them, expiry at varied times. Outside overflow every step
ends the same flows, and the counters the agent exports agree; overflow keeps its invariants.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP
from testsupport.capture_helpers import MS, T0, QueuedRing, S, eth, frame_bytes

from appliance.capture.config import MeterConfig
from appliance.capture.decode import FrameBatch
from appliance.capture.flows import FlowBatch
from appliance.capture.pcap import PcapReader
from appliance.capture.source import CompiledMeter, LiveMeter, _fastpath
from appliance.devkit.capture.synth import generate, generate_concurrent

if _fastpath is None:  # pragma: no cover - the venv builds it
    pytest.fail("the compiled meter is not built: run `make venv`", pytrace=False)

CONFIGS = (
    MeterConfig(),
    MeterConfig(idle_timeout_s=0.4, active_timeout_s=2.0, close_linger_s=0.0),
    MeterConfig(idle_timeout_s=3.0, active_timeout_s=0.7, close_linger_s=0.05),
)
STEP = 3 * 86_400 * S  # a clock step: the agent following the bus after a power cut

Frame = tuple[int, bytes, int]  # (stamp, bytes as the ring hands them over, VLAN metadata)


def _ring_frames(path: Path) -> list[Frame]:
    """The capture's frames as the ring would hand them over: the kernel strips one 802.1Q
    tag into the metadata (tp_vlan_tci), so the bytes no longer carry it."""
    out: list[Frame] = []
    with PcapReader(path) as reader:
        for batch in reader.batches():
            for i in range(len(batch)):
                start = int(batch.offsets[i])
                frame = batch.data[start : start + int(batch.caplen[i])].tobytes()
                vlan = 0
                if len(frame) >= 18 and frame[12:14] == b"\x81\x00":
                    vlan = int.from_bytes(frame[14:16], "big") & 0x0FFF
                    frame = frame[:12] + frame[16:]
                out.append((int(batch.ts_ns[i]), frame, vlan))
    return out


def _batch(frames: list[Frame]) -> FrameBatch:
    data = b"".join(f for _, f, _ in frames)
    sizes = np.array([len(f) for _, f, _ in frames], dtype=np.int64)
    return FrameBatch(
        data=np.frombuffer(data, dtype=np.uint8),
        offsets=np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64),
        caplen=sizes,
        ts_ns=np.array([t for t, _, _ in frames], dtype=np.int64),
        vlan=np.array([v for _, _, v in frames], dtype=np.uint16),
    )


Event = tuple[str, Any]


def _schedule(frames: list[Frame], seed: int, steps: int) -> list[Event]:
    """The frames cut into batches of varied sizes (1 to a ring block's worth), each followed
    by a step(now) at a varied time; `steps` clock steps, each with a few frames stamped on
    the old clock handed over after it."""
    rng = random.Random(seed)
    stamps = [t for t, _, _ in frames]
    at_step = set(rng.sample(range(10, len(frames) - 10), steps)) if steps else set()
    shift = 0
    timed: list[Frame] = []
    events: list[Event] = []
    late: list[Frame] = []  # stamped before the latest step, not yet handed over
    for i, (t, f, v) in enumerate(frames):
        if i in at_step:
            before = max(stamps[i - 3 : i]) + shift + 1
            late = timed[-3:]
            del timed[-3:]
            events.append(("batch", timed))
            timed = []
            events.append(("rebase", (before, STEP)))
            shift += STEP
            timed = late
        timed.append((t + shift, f, v))
        if len(timed) >= rng.choice((1, 2, 7, 64, 300, 1500)):
            events.append(("batch", timed))
            timed = []
    events.append(("batch", timed))
    out: list[Event] = []
    for kind, arg in events:
        out.append((kind, arg))
        if kind == "batch" and arg:
            last = max(t for t, _, _ in arg)
            out.append(("step", last + rng.choice((-2 * S, 0, 300 * MS, 2 * S, 30 * S))))
    return out


def _rows(batch: FlowBatch) -> list[str]:
    return sorted(json.dumps(r.to_json_dict(), sort_keys=True) for r in batch.records())


def _run(events: list[Event], config: MeterConfig, compiled: bool) -> tuple[list[Any], Any]:
    """Drive a LiveMeter through events; what each step ended (with the oldest open flow's
    last packet and the meter's clock after it), and its counters."""
    ring = QueuedRing()
    live = LiveMeter(ring, config, lag_ns=0, expire_every_ns=500 * MS, compiled=compiled)
    assert live.compiled == compiled
    ended: list[Any] = []
    for kind, arg in events:
        if kind == "batch":
            if arg:
                ring.queued.append(_batch(arg))
        elif kind == "rebase":
            live.rebase(*arg)
        else:
            rows = _rows(FlowBatch.concat(list(live.step(arg))))
            ended.append((rows, live.meter.oldest_open_ns, live.meter.clock_ns))
    ended.append((_rows(live.close()), live.meter.oldest_open_ns, live.meter.clock_ns))
    ds, ms = live.decode_stats, live.meter.stats
    counters = (
        (ds.frames, ds.metered, ds.fragments, ds.malformed, ds.non_ip),
        (ms.packets, ms.bytes, ms.flows_started, ms.flows_ended, ms.evicted, ms.peak_flows),
        live.meter.active_flows,
    )
    return ended, counters


def _assert_same(
    frames: list[Frame], seed: int, steps: int, configs: tuple[MeterConfig, ...]
) -> list[Event]:
    events = _schedule(frames, seed, steps)
    for config in configs:
        compiled, c_counts = _run(events, config, compiled=True)
        numpy_, n_counts = _run(events, config, compiled=False)
        assert len(compiled) == len(numpy_)
        for i, (a, b) in enumerate(zip(compiled, numpy_, strict=True)):
            assert a == b, f"step {i} of seed {seed}, {config}"
        assert c_counts == n_counts
        assert c_counts[2] == 0  # close() emptied the table
    return events


@pytest.mark.parametrize("seed", [31, 32])
def test_synthetic_captures_end_the_same_flows_at_every_step(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "synth.pcap"
    generate(path, seed=seed, packets=6_000, flows=400)
    frames = _ring_frames(path)
    assert sum(v != 0 for _, _, v in frames) > 100  # tags moved to the metadata
    _assert_same(frames, seed, steps=3, configs=CONFIGS)


def test_the_concurrent_capture_ends_the_same_flows(tmp_path: Path) -> None:
    path = tmp_path / "concurrent.pcap"
    generate_concurrent(path, seed=6, flows=700, rounds=3)
    _assert_same(_ring_frames(path), 6, steps=2, configs=CONFIGS[:2])


def test_odd_frames_end_the_same_flows() -> None:
    """Options, extension headers, QinQ, fragments, cut and malformed frames, non-IP, time
    going backwards: the per-frame rules and their fragment memory, in the compiled object."""
    from tests.unit.capture.test_native_meter import _odd_frames

    rng = random.Random(7)
    timed = [(T0 + i * MS, f) for i, f in enumerate(_odd_frames() * 3)]
    rng.shuffle(timed)
    frames: list[Frame] = []
    for t, f in timed:
        vlan = rng.choice((0, 42))  # a tag the kernel stripped (the frame's own stay)
        if len(f) >= 18 and f[12:14] == b"\x81\x00" and rng.random() < 0.5:
            vlan, f = int.from_bytes(f[14:16], "big") & 0x0FFF, f[:12] + f[16:]
        frames.append((t, f, vlan))
    _assert_same(frames, 7, steps=1, configs=CONFIGS)


def _tcp(sport: int, flags: str, reverse: bool = False) -> Any:
    a, b = "192.0.2.1", "192.0.2.2"
    if reverse:
        return IP(src=b, dst=a) / TCP(sport=80, dport=sport, flags=flags)
    return IP(src=a, dst=b) / TCP(sport=sport, dport=80, flags=flags)


def test_deadlines_that_tie_end_flows_for_the_same_reason() -> None:
    """Idle, close and active deadlines at one instant: ties go idle, close, active, in both."""
    frames: list[Frame] = []
    for n, (last, gap) in enumerate((("R", 5 * S + 1), ("FA", 5 * S + 1), ("A", 2 * S))):
        t = T0 + n * 100 * S
        for dt, pkt in (
            (0, _tcp(1000 + n, "S")),
            (MS, _tcp(1000 + n, "FA", reverse=True)),
            (2 * MS, _tcp(1000 + n, last)),
            (2 * MS + gap, _tcp(1000 + n, "A")),
        ):
            frames.append((t + dt, frame_bytes(eth() / pkt), 0))
    configs = tuple(
        MeterConfig(idle_timeout_s=idle, active_timeout_s=active, close_linger_s=5.0)
        for idle, active in ((5.0, 1800.0), (5.0, 5.002), (2.0, 2.002))
    )
    for seed in range(3):  # batches cut three ways
        events = _assert_same(frames, seed, steps=0, configs=configs)
    reasons = {
        json.loads(row)["end_reason"]
        for ended, _, _ in _run(events, configs[1], compiled=True)[0]
        for row in ended
    }
    assert "IDLE_TIMEOUT" in reasons, reasons


def test_a_frame_stamped_before_several_steps_takes_each() -> None:
    """Two steps between a frame's stamp and its metering: it moves by both (numpy and C)."""
    syn = frame_bytes(eth() / _tcp(1000, "S"))
    for compiled in (True, False):
        ring = QueuedRing()
        live = LiveMeter(ring, MeterConfig(idle_timeout_s=60), compiled=compiled)
        ring.queued.append(_batch([(T0, syn, 0)]))
        live.rebase(T0 + MS, STEP)
        live.rebase(T0 + STEP + 2 * MS, STEP)
        assert list(live.step(T0 + 2 * STEP + 3 * MS, 0.0)) == []
        (flow,) = live.close().records()
        assert flow.start_ns == T0 + 2 * STEP, compiled


def test_an_overflowing_table_conserves_packets_and_counts_evictions(tmp_path: Path) -> None:
    """Overflow is where the two may differ (per packet against per batch): both conserve
    every packet, never hold more than max_flows, and count each eviction once."""
    path = tmp_path / "concurrent.pcap"
    generate_concurrent(path, seed=9, flows=600, rounds=3)
    events = _schedule(_ring_frames(path), 9, steps=0)
    config = MeterConfig(max_flows=64)
    for compiled in (True, False):
        ended, (_, meter, _) = _run(events, config, compiled)
        rows = [json.loads(r) for step, _, _ in ended for r in step]
        evicted = sum(r["end_reason"] == "EVICTED" for r in rows)
        assert sum(r["packets_tx"] + r["packets_rx"] for r in rows) == 1800
        assert meter[4] == evicted > 0 and meter[5] == 64, compiled


def test_bad_input_is_refused_with_one_line() -> None:
    m = CompiledMeter(MeterConfig())
    good = _batch([(T0, frame_bytes(eth() / _tcp(1, "S")), 0)])
    with pytest.raises(ValueError, match="outside the buffer"):
        m.add(FrameBatch(good.data, good.offsets + 1000, good.caplen, good.ts_ns, good.vlan))
    with pytest.raises(ValueError, match="link type 9"):
        m.add(FrameBatch(good.data, good.offsets, good.caplen, good.ts_ns, linktype=9))
    with pytest.raises(ValueError, match="forward"):
        m.rebase(T0, 0)
    assert m.stats.packets == 0  # nothing half-metered


def test_the_memory_bench_keeps_the_compiled_table_within_max_flows() -> None:
    """`bench flows --memory`'s compiled part, small: every flow distinct, the table full,
    each further flow evicting one, RSS within the documented bound."""
    from appliance.devkit.capture.bench import compiled_memory_bench

    result = compiled_memory_bench(max_flows=64, flows_total=2_000, batch=300)
    assert result is not None
    assert (result["packets_metered"], result["active_flows"]) == (2_000, 64)
    assert result["evicted"] == result["flows_ended"] == 2_000 - 64
    assert result["within_bound"]


def test_without_the_compiled_module_the_live_path_meters_with_numpy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A checkout without `make venv`: LiveMeter falls back to FlowMeter, and asking for the
    compiled meter says what to run."""
    import appliance.capture.source as source

    monkeypatch.setattr(source, "_fastpath", None)
    live = LiveMeter(QueuedRing())
    assert not live.compiled
    with pytest.raises(RuntimeError, match="make venv"):
        CompiledMeter()
