"""A tap never meters what it sends itself: frames a local process transmits on the tap port are
counted as the box's own (agent_capture_own_frames_total) and never become flows, while the
mirrored traffic around them is still metered exactly."""

from __future__ import annotations

import time
from typing import Any

from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import ICMPv6ND_RS, IPv6
from scapy.layers.l2 import ARP, Ether

from appliance.bus.query import Query, open_reader, query
from appliance.devkit.capture.lab import MirrorLab
from appliance.devkit.capture.labtraffic import ping

OWN_V4 = ("203.0.113.7", "203.0.113.8")
OWN_V6 = ("fe80::1", "ff02::2")


def _own_frames(lab: MirrorLab) -> list[bytes]:
    """What a misconfigured tap would say on its port: a datagram, a router solicitation (what
    the box sent when the issue was found) and an ARP request, which the default filter would
    drop were it received."""
    mac = lab.mac("T", "m1")
    return [
        bytes(
            Ether(src=mac, dst="02:00:00:00:00:99")
            / IP(src=OWN_V4[0], dst=OWN_V4[1])
            / UDP(sport=5000, dport=5001)
            / b"own"
        ),
        bytes(
            Ether(src=mac, dst="33:33:00:00:00:02")
            / IPv6(src=OWN_V6[0], dst=OWN_V6[1], hlim=255)
            / ICMPv6ND_RS()
        ),
        bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=OWN_V4[0], pdst=OWN_V4[1])),
    ]


def _rows(bus: Any) -> list[Any]:
    return list(query(open_reader(bus.store.path), Query(limit=None, kind="flow")))


def test_frames_sent_on_the_tap_port_are_counted_and_never_become_flows(
    bus_factory: Any, agent_factory: Any, lab: MirrorLab
) -> None:
    assert lab.tx_packets("T", "m1") == 0  # the lab's tap port, receive-only, said nothing
    bus = bus_factory()
    agent = agent_factory(bus.port).start()
    own = _own_frames(lab)
    lab.send_frames("T", "m1", own)
    sent = ping(lab)
    assert agent.wait_metric("agent_capture_own_frames_total", len(own)) == len(own)
    deadline = time.monotonic() + 30
    hits: list[Any] = []
    while not hits and time.monotonic() < deadline:
        hits = [r for r in _rows(bus) if (r["proto"], r["src_ip"]) == ("ICMP", sent.src)]
        time.sleep(0.2)
    assert len(hits) == 1, [dict(r) for r in _rows(bus)]
    row = hits[0]
    assert (row["dst_ip"], row["packets_tx"], row["packets_rx"]) == (sent.dst, 3, 3)
    assert (row["bytes_tx"], row["bytes_rx"]) == (sent.bytes_tx, sent.bytes_rx)
    assert agent.stop() == 0  # SHUTDOWN seals whatever was still open: all flows are stored now
    # host A's own router solicitations to ff02::2 are mirrored traffic: only our pairs count
    own_pairs = {OWN_V4, OWN_V6, OWN_V4[::-1], OWN_V6[::-1]}
    leaked = [dict(r) for r in _rows(bus) if (r["src_ip"], r["dst_ip"]) in own_pairs]
    assert leaked == []
    assert lab.tx_packets("T", "m1") == len(own)  # the kernel counted what we counted
    assert "frames on its mirror port m1 (counted, not metered)" in agent.logs[-1]
