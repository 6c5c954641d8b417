"""The native meter (`_fastpath.meter_json`, what `flows --pcap F --json` runs) against the
numpy path, byte for byte, on captures of every shape the decoder and meter know; and what
it keeps when its table overflows, which is the one place the two may differ."""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_RR, fragment
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    fragment6,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q
from testsupport.capture_helpers import (
    MS,
    T0,
    S,
    assert_native_matches_numpy,
    eth,
    frame_bytes,
    native_flows_json,
)

import appliance.capture.cli as flows_cli
from appliance.capture.config import MeterConfig
from appliance.capture.decode import (
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_RAW,
)
from appliance.capture.pcap import write_pcap
from appliance.cli import main
from appliance.devkit.capture.synth import generate, generate_concurrent

#: Seeds and settings of the differential runs (small captures: the whole file < 20 s).
SYNTH_SEEDS = (21, 22, 23)
CONFIGS = (
    MeterConfig(),
    MeterConfig(idle_timeout_s=0.4, active_timeout_s=2.0, close_linger_s=0.0),
    MeterConfig(idle_timeout_s=3.0, active_timeout_s=0.7, close_linger_s=0.05),
)


@pytest.mark.parametrize("seed", SYNTH_SEEDS)
def test_synthetic_captures_give_the_numpy_paths_lines(tmp_path: Path, seed: int) -> None:
    path = tmp_path / "synth.pcap"
    generate(path, seed=seed, packets=12_000, flows=800)
    for config in CONFIGS:
        counts = assert_native_matches_numpy(path, config)
        assert counts is not None and counts["flows"] >= 800


def test_the_concurrent_capture_gives_the_numpy_paths_lines(tmp_path: Path) -> None:
    path = tmp_path / "concurrent.pcap"
    generate_concurrent(path, seed=5, flows=1500, rounds=4)
    for config in CONFIGS:
        counts = assert_native_matches_numpy(path, config)
        assert counts is not None and counts["peak_flows"] == 1500


# -- frames unlike the generator's -------------------------------------------------------


def _odd_packets() -> list[Any]:
    """Every shape the per-frame rules handle: options, extension headers, QinQ, fragments,
    ICMP types, portless protocols, non-IP."""
    big = UDP(sport=5353, dport=4) / (b"f" * 1800)
    return [
        IP(src="192.0.2.1", dst="192.0.2.2", options=[IPOption_RR()]) / TCP(dport=22),
        Dot1Q(vlan=99) / IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=9),
        Dot1Q(vlan=5) / Dot1Q(vlan=6) / IP(src="192.0.2.7", dst="192.0.2.1") / UDP(),
        Dot1AD(vlan=7) / Dot1Q(vlan=8) / IP(src="192.0.2.7", dst="192.0.2.1") / UDP(),
        IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrHopByHop() / UDP(),
        IPv6(src="2001:db8::1", dst="2001:db8::2")
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrRouting()
        / TCP(sport=7, dport=8, flags="S"),
        IPv6(src="2001:db8::1", dst="2001:db8::2") / AH() / UDP(sport=1, dport=2),
        IPv6(src="2001:db8::2", dst="2001:db8::1") / ICMPv6EchoRequest(id=3),
        IPv6(src="2001:db8::1", dst="2001:db8::2") / ICMPv6EchoReply(id=3),
        IPv6(src="2001:db8::1", dst="2001:db8::2") / ICMPv6DestUnreach(code=4),
        IP(src="192.0.2.1", dst="192.0.2.2") / ICMP(type=3, code=1) / IP() / UDP(),
        IP(src="192.0.2.2", dst="192.0.2.1") / ICMP(type=0, id=77),
        IP(src="192.0.2.1", dst="192.0.2.2") / ICMP(type=8, id=77),
        IP(src="192.0.2.2", dst="192.0.2.1", proto=58) / b"abcdefgh",
        IP(src="192.0.2.2", dst="192.0.2.1", proto=47) / b"gre",
        IP(src="192.0.2.2", dst="192.0.2.2") / TCP(sport=9, dport=8, flags="FA"),
        IP(src="192.0.2.3", dst="192.0.2.4") / TCP(sport=9, dport=8, flags="R"),
        ARP(pdst="192.0.2.2"),
        Dot1Q(vlan=3) / ARP(),
        *fragment(IP(src="192.0.2.8", dst="192.0.2.9", id=7) / big, 600),
        *fragment6(
            IPv6(src="2001:db8::8", dst="2001:db8::9") / IPv6ExtHdrFragment(id=11) / big, 700
        ),
    ]


def _odd_frames() -> list[bytes]:
    frames = [frame_bytes(eth() / p) for p in _odd_packets()]
    tcp = frame_bytes(eth() / IP(src="192.0.2.3", dst="192.0.2.4") / TCP(flags="S"))
    frames += [tcp[:n] for n in (0, 10, 14, 20, 33, 34, 40, 47)]  # cut at header boundaries
    v6 = frame_bytes(eth() / IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrHopByHop())
    frames += [v6[:n] for n in (54, 60, 62)]  # cut inside the extension header
    frames.append(frame_bytes(eth() / IP(src="192.0.2.3", dst="192.0.2.4", version=5) / UDP()))
    frames.append(frame_bytes(eth() / IP(src="192.0.2.3", dst="192.0.2.4", ihl=4) / UDP()))
    frames.append(frame_bytes(eth() / IPv6(src="2001:db8::1", plen=0) / UDP()))  # jumbo
    return frames


def _cooked(frame: bytes, linktype: int) -> bytes:
    """The frame behind a Linux cooked header (its EtherType as the protocol)."""
    if len(frame) < 14:
        return frame
    if linktype == LINKTYPE_LINUX_SLL:
        return bytes(14) + frame[12:]
    return frame[12:14] + bytes(18) + frame[14:]


@pytest.mark.parametrize(
    "linktype", [LINKTYPE_ETHERNET, LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2, LINKTYPE_RAW]
)
def test_odd_frames_give_the_numpy_paths_lines(tmp_path: Path, linktype: int) -> None:
    frames = _odd_frames()
    if linktype == LINKTYPE_RAW:
        frames = [f[14:] for f in frames if len(f) >= 14 and f[12:14] in (b"\x08\x00", b"\x86\xdd")]
        frames.append(b"\x70" + bytes(40))  # IP version 7
    elif linktype != LINKTYPE_ETHERNET:
        frames = [_cooked(f, linktype) for f in frames]
    rng = random.Random(linktype)
    timed = [(T0 + i * MS, f) for i, f in enumerate(frames * 3)]
    rng.shuffle(timed)  # fragments in any order, time going backwards
    path = tmp_path / "odd.pcap"
    write_pcap(path, timed, linktype=linktype)
    for config in CONFIGS:
        counts = assert_native_matches_numpy(path, config)
        assert counts is not None and counts["packets"] > 20
        if linktype != LINKTYPE_RAW:
            assert counts["malformed"] and counts["fragments"] and counts["non_ip"]


def test_flows_ending_at_one_instant_come_in_key_order_on_both_paths(tmp_path: Path) -> None:
    """Ties on (last packet, first packet) are ordered by VLAN, IP version, protocol and the
    endpoints, whichever order a table ended them in."""
    rng = random.Random(4)
    packets = []
    for _ in range(60):
        if rng.random() < 0.5:
            ip: Any = IP(src=rng.choice(ADDRS4), dst=rng.choice(ADDRS4))
        else:
            ip = IPv6(src=rng.choice(ADDRS6), dst=rng.choice(ADDRS6))
        l4 = UDP(sport=rng.choice((53, 80, 9)), dport=rng.choice((53, 80, 9)))
        if rng.random() < 0.3:
            l4 = TCP(sport=rng.choice((53, 80)), dport=443, flags="R")
        packets.append(_tag(ip / l4, rng.sample((5, 9, 300), rng.randint(0, 1))))
    frames = [(T0 + (i // 20) * S, frame_bytes(eth() / p)) for i, p in enumerate(packets)]
    path = tmp_path / "ties.pcap"
    write_pcap(path, frames)
    for config in (MeterConfig(), MeterConfig(idle_timeout_s=0.5, close_linger_s=0.0)):
        counts = assert_native_matches_numpy(path, config)
        assert counts is not None
        text, _ = native_flows_json(path, config)
        rows = [json.loads(line) for line in text.splitlines()]
        tied = [r for r in rows if (r["end_ns"], r["start_ns"]) == (T0, T0)]
        assert len(tied) > 5
        key = [(r["vlan"], r["ip_version"], r["ip_proto"]) for r in tied]
        assert key == sorted(key)


def _ipv4_fragment(ident: int, offset: int, more: bool, sport: int) -> bytes:
    """An IPv4 fragment of a UDP datagram (the first carries the UDP header), by hand:
    thousands of them are needed, faster than scapy builds them."""
    body = struct.pack(">HHHH", sport, 53, 16, 0) + bytes(8) if offset == 0 else bytes(16)
    flags = (0x2000 if more else 0) | offset
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(body), ident, flags, 64, 17, 0,
                     bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2]))  # fmt: skip
    return bytes(6) + bytes(5) + b"\x01" + b"\x08\x00" + ip + body


def test_the_fragment_memory_forgets_the_oldest_and_the_stale(tmp_path: Path) -> None:
    """More first fragments than FRAG_MEMORY_MAX, a first fragment stored twice, later
    fragments in order and 31 s later: both paths remember and forget the same ones."""
    frames = [(i * MS, _ipv4_fragment(i, 0, True, 1000 + i % 300)) for i in range(5000)]
    frames += [(5000 * MS, _ipv4_fragment(7, 0, True, 2000))]  # stored again: newest
    frames += [(5001 * MS + i, _ipv4_fragment(i, 2, False, 0)) for i in range(0, 5000, 7)]
    frames += [(40 * S + i, _ipv4_fragment(i, 2, False, 0)) for i in range(4000, 5000, 9)]
    path = tmp_path / "frags.pcap"
    write_pcap(path, [(T0 + t, f) for t, f in frames])
    counts = assert_native_matches_numpy(path, MeterConfig(idle_timeout_s=100.0))
    assert counts is not None and counts["fragments"] == len(frames)


# -- hypothesis: mixed frames, any order, any gaps ---------------------------------------

ADDRS4 = ("192.0.2.1", "192.0.2.2", "198.51.100.7")
ADDRS6 = ("2001:db8::1", "2001:db8::2")


def _frame_strategy() -> st.SearchStrategy[list[bytes]]:
    """One frame (whole, cut short, tagged, non-IP), or the fragments of one datagram."""
    v4 = st.sampled_from(ADDRS4)
    v6 = st.sampled_from(ADDRS6)
    port = st.sampled_from((53, 80, 443, 40000))
    flags = st.sampled_from(("S", "SA", "A", "PA", "FA", "R", "RA", ""))
    ip4 = st.builds(lambda s, d, i: IP(src=s, dst=d, id=i), v4, v4, st.integers(1, 3))
    l4 = st.one_of(
        st.builds(lambda a, b, f: TCP(sport=a, dport=b, flags=f), port, port, flags),
        st.builds(lambda a, b: UDP(sport=a, dport=b), port, port),
        st.builds(
            lambda t, c, i: ICMP(type=t, code=c, id=i),
            st.sampled_from((0, 3, 8, 11)),
            st.integers(0, 2),
            st.integers(1, 2),
        ),
    )
    v4_packets = st.builds(lambda ip, t: ip / t, ip4, l4)
    v6_packets = st.builds(
        lambda s, d, t: IPv6(src=s, dst=d) / t,
        v6,
        v6,
        st.one_of(
            st.builds(lambda a, b, f: TCP(sport=a, dport=b, flags=f), port, port, flags),
            st.builds(lambda i: ICMPv6EchoRequest(id=i), st.integers(1, 2)),
            st.builds(lambda a, b: IPv6ExtHdrHopByHop() / UDP(sport=a, dport=b), port, port),
        ),
    )
    packets = st.one_of(v4_packets, v6_packets)
    tagged = st.builds(
        lambda p, tags: _tag(p, tags), packets, st.lists(st.integers(1, 4094), max_size=2)
    )
    whole = st.builds(lambda p: frame_bytes(eth() / p), tagged)
    frag = st.builds(
        lambda s, d, i, size: [
            frame_bytes(eth() / f)
            for f in fragment(IP(src=s, dst=d, id=i) / UDP(sport=9, dport=10) / (b"x" * size), 64)
        ],
        v4,
        v4,
        st.integers(1, 3),
        st.integers(60, 300),
    )
    cut = st.builds(lambda b, n: b[:n], whole, st.integers(0, 80))
    one = st.one_of(whole, cut, st.just(frame_bytes(eth() / ARP())))
    return st.one_of(one.map(lambda b: [b]), frag)


def _tag(p: Any, tags: list[int]) -> Any:
    for vid in tags:
        p = Dot1Q(vlan=vid) / p
    return p


GAPS = st.one_of(
    st.integers(0, 3 * MS),
    st.integers(-50 * MS, 0),  # time going backwards
    st.integers(1 * S, 100 * S),  # past every timeout
    st.sampled_from((5 * S, 5 * S + 1, 60 * S + 1)),  # on a deadline, or just past it
    st.just(0),
)


#: Hypothesis examples of the mixed-frame run: a bounded number in CI, many under `make soak`.
MIXED_EXAMPLES = int(os.environ.get("NATIVE_METER_EXAMPLES", "40"))


@settings(
    max_examples=MIXED_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    groups=st.lists(st.tuples(_frame_strategy(), GAPS), min_size=1, max_size=40),
    shuffle_seed=st.integers(0, 2**16),
    idle=st.sampled_from((0.002, 1.0, 5.0, 60.0)),
    active=st.sampled_from((0.004, 5.0, 1800.0)),
    linger=st.sampled_from((0.0, 0.001, 5.0)),
)
def test_mixed_frames_give_the_numpy_paths_lines(
    groups: list[tuple[list[bytes], int]],
    shuffle_seed: int,
    idle: float,
    active: float,
    linger: float,
) -> None:
    frames = [f for fs, _ in groups for f in fs]
    random.Random(shuffle_seed).shuffle(frames)  # fragments in any order
    t, timed = T0, []
    gaps = [g for _, g in groups]
    for i, f in enumerate(frames):
        t = max(t + gaps[i % len(gaps)], 0)
        timed.append((t, f))
    config = MeterConfig(idle_timeout_s=idle, active_timeout_s=active, close_linger_s=linger)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mixed.pcap"
        write_pcap(path, timed)
        assert assert_native_matches_numpy(path, config) is not None


def test_deadlines_that_tie_end_flows_for_the_same_reason(tmp_path: Path) -> None:
    """Idle, close and active deadlines at the same instant: ties go idle, close, active."""
    a, b = "192.0.2.1", "192.0.2.2"
    frames = []
    for n, (last, gap) in enumerate((("R", 5 * S + 1), ("FA", 5 * S + 1), ("A", 2 * S))):
        sport = 1000 + n
        t = n * 100 * S
        frames.append((t, IP(src=a, dst=b) / TCP(sport=sport, dport=80, flags="S")))
        frames.append((t + MS, IP(src=b, dst=a) / TCP(sport=80, dport=sport, flags="FA")))
        frames.append((t + 2 * MS, IP(src=a, dst=b) / TCP(sport=sport, dport=80, flags=last)))
        frames.append((t + 2 * MS + gap, IP(src=a, dst=b) / TCP(sport=sport, dport=80)))
    path = tmp_path / "ties.pcap"
    write_pcap(path, [(T0 + t, frame_bytes(eth() / p)) for t, p in frames])
    for idle, active in ((5.0, 1800.0), (5.0, 5.002), (2.0, 2.002)):
        config = MeterConfig(idle_timeout_s=idle, active_timeout_s=active, close_linger_s=5.0)
        text, _ = native_flows_json(path, config)
        assert_native_matches_numpy(path, config)
        reasons = {json.loads(line)["end_reason"] for line in text.splitlines()}
        assert "IDLE_TIMEOUT" in reasons, (idle, active, reasons)


# -- overflow -------------------------------------------------------------------------------


def test_an_overflowing_table_conserves_packets_and_counts_evictions(tmp_path: Path) -> None:
    path = tmp_path / "concurrent.pcap"
    generate_concurrent(path, seed=9, flows=600, rounds=3)
    config = MeterConfig(max_flows=64)
    text, counts = native_flows_json(path, config)
    assert counts is not None
    assert counts["evicted"] > 0 and counts["peak_flows"] == 64
    assert_native_matches_numpy(path, config)  # invariants only: evicted on both sides
    rows = [json.loads(line) for line in text.splitlines()]
    assert sum(r["end_reason"] == "EVICTED" for r in rows) == counts["evicted"]
    assert sum(r["packets_tx"] + r["packets_rx"] for r in rows) == 1800


# -- the command -------------------------------------------------------------------------


def _run(path: Path, native: bool, *extra: str) -> tuple[int, str, str, list[Any]]:
    """`flows --pcap path --json`, in-process, on one path; the native meter's results."""
    real = flows_cli.native_meter()
    calls: list[Any] = []

    def recording(*args: Any) -> Any:
        calls.append(real(*args))
        return calls[-1]

    out, err = io.StringIO(), io.StringIO()
    chosen: Callable[[], Any] = (lambda: recording) if native else (lambda: None)
    with (
        mock.patch.object(flows_cli, "native_meter", chosen),
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
    ):
        status = main(["flows", "--pcap", str(path), "--json", *extra])
    return status, out.getvalue(), err.getvalue(), calls


def test_the_command_writes_the_same_lines_and_summary_on_both_paths(tmp_path: Path) -> None:
    path = tmp_path / "synth.pcap"
    generate(path, seed=3, packets=6000, flows=400)
    # A cut record at the end: the same warning.
    path.write_bytes(path.read_bytes()[:-7])
    for extra in ((), ("--idle-timeout", "0.5", "--close-delay", "0", "--max-flows", "5000")):
        numpy_run = _run(path, False, *extra)
        native_run = _run(path, True, *extra)
        assert native_run[3] and native_run[3][0] is not None  # the native meter ran
        assert native_run[:3] == numpy_run[:3]
        assert "ends in a cut record" in native_run[2]


def _pcapng(path: Path, frames: list[bytes]) -> None:
    shb = struct.pack("<IIIHHqI", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1, 28)
    idb = struct.pack("<IIHHII", 1, 20, 1, 0, 65535, 20)
    blocks = [shb, idb]
    for i, f in enumerate(frames):
        pad = f + bytes(-len(f) % 4)
        ts = (T0 // 1000) + i
        body = struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(f), len(f)) + pad
        blocks.append(
            struct.pack("<II", 6, 12 + len(body)) + body + struct.pack("<I", 12 + len(body))
        )
    path.write_bytes(b"".join(blocks))


_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"", "too short to be a capture file (0 bytes)"),
        (b"\xd4\xc3\xb2\xa1" + bytes(10), "too short to be a capture file (14 bytes)"),
        (b"garbage!" * 8, "not a pcap or pcapng file (magic 67617262)"),
        (_HEADER[:20] + struct.pack("<I", 147), "link type 147 is not supported"),
        (
            _HEADER + struct.pack("<IIII", 1, 0, 400000, 400000) + bytes(400000),
            "corrupt record",
        ),
    ],
    ids=["empty", "short-header", "garbage", "link-type", "huge-record"],
)
def test_bad_files_get_the_same_one_line_error_on_both_paths(
    tmp_path: Path, content: bytes, says: str
) -> None:
    path = tmp_path / "bad.pcap"
    path.write_bytes(content)
    native_run = _run(path, True)
    assert native_run[:3] == _run(path, False)[:3]
    status, out, err, _ = native_run
    assert status != 0 and out == "" and err.count("\n") == 1 and says in err, err


def test_a_cut_record_header_warns_on_both_paths(tmp_path: Path) -> None:
    frame = frame_bytes(eth() / IP(src="192.0.2.1", dst="192.0.2.2") / UDP())
    path = tmp_path / "cut.pcap"
    write_pcap(path, [(T0, frame)])
    path.write_bytes(path.read_bytes() + bytes(9))
    native_run = _run(path, True)
    assert native_run[3] and native_run[3][0] is not None
    assert native_run[:3] == _run(path, False)[:3]
    assert native_run[0] == 0 and "cut record (9 bytes after frame 1)" in native_run[2]


def test_files_the_native_meter_does_not_read_take_the_numpy_path(tmp_path: Path) -> None:
    frames = [
        frame_bytes(eth() / IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=i)) for i in range(5)
    ]
    ng = tmp_path / "c.pcapng"
    _pcapng(ng, frames)
    status, out, err, calls = _run(ng, True)
    assert status == 0 and calls == [None] and out.count("\n") == 5
    assert (status, out, err) == _run(ng, False)[:3]


def _imports_numpy(path: Path) -> tuple[bool, int]:
    probe = (
        "import sys, os\n"
        "sys.stdout = open(os.devnull, 'w')\n"
        "from appliance.cli import main\n"
        f"status = main(['flows', '--pcap', {str(path)!r}, '--json'])\n"
        "print('NUMPY', 'numpy' in sys.modules, status, file=sys.stderr)\n"
    )
    err = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    ).stderr
    _, imported, status = err.splitlines()[-1].split()
    return imported == "True", int(status)


def test_flows_json_never_imports_numpy_on_the_native_path(tmp_path: Path) -> None:
    path = tmp_path / "odd.pcap"
    write_pcap(path, [(T0 + i * MS, f) for i, f in enumerate(_odd_frames())])
    assert _imports_numpy(path) == (False, 0)
    # The probe can tell: a pcapng file takes the numpy path.
    ng = tmp_path / "c.pcapng"
    _pcapng(ng, _odd_frames()[:4])
    assert _imports_numpy(ng) == (True, 0)
