"""Every configured mirror port is metered (`capture.interface: p1,p2`, what IMAGE.md's
`--mirror eth1,eth2` asks for): each flow is labelled with the port it was seen on, and each
port's kernel counters and own frames are reported on their own.

Namespace S sends known frames into two veth pairs whose other ends, p1 and p2, are the tap
namespace T's mirror ports, brought up receive-only as the image does."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from appliance.agent.sources import LiveFlowSource
from appliance.capture.config import CaptureConfig, MeterConfig


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=30)


@pytest.fixture
def ports() -> Iterator[dict[str, str]]:
    suffix = f"mp-{os.getpid()}"
    ns = {"S": f"isS-{suffix}", "T": f"isT-{suffix}"}
    try:
        for name in ns.values():
            _run("ip", "netns", "add", name)
        for i in (1, 2):
            _run("ip", "link", "add", f"s{i}", "netns", ns["S"], "type", "veth", "peer", "name",
                 f"p{i}", "netns", ns["T"])  # fmt: skip
            for side, dev in (("S", f"s{i}"), ("T", f"p{i}")):
                # silent ends: no IPv6 (DAD, RS, MLD), no ARP, no multicast, no address
                path = f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"
                _run("ip", "netns", "exec", ns[side], "sh", "-c", f"echo 1 > {path}")
                _run("ip", "-n", ns[side], "link", "set", dev, "arp", "off", "multicast", "off")
                _run("ip", "-n", ns[side], "link", "set", dev, "up")
        yield ns
    finally:
        for name in ns.values():
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def _send(ns: str, dev: str, frames: list[bytes]) -> None:
    code = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)\n"
        f"s.bind(({dev!r},0))\n"
        "for h in sys.argv[1].split(','): s.send(bytes.fromhex(h))\n"
    )
    hexes = ",".join(f.hex() for f in frames)
    _run("ip", "netns", "exec", ns, "/usr/bin/python3", "-c", code, hexes)


def _udp(src: str, sport: int) -> bytes:
    frame = (
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src=src, dst="198.51.100.53")
        / UDP(sport=sport, dport=53)
        / (b"q" * 30)
    )
    return bytes(frame)


def test_every_mirror_port_is_metered_and_labelled(ports: dict[str, str]) -> None:
    cfg = CaptureConfig(
        interface="p1,p2",
        netns=ports["T"],
        uplink_interface="none0",
        meter=MeterConfig(idle_timeout_s=60),
    )
    cfg.validate()
    source = LiveFlowSource(cfg)
    flows = []
    try:
        _send(ports["S"], "s1", [_udp("192.0.2.1", 1000)] * 3 + [_udp("192.0.2.3", 3000)])
        _send(ports["S"], "s2", [_udp("192.0.2.2", 2000)] * 2 + [_udp("192.0.2.3", 3000)])
        _send(ports["T"], "p2", [_udp("203.0.113.7", 7000)])  # the box talking on p2: own frame
        # Poll until both meters have every mirrored packet (bounded: 10 s), then stop.
        for _ in range(100):
            flows.extend(source.poll(0.1))
            if source.stats()["packets_metered"] >= 8:
                break
        counts = {c.ifname: c for c in source.capture_counts()}
    finally:
        flows.extend(source.close())
    got = sorted((f.interface, f.src_ip, f.src_port, f.packets_tx, f.bytes_tx) for f in flows)
    assert got == [
        ("p1", "192.0.2.1", 1000, 3, 3 * 58),
        ("p1", "192.0.2.3", 3000, 1, 58),
        ("p2", "192.0.2.2", 2000, 2, 2 * 58),
        ("p2", "192.0.2.3", 3000, 1, 58),
    ]
    assert [(c.packets, c.drops, c.own_frames) for c in (counts["p1"], counts["p2"])] == [
        (4, 0, 0),
        (4, 0, 1),  # the kernel counted the own frame too; it was never metered
    ]
    assert source.stats()["own_frames"] == 1 and source.interface == "p1,p2"


def test_a_missing_second_port_fails_at_start_and_closes_the_first(
    ports: dict[str, str],
) -> None:
    from appliance.errors import CommandError

    cfg = CaptureConfig(interface="p1,p9", netns=ports["T"], uplink_interface="none0")
    with pytest.raises(CommandError, match="capture interface 'p9' not found"):
        LiveFlowSource(cfg)
    # p1's ring was closed: a new one opens on it (and closes) at once
    LiveFlowSource(
        CaptureConfig(interface="p1", netns=ports["T"], uplink_interface="none0")
    ).close()
