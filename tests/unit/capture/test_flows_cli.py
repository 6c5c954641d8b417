"""`infraspectre flows --pcap FILE [--json]`."""

from __future__ import annotations

import datetime as dt
import json
import struct
from pathlib import Path

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, Dot1Q
from testsupport.capture_helpers import MS, T0, eth, frame_bytes

from appliance.capture.decode import LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2
from appliance.capture.pcap import write_pcap
from appliance.cli import main


def _capture(path: Path) -> None:
    frames = [
        eth() / IP(src="192.0.2.1", dst="192.0.2.2") / TCP(sport=40000, dport=80, flags="S"),
        eth() / IP(src="192.0.2.2", dst="192.0.2.1") / TCP(sport=80, dport=40000, flags="SA"),
        eth() / IP(src="192.0.2.1", dst="198.51.100.9") / UDP(sport=5000, dport=53),
        eth(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="192.0.2.2"),
    ]
    write_pcap(path, [(T0 + i * MS, frame_bytes(f)) for i, f in enumerate(frames)])


def test_json_lines_use_flow_event_field_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.pcap"
    _capture(path)
    assert main(["flows", "--pcap", str(path), "--json"]) == 0
    out, err = capsys.readouterr()
    rows = sorted((json.loads(line) for line in out.splitlines()), key=lambda r: r["proto"])
    tcp, udp = rows
    assert {k: tcp[k] for k in ("src_ip", "dst_ip", "src_port", "dst_port", "proto")} == {
        "src_ip": "192.0.2.1",
        "dst_ip": "192.0.2.2",
        "src_port": 40000,
        "dst_port": 80,
        "proto": "TCP",
    }
    assert (tcp["packets_tx"], tcp["packets_rx"], tcp["bytes_tx"], tcp["flags"]) == (1, 1, 40, 0x12)
    assert (tcp["start_time"], tcp["end_time"], tcp["duration_ms"]) == (
        T0 // 1_000_000,
        T0 // 1_000_000 + 1,
        1,
    )
    assert (udp["vlan"], udp["ip_version"], udp["end_reason"]) == (0, 4, "SHUTDOWN")
    assert "2 flows, 4 frames, 3 IP packets" in err and "0x0806: 1" in err


def test_text_output_and_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.pcap"
    _capture(path)
    assert main(["flows", "--pcap", str(path)]) == 0
    assert "192.0.2.1:40000 -> 192.0.2.2:80" in capsys.readouterr().out
    assert main(["flows", "--pcap", str(tmp_path / "nope.pcap")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_flow_event_carries_every_record_field(tmp_path: Path) -> None:
    from appliance.capture.flows import to_flow_event
    from appliance.capture.offline import meter_pcap
    from appliance.wire import FlowEvent

    path = tmp_path / "c.pcap"
    _capture(path)
    flows, _ = meter_pcap(path)
    rec = next(r for r in flows.records() if r.proto == "TCP")
    ev = to_flow_event(rec, "eth1")
    assert isinstance(ev, FlowEvent)
    assert (ev.src_ip, ev.dst_port, ev.proto, ev.packets_tx, ev.packets_rx) == (
        "192.0.2.1",
        80,
        "TCP",
        1,
        1,
    )
    assert (ev.flags_rx, ev.interface, ev.start_ns, ev.duration_ms) == (0x12, "eth1", T0, 1)
    assert ev.end_reason == FlowEvent.EndReason.SHUTDOWN
    assert FlowEvent.FromString(ev.SerializeToString()) == ev


def test_tcp_flags_read_as_nfdump_letters() -> None:
    from appliance.capture.flows import tcp_flag_letters

    assert tcp_flag_letters(0x1B) == "...AP.SF"
    assert tcp_flag_letters(0x12) == "...A..S."
    assert tcp_flag_letters(0) == "........"
    assert tcp_flag_letters(0xFF) == "CEUAPRSF"


def _nfdump_style_capture(path: Path) -> None:
    c, s = "192.0.2.1", "198.51.100.2"
    frames = [
        (0, eth() / IP(src=c, dst=s) / UDP(sport=5000, dport=53)),  # ends last (10 s)
        (MS, eth() / IP(src=c, dst=s) / TCP(sport=40000, dport=80, flags="S")),
        (2 * MS, eth() / IP(src=s, dst=c) / TCP(sport=80, dport=40000, flags="SA")),
        (3 * MS, eth() / IP(src=c, dst=s) / TCP(sport=40000, dport=80, flags="PA")),
        (4 * MS, eth() / IP(src=c, dst=s) / TCP(sport=40000, dport=80, flags="FA")),
        (5 * MS, eth() / IP(src=s, dst=c) / TCP(sport=80, dport=40000, flags="FA")),
        (1_000 * MS, eth() / IP(src=c, dst=s) / ICMP(type=3, code=3)),  # ends first
        (10_000 * MS, eth() / IP(src=c, dst=s) / UDP(sport=5000, dport=53)),
    ]
    write_pcap(path, [(T0 + t, frame_bytes(f)) for t, f in frames])


def test_text_rows_read_like_nfdump_in_the_order_flows_ended(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.pcap"
    _nfdump_style_capture(path)
    assert main(["flows", "--pcap", str(path)]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[:4] == ["Date", "first", "seen", "(UTC)"] and "Flags" in header
    tcp, icmp, udp = (row.split() for row in rows)
    first = dt.datetime.fromtimestamp(T0 / 1e9, dt.UTC)
    assert tcp[:4] == [f"{first:%Y-%m-%d}", f"{first:%H:%M:%S}.001", "00:00:00.004", "TCP"]
    assert tcp[4:8] == ["192.0.2.1:40000", "->", "198.51.100.2:80", "...AP.SF"]
    assert tcp[8:] == ["3/2", "120/80", "0", "TCP_FIN"]
    assert icmp[3:7] == ["ICMP", "192.0.2.1:0", "->", "198.51.100.2:3.3"]
    assert udp[1:5] == [f"{first:%H:%M:%S}.000", "00:00:10.000", "UDP", "192.0.2.1:5000"]


def test_json_lines_come_in_the_order_flows_ended(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.pcap"
    _nfdump_style_capture(path)
    assert main(["flows", "--pcap", str(path), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["proto"] for r in rows] == ["TCP", "ICMP", "UDP"]
    ends = [r["end_ns"] for r in rows]
    assert ends == sorted(ends)


def test_end_order_holds_across_batches_and_expiry(tmp_path: Path) -> None:
    from appliance.capture.config import MeterConfig
    from appliance.capture.offline import OfflineSummary, iter_pcap_records

    frames = []
    for i in range(300):  # overlapping flows, some idle-expired, across many small batches
        sport = 1000 + i % 37
        frames.append((T0 + i * 97 * MS, eth() / IP(src="192.0.2.1") / UDP(sport=sport)))
    path = tmp_path / "many.pcap"
    write_pcap(path, [(t, frame_bytes(f)) for t, f in frames])
    got = []
    for item in iter_pcap_records(path, MeterConfig(idle_timeout_s=2), batch_size=7):
        if not isinstance(item, OfflineSummary):
            got.extend(item)
    assert sum(r.packets_tx for r in got) == 300
    keys = [(r.end_ns, r.start_ns) for r in got]
    assert keys == sorted(keys)


def test_a_capture_cut_short_warns_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "c.pcap"
    _nfdump_style_capture(path)
    path.write_bytes(path.read_bytes()[:-5])
    assert main(["flows", "--pcap", str(path)]) == 0
    err = capsys.readouterr().err
    assert "7 frames" in err
    assert "warning" in err and "ends in a cut record (71 bytes after frame 7)" in err
    _nfdump_style_capture(path)
    assert main(["flows", "--pcap", str(path)]) == 0
    assert "warning" not in capsys.readouterr().err


def _cooked(frame: bytes, linktype: int) -> bytes:
    """The frame as a Linux cooked capture holds it: an SLL / SLL2 header with the frame's
    EtherType as protocol, then what followed the Ethernet header (a VLAN tag included)."""
    proto, rest, mac = frame[12:14], frame[14:], frame[6:12]
    if linktype == LINKTYPE_LINUX_SLL:  # packet type, ARPHRD_ETHER, address length, address
        return struct.pack(">HHH8s", 0, 1, 6, mac) + proto + rest
    # SLL2: protocol, reserved, ifindex, ARPHRD_ETHER, packet type, address length, address
    return proto + struct.pack(">HIHBB8s", 0, 2, 1, 0, 6, mac) + rest


@pytest.mark.parametrize("linktype", [LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2])
def test_linux_cooked_captures_give_the_flows_of_the_ethernet_capture(
    tmp_path: Path, linktype: int
) -> None:
    from appliance.capture.offline import meter_pcap

    c6, s6 = "2001:db8::1", "2001:db8::2"
    packets = [
        eth() / IP(src="192.0.2.1", dst="192.0.2.2") / TCP(sport=40000, dport=80, flags="S"),
        eth() / IP(src="192.0.2.2", dst="192.0.2.1") / TCP(sport=80, dport=40000, flags="SA"),
        eth() / Dot1Q(vlan=10) / IP(src="192.0.2.1", dst="192.0.2.9") / UDP(sport=7, dport=9),
        eth() / IPv6(src=c6, dst=s6) / UDP(sport=5353, dport=5353) / (b"x" * 40),
        eth() / IPv6(src=c6, dst=s6) / IPv6ExtHdrHopByHop() / ICMPv6EchoRequest(id=3),
        eth() / IP(src="192.0.2.1", dst="192.0.2.2", flags="MF", frag=0) / UDP() / (b"f" * 64),
        eth(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="192.0.2.2"),
    ]
    frames = [(T0 + i * MS, frame_bytes(p)) for i, p in enumerate(packets)]
    ether, cooked = tmp_path / "eth.pcap", tmp_path / "cooked.pcap"
    write_pcap(ether, frames)
    write_pcap(cooked, [(t, _cooked(f, linktype)) for t, f in frames], linktype=linktype)
    want, want_summary = meter_pcap(ether)
    got, got_summary = meter_pcap(cooked)
    assert len(want) == 5
    assert got.records() == want.records()
    assert got_summary.decode.non_ip == want_summary.decode.non_ip == {0x0806: 1}
    assert got_summary.decode.malformed == 0


def test_flows_starts_without_the_network_and_crypto_stacks(tmp_path: Path) -> None:
    """`flows --pcap` is timed against softflowd as a whole process: it must not pay for
    grpc, protobuf, cryptography, PyNaCl or PyYAML (no --config given), which it never uses."""
    import subprocess
    import sys

    path = tmp_path / "c.pcap"
    _capture(path)
    probe = (
        "import sys\n"
        "from appliance.cli import main\n"
        f"status = main(['flows', '--pcap', {str(path)!r}, '--json'])\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'grpc', 'google', 'cryptography', 'nacl', 'pyroute2', 'yaml'})\n"
        "print('HEAVY', heavy, status)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert out.splitlines()[-1] == "HEAVY [] 0"
    assert sum(1 for line in out.splitlines() if line.startswith("{")) == 2
