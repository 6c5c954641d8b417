"""Expiry (idle, active, FIN/RST linger, clock), eviction, and batch-size independence."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from testsupport.capture_helpers import MS, T0, MeterFn, S, eth, frame_bytes

from appliance.capture.config import MeterConfig
from appliance.capture.decode import Decoder, FrameBatch, PacketColumns
from appliance.capture.flows import FLOW_COLUMNS, EndReason, FlowBatch
from appliance.capture.meter import FlowMeter
from appliance.capture.pcap import PcapReader
from appliance.devkit.capture.synth import generate

A4, B4 = "192.0.2.1", "192.0.2.2"


def udp(sport: int = 1000, dport: int = 53, src: str = A4, dst: str = B4) -> Ether:
    return eth() / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport)


def tcp(flags: str, reverse: bool = False) -> Ether:
    if reverse:
        return eth() / IP(src=B4, dst=A4) / TCP(sport=80, dport=40000, flags=flags)
    return eth() / IP(src=A4, dst=B4) / TCP(sport=40000, dport=80, flags=flags)


def test_idle_gap_splits_a_key_into_two_flows(meter_frames: MeterFn) -> None:
    recs, _ = meter_frames([(0, udp()), (10 * S, udp()), (21 * S, udp())], idle_timeout_s=10)
    assert [(r.packets_tx, r.end_reason) for r in recs] == [
        (2, EndReason.IDLE_TIMEOUT),
        (1, EndReason.SHUTDOWN),
    ]


def test_active_timeout_cuts_a_long_flow(meter_frames: MeterFn) -> None:
    frames = [(i * S, udp()) for i in range(25)]  # one packet a second for 25 s
    recs, _ = meter_frames(frames, idle_timeout_s=5, active_timeout_s=10)
    assert [r.packets_tx for r in recs] == [10, 10, 5]
    assert [r.end_reason for r in recs[:2]] == [EndReason.ACTIVE_TIMEOUT] * 2
    assert recs[1].start_ns == T0 + 10 * S


def test_fin_both_ways_ends_flow_after_linger_and_reuse_is_new(meter_frames: MeterFn) -> None:
    frames = [
        (0, tcp("S")),
        (1 * MS, tcp("SA", reverse=True)),
        (2 * MS, tcp("FA")),
        (3 * MS, tcp("FA", reverse=True)),
        (4 * MS, tcp("A")),  # final ACK inside the linger: same flow
        (5 * S, tcp("S")),  # port reuse after the linger: a new flow
    ]
    recs, _ = meter_frames(frames, close_linger_s=2)
    assert [(r.packets_tx, r.packets_rx, r.end_reason) for r in recs] == [
        (3, 2, EndReason.TCP_FIN),
        (1, 0, EndReason.SHUTDOWN),
    ]


def test_trailing_ack_seconds_after_the_fins_belongs_to_the_connection(
    meter_frames: MeterFn,
) -> None:
    """The close delay's default (5 s, Zeek's tcp_close_delay): a final ACK 3 s after the FIN
    exchange is the connection's, not a one-packet flow of its own (as with a 2 s linger)."""
    frames = [
        (0, tcp("S")),
        (1 * MS, tcp("SA", reverse=True)),
        (2 * MS, tcp("FA")),
        (3 * MS, tcp("FA", reverse=True)),
        (3 * S, tcp("A")),
    ]
    assert MeterConfig().close_linger_s == 5
    recs, _ = meter_frames(frames)
    assert [(r.packets_tx, r.packets_rx, r.end_reason) for r in recs] == [(3, 2, EndReason.TCP_FIN)]
    recs, _ = meter_frames(frames, close_linger_s=2)  # the old default split it
    assert [r.packets_tx + r.packets_rx for r in recs] == [4, 1]


def test_fin_one_way_does_not_close(meter_frames: MeterFn) -> None:
    recs, _ = meter_frames([(0, tcp("FA")), (5 * S, tcp("A"))], close_linger_s=2)
    assert [r.packets_tx for r in recs] == [2]


def test_rst_ends_flow_after_linger(meter_frames: MeterFn) -> None:
    frames = [(0, tcp("S")), (MS, tcp("R", reverse=True)), (3 * S, tcp("S"))]
    recs, _ = meter_frames(frames, close_linger_s=1)
    assert [(r.packets_tx, r.packets_rx, r.end_reason) for r in recs] == [
        (1, 1, EndReason.TCP_RST),
        (1, 0, EndReason.SHUTDOWN),
    ]


def _batch(frames: list[tuple[int, Ether]]) -> FrameBatch:
    raw = [frame_bytes(p) for _, p in frames]
    offsets = np.cumsum([0] + [len(r) for r in raw[:-1]]).astype(np.int64)
    return FrameBatch(
        data=np.frombuffer(b"".join(raw) + bytes(128), dtype=np.uint8),
        offsets=offsets,
        caplen=np.array([len(r) for r in raw], dtype=np.int64),
        ts_ns=np.array([T0 + t for t, _ in frames], dtype=np.int64),
    )


def test_expire_follows_the_callers_clock() -> None:
    meter = FlowMeter(MeterConfig(idle_timeout_s=10, close_linger_s=1))
    meter.add(Decoder().decode(_batch([(0, udp()), (0, tcp("R"))])))
    assert len(meter.expire(T0 + 500 * MS)) == 0
    rst = meter.expire(T0 + 2 * S)
    assert [r.end_reason for r in rst.records()] == [EndReason.TCP_RST]
    assert len(meter.expire(T0 + 10 * S)) == 0  # idle means strictly more than the timeout
    (idle,) = meter.expire(T0 + 10 * S + 1).records()
    assert idle.end_reason is EndReason.IDLE_TIMEOUT and meter.active_flows == 0


def test_full_table_evicts_least_recent_and_never_exceeds_max_flows() -> None:
    meter = FlowMeter(MeterConfig(max_flows=16))
    decoder = Decoder()
    ended = []
    for i in range(100):
        batch = _batch([(i * MS, udp(sport=2000 + i)), (i * MS, udp(sport=2000))])
        ended.extend(meter.add(decoder.decode(batch)).records())
        assert meter.active_flows <= 16
    ended.extend(meter.flush().records())
    evicted = [r for r in ended if r.end_reason is EndReason.EVICTED]
    assert meter.stats.evicted == len(evicted) > 0
    assert sum(r.packets_tx for r in ended) == 200  # nothing lost
    # The busy flow (sport 2000, a packet every batch) is never the one evicted.
    assert all(r.src_port != 2000 for r in evicted)
    assert meter.stats.peak_flows <= 16


def _random_traffic(seed: int) -> list[tuple[int, Ether]]:
    """Keys reused across idle gaps, FIN/RST closes and long flows: every rule fires."""
    rnd = random.Random(seed)
    frames: list[tuple[int, Ether]] = []
    t = 0
    for _ in range(400):
        t += rnd.choice([1 * MS, 10 * MS, 300 * MS, 3 * S, 12 * S])
        k = rnd.randrange(6)
        rev = rnd.random() < 0.4
        if k < 3:
            flags = rnd.choice(["S", "A", "PA", "FA", "R", "SA"])
            frames.append((t, tcp(flags, reverse=rev)))
        else:
            frames.append((t, udp(sport=1000 + k, src=B4 if rev else A4, dst=A4 if rev else B4)))
    return frames


def test_batch_size_does_not_change_the_flows(meter_frames: MeterFn) -> None:
    frames = _random_traffic(7)
    cfg = {"idle_timeout_s": 5, "active_timeout_s": 8, "close_linger_s": 2}
    reference, s1 = meter_frames(frames, batch_size=1, **cfg)
    assert s1.meter.slow_groups == 0  # one packet per batch: the vectorised path only
    for size in (3, 64, 4096):
        got, summary = meter_frames(frames, batch_size=size, **cfg)
        assert got == reference, size
    assert summary.meter.slow_groups > 0  # the big batch exercised the per-packet path
    reasons = {r.end_reason for r in reference}
    assert {EndReason.IDLE_TIMEOUT, EndReason.TCP_FIN, EndReason.TCP_RST} <= reasons
    assert EndReason.ACTIVE_TIMEOUT in reasons


def test_full_table_ends_due_flows_with_their_reason_before_evicting() -> None:
    meter = FlowMeter(MeterConfig(max_flows=16, idle_timeout_s=1))
    decoder = Decoder()
    meter.add(decoder.decode(_batch([(i * MS, udp(sport=3000 + i)) for i in range(16)])))
    # Two seconds later the table is full of idle flows and 16 new keys arrive: no eviction.
    later = [(2 * S + i * MS, udp(sport=4000 + i)) for i in range(16)]
    ended = meter.add(decoder.decode(_batch(later))).records()
    assert len(ended) == 16 and {r.end_reason for r in ended} == {EndReason.IDLE_TIMEOUT}
    assert meter.stats.evicted == 0 and meter.active_flows == 16


def test_hash_collisions_split_records_but_lose_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import appliance.capture.meter as meter_mod

    real = meter_mod.key_hashes

    def colliding(pk: PacketColumns) -> tuple[np.ndarray, np.ndarray]:
        h1, h2 = real(pk)
        return np.zeros_like(h1), h2  # every key on one primary hash: worst case

    monkeypatch.setattr(meter_mod, "key_hashes", colliding)
    meter = FlowMeter()
    decoder = Decoder()
    frames = [(i * MS, udp(sport=5000 + i % 3)) for i in range(30)]
    ended = meter.add(decoder.decode(_batch(frames))).records()
    ended += meter.flush().records()
    assert sum(r.packets_tx for r in ended) == 30
    assert meter.stats.hash_collisions > 0
    assert {r.src_port for r in ended} == {5000, 5001, 5002}


def _capture_columns(tmp_path: Path) -> PacketColumns:
    """A small synthetic capture (TCP closed by FIN, UDP, ICMP; IPv6, VLAN), decoded."""
    path = tmp_path / "mixed.pcap"
    generate(path, seed=3, packets=4_000, flows=300)
    decoder = Decoder()
    with PcapReader(path) as reader:
        return PacketColumns.concat([decoder.decode(b) for b in reader.batches()])


def test_flush_in_end_order_ends_what_flush_ends_in_end_order(tmp_path: Path) -> None:
    pk = _capture_columns(tmp_path)
    # A short idle timeout: at the end some flows are past it (IDLE_TIMEOUT, never expired
    # by a call), some are closed inside their linger (TCP_FIN), the rest SHUTDOWN.
    config = MeterConfig(idle_timeout_s=0.02, close_linger_s=30)
    whole, pieces = FlowMeter(config), FlowMeter(config)
    half = np.arange(len(pk) // 2)
    for meter in (whole, pieces):
        meter.add(pk.take(half))
    flushed = whole.flush()
    chunks = list(pieces.flush_in_end_order(chunk=37))
    reasons = {EndReason(r).name for r in np.unique(flushed.cols["reason"]).tolist()}
    assert {"IDLE_TIMEOUT", "TCP_FIN", "SHUTDOWN"} <= reasons
    assert len(chunks) == -(-len(flushed) // 37) and all(len(c) <= 37 for c in chunks)
    order = np.lexsort((flushed.cols["start_ns"], flushed.cols["end_ns"]))
    expected, got = flushed.take(order), FlowBatch.concat(chunks)
    for name in FLOW_COLUMNS:
        assert np.array_equal(expected.cols[name], got.cols[name]), name
    assert whole.stats == pieces.stats
    assert whole.active_flows == pieces.active_flows == 0
    # The tables are left alike: the rest of the capture meters to the same flows.
    rest = np.arange(len(pk) // 2, len(pk))
    a, b = whole.add(pk.take(rest)), pieces.add(pk.take(rest))
    a, b = FlowBatch.concat([a, whole.flush()]), FlowBatch.concat([b, pieces.flush()])
    for name in FLOW_COLUMNS:
        assert np.array_equal(a.cols[name], b.cols[name]), name
