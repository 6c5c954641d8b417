"""The known capture of the export tests (test_export_from_capture.py): conversations written
with scapy into a pcap file, and their ground truth written by hand from the packets (the IP
length is scapy's own `len(pkt[IP])`), never by running our decoder or meter.

The capture lies a few minutes before now (inside the bus's time window) and lasts about 20 s
(inside every idle timeout: no flow is split by time). It holds IPv4 and IPv6; TCP connections
closed by FINs or an RST, UDP exchanges, one-way UDP, ICMP and ICMPv6 echo; untagged frames and
VLANs 30 and 4094; small frames that Ethernet pads to 60 bytes. Two pings to one host with two
echo ids are the one place where the flow key itself differs between meters.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.capture.pcap import write_pcap

MS = 1_000_000


@dataclass
class Side:
    """What one direction of a conversation carried."""

    packets: int = 0
    ip_bytes: int = 0  # IP total length, summed (IPFIX octetDeltaCount)
    padding: int = 0  # Ethernet padding after the IP packet, summed (softflowd counts it)


@dataclass
class Conversation:
    """One bidirectional flow as written: the initiator's side first."""

    src: str
    dst: str
    sport: int
    dport: int
    proto: int  # IANA protocol number
    vlan: int
    first_ns: int = 0
    last_ns: int = 0
    fwd: Side = field(default_factory=Side)
    rev: Side = field(default_factory=Side)
    icmp_id: int = 0


@dataclass
class KnownCapture:
    path: Path
    conversations: list[Conversation]
    frames: int


def _frame(pkt: Any, vlan: int) -> tuple[bytes, int, int]:
    """(frame bytes, IP total length, Ethernet padding) of pkt on VLAN vlan (0: untagged)."""
    from scapy.layers.l2 import Dot1Q, Ether

    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    whole = eth / Dot1Q(vlan=vlan) / pkt if vlan else eth / pkt
    raw: bytes = whole.build()
    ip_len = len(pkt.build())
    pad = max(0, 60 - len(raw))
    return raw + bytes(pad), ip_len, pad


def build_known_capture(path: Path, seed: int, start_ns: int | None = None) -> KnownCapture:
    """Write the known capture to path; its conversations are the ground truth."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6

    rnd = random.Random(seed)
    t0 = start_ns if start_ns is not None else time.time_ns() - 300_000_000_000
    frames: list[tuple[int, bytes]] = []
    convs: list[Conversation] = []

    def add(conv: Conversation, packets: list[tuple[int, bool, Any]]) -> None:
        for t, forward, pkt in packets:
            raw, ip_len, pad = _frame(pkt, conv.vlan)
            side = conv.fwd if forward else conv.rev
            side.packets += 1
            side.ip_bytes += ip_len
            side.padding += pad
            frames.append((t0 + t, raw))
        conv.first_ns = t0 + min(t for t, _, _ in packets)
        conv.last_ns = t0 + max(t for t, _, _ in packets)
        convs.append(conv)

    vlans = [0, 0, 30, 4094]
    for i in range(24):  # TCP connections, IPv4 and IPv6
        v6 = i % 3 == 0
        src = f"2001:db8::{i + 10:x}" if v6 else f"192.0.2.{i + 10}"
        dst = "2001:db8:1::443" if v6 else f"198.51.100.{i % 5 + 1}"
        ip = IPv6 if v6 else IP
        sport, dport = 40000 + i, [443, 22, 80][i % 3]
        conv = Conversation(src, dst, sport, dport, 6, vlans[i % 4])
        t = i * 700 * MS + rnd.randrange(200) * MS

        def c2s(flags: str, data: bytes = b"", *, ip: Any = ip, c: Conversation = conv) -> Any:
            return ip(src=c.src, dst=c.dst) / TCP(sport=c.sport, dport=c.dport, flags=flags) / data

        def s2c(flags: str, data: bytes = b"", *, ip: Any = ip, c: Conversation = conv) -> Any:
            return ip(src=c.dst, dst=c.src) / TCP(sport=c.dport, dport=c.sport, flags=flags) / data

        pkts = [(0, True, c2s("S")), (MS, False, s2c("SA")), (2 * MS, True, c2s("A"))]
        for k in range(rnd.randrange(1, 5)):
            pkts.append((3 * MS + k * 4 * MS, True, c2s("PA", b"q" * rnd.randrange(1, 600))))
            pkts.append((5 * MS + k * 4 * MS, False, s2c("PA", b"r" * rnd.randrange(1, 1400))))
        end = 30 * MS
        if i % 6 == 5:  # reset by the server
            pkts.append((end, False, s2c("R")))
        else:
            pkts += [(end, True, c2s("FA")), (end + MS, False, s2c("FA"))]
            pkts.append((end + 2 * MS, True, c2s("A")))
        add(conv, [(t + dt, fwd, p) for dt, fwd, p in pkts])

    for i in range(16):  # UDP exchanges (DNS-like); every fourth one-way
        v6 = i % 4 == 1
        src = f"2001:db8::{i + 100:x}" if v6 else f"192.0.2.{i + 100}"
        dst = "2001:db8:1::53" if v6 else "203.0.113.53"
        ip = IPv6 if v6 else IP
        conv = Conversation(src, dst, 50000 + i, 53, 17, vlans[(i + 1) % 4])
        t = 200 * MS + i * 900 * MS
        pkts = []
        for k in range(rnd.randrange(1, 4)):
            q = (
                ip(src=src, dst=dst)
                / UDP(sport=conv.sport, dport=53)
                / (b"d" * rnd.randrange(4, 60))
            )
            pkts.append((t + k * 50 * MS, True, q))
            if i % 4 != 3:
                r = (
                    ip(src=dst, dst=src)
                    / UDP(sport=53, dport=conv.sport)
                    / (b"a" * rnd.randrange(20, 400))
                )
                pkts.append((t + k * 50 * MS + 3 * MS, False, r))
        add(conv, pkts)

    # Pings: two echo ids from one host to one target (two flows for us, one for softflowd),
    # and single-id pings over IPv4 and IPv6.
    pings = [
        ("192.0.2.200", "198.51.100.9", 0x100, 0),
        ("192.0.2.200", "198.51.100.9", 0x101, 0),
        ("192.0.2.201", "198.51.100.9", 0x200, 0),
        ("2001:db8::c8", "2001:db8:1::9", 0x300, 4094),
    ]
    for n, (src, dst, ident, vlan) in enumerate(pings):
        v6 = ":" in src
        conv = Conversation(src, dst, 0, 0, 58 if v6 else 1, vlan, icmp_id=ident)
        t = 500 * MS + n * 1500 * MS
        pkts = []
        for k in range(3):
            if v6:
                req = IPv6(src=src, dst=dst) / ICMPv6EchoRequest(id=ident, seq=k, data=b"p" * 56)
                rep = IPv6(src=dst, dst=src) / ICMPv6EchoReply(id=ident, seq=k, data=b"p" * 56)
            else:
                req = IP(src=src, dst=dst) / ICMP(type=8, id=ident, seq=k) / (b"p" * 56)
                rep = IP(src=dst, dst=src) / ICMP(type=0, id=ident, seq=k) / (b"p" * 56)
            pkts += [(t + k * 200 * MS, True, req), (t + k * 200 * MS + MS, False, rep)]
        add(conv, pkts)

    frames.sort(key=lambda f: f[0])
    write_pcap(path, frames)
    return KnownCapture(path, convs, len(frames))
