"""Capture file formats and the synthetic capture's ground truth."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import PcapNgWriter
from testsupport.capture_helpers import T0, eth, frame_bytes

from appliance.capture.offline import meter_pcap
from appliance.capture.pcap import PcapError, PcapReader, write_pcap
from appliance.devkit.capture.synth import generate

FRAMES = [
    (T0 + i * 1_000_000, frame_bytes(eth() / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(dport=i)))
    for i in range(1, 6)
]


def _classic(path: Path, endian: str, nanos: bool) -> None:
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    with open(path, "wb") as f:
        f.write(struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, 1))
        for ts, fr in FRAMES:
            sec, ns = divmod(ts, 1_000_000_000)
            frac = ns if nanos else ns // 1000
            f.write(struct.pack(endian + "IIII", sec, frac, len(fr), len(fr)) + fr)


@pytest.mark.parametrize(
    ("endian", "nanos"), [("<", True), ("<", False), (">", True), (">", False)]
)
def test_classic_pcap_in_either_byte_order_and_resolution(
    tmp_path: Path, endian: str, nanos: bool
) -> None:
    path = tmp_path / "c.pcap"
    _classic(path, endian, nanos)
    with PcapReader(path, batch_size=2) as reader:
        batches = list(reader.batches())
        assert [len(b) for b in batches] == [2, 2, 1]
        ts = [int(t) for b in batches for t in b.ts_ns]
    assert ts == [t for t, _ in FRAMES]
    flows, summary = meter_pcap(path)
    assert len(flows) == 5 and summary.frames == 5


def test_pcapng_enhanced_packet_blocks(tmp_path: Path) -> None:
    path = tmp_path / "c.pcapng"
    w = PcapNgWriter(str(path))
    for ts, fr in FRAMES:
        pkt = Ether(fr)  # the exact frame bytes
        pkt.time = ts / 1e9
        w.write(pkt)
    w.close()
    with PcapReader(path) as reader:
        assert reader.format == "pcapng"
        (batch,) = list(reader.batches())
    assert len(batch) == 5
    flows, _ = meter_pcap(path)
    assert flows.packets == 5


@pytest.mark.parametrize("cut", [10, len(FRAMES[-1][1]) + 16 - 6])  # in the body, in the header
def test_truncated_last_record_is_ignored_and_reported(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "cut.pcap"
    write_pcap(path, FRAMES)
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    flows, summary = meter_pcap(path)
    assert summary.frames == 4 and flows.packets == 4
    assert summary.cut_bytes == len(FRAMES[-1][1]) + 16 - cut


def test_whole_capture_reports_no_cut_record(tmp_path: Path) -> None:
    path = tmp_path / "whole.pcap"
    write_pcap(path, FRAMES)
    assert meter_pcap(path)[1].cut_bytes == 0


def test_pcapng_cut_in_its_last_block_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "cut.pcapng"
    w = PcapNgWriter(str(path))
    for ts, fr in FRAMES:
        pkt = Ether(fr)
        pkt.time = ts / 1e9
        w.write(pkt)
    w.close()
    path.write_bytes(path.read_bytes()[:-20])
    flows, summary = meter_pcap(path)
    assert flows.packets == 4 and summary.cut_bytes > 0


def test_not_a_capture_is_refused_with_a_reason(tmp_path: Path) -> None:
    path = tmp_path / "x.pcap"
    path.write_bytes(b"hello, this is not a capture file at all")
    with pytest.raises(PcapError, match="not a pcap"):
        PcapReader(path)


def test_synthetic_capture_totals_equal_its_ground_truth(tmp_path: Path) -> None:
    path = tmp_path / "synth.pcap"
    truth = generate(path, seed=3, packets=20_000, flows=1_000)
    flows, summary = meter_pcap(path, batch_size=4096)
    assert summary.frames == truth.frames
    assert summary.decode.non_ip_total == truth.non_ip
    assert flows.totals_by_proto() == truth.by_proto
    assert flows.packets == truth.ip_packets


def test_corrupt_record_length_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.pcap"
    write_pcap(path, FRAMES)
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, 24 + 8, 0x7FFFFFF0)  # first record: absurd caplen
    path.write_bytes(bytes(data) + bytes(1 << 20))
    with pytest.raises(PcapError, match="corrupt"):
        meter_pcap(path)
