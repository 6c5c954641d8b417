"""Real IPFIX peers for the export tests: nfcapd (Debian's nfdump 1.7) over UDP and the
python-ipfix collector process (ipfix_collector.py) over TCP, each started on a free loopback
port and stopped by its PID; and a known set of flows covering what the export maps."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.wire import FlowEvent

END = FlowEvent.EndReason
#: %ts/%te, not %tsr/%ter: nfdump 1.7.1's %ter prints the end time 100 ms off for some flows
#: (its raw output has it right).
NFDUMP_FORMAT = "fmt:%ts;%te;%sa;%da;%sp;%dp;%pr;%ipkt;%ibyt;%opkt;%obyt;%svln;%flg"


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    """Poll until check() is true; fail naming `what` after timeout_s (a bound, not a claim)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def known_flows(n: int, *, end_ms: int | None = None) -> list[FlowEvent]:
    """n flows the bus accepts, ended about a minute ago: IPv4 and IPv6; TCP, UDP, ICMP and
    ICMPv6; tagged and untagged; every end reason; two capture interfaces; some one-way."""
    end_ms = end_ms if end_ms is not None else time.time_ns() // 1_000_000 - 60_000
    flows = []
    for i in range(n):
        v6 = i % 3 == 0
        kind = i % 4
        proto, ip_proto = [("TCP", 6), ("UDP", 17), ("ICMP", 1), ("TCP", 6)][kind]
        if kind == 2 and v6:
            proto, ip_proto = "ICMPV6", 58
        src = f"2001:db8::{i + 1:x}" if v6 else f"192.0.2.{i % 250 + 1}"
        dst = f"2001:db8:1::{i % 7 + 1:x}" if v6 else f"198.51.100.{i % 200 + 1}"
        end = end_ms - i
        start = end - 1000 - i % 997
        one_way = i % 5 == 4
        f = FlowEvent(
            src_ip=src, dst_ip=dst, proto=proto, ip_proto=ip_proto, ip_version=6 if v6 else 4,
            bytes_tx=100 + i, packets_tx=1 + i % 9,
            bytes_rx=0 if one_way else 2000 + 3 * i, packets_rx=0 if one_way else 2 + i % 5,
            start_time=start, end_time=end, start_ns=start * 1_000_000 + 123,
            end_ns=end * 1_000_000 + 456, duration_ms=end - start,
            vlan=[0, 30, 4094][i % 3 if i % 2 else 0], end_reason=1 + i % 6,
            interface="eth1" if i % 2 else "eth2",
        )  # fmt: skip
        if kind == 2:
            icmp_type = 128 if v6 else 8
            f.icmp_type, f.icmp_code = icmp_type, 0
            f.icmp_id = i
            f.src_port, f.dst_port = 0, icmp_type << 8
        else:
            f.src_port, f.dst_port = 40000 + i % 20000, [443, 53, 0, 22][kind]
        if ip_proto == 6:
            f.flags_tx, f.flags_rx = 0x1B, 0 if one_way else 0x12
            f.flags = f.flags_tx | f.flags_rx
        flows.append(f)
    return flows


def proto_name(f: FlowEvent) -> str:
    """The protocol as `nfdump -N` prints it: the number."""
    return str(f.ip_proto)


def expected_nfdump(flows: list[FlowEvent], mode: str) -> list[tuple[object, ...]]:
    """What nfdump shows for these flows (the row layout of NFDUMP_FORMAT, flags excepted)."""
    rows: list[tuple[object, ...]] = []
    for f in flows:
        icmp = f.ip_proto in (1, 58)
        dport = f"{f.icmp_type}.{f.icmp_code}" if icmp else str(f.dst_port)
        sport = "0" if icmp else str(f.src_port)
        times = (f.start_ns // 1_000_000, f.end_ns // 1_000_000)
        if mode == "biflow":
            rows.append((*times, f.src_ip, f.dst_ip, sport, dport, proto_name(f),
                         f.packets_tx, f.bytes_tx, f.packets_rx, f.bytes_rx, f.vlan))  # fmt: skip
            continue
        rows.append((*times, f.src_ip, f.dst_ip, sport, dport, proto_name(f),
                     f.packets_tx, f.bytes_tx, 0, 0, f.vlan))  # fmt: skip
        if f.packets_rx:
            rdport = "0.0" if icmp else sport
            rsport = "0" if icmp else str(f.dst_port)
            rows.append((*times, f.dst_ip, f.src_ip, rsport, rdport, proto_name(f),
                         f.packets_rx, f.bytes_rx, 0, 0, f.vlan))  # fmt: skip
    return rows


@dataclass
class Nfcapd:
    """nfcapd listening on 127.0.0.1:port (UDP), writing into folder."""

    proc: subprocess.Popen[bytes]
    port: int
    folder: Path

    @classmethod
    def start(cls, folder: Path, port: int | None = None) -> Nfcapd:
        folder.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        with open(folder.parent / f"nfcapd-{port}.log", "ab") as log:
            proc = subprocess.Popen(
                ["nfcapd", "-b", "127.0.0.1", "-p", str(port), "-w", str(folder), "-t", "3600",
                 "-B", "8388608"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        me = cls(proc, port, folder)
        wait_for(me._bound, f"nfcapd to listen on UDP {port}", 30)
        return me

    def _bound(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"nfcapd exited with {self.proc.returncode}")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", self.port))
            except OSError:
                return True
        return False

    def stop(self) -> None:
        """SIGTERM: nfcapd writes its open file and exits."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)

    def rows(self) -> list[tuple[object, ...]]:
        """Every flow in every file nfcapd wrote, as NFDUMP_FORMAT rows (times in ms)."""
        out: list[tuple[object, ...]] = []
        for path in sorted(self.folder.glob("nfcapd.*")):
            if path.name.startswith("nfcapd.current"):
                continue
            text = subprocess.run(
                ["nfdump", "-r", str(path), "-q", "-N", "-o", NFDUMP_FORMAT],
                check=True, capture_output=True, text=True, env={**os.environ, "TZ": "UTC"},
            ).stdout  # fmt: skip
            for line in text.splitlines():
                c = [x.strip() for x in line.split(";")]
                if len(c) < 13:
                    continue
                out.append((
                    _ms(c[0]), _ms(c[1]), c[2], c[3], c[4], c[5],
                    c[6], int(c[7]), int(c[8]), int(c[9]), int(c[10]), int(c[11]),
                ))  # fmt: skip
        return out


def _ms(text: str) -> int:
    """'2026-11-29 20:22:34.147' (UTC) -> UNIX ms."""
    when = dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=dt.UTC)
    return round(when.timestamp() * 1000)


@dataclass
class TcpCollector:
    """The python-ipfix collector process (ipfix_collector.py) on 127.0.0.1:port."""

    proc: subprocess.Popen[bytes]
    port: int
    out: Path

    @classmethod
    def start(cls, out: Path, port: int | None = None) -> TcpCollector:
        port = port or free_port(socket.SOCK_STREAM)
        script = Path(__file__).with_name("ipfix_collector.py")
        proc = subprocess.Popen(
            [sys.executable, str(script), str(port), str(out)], stdout=subprocess.PIPE
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"listening"
        return cls(proc, port, out)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def lines(self) -> list[dict[str, object]]:
        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text().splitlines()]
