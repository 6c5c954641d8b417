"""The flow-metering peers, run on the tests' own capture files: softflowd exporting NetFlow v9
to nfcapd, read back with nfdump.

softflowd runs inside a network namespace of its own (its collector on that namespace's
loopback), with `-r FILE -c none` (without `-c none` it waits forever on its control socket)
and `-m 200000` (its default table of 8192 flows splits flows). In `-r` mode it never expires a
flow by time: every flow ends at the end of the file, so its records are the capture's
conversations, one per direction (NetFlow is unidirectional).
"""

from __future__ import annotations

import csv
import itertools
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

_COUNTER = itertools.count()


@dataclass(frozen=True, order=True)
class PeerFlow:
    """One unidirectional record as nfdump prints it (`-o csv`)."""

    src: str
    dst: str
    sport: int
    dport: int
    proto: str  # nfdump's name: TCP, UDP, ICMP, ICMP6
    packets: int
    flags: str  # nfdump's letters, e.g. "...AP.SF"


def require_peers() -> None:
    """Fail unless softflowd, nfcapd and nfdump are installed and we are root (netns): `make
    apt` installs them and CI runs as root, so a missing peer is a failure, never a skip."""
    missing = [t for t in ("softflowd", "nfcapd", "nfdump", "ip", "ss") if not shutil.which(t)]
    if missing:
        pytest.fail(f"peer tools missing: {', '.join(missing)} (run make apt)")
    if os.geteuid() != 0:
        pytest.fail("softflowd runs in a network namespace of its own: needs root")


def nfdump_csv(flowdir: Path) -> list[dict[str, str]]:
    """nfdump's CSV rows of every file in flowdir, as dicts by its header names."""
    out = subprocess.run(
        ["nfdump", "-q", "-R", str(flowdir), "-o", "csv"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    lines = [line for line in out.splitlines() if line.strip()]
    if lines and not lines[0].startswith("ts,"):
        header = "ts,te,td,sa,da,sp,dp,pr,flg,fwd,stos,ipkt,ibyt"
        lines.insert(0, header)
    rows = []
    for row in csv.DictReader(lines):
        if row.get("ts", "").startswith("Summary") or not row.get("sa"):
            break
        rows.append(row)
    return rows


def softflowd_flows(pcap: Path, workdir: Path, attempts: int = 3) -> list[PeerFlow]:
    """softflowd's records of pcap (sorted), collected by nfcapd and printed by nfdump.

    Under heavy load the peer pipeline (softflowd -> UDP -> nfcapd, stopped by SIGTERM) has
    been seen to come back empty once; a pcap that gives records gives them on a new run, so an
    empty result is retried (at most `attempts` runs) and never compared as the peer's answer.
    """
    require_peers()
    flows: list[PeerFlow] = []
    for _ in range(attempts):
        flows = _softflowd_once(pcap, workdir)
        if flows:
            break
    return flows


def _softflowd_once(pcap: Path, workdir: Path) -> list[PeerFlow]:
    ns = f"istest-sf-{os.getpid()}-{next(_COUNTER)}"
    port = 20000 + os.getpid() % 20000
    flowdir = workdir / f"{ns}.nfcapd"
    flowdir.mkdir()
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True, timeout=30)
        collector = ["nfcapd", "-w", str(flowdir), "-b", "127.0.0.1", "-p", str(port)]
        exporter = ["softflowd", "-r", str(pcap), "-c", "none", "-m", "200000", "-v", "9"]
        exporter += ["-n", f"127.0.0.1:{port}"]
        nfcapd = subprocess.Popen(
            ["ip", "netns", "exec", ns, *collector],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_udp_listener(ns, port)
            subprocess.run(
                ["ip", "netns", "exec", ns, *exporter],
                check=True,
                capture_output=True,
                timeout=120,
            )
        finally:
            # nfcapd writes its file on SIGTERM, after draining what its socket holds.
            nfcapd.send_signal(signal.SIGTERM)
            nfcapd.wait(timeout=30)
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
    return sorted(
        PeerFlow(
            src=r["sa"],
            dst=r["da"],
            sport=int(float(r["sp"])),
            dport=int(float(r["dp"])),
            proto=r["pr"],
            packets=int(r["ipkt"]),
            flags=r["flg"],
        )
        for r in nfdump_csv(flowdir)
    )


def _wait_udp_listener(ns: str, port: int) -> None:
    """Until nfcapd listens (bounded: 10 s)."""
    for _ in range(200):
        out = subprocess.run(
            ["ip", "netns", "exec", ns, "ss", "-Hlun", f"sport = :{port}"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        if out.strip():
            return
        time.sleep(0.05)
    raise AssertionError("nfcapd did not start listening within 10 s")
