"""Live capture on a tc-mirrored port: flows and counters against what was really sent.

Hosts A and B (network namespaces, a veth pair) exchange ping (IPv4, IPv6, and IPv4 over
VLAN 10), a UDP request/response and a TCP transfer; a0's traffic is mirrored to the tap port
m1, where our TPACKET_V3 ring runs in promiscuous mode behind the default BPF filter.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Dot1Q, Ether

from appliance.capture.bpf import capture_program
from appliance.capture.config import CaptureConfig, MeterConfig, RingConfig
from appliance.capture.counters import NetlinkSource
from appliance.capture.decode import Decoder
from appliance.capture.flows import EndReason, FlowRecord
from appliance.capture.meter import FlowMeter
from appliance.capture.ring import PacketRing, RingOptions, open_capture
from appliance.devkit.capture.lab import MirrorLab
from appliance.devkit.capture.labtraffic import tcp_exchange, udp_exchange, udp_server

PY = "/usr/bin/python3"
VLAN = 10
V4A, V4B = "198.51.100.1", "198.51.100.2"


@pytest.fixture
def lab() -> Iterator[MirrorLab]:
    with MirrorLab("cap") as lab:
        yield lab


def _exchange(lab: MirrorLab) -> None:
    lab.run("A", "ping", "-c", "3", "-i", "0.2", "-W", "2", lab.B4)
    lab.run("A", "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", lab.B6)
    tagged = (
        Ether(src=lab.mac("A", "a0"), dst=lab.mac("B", "b0"))
        / Dot1Q(vlan=VLAN)
        / IP(src=V4A, dst=V4B)
        / UDP(sport=7000, dport=7001)
        / (b"v" * 50)
    )
    lab.send_frames("A", "a0", [tagged.build(), tagged.build()])
    udp_exchange(lab, rounds=3, size=100, reply=200, sport=40001)
    tcp_exchange(lab, size=3000, reply=5000)  # raises unless both sides got every byte


def _drain(ring: PacketRing, decoder: Decoder, meter: FlowMeter, quiet_s: float) -> None:
    """Meter every block until no block has come for quiet_s (bounded to 10 s)."""
    deadline = time.monotonic() + 10
    last = time.monotonic()
    while time.monotonic() - last < quiet_s and time.monotonic() < deadline:
        got = False
        for batch in ring.batches(timeout_s=0.1):
            meter.add(decoder.decode(batch))
            got = True
        if got:
            last = time.monotonic()


def _find(recs: list[FlowRecord], **want: object) -> FlowRecord:
    hits = [r for r in recs if all(getattr(r, k) == v for k, v in want.items())]
    assert len(hits) == 1, (want, recs)
    return hits[0]


def test_mirrored_traffic_is_metered_both_directions(lab: MirrorLab) -> None:
    ring_cfg = RingConfig(block_size=1 << 16, block_count=16, retire_timeout_ms=20)
    program = capture_program("", own_addresses=[], snaplen=ring_cfg.snaplen)
    opts = RingOptions(interface="m1", ring=ring_cfg, program=program, netns=lab.ns["T"])
    decoder, meter = Decoder(), FlowMeter(MeterConfig())
    with PacketRing(opts) as ring:
        _exchange(lab)
        _drain(ring, decoder, meter, quiet_s=0.5)
        stats = ring.stats()
    recs = meter.flush().records()

    ping4 = _find(recs, proto="ICMP", src_ip=lab.A4, dst_ip=lab.B4)
    assert (ping4.packets_tx, ping4.packets_rx) == (3, 3)
    assert (ping4.bytes_tx, ping4.bytes_rx) == (3 * 84, 3 * 84)  # 20 IP + 8 ICMP + 56 data
    assert (ping4.icmp_type, ping4.vlan) == (8, 0)
    ping6 = _find(recs, proto="ICMPV6", src_ip=lab.A6, dst_ip=lab.B6, icmp_type=128)
    assert (ping6.packets_tx, ping6.packets_rx) == (3, 3)
    assert (ping6.bytes_tx, ping6.bytes_rx) == (3 * 104, 3 * 104)  # 40 + 8 + 56
    tagged = _find(recs, proto="UDP", src_ip=V4A, dst_ip=V4B)  # tag from ring metadata
    assert (tagged.vlan, tagged.packets_tx, tagged.bytes_tx) == (VLAN, 2, 2 * 78)

    udp = _find(recs, proto="UDP", src_port=40001, dst_port=5353)
    assert (udp.src_ip, udp.dst_ip) == (lab.A4, lab.B4)
    assert (udp.packets_tx, udp.packets_rx) == (3, 3)
    assert (udp.bytes_tx, udp.bytes_rx) == (3 * 128, 3 * 228)

    tcp = _find(recs, proto="TCP", dst_port=8080)
    assert (tcp.src_ip, tcp.dst_ip) == (lab.A4, lab.B4)
    assert tcp.flags_tx & 0x03 == 0x03  # SYN and FIN from the client
    assert tcp.flags_rx & 0x13 == 0x13  # SYN+ACK and FIN from the server
    assert tcp.bytes_tx >= 3000 + 40 * tcp.packets_tx
    assert tcp.bytes_rx >= 5000 + 40 * tcp.packets_rx
    assert tcp.end_reason in (EndReason.TCP_FIN, EndReason.SHUTDOWN)
    assert decoder.stats.non_ip == {}  # ARP never reached the ring: the default filter
    assert stats.drops == 0 and stats.packets >= sum(r.packets_tx + r.packets_rx for r in recs)


def test_user_filter_runs_in_the_kernel(lab: MirrorLab) -> None:
    ring_cfg = RingConfig(block_size=1 << 16, block_count=8, retire_timeout_ms=20)
    program = capture_program("icmp or udp", own_addresses=[V4B])
    opts = RingOptions(interface="m1", ring=ring_cfg, program=program, netns=lab.ns["T"])
    decoder, meter = Decoder(), FlowMeter()
    with PacketRing(opts) as ring:
        _exchange(lab)
        _drain(ring, decoder, meter, quiet_s=0.5)
        stats = ring.stats()
    recs = meter.flush().records()
    assert {r.proto for r in recs} == {"ICMP", "UDP"}
    assert all(V4B not in (r.src_ip, r.dst_ip) for r in recs)  # "own" address filtered
    assert stats.packets == sum(r.packets_tx + r.packets_rx for r in recs)


def _ip_link_stats(lab: MirrorLab, host: str, dev: str) -> dict[str, int]:
    (link,) = json.loads(lab.run(host, "ip", "-s", "-j", "link", "show", dev))
    rx, tx = link["stats64"]["rx"], link["stats64"]["tx"]
    return {
        "rx_bytes": rx["bytes"],
        "rx_packets": rx["packets"],
        "tx_bytes": tx["bytes"],
        "tx_packets": tx["packets"],
        "rx_dropped": rx["dropped"],
        "tx_dropped": tx["dropped"],
    }


def test_counters_match_ip_s_link(lab: MirrorLab) -> None:
    lab.run("A", "ping", "-c", "5", "-i", "0.1", lab.B4)
    source = NetlinkSource(netns=lab.ns["A"])
    try:
        for _ in range(5):  # spontaneous IPv6 traffic may slip between two reads: retry
            before = _ip_link_stats(lab, "A", "a0")
            ours = {r.ifname: r for r in source.read()}["a0"]
            after = _ip_link_stats(lab, "A", "a0")
            if before == after:
                break
        assert before == after
        assert {k: ours.counters[k] for k in before} == before
        assert ours.counters["tx_packets"] >= 5 and ours.oper_up
    finally:
        source.close()


def test_live_meter_expires_by_the_wall_clock(lab: MirrorLab) -> None:
    from appliance.capture.source import LiveMeter

    ring_cfg = RingConfig(block_size=1 << 16, block_count=8, retire_timeout_ms=20)
    cfg = CaptureConfig(interface="m1", uplink_interface="lo", filter="icmp", ring=ring_cfg)
    with open_capture(cfg, netns=lab.ns["T"]) as ring:
        live = LiveMeter(ring, MeterConfig(idle_timeout_s=1), lag_ns=200_000_000)
        lab.run("A", "ping", "-c", "2", "-i", "0.2", lab.B4)
        ended: list[FlowRecord] = []
        deadline = time.monotonic() + 10
        while not ended and time.monotonic() < deadline:
            for flows in live.step(time.time_ns(), timeout_s=0.1):
                ended.extend(flows.records())
        assert live.close().records() == []
    (rec,) = ended
    assert (rec.proto, rec.packets_tx, rec.packets_rx) == ("ICMP", 2, 2)
    assert rec.end_reason is EndReason.IDLE_TIMEOUT


FLOWS = 12
FANOUT_CLIENT = f"""
import socket
for i in range({FLOWS}):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 41000 + i))
    s.settimeout(5); s.sendto(b"q" * 100, ("192.0.2.2", 5353)); s.recvfrom(2048); s.close()
"""


def test_fanout_splits_flows_whole_across_two_rings(lab: MirrorLab) -> None:
    ring_cfg = RingConfig(block_size=1 << 16, block_count=8, retire_timeout_ms=20)
    program = capture_program("icmp or udp", [])
    opts = RingOptions(
        interface="m1", ring=ring_cfg, program=program, fanout_group=4242, netns=lab.ns["T"]
    )
    meters = [FlowMeter(), FlowMeter()]
    decoders = [Decoder(), Decoder()]
    with PacketRing(opts) as r1, PacketRing(opts) as r2:
        server = udp_server(lab, FLOWS, 200)
        lab.run("A", PY, "-c", FANOUT_CLIENT)
        assert server.wait(timeout=10) == 0
        for ring, dec, met in zip((r1, r2), decoders, meters, strict=True):
            _drain(ring, dec, met, quiet_s=0.3)
    per_ring = [m.flush().records() for m in meters]
    ports = [sorted(r.src_port for r in recs if r.proto == "UDP") for recs in per_ring]
    assert sorted(ports[0] + ports[1]) == [41000 + i for i in range(FLOWS)]  # each flow once
    assert ports[0] and ports[1]  # both rings got flows (all on one side: p = 2 / 2**12)
    assert all((r.packets_tx, r.packets_rx) == (1, 1) for recs in per_ring for r in recs)
