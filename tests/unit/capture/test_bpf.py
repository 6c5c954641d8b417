"""The filter compiler: programs checked by interpreting them on scapy-built frames."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import ARP
from testsupport.capture_helpers import eth, frame_bytes

from appliance.capture.bpf import (
    OWN_FRAME_SNAPLEN,
    PACKET_OUTGOING,
    FilterSyntaxError,
    capture_program,
    compile_filter,
    pack_program,
    parse_filter,
    run_program,
)

F_TCP = frame_bytes(eth() / IP(src="192.0.2.1", dst="198.51.100.2") / TCP(sport=1234, dport=443))
F_UDP = frame_bytes(eth() / IP(src="192.0.2.9", dst="192.0.2.1") / UDP(sport=53, dport=5353))
F_V6 = frame_bytes(eth() / IPv6(src="2001:db8::1", dst="2001:db8:1::2") / TCP(sport=80, dport=9))
F_PING6 = frame_bytes(eth() / IPv6(src="2001:db8::1", dst="2001:db8::2") / ICMPv6EchoRequest())
F_ICMP = frame_bytes(eth() / IP(src="203.0.113.5", dst="192.0.2.1") / ICMP())
F_ARP = frame_bytes(eth(dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="203.0.113.77", pdst="192.0.2.1"))
_BIG = IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=7, dport=443) / (b"x" * 2000)
_FRAGS = fragment(_BIG, fragsize=1000)
F_FRAG2 = frame_bytes(eth() / _FRAGS[1])

ALL = {
    "tcp": F_TCP,
    "udp": F_UDP,
    "v6": F_V6,
    "ping6": F_PING6,
    "icmp": F_ICMP,
    "arp": F_ARP,
    "frag2": F_FRAG2,
}


def accepted(text: str, vlan: dict[str, int] | None = None) -> set[str]:
    prog = compile_filter(parse_filter(text))
    vlan = vlan or {}
    return {name for name, f in ALL.items() if run_program(prog, f, vlan.get(name))}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", set(ALL)),
        ("ip", {"tcp", "udp", "icmp", "frag2"}),
        ("ip6", {"v6", "ping6"}),
        ("arp", {"arp"}),
        ("tcp", {"tcp", "v6"}),
        ("udp", {"udp", "frag2"}),
        ("icmp or icmp6", {"icmp", "ping6"}),
        # As in libpcap, an IPv4 host is also an ARP sender or target.
        ("host 192.0.2.1", {"tcp", "udp", "icmp", "frag2", "arp"}),
        ("src host 192.0.2.1", {"tcp", "frag2"}),
        ("dst host 192.0.2.1", {"udp", "icmp", "arp"}),
        ("net 2001:db8:1::/48", {"v6"}),
        ("src net 192.0.2.0/24", {"tcp", "udp", "frag2"}),
        ("port 443", {"tcp"}),  # the second fragment has no ports
        ("dst port 5353 or src port 80", {"udp", "v6"}),
        ("not ip and not arp", {"v6", "ping6"}),
        ("tcp && !(port 443)", {"v6"}),
        ("(udp or tcp) and not src host 192.0.2.9", {"tcp", "v6", "frag2"}),
        ("proto 17", {"udp", "frag2"}),
        ("src net 203.0.113.0/24", {"icmp", "arp"}),
        ("tcp or udp and port 5353", {"udp"}),  # libpcap: (tcp or udp) and port 5353
        ("udp and port 5353 or tcp", {"udp", "tcp", "v6"}),
        ("port 0x1bb or port 0120", {"tcp", "v6"}),  # libpcap's hexadecimal and octal (80)
    ],
)
def test_filter_accepts_exactly_the_matching_frames(text: str, expected: set[str]) -> None:
    assert accepted(text) == expected


def test_vlan_matches_the_out_of_band_tag() -> None:
    tags = {"tcp": 10, "udp": 20}
    assert accepted("vlan", tags) == {"tcp", "udp"}
    assert accepted("vlan 20", tags) == {"udp"}
    assert accepted("not vlan", tags) == set(ALL) - {"tcp", "udp"}


def test_icmp_is_ipv4_only_and_icmp6_ipv6_only() -> None:
    v4_58 = frame_bytes(eth() / IP(src="192.0.2.1", dst="192.0.2.2", proto=58) / (b"\0" * 8))
    v6_1 = frame_bytes(eth() / IPv6(src="2001:db8::1", dst="2001:db8::2", nh=1) / (b"\0" * 8))
    for text, frame in [("icmp6", v4_58), ("icmp", v6_1)]:
        assert not run_program(compile_filter(parse_filter(text)), frame)
    assert run_program(compile_filter(parse_filter("proto 58")), v4_58)


def test_an_ipv6_protocol_is_also_read_after_a_fragment_header() -> None:
    v6 = IPv6(src="2001:db8::1", dst="2001:db8::2")
    first = frame_bytes(eth() / v6 / IPv6ExtHdrFragment(m=1) / TCP(dport=80))
    later = frame_bytes(eth() / v6 / IPv6ExtHdrFragment(offset=8, nh=6) / (b"\0" * 16))
    for frame in (first, later):
        assert run_program(compile_filter(parse_filter("tcp")), frame)
        assert not run_program(compile_filter(parse_filter("udp")), frame)
    # Ports, as in libpcap, only right after the fixed header.
    assert not run_program(compile_filter(parse_filter("port 80")), first)


def test_default_program_drops_non_ip_and_the_boxs_own_traffic() -> None:
    prog = capture_program("", ["192.0.2.1", "2001:db8::1"])
    got = {name for name, f in ALL.items() if run_program(prog, f)}
    assert got == set()  # every sample touches an own address or is ARP
    prog = capture_program("", ["203.0.113.99"])
    assert {n for n, f in ALL.items() if run_program(prog, f)} == set(ALL) - {"arp"}
    prog = capture_program("udp", ["203.0.113.99"], accept_non_ip=True)
    assert {n for n, f in ALL.items() if run_program(prog, f)} == {"udp", "frag2"}
    # The box's own addresses are dropped from IP traffic only: ARP naming one of them is
    # left to accept_non_ip (unlike the user filter's "host", which matches ARP like libpcap).
    prog = capture_program("", ["192.0.2.1", "2001:db8::1"], accept_non_ip=True)
    assert {n for n, f in ALL.items() if run_program(prog, f)} == {"arp"}


def test_frames_the_box_sends_are_kept_short_whatever_the_filters_say() -> None:
    # the ring counts them as the box's own (never metered): no filter may hide one
    prog = capture_program("udp", ["203.0.113.99"])
    for name, frame in ALL.items():
        assert run_program(prog, frame, pkttype=PACKET_OUTGOING) == OWN_FRAME_SNAPLEN, name
    assert {n for n, f in ALL.items() if run_program(prog, f)} == {"udp", "frag2"}
    assert run_program(capture_program("", [], snaplen=48), F_ARP, pkttype=PACKET_OUTGOING) == 48
    # a plain compiled filter has no such rule
    assert run_program(compile_filter(parse_filter("udp")), F_TCP, pkttype=PACKET_OUTGOING) == 0


def test_accept_returns_the_snap_length() -> None:
    prog = compile_filter(parse_filter("ip"), snaplen=256)
    assert run_program(prog, F_TCP) == 256
    assert len(pack_program(prog)) == 8 * len(prog)


@pytest.mark.parametrize(
    "text",
    [
        "tcp and",
        "host 300.1.1.1",
        "port 70000",
        "port 080",  # libpcap: octal, and 8 is not an octal digit
        "vlan 0x1000",
        "net 192.0.2.1/24",
        "frobnicate",
        "(ip",
    ],
)
def test_bad_filter_is_rejected_with_a_reason(text: str) -> None:
    with pytest.raises(FilterSyntaxError):
        parse_filter(text)
