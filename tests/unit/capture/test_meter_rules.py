"""Flow rules on scapy-crafted captures: key, direction, bytes, VLAN, IPv6, ICMP, fragments."""

from __future__ import annotations

import numpy as np
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6MLReport2,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    fragment6,
)
from scapy.layers.l2 import ARP, Dot1Q
from testsupport.capture_helpers import MS, T0, MeterFn, S, eth, frame_bytes

from appliance.capture.decode import Decoder, FrameBatch
from appliance.capture.flows import EndReason
from appliance.capture.meter import FlowMeter

A4, B4, C4 = "192.0.2.1", "192.0.2.2", "198.51.100.7"
A6, B6 = "2001:db8::1", "2001:db8::2"


def tcp(src: str, dst: str, sport: int, dport: int, flags: str, payload: int = 0) -> IP:
    return IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags) / (b"x" * payload)


def test_tcp_conversation_is_one_flow_with_initiator_as_tx(meter_frames: MeterFn) -> None:
    c2s = [
        tcp(A4, B4, 40000, 80, "S"),
        tcp(A4, B4, 40000, 80, "A"),
        tcp(A4, B4, 40000, 80, "PA", 100),
        tcp(A4, B4, 40000, 80, "FA"),
        tcp(A4, B4, 40000, 80, "A"),
    ]
    s2c = [tcp(B4, A4, 80, 40000, "SA"), tcp(B4, A4, 80, 40000, "PA", 1000)]
    s2c.append(tcp(B4, A4, 80, 40000, "FA"))
    seq = [c2s[0], s2c[0], c2s[1], c2s[2], s2c[1], c2s[3], s2c[2], c2s[4]]
    recs, _ = meter_frames([(i * MS, eth() / p) for i, p in enumerate(seq)])
    (r,) = recs
    assert (r.src_ip, r.dst_ip, r.src_port, r.dst_port, r.proto) == (A4, B4, 40000, 80, "TCP")
    assert (r.packets_tx, r.packets_rx) == (5, 3)
    assert r.bytes_tx == sum(len(p) for p in c2s) == 5 * 40 + 100
    assert r.bytes_rx == sum(len(p) for p in s2c) == 3 * 40 + 1000
    assert r.flags_tx == 0x02 | 0x10 | 0x08 | 0x01
    assert r.flags_rx == 0x12 | 0x08 | 0x01
    assert (r.start_ns, r.end_ns) == (T0, T0 + 7 * MS)
    assert r.end_reason is EndReason.TCP_FIN


def test_syn_ack_seen_first_makes_its_receiver_the_initiator(meter_frames: MeterFn) -> None:
    recs, _ = meter_frames(
        [(0, eth() / tcp(B4, A4, 80, 40000, "SA")), (MS, eth() / tcp(A4, B4, 40000, 80, "A"))]
    )
    (r,) = recs
    assert (r.src_ip, r.src_port, r.packets_tx, r.packets_rx) == (A4, 40000, 1, 1)


def test_first_packet_sender_is_initiator_midstream(meter_frames: MeterFn) -> None:
    recs, _ = meter_frames(
        [
            (0, eth() / IP(src=B4, dst=A4) / UDP(sport=53, dport=5353)),
            (MS, eth() / IP(src=A4, dst=B4) / UDP(sport=5353, dport=53)),
        ]
    )
    (r,) = recs
    assert (r.src_ip, r.src_port, r.dst_port) == (B4, 53, 5353)


def test_bytes_are_ip_total_length_without_link_header_or_padding(meter_frames: MeterFn) -> None:
    small = eth() / IP(src=A4, dst=B4) / UDP(sport=1, dport=2)  # 28 IP bytes, 60 on the wire
    assert len(frame_bytes(small)) == 60
    recs, _ = meter_frames([(0, small)])
    assert recs[0].bytes_tx == 28


def test_vlan_in_frame_bytes_keys_flows_apart(meter_frames: MeterFn) -> None:
    pkt = IP(src=A4, dst=B4) / UDP(sport=1000, dport=2000)
    recs, _ = meter_frames(
        [
            (0, eth() / Dot1Q(vlan=10) / pkt),
            (MS, eth() / Dot1Q(vlan=20) / pkt),
            (2 * MS, eth() / Dot1Q(vlan=10) / pkt),
            (3 * MS, eth() / pkt),
        ]
    )
    assert sorted((r.vlan, r.packets_tx) for r in recs) == [(0, 1), (10, 2), (20, 1)]


def test_qinq_uses_the_inner_tag(meter_frames: MeterFn) -> None:
    pkt = eth(type=0x88A8) / Dot1Q(vlan=100) / Dot1Q(vlan=42) / IP(src=A4, dst=B4) / UDP()
    recs, _ = meter_frames([(0, pkt)])
    assert recs[0].vlan == 42


def test_vlan_from_ring_metadata_when_frame_is_untagged() -> None:
    # The kernel strips the tag on the AF_PACKET path and reports it in tp_vlan_tci.
    frames = [
        frame_bytes(eth() / IP(src=A4, dst=B4) / UDP(sport=7, dport=9)),
        frame_bytes(eth() / IP(src=A4, dst=B4) / UDP(sport=7, dport=9)),
    ]
    data = np.frombuffer(b"".join(frames) + bytes(128), dtype=np.uint8)
    batch = FrameBatch(
        data=data,
        offsets=np.array([0, 60], dtype=np.int64),
        caplen=np.array([60, 60], dtype=np.int64),
        ts_ns=np.array([T0, T0 + MS], dtype=np.int64),
        vlan=np.array([5, 6], dtype=np.uint16),
    )
    meter = FlowMeter()
    meter.add(Decoder().decode(batch))
    recs = meter.flush().records()
    assert sorted(r.vlan for r in recs) == [5, 6]


def test_ipv6_extension_headers_are_walked_to_the_transport(meter_frames: MeterFn) -> None:
    ext = IPv6(src=A6, dst=B6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
    ext = ext / IPv6ExtHdrRouting() / UDP(sport=3000, dport=4000) / (b"y" * 20)
    plain = IPv6(src=B6, dst=A6) / UDP(sport=4000, dport=3000)
    recs, summary = meter_frames([(0, eth() / ext), (MS, eth() / plain)])
    (r,) = recs
    assert (r.src_ip, r.dst_ip, r.src_port, r.dst_port, r.proto) == (A6, B6, 3000, 4000, "UDP")
    assert (r.ip_version, r.packets_tx, r.packets_rx) == (6, 1, 1)
    assert r.bytes_tx == len(ext) and r.bytes_rx == len(plain)
    assert summary.decode.malformed == 0


def test_mld_behind_hop_by_hop_is_icmpv6(meter_frames: MeterFn) -> None:
    mld = IPv6(src=A6, dst="ff02::16") / IPv6ExtHdrHopByHop() / ICMPv6MLReport2()
    recs, _ = meter_frames([(0, eth() / mld)])
    (r,) = recs
    assert (r.proto, r.icmp_type, r.dst_port) == ("ICMPV6", 143, 143 << 8)


def test_icmp_echo_request_and_reply_are_one_flow_keyed_by_id(meter_frames: MeterFn) -> None:
    frames = [
        (0, eth() / IP(src=A4, dst=B4) / ICMP(type=8, id=1, seq=1)),
        (MS, eth() / IP(src=B4, dst=A4) / ICMP(type=0, id=1, seq=1)),
        (2 * MS, eth() / IP(src=A4, dst=B4) / ICMP(type=8, id=2, seq=1)),
        (3 * MS, eth() / IPv6(src=A6, dst=B6) / ICMPv6EchoRequest(id=9)),
        (4 * MS, eth() / IPv6(src=B6, dst=A6) / ICMPv6EchoReply(id=9)),
    ]
    recs, _ = meter_frames(frames)
    got = sorted((r.proto, r.icmp_id, r.packets_tx, r.packets_rx, r.dst_port) for r in recs)
    assert got == [
        ("ICMP", 1, 1, 1, 8 << 8),
        ("ICMP", 2, 1, 0, 8 << 8),
        ("ICMPV6", 9, 1, 1, 128 << 8),
    ]
    assert all(r.src_port == 0 for r in recs)


def test_icmp_errors_are_keyed_by_type_and_code(meter_frames: MeterFn) -> None:
    unreach = eth() / IP(src=C4, dst=A4) / ICMP(type=3, code=3) / IP(src=A4, dst=B4) / UDP()
    ttl = eth() / IP(src=C4, dst=A4) / ICMP(type=11, code=0) / IP(src=A4, dst=B4) / UDP()
    recs, _ = meter_frames([(0, unreach), (MS, unreach), (2 * MS, ttl)])
    got = sorted((r.icmp_type, r.icmp_code, r.packets_tx, r.icmp_id) for r in recs)
    assert got == [(3, 3, 2, 0), (11, 0, 1, 0)]


def test_ipv4_fragments_join_the_flow_of_their_first_fragment(meter_frames: MeterFn) -> None:
    big = IP(src=A4, dst=B4, id=777) / UDP(sport=5000, dport=6000) / (b"z" * 3000)
    frags = fragment(big, fragsize=1200)
    assert len(frags) == 3
    reply = IP(src=B4, dst=A4) / UDP(sport=6000, dport=5000)
    frames = [(i * MS, eth() / f) for i, f in enumerate(frags)] + [(9 * MS, eth() / reply)]
    recs, summary = meter_frames(frames)
    (r,) = recs
    assert (r.src_port, r.dst_port, r.packets_tx, r.packets_rx) == (5000, 6000, 3, 1)
    assert r.bytes_tx == sum(len(f) for f in frags)
    assert summary.decode.fragments == 3


def test_fragment_whose_first_fragment_was_not_seen_is_portless(meter_frames: MeterFn) -> None:
    big = IP(src=A4, dst=B4, id=778) / UDP(sport=5000, dport=6000) / (b"z" * 3000)
    frags = fragment(big, fragsize=1200)
    recs, _ = meter_frames([(i * MS, eth() / f) for i, f in enumerate(frags[1:])])
    (r,) = recs
    assert (r.proto, r.src_port, r.dst_port, r.packets_tx) == ("UDP", 0, 0, 2)


def test_ipv6_fragments_join_the_flow_of_their_first_fragment(meter_frames: MeterFn) -> None:
    big = IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment(id=99) / UDP(sport=7, dport=8)
    frags = fragment6(big / (b"q" * 3000), 1280)
    assert len(frags) >= 3
    recs, _ = meter_frames([(i * MS, eth() / f) for i, f in enumerate(frags)])
    (r,) = recs
    assert (r.src_port, r.dst_port, r.packets_tx) == (7, 8, len(frags))
    assert r.bytes_tx == sum(len(f) for f in frags)


def test_arp_is_counted_not_metered(meter_frames: MeterFn) -> None:
    frames = [(0, eth(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst=B4)), (MS, eth() / IP() / UDP())]
    recs, summary = meter_frames(frames)
    assert len(recs) == 1
    assert summary.decode.non_ip == {0x0806: 1}
    assert summary.meter.packets == 1


def test_truncated_capture_counts_the_length_the_ip_header_states(meter_frames: MeterFn) -> None:
    pkt = eth() / IP(src=A4, dst=B4) / TCP(sport=1, dport=2, flags="PA") / (b"p" * 1400)
    raw = frame_bytes(pkt)[:64]  # snaplen 64: the TCP header fits, the payload does not
    recs, _ = meter_frames([(0, raw)])
    assert (recs[0].bytes_tx, recs[0].dst_port, recs[0].flags_tx) == (1440, 2, 0x18)


def test_frame_too_short_for_its_headers_is_malformed(meter_frames: MeterFn) -> None:
    raw = frame_bytes(eth() / IP(src=A4, dst=B4) / TCP())[:30]
    recs, summary = meter_frames([(0, raw)])
    assert recs == [] and summary.decode.malformed == 1


def test_timestamps_going_back_count_at_the_latest_time(meter_frames: MeterFn) -> None:
    pkt = eth() / IP(src=A4, dst=B4) / UDP(sport=1, dport=2)
    recs, _ = meter_frames([(5 * S, pkt), (4 * S, pkt)])
    (r,) = recs
    assert (r.start_ns, r.end_ns, r.packets_tx) == (T0 + 5 * S, T0 + 5 * S, 2)
