"""The filter compiler against libpcap's: same filter text, same verdict on every frame.

libpcap's compiler (`tcpdump -y EN10MB -ddd EXPR`, no interface needed) is the reference for
what a pcap-filter expression means. Instructions are not compared (the compilers and their
optimisers differ); verdicts are: each program runs in testsupport.classic_bpf, a complete
interpreter with the kernel's rules, on every frame of a corpus, and accept/reject must agree
for every (expression, frame) pair. Our programs are also run through bpf.run_program, which
must agree with the complete interpreter.

VLAN: the two compilers are meant for different representations of a tagged frame. libpcap's
program, compiled without a live socket, reads the 802.1Q tag in the frame bytes, and its
`vlan` keyword moves the offsets of every primitive after it by four bytes. Ours runs on the
ring, where the kernel has already stripped the tag into metadata (docs: FIELD-NOTES), so
`vlan` reads the ancillary tag and no primitive ever moves. The test gives each program its
own representation of the same frame (tagged bytes for libpcap; stripped bytes plus the TCI
for ours) and compares the expressions that mean the same thing in both:
- a vlan-free expression E on an untagged frame: E against E;
- E on a tagged frame: ours `E` against libpcap `vlan and (E)` (ours looks past the tag);
- ours `vlan N and (E)` against libpcap's same text, on every frame;
- ours `not vlan and (E)` against libpcap `(E) and not vlan` (libpcap's `not vlan and E`
  would read E four bytes too far into an untagged frame: a known libpcap pitfall).
"""

from __future__ import annotations

import functools
import random
import shutil
import subprocess
from collections.abc import Callable

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6MLReport2,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP
from scapy.layers.sctp import SCTP
from testsupport import classic_bpf
from testsupport.capture_helpers import eth, frame_bytes

from appliance.capture.bpf import compile_filter, parse_filter, run_program

Program = list[tuple[int, int, int, int]]

# -- the frame corpus ---------------------------------------------------------------------

A4, B4, C4, D4 = "192.0.2.1", "198.51.100.2", "203.0.113.5", "192.0.2.200"
A6, B6, C6 = "2001:db8::1", "2001:db8:1::2", "2001:db8:1:0:8000::9"


def _ip4(src: str = A4, dst: str = B4, **kw: object) -> IP:
    return IP(src=src, dst=dst, **kw)


def _ip6(src: str = A6, dst: str = B6, **kw: object) -> IPv6:
    return IPv6(src=src, dst=dst, **kw)


def _frames() -> dict[str, bytes]:
    """Untagged frames as the wire (and the ring) carries them."""
    e = eth()
    f = {
        "v4-tcp": e / _ip4() / TCP(sport=1234, dport=443),
        "v4-udp": e / _ip4(D4, A4) / UDP(sport=53, dport=5353),
        "v4-icmp": e / _ip4(C4, A4) / ICMP(),
        "v4-sctp": e / _ip4(B4, C4) / SCTP(sport=80, dport=9),
        "v4-options-tcp": e / _ip4(options=b"\x01\x01\x01\x00") / TCP(sport=80, dport=22),
        "v4-frag-first": e / _ip4(flags="MF", id=7) / UDP(sport=7, dport=443) / (b"x" * 40),
        "v4-frag-later": e / _ip4(frag=185, id=7, proto=17) / (b"\x00\x50\x01\xbb" * 10),
        "v4-proto58": e / _ip4(C4, D4, proto=58) / (b"\x80\x00" + b"\x00" * 10),
        "v4-gre": e / _ip4(proto=47) / (b"\x00" * 8),
        "v4-ihl0": eth(type=0x0800) / (b"\x40" + bytes(_ip4() / UDP(sport=5, dport=6))[1:]),
        "v6-tcp": e / _ip6() / TCP(sport=80, dport=9),
        "v6-udp": e / _ip6(B6, C6) / UDP(sport=53, dport=1234),
        "v6-ping": e / _ip6(C6, A6) / ICMPv6EchoRequest(),
        "v6-sctp": e / _ip6() / SCTP(sport=5353, dport=80),
        "v6-nh1": e / _ip6(nh=1) / (b"\x08\x00" + b"\x00" * 10),
        "v6-hbh-mld": e / _ip6(A6, "ff02::16") / IPv6ExtHdrHopByHop() / ICMPv6MLReport2(),
        "v6-frag-first-udp": e / _ip6() / IPv6ExtHdrFragment(m=1, id=9) / UDP(dport=53),
        "v6-frag-later-tcp": e / _ip6() / IPv6ExtHdrFragment(offset=100, nh=6, id=9) / (b"\0" * 24),
        "v6-frag-first-icmp6": e / _ip6() / IPv6ExtHdrFragment(m=1) / ICMPv6EchoRequest(),
        "v6-routing-tcp": e / _ip6() / IPv6ExtHdrRouting(addresses=[C6]) / TCP(sport=443),
        "v6-destopt-udp": e / _ip6(C6, B6) / IPv6ExtHdrDestOpt() / UDP(sport=9, dport=80),
        "arp-request": eth(dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=A4, pdst=B4),
        "arp-reply": e / ARP(op=2, psrc=C4, pdst=D4),
        "rarp": eth(type=0x8035) / ARP(op=3, psrc=B4, pdst=A4),
        "lldp": eth(type=0x88CC) / (b"\x02\x07\x04" + b"\x00" * 40),
    }
    out = {name: frame_bytes(pkt) for name, pkt in f.items()}
    # Truncated frames: a load past the end ends a program with "reject" (see _CUT).
    out["short-10"] = out["v4-tcp"][:10]
    out["short-13"] = out["v4-tcp"][:13]
    out["v4-cut-in-src"] = out["v4-tcp"][:28]
    out["v4-cut-in-dst"] = out["v4-tcp"][:32]
    out["v4-cut-before-ports"] = out["v4-tcp"][:34]
    out["v4-cut-in-dport"] = out["v4-tcp"][:37]
    out["v6-cut-in-dst"] = out["v6-tcp"][:50]
    out["v6-cut-before-ports"] = out["v6-tcp"][:54]
    out["v6-frag-cut-in-hdr"] = out["v6-frag-first-udp"][:55]
    out["arp-cut-in-tpa"] = out["arp-request"][:34]
    return out


def _tag(frame: bytes, tci: int, tpid: int = 0x8100) -> bytes:
    return frame[:12] + tpid.to_bytes(2, "big") + tci.to_bytes(2, "big") + frame[12:]


def _tagged(untagged: dict[str, bytes]) -> dict[str, bytes]:
    """Tagged frames as a pcap file holds them (the tag in the bytes)."""
    base = [
        "v4-tcp",
        "v4-udp",
        "v4-frag-later",
        "v6-tcp",
        "v6-ping",
        "v6-frag-first-udp",
        "arp-request",
        "v4-cut-in-dst",
    ]
    tcis = {"vid20": 20, "pcp5-vid10": 0xA00A, "prio-vid0": 0x0000, "dei-vid4095": 0x1FFF}
    out = {f"{n}@{t}": _tag(untagged[n], tci) for n in base for t, tci in tcis.items()}
    out["v4-tcp@qinq-20-30"] = _tag(_tag(untagged["v4-tcp"], 30), 20, 0x88A8)
    out["v6-udp@8021ad-vid30"] = _tag(untagged["v6-udp"], 30, 0x88A8)
    return out


UNTAGGED = _frames()
TAGGED = _tagged(UNTAGGED)
#: The truncated frames. On these a verdict depends on which loads a program makes before it
#: decides, so on libpcap's optimiser too: `net ::/0` loads the IPv6 addresses unoptimised and
#: not at all optimised, `a or b` may be reordered. There ours must give the verdict of one of
#: libpcap's two programs (-O off and on); on whole frames those agree, and ours must too.
_CUT = {f for n, f in UNTAGGED.items() if n.startswith("short-") or "-cut-" in n}
_CUT |= {f for n, f in TAGGED.items() if "-cut-" in n}


def _stripped(frame: bytes) -> tuple[bytes, int]:
    """The ring's view of a tagged frame: the outer tag removed, its TCI in metadata."""
    return frame[:12] + frame[16:], int.from_bytes(frame[14:16], "big")


# -- the expression corpus ----------------------------------------------------------------

PRIMITIVES = [
    "ip",
    "ip6",
    "arp",
    "tcp",
    "udp",
    "sctp",
    "icmp",
    "icmp6",
    "proto 0",
    "proto 1",
    "proto 6",
    "proto 17",
    "proto 47",
    "proto 58",
    "proto 132",
    f"host {A4}",
    f"src host {A4}",
    f"dst host {A4}",
    f"host {B4}",
    f"dst host {D4}",
    f"host {A6}",
    f"src host {A6}",
    f"dst host {B6}",
    f"host {C6}",
    "net 192.0.2.0/24",
    "src net 198.51.100.0/24",
    "dst net 203.0.113.0/24",
    "net 192.0.2.128/25",
    "net 192.0.0.0/16",
    "net 0.0.0.0/0",
    "net 2001:db8::/32",
    "src net 2001:db8:1::/48",
    "dst net 2001:db8::/64",
    "net 2001:db8:1:0:8000::/65",
    "net ::/0",
    "port 80",
    "src port 53",
    "dst port 443",
    "port 9",
    "dst port 5353",
    "src port 1234",
    "port 0",
]

HANDWRITTEN = [
    "tcp or udp and port 53",  # libpcap: "and" and "or" share one precedence, left to right
    "udp and port 53 or tcp",
    "not tcp or udp and port 80",
    "ip or ip6 and not arp",
    "! ip && ! arp",
    "tcp && !(port 443)",
    "(udp or tcp) and not src host 192.0.2.200",
    "not (host 192.0.2.1 or host 2001:db8::1)",
    "(ip or ip6) and not (host 192.0.2.1 or host 2001:db8::1)",
    "not not ip6",
    "((tcp))",
    "icmp or icmp6",
    "src port 53 or dst port 443 and ip",
    "net 192.0.2.0/24 and not net 192.0.2.128/25",
    "src net 2001:db8::/32 and dst net 2001:db8:1::/48 and tcp",
    "port 0x50 or port 011",  # libpcap's numbers: hexadecimal, and octal after a leading 0
    "proto 0x11 or proto 06",
]


def _random_expressions(count: int, seed: int = 11) -> list[str]:
    """Combinations of the primitives: and/or/not, both spellings, nested parentheses."""
    rng = random.Random(seed)

    def build(depth: int) -> str:
        if depth == 0 or rng.random() < 0.3:
            prim = rng.choice(PRIMITIVES)
            return rng.choice(["not ", "! ", ""]) + prim if rng.random() < 0.25 else prim
        parts = [build(depth - 1) for _ in range(rng.randint(2, 3))]
        text = parts[0]
        for p in parts[1:]:
            text += " " + rng.choice(["and", "or", "&&", "||"]) + " " + p
        return f"({text})" if rng.random() < 0.5 else text

    return [build(2) for _ in range(count)]


EXPRESSIONS = list(
    dict.fromkeys(
        PRIMITIVES + [f"not {p}" for p in PRIMITIVES] + HANDWRITTEN + _random_expressions(120)
    )
)
#: Expressions combined with the vlan forms (the rest of the corpus is covered above).
VLAN_INNER = ["ip", "ip6", "tcp", "udp and port 5353", f"host {A4}", "net 2001:db8::/32", "arp"]
VLAN_IDS = ["", " 0", " 10", " 20", " 30", " 4095", " 0x14", " 012"]
VLAN_EXPRESSIONS = [f"vlan{v}" for v in VLAN_IDS] + [f"not vlan{v}" for v in VLAN_IDS]
VLAN_EXPRESSIONS += [f"vlan{v} and ({inner})" for v in VLAN_IDS for inner in VLAN_INNER]


# -- running both compilers ---------------------------------------------------------------

TCPDUMP = shutil.which("tcpdump")


@functools.cache
def libpcap_program(expr: str, optimise: bool = True) -> Program:
    """libpcap's program for expr on Ethernet (an expression it proves empty: RET 0)."""
    assert TCPDUMP is not None, "tcpdump (libpcap's compiler) is missing: run make apt"
    proc = subprocess.run(
        [TCPDUMP, "-y", "EN10MB", "-ddd", *([] if optimise else ["-O"]), expr],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        if "expression rejects all packets" in proc.stderr:
            return [(0x06, 0, 0, 0)]
        raise AssertionError(f"tcpdump rejected {expr!r}: {proc.stderr.strip()}")
    lines = proc.stdout.split("\n")
    count = int(lines[0])
    prog = [tuple(int(w) for w in line.split()) for line in lines[1 : 1 + count]]
    return [(c, jt, jf, k) for c, jt, jf, k in prog]


def libpcap_verdicts(expr: str, frame: bytes) -> set[bool]:
    """libpcap's verdicts on frame: its optimised and unoptimised programs' (see _CUT)."""
    verdicts = {
        classic_bpf.run(libpcap_program(expr, optimise), frame, None) != 0
        for optimise in (True, False)
    }
    assert len(verdicts) == 1 or frame in _CUT, "libpcap's optimiser changed a verdict"
    return verdicts


def libpcap_accepts(expr: str, frame: bytes) -> bool:
    """libpcap's verdict on a whole frame."""
    (verdict,) = libpcap_verdicts(expr, frame)
    return verdict


def ours_accepts(expr: str, frame: bytes, tci: int | None) -> bool:
    """Our verdict, from the complete interpreter and from bpf.run_program (they must agree)."""
    prog = compile_filter(parse_filter(expr))
    verdict = classic_bpf.run(prog, frame, tci) != 0
    assert (run_program(prog, frame, tci) != 0) == verdict, "bpf.run_program disagrees"
    return verdict


def _disagreements(cases: dict[str, tuple[bool, set[bool]]]) -> list[str]:
    return [f"{name}: ours {o}, libpcap {t}" for name, (o, t) in cases.items() if o not in t]


# -- the differential tests ---------------------------------------------------------------


@pytest.mark.parametrize("expr", EXPRESSIONS, ids=str)
def test_untagged_frames_get_libpcaps_verdict(expr: str) -> None:
    cases = {
        name: (ours_accepts(expr, frame, None), libpcap_verdicts(expr, frame))
        for name, frame in UNTAGGED.items()
    }
    assert _disagreements(cases) == []


@pytest.mark.parametrize("expr", EXPRESSIONS, ids=str)
def test_a_stripped_tag_is_looked_past_like_libpcaps_vlan_keyword(expr: str) -> None:
    cases = {}
    for name, frame in TAGGED.items():
        inner, tci = _stripped(frame)
        cases[name] = (
            ours_accepts(expr, inner, tci),
            libpcap_verdicts(f"vlan and ({expr})", frame),
        )
    assert _disagreements(cases) == []


@pytest.mark.parametrize("expr", VLAN_EXPRESSIONS, ids=str)
def test_vlan_forms_match_libpcaps_on_every_frame(expr: str) -> None:
    # Except frames shorter than an Ethernet header, which no Ethernet driver delivers: there
    # libpcap's in-band `not vlan` fails its load, ours reads only the kernel's metadata.
    cases = {
        name: (ours_accepts(expr, *ring_view), libpcap_verdicts(expr, frame))
        for name, (frame, ring_view) in _both_views().items()
        if len(frame) >= 14
    }
    assert _disagreements(cases) == []


@pytest.mark.parametrize("inner", VLAN_INNER)
def test_not_vlan_matches_libpcap_with_the_vlan_test_last(inner: str) -> None:
    cases = {
        name: (
            ours_accepts(f"not vlan and ({inner})", *ring_view),
            libpcap_verdicts(f"({inner}) and not vlan", frame),
        )
        for name, (frame, ring_view) in _both_views().items()
    }
    assert _disagreements(cases) == []


@functools.cache
def _both_views() -> dict[str, tuple[bytes, tuple[bytes, int | None]]]:
    """Every frame of the corpus: (pcap bytes, (ring bytes, ring TCI))."""
    views: dict[str, tuple[bytes, tuple[bytes, int | None]]] = {
        n: (f, (f, None)) for n, f in UNTAGGED.items()
    }
    views.update({n: (f, _stripped(f)) for n, f in TAGGED.items()})
    return views


# -- the interpreter itself ---------------------------------------------------------------


def _is4(f: bytes) -> bool:
    return f[12:14] == b"\x08\x00"


def _is6(f: bytes) -> bool:
    return f[12:14] == b"\x86\xdd"


def _word(f: bytes, at: int) -> int:
    return int.from_bytes(f[at : at + 2], "big")


def _iplen(f: bytes) -> int:
    return _word(f, 16)


#: libpcap expressions whose programs use the instructions our compiler never emits (scratch
#: memory, X arithmetic, JGT/JGE, LEN), each with the answer computed from the bytes directly.
INTERPRETER_CHECKS: list[tuple[str, Callable[[bytes], bool]]] = [
    ("len > 60", lambda f: len(f) > 60),
    ("len >= 60", lambda f: len(f) >= 60),
    ("greater 61", lambda f: len(f) >= 61),
    ("ip[9] = 6", lambda f: _is4(f) and f[23] == 6),
    ("ip[2:2] - 20 > 19", lambda f: _is4(f) and _iplen(f) > 39),
    ("ip[2:2] * 3 / 2 = 60", lambda f: _is4(f) and _iplen(f) == 40),
    ("ip[8] ^ 0xff = 0xbf", lambda f: _is4(f) and f[22] == 0x40),
    ("(ip[0] & 0xf) << 2 = 20", lambda f: _is4(f) and f[14] & 0xF == 5),
    ("ip[0] >> 4 = 4 and ip[6] | 0x20 = 0x20", lambda f: _is4(f) and f[20] | 0x20 == 0x20),
    ("len % 7 = 4", lambda f: len(f) % 7 == 4),
    ("tcp[tcpflags] & tcp-syn != 0", lambda f: _is4(f) and f[23] == 6 and f[47] & 2 != 0),
    ("tcp[2:2] = 443", lambda f: _is4(f) and f[23] == 6 and f[36:38] == b"\x01\xbb"),
    (
        "ip6[6] = 6 and ip6[40:2] + ip6[42:2] = 89",
        lambda f: _is6(f) and f[20] == 6 and _word(f, 54) + _word(f, 56) == 89,
    ),
    ("ip[2:2] > len - 14", lambda f: _is4(f) and _iplen(f) > len(f) - 14),
    ("ip[2:2] < len - 14", lambda f: _is4(f) and _iplen(f) < len(f) - 14),
]


@pytest.mark.parametrize(("expr", "truth"), INTERPRETER_CHECKS)
def test_the_interpreter_runs_libpcaps_programs_right(
    expr: str, truth: Callable[[bytes], bool]
) -> None:
    v4, v6 = UNTAGGED["v4-tcp"], UNTAGGED["v6-tcp"]
    frames = {"v4": v4, "v6": v6, "v4-padded": v4 + bytes(20), "v6-udp": UNTAGGED["v6-udp"]}
    assert {n: libpcap_accepts(expr, f) for n, f in frames.items()} == {
        n: truth(f) for n, f in frames.items()
    }
