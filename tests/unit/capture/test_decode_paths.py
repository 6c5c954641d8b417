"""The vectorised decoder against the per-frame reference decoder, frame by frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR, fragment
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, Dot1Q
from testsupport.capture_helpers import MS, T0, eth, frame_bytes

from appliance.capture.decode import (
    ICMP_KEY_BIT,
    LINKTYPE_RAW,
    MALFORMED,
    DecodedPacket,
    Decoder,
    PacketColumns,
)
from appliance.capture.pcap import PcapReader, write_pcap
from appliance.devkit.capture.synth import generate


def _decode_all(path: Path, vectorised: bool) -> tuple[PacketColumns, Decoder]:
    dec = Decoder(vectorised=vectorised)
    with PcapReader(path) as reader:
        parts = [dec.decode(b) for b in reader.batches()]
    return PacketColumns.concat(parts), dec


def _same(a: PacketColumns, b: PacketColumns) -> None:
    for name in PacketColumns.__dataclass_fields__:
        assert np.array_equal(getattr(a, name), getattr(b, name)), name


def test_vectorised_equals_reference_on_the_synthetic_capture(tmp_path: Path) -> None:
    path = tmp_path / "s.pcap"
    generate(path, seed=11, packets=5_000, flows=300)
    fast, dec_fast = _decode_all(path, True)
    ref, dec_ref = _decode_all(path, False)
    _same(fast, ref)
    assert dec_fast.stats.non_ip == dec_ref.stats.non_ip == {0x0806: 5}
    assert dec_fast.stats.slow_path < 5  # the vectorised path really did the work


def test_vectorised_equals_reference_on_odd_frames(tmp_path: Path) -> None:
    frames = [
        eth() / IP(src="192.0.2.1", dst="192.0.2.2", options=[IPOption_RR()]) / TCP(dport=22),
        eth() / Dot1Q(vlan=99) / IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=9),
        eth() / IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrHopByHop() / UDP(),
        eth() / IPv6(src="2001:db8::2", dst="2001:db8::1") / ICMPv6EchoRequest(id=3),
        eth() / IP(src="192.0.2.1", dst="192.0.2.2") / ICMP(type=3, code=1) / IP() / UDP(),
        eth(dst="ff:ff:ff:ff:ff:ff") / ARP(),
        *[eth() / f for f in fragment(IP(dst="192.0.2.9") / UDP(dport=4) / (b"f" * 2000), 800)],
    ]
    path = tmp_path / "odd.pcap"
    write_pcap(path, [(T0 + i * MS, frame_bytes(f)) for i, f in enumerate(frames)])
    fast, _ = _decode_all(path, True)
    ref, _ = _decode_all(path, False)
    _same(fast, ref)
    assert len(fast) == len(frames) - 1


def test_raw_ip_link_type(tmp_path: Path) -> None:
    pkts = [IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=1, dport=2), IPv6() / TCP()]
    path = tmp_path / "raw.pcap"
    write_pcap(path, [(T0 + i, bytes(p.build())) for i, p in enumerate(pkts)], LINKTYPE_RAW)
    fast, _ = _decode_all(path, True)
    ref, _ = _decode_all(path, False)
    _same(fast, ref)
    assert fast.ipver.tolist() == [4, 6] and fast.nbytes.tolist() == [28, 60]


def test_vectorised_equals_reference_with_ring_vlan_metadata() -> None:
    from appliance.capture.decode import FrameBatch

    raw = [
        frame_bytes(eth() / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=1, dport=2)),
        frame_bytes(eth() / Dot1Q(vlan=7) / IP(src="192.0.2.1", dst="192.0.2.2") / UDP()),
        frame_bytes(eth() / IPv6(src="2001:db8::1", dst="2001:db8::2") / TCP(flags="S")),
        frame_bytes(eth(dst="ff:ff:ff:ff:ff:ff") / ARP()),
    ]
    offsets = np.cumsum([0] + [len(r) for r in raw[:-1]]).astype(np.int64)
    batch = FrameBatch(
        data=np.frombuffer(b"".join(raw) + bytes(128), dtype=np.uint8),
        offsets=offsets,
        caplen=np.array([len(r) for r in raw], dtype=np.int64),
        ts_ns=T0 + np.arange(len(raw), dtype=np.int64),
        vlan=np.array([5, 6, 0, 9], dtype=np.uint16),  # as the kernel reported them
    )
    fast = Decoder(vectorised=True).decode(batch)
    ref = Decoder(vectorised=False).decode(batch)
    _same(fast, ref)
    assert fast.vlan.tolist() == [5, 7, 0]  # a tag still in the bytes is the inner one


def test_decode_frame_names_every_field_of_a_packet() -> None:
    tagged = eth() / Dot1Q(vlan=42) / IPv6(src="2001:db8::1", dst="2001:db8::2")
    frame = frame_bytes(tagged / IPv6ExtHdrHopByHop() / TCP(sport=1234, dport=443, flags="SA"))
    got = Decoder().decode_frame(frame, meta_vlan=0, ts_ns=T0)
    assert got == DecodedPacket(
        vlan=42,
        ipver=6,
        proto=6,
        src=bytes.fromhex("20010db8000000000000000000000001"),
        dst=bytes.fromhex("20010db8000000000000000000000002"),
        port_src=1234,
        port_dst=443,
        nbytes=40 + 8 + 20,
        tcp_flags=0x12,
        icmp_type=0,
        icmp_code=0,
    )
    ping = frame_bytes(eth() / IP(src="192.0.2.1", dst="192.0.2.2") / ICMP(type=3, code=1))
    got = Decoder().decode_frame(ping, meta_vlan=7, ts_ns=T0)
    assert isinstance(got, DecodedPacket)
    assert (got.vlan, got.icmp_type, got.icmp_code) == (7, 3, 1)
    assert got.port_src == got.port_dst == ICMP_KEY_BIT | 3 << 8 | 1


def test_decode_frame_answers_an_int_for_frames_it_does_not_meter() -> None:
    dec = Decoder()
    assert dec.decode_frame(frame_bytes(eth() / ARP()), 0, T0) == 0x0806
    assert dec.decode_frame(frame_bytes(eth() / IP() / TCP())[:20], 0, T0) == MALFORMED
