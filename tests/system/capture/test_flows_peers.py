"""`infraspectre flows --pcap` against the peers, on the same capture files: softflowd (through
nfcapd and nfdump) for what a connection is and how its flags read, tcpdump for first-seen
times, cut captures and Linux cooked captures (what `tcpdump -i any` writes)."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from testsupport.capture_helpers import MS, T0, eth, frame_bytes
from testsupport.peers import PeerFlow, softflowd_flows

from appliance.capture.config import MeterConfig
from appliance.capture.flows import FlowRecord, tcp_flag_letters
from appliance.capture.offline import meter_pcap
from appliance.capture.pcap import PcapReader, write_pcap
from appliance.cli import main
from appliance.devkit.capture.lab import MirrorLab
from appliance.devkit.capture.labtraffic import tcp_exchange, udp_exchange

CLIENT, SERVER = "192.0.2.10", "198.51.100.20"


def _late_ack_capture(path: Path, seed: int) -> None:
    """30 interleaved TCP connections, each closed by FINs both ways and ACKed 0.5-4.9 s later
    (well inside the close delay), plus DNS-like UDP exchanges."""
    rnd = random.Random(seed)
    frames: list[tuple[int, object]] = []
    for i in range(30):
        sport = 41000 + i
        t = i * 300 * MS + rnd.randrange(100) * MS

        def c2s(flags: str, payload: bytes = b"", sport: int = sport) -> object:
            tcp = TCP(sport=sport, dport=443, flags=flags)
            return eth() / IP(src=CLIENT, dst=SERVER) / tcp / payload

        def s2c(flags: str, payload: bytes = b"", sport: int = sport) -> object:
            tcp = TCP(sport=443, dport=sport, flags=flags)
            return eth() / IP(src=SERVER, dst=CLIENT) / tcp / payload

        convo = [c2s("S"), s2c("SA"), c2s("A"), c2s("PA", b"q" * 100), s2c("PA", b"r" * 900)]
        convo += [s2c("A")] * rnd.randrange(3) + [c2s("FA"), s2c("FA")]
        for k, pkt in enumerate(convo):
            frames.append((t + k * MS, pkt))
        frames.append((t + len(convo) * MS + rnd.randrange(500, 4900) * MS, c2s("A")))
        udp = eth() / IP(src=CLIENT, dst="203.0.113.53") / UDP(sport=50000 + i, dport=53)
        frames.append((t + 50 * MS, udp))
    frames.sort(key=lambda f: f[0])
    write_pcap(path, [(T0 + t, frame_bytes(p)) for t, p in frames])


def _directions(records: list[FlowRecord]) -> list[PeerFlow]:
    """Our bidirectional records as NetFlow's one record per direction (nfdump's names)."""
    out = []
    for r in records:
        sides = [(r.src_ip, r.dst_ip, r.src_port, r.dst_port, r.packets_tx, r.flags_tx)]
        if r.packets_rx:
            sides.append((r.dst_ip, r.src_ip, r.dst_port, r.src_port, r.packets_rx, r.flags_rx))
        for src, dst, sp, dp, pkts, flags in sides:
            flg = tcp_flag_letters(flags) if r.proto == "TCP" else "." * 8
            out.append(PeerFlow(src, dst, sp, dp, r.proto, pkts, flg))
    return sorted(out)


def test_late_acks_stay_in_their_connection_as_in_softflowd(tmp_path: Path) -> None:
    path = tmp_path / "late-ack.pcap"
    _late_ack_capture(path, seed=12)
    flows, _ = meter_pcap(path)  # the default close delay
    records = flows.records()
    assert sum(r.proto == "TCP" for r in records) == 30  # one record per connection
    peer = softflowd_flows(path, tmp_path)
    assert _directions(records) == peer  # endpoints, packets each way, flags as letters
    # With the old 2 s linger the late ACKs were one-packet flows softflowd never reports.
    split, _ = meter_pcap(path, MeterConfig(close_linger_s=2))
    assert len(split) > len(records)


def test_first_seen_is_tcpdumps_time_of_the_first_packet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "late-ack.pcap"
    _late_ack_capture(path, seed=3)
    assert main(["flows", "--pcap", str(path)]) == 0
    rows = [row.split() for row in capsys.readouterr().out.splitlines()[1:]]
    ours = sorted(f"{r[0]} {r[1]}" for r in rows if r[3] == "TCP")
    syns = subprocess.run(
        ["tcpdump", "-nr", str(path), "-tttt", "tcp[tcpflags] == tcp-syn"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TZ": "UTC"},
        check=True,
    ).stdout.splitlines()
    assert ours == sorted(line[:23] for line in syns)  # to the millisecond
    assert len(ours) == 30


def test_cut_capture_reads_as_tcpdump_reads_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "cut.pcap"
    _late_ack_capture(path, seed=5)
    path.write_bytes(path.read_bytes()[:-30])
    tcpdump = subprocess.run(
        ["tcpdump", "-nr", str(path)], capture_output=True, text=True, timeout=60
    )
    assert "truncated dump file" in tcpdump.stderr
    packets = len(tcpdump.stdout.splitlines())
    assert main(["flows", "--pcap", str(path)]) == 0
    err = capsys.readouterr().err
    assert f"{packets} frames" in err and "ends in a cut record" in err


# -- Linux cooked captures, written by tcpdump itself ---------------------------------------


@pytest.fixture
def lab() -> Iterator[MirrorLab]:
    assert shutil.which("tcpdump"), "tcpdump missing: run make apt"
    with MirrorLab("sll") as lab:
        yield lab


def _frames(path: Path) -> int:
    if not path.exists() or path.stat().st_size < 24:
        return 0
    with PcapReader(path) as reader:
        for _ in reader.batches():
            pass
        return reader.frames


def test_cooked_captures_of_one_conversation_give_its_ethernet_flows(
    lab: MirrorLab, tmp_path: Path
) -> None:
    """tcpdump captures the tap port three ways at once, as Ethernet (`-i m1`) and as Linux
    cooked v1 and v2 (`-i any`, the only other interface being loopback, which stays quiet):
    the three files must give the same flows."""
    files = {
        "EN10MB": (tmp_path / "eth.pcap", ["-i", "m1"]),
        "LINUX_SLL": (tmp_path / "sll.pcap", ["-i", "any", "-y", "LINUX_SLL"]),
        "LINUX_SLL2": (tmp_path / "sll2.pcap", ["-i", "any", "-y", "LINUX_SLL2"]),
    }
    procs = []
    try:
        for out, argv in files.values():
            cmd = ["tcpdump", "-U", "--immediate-mode", "-n", "-w", str(out), *argv]
            procs.append(lab.popen("T", *cmd))
        for proc in procs:  # tcpdump says "listening on ..." once its socket is bound
            assert proc.stderr is not None
            said = []
            for line in proc.stderr:  # ends at EOF if tcpdump fails
                said.append(line)
                if "listening on" in line:
                    break
            assert "listening on" in said[-1], said
        lab.run("A", "ping", "-c", "3", "-i", "0.2", "-W", "2", lab.B4)
        udp_exchange(lab, rounds=3, size=100, reply=200, sport=40001)
        tcp_exchange(lab, size=3000, reply=5000)
        # Every copy has the frames once the three counts agree (bounded: 10 s).
        for _ in range(100):
            counts = {_frames(out) for out, _ in files.values()}
            if len(counts) == 1 and counts != {0}:
                break
            time.sleep(0.1)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            proc.communicate(timeout=30)
    with PcapReader(files["LINUX_SLL"][0]) as r1, PcapReader(files["LINUX_SLL2"][0]) as r2:
        assert (r1.linktype, r2.linktype) == (113, 276)

    def flows(path: Path) -> list[tuple[object, ...]]:
        # The conversation's flows only: the kernel's own IPv6 chatter on the lab's links (MLD
        # reports, router solicitations from link-local or unspecified sources) comes when it
        # likes, so three tcpdumps bound one after another may each hold a different share of it.
        got, _ = meter_pcap(path)
        return sorted(
            (r.src_ip, r.dst_ip, r.src_port, r.dst_port, r.proto, r.vlan, r.packets_tx,
             r.packets_rx, r.bytes_tx, r.bytes_rx, r.flags_tx, r.flags_rx, r.icmp_id)
            for r in got.records()
            if {r.src_ip, r.dst_ip} == {lab.A4, lab.B4}
        )  # fmt: skip

    want = flows(files["EN10MB"][0])
    assert {r[4] for r in want} >= {"TCP", "UDP", "ICMP"}
    assert flows(files["LINUX_SLL"][0]) == want
    assert flows(files["LINUX_SLL2"][0]) == want
