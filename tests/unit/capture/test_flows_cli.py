"""`infraspectre flows --pcap FILE [--json]`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP
from testsupport.capture_helpers import MS, T0, eth, frame_bytes

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
