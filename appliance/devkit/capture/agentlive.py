"""`infraspectre bench live`: the whole live agent beside softflowd on one mirrored interface.

Setup (appliance.devkit.capture.lab.MirrorLab, root): tcpreplay in namespace A replays a seeded
synthetic capture out of a0 at a fixed packets/s rate for a bounded time; tc mirrors a0 to the
tap port m1 in namespace T. On m1, at the same time:
- ours: the real agent process (`infraspectre agent run`: AF_PACKET ring, decoder, meter,
  sealing into its WAL, forwarding over mTLS gRPC) with a real bus (`infraspectre bus serve`)
  on 127.0.0.1 of the root namespace, a fresh PKI for both;
- softflowd: `softflowd -d -i m1 -v 9 -n 127.0.0.1:PORT` inside T, exporting NetFlow v9 to
  nfcapd on T's loopback.
Both start and report ready, then --idle seconds pass without traffic ("idle_cpu_ms_per_s": CPU
milliseconds per second each spends whatever the rate); then the replay. The steady window is
the replay itself. CPU is /proc/PID/stat utime+stime at the window's end less its start
(start-up excluded), RSS peak is /proc/PID/status VmHWM at the window's end (the whole life of
the process, start-up included), and packets are the kernel's rx_packets counter of m1 over the
window (both tools see every frame m1 receives). Per rate: CPU milliseconds per 1,000 packets
for each and ours / softflowd ("cpu_ratio", below 1 means ours costs less), and the RSS peaks
with their ratio; "rss_end_kib" splits each RSS at the window's end into anonymous,
file-backed (libraries, and for the agent its mapped capture ring) and shared memory. "ours"
also carries the agent's own metrics at the end: packets metered, kernel drops, flows started
and sealed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml

from appliance.devkit.localprocs import (
    cli_process,
    free_port,
    loopback_bus_sections,
    process_cpu_seconds,
    stop_process,
)
from appliance.errors import CommandError

REPLAY_PACKETS = 100_000


def register(sub: Any) -> None:
    """Add `bench live`."""
    p = sub.add_parser("live", help="the live agent's CPU and RSS beside softflowd on one port")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--rates", default="2000,10000", help="packets/s steps, comma separated")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of replay per rate")
    p.add_argument(
        "--idle", type=float, default=10.0, help="seconds without traffic measured first"
    )
    p.add_argument("--cache", type=Path, default=Path("cache"), help="where captures are kept")
    p.set_defaults(func=_bench)


def _bench(args: Any) -> int:
    try:
        rates = [int(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        msg = f"--rates: not a comma-separated list of integers: {args.rates!r}"
        raise CommandError(msg) from None
    if not rates or min(rates) <= 0:
        raise CommandError("--rates: give at least one rate, each above 0 packets/s")
    if args.duration <= 0:
        raise CommandError("--duration: must be above 0 seconds")
    if args.idle <= 0:
        raise CommandError("--idle: must be above 0 seconds")
    result = run_agent_live_bench(rates, args.duration, args.cache, args.idle)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for step in result["steps"]:
            print(
                f"{step['achieved_pps']} packets/s for {step['duration_s']} s, "
                f"{step['packets']} packets: CPU per 1,000 packets ours "
                f"{step['ours']['cpu_ms_per_1k_packets']} ms, softflowd "
                f"{step['softflowd']['cpu_ms_per_1k_packets']} ms (ratio {step['cpu_ratio']}); "
                f"RSS peak ours {step['ours']['rss_peak_kib']} KiB, softflowd "
                f"{step['softflowd']['rss_peak_kib']} KiB (ratio {step['rss_ratio']})"
            )
    return 0


def run_agent_live_bench(
    rates: list[int], duration_s: float, cache: Path, idle_s: float = 10.0
) -> dict[str, Any]:
    from appliance.devkit.capture.lab import MirrorLab
    from appliance.devkit.capture.synth import cached_capture

    if os.geteuid() != 0:
        raise CommandError("the live bench needs root (network namespaces, AF_PACKET)")
    for tool in ("tcpreplay", "softflowd", "nfcapd", "ip"):
        if shutil.which(tool) is None:
            raise CommandError(f"{tool} is missing: run `make apt`")
    path, _ = cached_capture(cache, seed=2, packets=REPLAY_PACKETS)
    steps = []
    for rate in rates:
        with MirrorLab("blive") as lab:
            steps.append(_step(lab, path, rate, duration_s, idle_s))
    return {"steps": steps, "bus": "real local bus (bus serve, mTLS gRPC on 127.0.0.1)"}


def _step(lab: Any, path: Path, rate: int, duration_s: float, idle_s: float) -> dict[str, Any]:
    from appliance.pki import init_pki, issue_agent

    with (
        tempfile.TemporaryDirectory(prefix="bench-live-", dir="/var/tmp") as tmp,
        ExitStack() as st,
    ):
        root = Path(tmp)
        init_pki(root / "pki", [])
        issue_agent(root / "pki", "bench-agent")
        bus_port, metrics_port, nf_port = free_port(), free_port(), free_port()
        bus_cfg = root / "bus.yaml"
        bus_cfg.write_text(
            yaml.safe_dump(loopback_bus_sections(root / "pki", root / "bus", bus_port))
        )
        st.enter_context(cli_process(["bus", "serve", "--config", str(bus_cfg)], "bus"))
        agent_cfg = root / "agent.yaml"
        agent_cfg.write_text(yaml.safe_dump(_agent_doc(root, lab, bus_port, metrics_port)))
        agent = st.enter_context(cli_process(["agent", "run", "--config", str(agent_cfg)], "agent"))
        _child(st, lab, ["nfcapd", "-w", str(root), "-b", "127.0.0.1", "-p", str(nf_port)])
        _wait_udp(lab, nf_port)
        sf_cmd = ["softflowd", "-d", "-i", "m1", "-v", "9", "-n", f"127.0.0.1:{nf_port}"]
        softflowd = _child(st, lab, sf_cmd)
        time.sleep(1.0)  # softflowd prints no ready line: give it time to open m1
        if softflowd.poll() is not None:
            raise CommandError(f"softflowd exited ({softflowd.returncode}) before the replay")
        idle0 = {"ours": process_cpu_seconds(agent.pid), "sf": process_cpu_seconds(softflowd.pid)}
        time.sleep(idle_s)  # no traffic: what each costs per second whatever the rate
        rx0 = _rx_packets(lab)
        cpu0 = {"ours": process_cpu_seconds(agent.pid), "sf": process_cpu_seconds(softflowd.pid)}
        idle = {k: (cpu0[k] - idle0[k]) * 1000 / idle_s for k in cpu0}
        count = int(rate * duration_s)
        loops = max(1, -(-count // REPLAY_PACKETS))
        replay_args = [f"--pps={rate}", f"--limit={count}", f"--loop={loops}", str(path)]
        t0 = time.monotonic()
        out = lab.run("A", "tcpreplay", "-i", "a0", *replay_args, timeout=duration_s * 4 + 60)
        seconds = time.monotonic() - t0
        _settle(metrics_port)  # the last frames through both rings
        ours_cpu = process_cpu_seconds(agent.pid) - cpu0["ours"]
        sf_cpu = process_cpu_seconds(softflowd.pid) - cpu0["sf"]
        packets = _rx_packets(lab) - rx0
        ours_rss, sf_rss = _vm_kib(agent.pid, "VmHWM"), _vm_kib(softflowd.pid, "VmHWM")
        split = {"ours": _rss_split(agent.pid), "softflowd": _rss_split(softflowd.pid)}
        metrics = {
            key: _metric(metrics_port, f"agent_{name}_total")
            for key, name in (
                ("packets_metered", "capture_packets_metered"),
                ("kernel_drops", "capture_kernel_drops"),
                ("flows_started", "capture_flows_started"),
                ("flows_sealed", "flows_sealed"),
            )
        }
    if packets <= 0:
        raise CommandError(f"no packets reached the tap port at {rate} packets/s")
    m = re.search(r"Rated:.*?([\d.]+) pps", out)
    ours_ms, sf_ms = ours_cpu * 1e6 / packets, sf_cpu * 1e6 / packets
    return {
        "requested_pps": rate,
        "achieved_pps": round(float(m.group(1))) if m else round(packets / seconds),
        "duration_s": round(seconds, 1),
        "packets": packets,
        "ours": {
            "cpu_s": round(ours_cpu, 2),
            "cpu_ms_per_1k_packets": round(ours_ms, 3),
            "rss_peak_kib": ours_rss,
            "idle_cpu_ms_per_s": round(idle["ours"], 1),
            "rss_end_kib": split["ours"],
            **metrics,
        },
        "softflowd": {
            "cpu_s": round(sf_cpu, 2),
            "cpu_ms_per_1k_packets": round(sf_ms, 3),
            "rss_peak_kib": sf_rss,
            "idle_cpu_ms_per_s": round(idle["sf"], 1),
            "rss_end_kib": split["softflowd"],
        },
        "cpu_ratio": round(ours_ms / sf_ms, 2) if sf_ms > 0 else None,
        "rss_ratio": round(ours_rss / sf_rss, 2) if sf_rss > 0 else None,
    }


def _agent_doc(root: Path, lab: Any, bus_port: int, metrics_port: int) -> dict[str, Any]:
    pki = root / "pki"
    return {
        "agent": {
            "bus": [f"127.0.0.1:{bus_port}"], "server_name": "localhost",
            "tls": {"cert_dir": str(pki / "agents" / "bench-agent"), "ca": str(pki / "ca.crt")},
            "metrics_host": "127.0.0.1", "metrics_port": metrics_port,
        },
        "capture": {"interface": "m1", "netns": lab.ns["T"], "uplink_interface": "none0"},
        "wal": {"path": str(root / "wal")},
        "storage": {"data_dir": str(root / "data")},
    }  # fmt: skip


def _child(st: ExitStack, lab: Any, argv: list[str]) -> subprocess.Popen[str]:
    """argv inside T (`ip netns exec` execs in place: the PID is the tool's), stopped on exit."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", lab.ns["T"], *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )

    st.callback(stop_process, proc)
    return proc


def _wait_udp(lab: Any, port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if lab.run("T", "ss", "-Hlun", f"sport = :{port}").strip():
            return
        time.sleep(0.05)
    raise CommandError("nfcapd did not start listening within 10 s")


def _rx_packets(lab: Any) -> int:
    return int(lab.run("T", "cat", "/sys/class/net/m1/statistics/rx_packets"))


def _vm_kib(pid: int, field: str) -> int:
    """A kB field of /proc/PID/status (VmHWM: peak RSS; RssAnon/RssFile/RssShmem: now)."""
    m = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(m.group(1)) if m else 0


def _rss_split(pid: int) -> dict[str, int]:
    """The RSS at the window's end by kind (the capture ring's mapped pages count as file)."""
    return {k: _vm_kib(pid, f"Rss{k.capitalize()}") for k in ("anon", "file", "shmem")}


def _settle(metrics_port: int) -> None:
    """Wait (at most 20 s) until the agent's metered packets stop growing for 0.5 s."""
    last, deadline = -1.0, time.monotonic() + 20
    while time.monotonic() < deadline:
        now = _metric(metrics_port, "agent_capture_packets_metered_total")
        if now == last:
            return
        last = now
        time.sleep(0.5)


def _metric(port: int, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    m = re.search(rf"^{name} (\S+)$", body, re.M)
    return float(m.group(1)) if m else 0.0
