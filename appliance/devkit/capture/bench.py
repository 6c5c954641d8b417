"""`infraspectre bench flows`: our meter against softflowd on the same capture, same run.

Offline (default): a seeded 1M-frame synthetic capture (cached under --cache, keyed by seed and
size) or --pcap FILE [--truth FILE]; each tool meters the whole file --repeat times,
alternating; the reported packets/s is the median run (all runs are in the JSON), "ratio" is
ours / softflowd on medians, "ratio_best" on the best runs, "ratio_cpu" on the least CPU seconds
each tool needed in any run (softflowd's includes `ip netns exec`): the steadiest figure on a
busy machine.
- ours: in-process, from opening the file to the last flow record in columnar form
  (PcapReader -> Decoder -> FlowMeter -> FlowBatch); Python start-up and imports excluded.
- softflowd: `softflowd -r FILE -c none -m 200000 -v 9 -n 127.0.0.1:9995`, wall time of the
  process, exporting NetFlow v9 to nfcapd on the loopback of a network namespace of its own;
  its records are read back with `nfdump -o csv` (rows counted: `nfdump -I` ignores filters).
"matches_truth" compares our flows, packets and bytes per protocol with the generator's truth.
softflowd's packets per protocol are compared too; its bytes include Ethernet padding and it
keys ICMP without the echo id, so its flow count differs by design (docs/FLOWS.md).

--memory: pushes many distinct flows through a meter with the configured max_flows and samples
the process's anonymous RSS, against the documented bound (docs/PERFORMANCE.md).

--live: see appliance.devkit.capture.livebench.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from appliance.errors import CommandError

NFCAPD_PORT = 9995


def register(sub: Any) -> None:
    """Add `bench flows`."""
    p = sub.add_parser("flows", help="flow metering: ours vs softflowd on one capture")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--pcap", type=Path, help="meter this capture instead of the synthetic one")
    p.add_argument("--truth", type=Path, help="ground truth JSON for --pcap (synth.Truth)")
    p.add_argument("--seed", type=int, default=1, help="synthetic capture seed (default 1)")
    p.add_argument("--packets", type=int, default=1_000_000, help="synthetic capture size")
    p.add_argument("--cache", type=Path, default=Path("cache"), help="where captures are kept")
    p.add_argument("--repeat", type=int, default=7, help="runs per tool (median reported)")
    p.add_argument("--no-softflowd", action="store_true", help="only our meter")
    p.add_argument("--memory", action="store_true", help="RSS with a full flow table instead")
    p.add_argument("--max-flows", type=int, default=200_000, help="table bound for --memory")
    p.add_argument("--live", action="store_true", help="live ring bench (root, namespaces)")
    p.add_argument("--duration", type=float, default=3.0, help="--live: seconds per step")
    p.add_argument(
        "--rates",
        default="50000,100000,150000,200000,250000,300000",
        help="--live: packets/s steps, comma separated",
    )
    p.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> int:
    if args.live:
        from appliance.devkit.capture.livebench import run_live_bench

        result = run_live_bench(
            [int(r) for r in args.rates.split(",") if r.strip()], args.duration, args.cache
        )
    elif args.memory:
        result = memory_bench(args.max_flows)
    else:
        result = offline_bench(args)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        _print_human(result)
    return 0


def _print_human(result: dict[str, Any], indent: str = "") -> None:
    for k, v in result.items():
        if isinstance(v, dict):
            print(f"{indent}{k}:")
            _print_human(v, indent + "  ")
        else:
            print(f"{indent}{k}: {v}")


# -- offline ---------------------------------------------------------------------------


def offline_bench(args: argparse.Namespace) -> dict[str, Any]:
    from appliance.devkit.capture.synth import Truth, cached_capture

    truth: Truth | None = None
    if args.pcap is not None:
        path = args.pcap
        if not path.exists():
            raise CommandError(f"{path}: no such file")
        if args.truth is not None:
            truth = Truth.from_json(args.truth.read_text())
    else:
        path, truth = cached_capture(args.cache, args.seed, args.packets)
    run_softflowd = not args.no_softflowd
    if run_softflowd:
        _require_tools("softflowd", "nfcapd", "nfdump", "ip")
    ours_runs: list[dict[str, Any]] = []
    sf_runs: list[dict[str, Any]] = []
    for _ in range(max(args.repeat, 1)):
        ours_runs.append(_run_ours(path))
        if run_softflowd:
            sf_runs.append(_run_softflowd(path))
    ours = _median_run(ours_runs)
    result: dict[str, Any] = {
        "capture": {"path": str(path), "frames": ours["frames"], "bytes": path.stat().st_size},
        "ours": ours,
    }
    if truth is not None:
        result["truth"] = truth.by_proto
        result["matches_truth"] = (
            ours["by_proto"] == truth.by_proto
            and ours["frames"] == truth.frames
            and ours["non_ip"] == truth.non_ip
        )
    if sf_runs:
        sf = _median_run(sf_runs)
        result["softflowd"] = sf
        result["ratio"] = round(ours["packets_per_s"] / sf["packets_per_s"], 3)
        result["ratio_best"] = round(ours["best_packets_per_s"] / sf["best_packets_per_s"], 3)
        result["ratio_cpu"] = round(sf["min_cpu_seconds"] / max(ours["min_cpu_seconds"], 1e-9), 3)
        if truth is not None:
            sf_packets = {k: v["packets"] for k, v in sf["by_proto"].items()}
            result["softflowd_packets_match_truth"] = sf_packets == {
                k: v["packets"] for k, v in truth.by_proto.items()
            }
    return result


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(runs, key=lambda r: float(r["seconds"]))
    out = dict(ordered[len(ordered) // 2])
    out["runs_seconds"] = [round(float(r["seconds"]), 4) for r in runs]
    out["best_packets_per_s"] = round(out["frames"] / float(ordered[0]["seconds"]))
    out["min_cpu_seconds"] = min(float(r["cpu_seconds"]) for r in runs)
    return out


def _run_ours(path: Path) -> dict[str, Any]:
    import gc

    from appliance.capture.offline import meter_pcap

    gc.collect()
    start = time.perf_counter()
    cpu0 = time.process_time()
    flows, summary = meter_pcap(path)
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    return {
        "seconds": round(seconds, 4),
        "cpu_seconds": round(cpu, 4),
        "frames": summary.frames,
        "packets_per_s": round(summary.frames / seconds),
        "flows": len(flows),
        "packets": summary.meter.packets,
        "non_ip": summary.decode.non_ip_total,
        "by_proto": flows.totals_by_proto(),
        "peak_flows": summary.meter.peak_flows,
    }


def _require_tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise CommandError(
            f"missing {', '.join(missing)}: run `make apt` (or --no-softflowd for ours only)"
        )


@contextlib.contextmanager
def _netns(prefix: str) -> Iterator[str]:
    """A fresh network namespace with loopback up, deleted on exit whatever happens."""
    if os.geteuid() != 0:
        raise CommandError("the softflowd run needs root (a network namespace of its own)")
    name = f"{prefix}-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _run_softflowd(path: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="isbench-nfcapd-") as tmp, _netns("isbench-sf") as ns:
        flowdir = Path(tmp)
        # -B: a socket buffer big enough that no NetFlow datagram is lost while nfcapd writes.
        nfcapd_cmd = ["ip", "netns", "exec", ns, "nfcapd", "-w", str(flowdir)]
        nfcapd_cmd += ["-b", "127.0.0.1", "-p", str(NFCAPD_PORT), "-B", "8000000"]
        softflowd_cmd = ["ip", "netns", "exec", ns, "softflowd", "-r", str(path), "-c", "none"]
        softflowd_cmd += ["-m", "200000", "-v", "9", "-n", f"127.0.0.1:{NFCAPD_PORT}"]
        nfcapd = subprocess.Popen(
            nfcapd_cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_udp_listener(ns, NFCAPD_PORT)
            start = time.perf_counter()
            before = os.times()
            proc = subprocess.run(
                softflowd_cmd,
                capture_output=True,
                text=True,
                timeout=600,
            )
            seconds = time.perf_counter() - start
            after = os.times()
            if proc.returncode != 0:
                raise CommandError(f"softflowd failed: {proc.stderr.strip()[:200]}")
            time.sleep(0.5)  # let nfcapd drain its socket before it is told to stop
        finally:
            nfcapd.send_signal(signal.SIGTERM)
            try:
                nfcapd.wait(timeout=20)
            except subprocess.TimeoutExpired:
                nfcapd.kill()
                nfcapd.wait()
        by_proto, records = _nfdump_totals(flowdir)
    frames = _softflowd_frames(proc.stdout)
    return {
        "seconds": round(seconds, 4),
        "cpu_seconds": round(
            (after.children_user - before.children_user)
            + (after.children_system - before.children_system),
            4,
        ),
        "frames": frames,
        "packets_per_s": round(frames / seconds),
        "flows": _softflowd_flows(proc.stdout),
        "netflow_records": records,
        "by_proto": by_proto,
    }


def _wait_udp_listener(ns: str, port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["ip", "netns", "exec", ns, "ss", "-Hlun", f"sport = :{port}"],
            capture_output=True,
            text=True,
        ).stdout
        if out.strip():
            return
        time.sleep(0.05)
    raise CommandError("nfcapd did not start listening within 10 s")


def _softflowd_frames(stdout: str) -> int:
    """Frames softflowd read: processed IP packets plus ignored ones."""
    processed = ignored = 0
    for line in stdout.splitlines():
        if line.startswith("Packets processed:"):
            processed = int(line.split(":")[1])
        elif line.startswith("Ignored packets:"):
            ignored = int(line.split(":")[1].split()[0])
    return processed + ignored


def _softflowd_flows(stdout: str) -> int:
    for line in stdout.splitlines():
        if line.startswith("Flows expired:"):
            return int(line.split(":")[1].split()[0])
    return 0


_NFDUMP_PROTO = {
    "TCP": "TCP",
    "UDP": "UDP",
    "ICMP": "ICMP",
    "ICMP6": "ICMPV6",
    "IPv6-ICMP": "ICMPV6",
}


def _nfdump_totals(flowdir: Path) -> tuple[dict[str, dict[str, int]], int]:
    """Per-protocol records, packets and bytes from nfdump's CSV rows."""
    out = subprocess.run(
        ["nfdump", "-q", "-R", str(flowdir), "-o", "csv"], capture_output=True, text=True
    )
    if out.returncode != 0:
        out = subprocess.run(
            ["nfdump", "-R", str(flowdir), "-o", "csv"], capture_output=True, text=True
        )
    by: dict[str, dict[str, int]] = {}
    rows = 0
    header: list[str] | None = None
    for line in out.stdout.splitlines():
        if not line or line.startswith("Summary"):
            if header is not None and rows:
                break
            continue
        fields = line.split(",")
        if fields[0] == "ts":
            header = fields
            continue
        if header is None:
            header = ["ts", "te", "td", "sa", "da", "sp", "dp", "pr"]
            header += ["flg", "fwd", "stos", "ipkt", "ibyt"]
        if len(fields) < 13:
            continue
        rows += 1
        proto = fields[header.index("pr")].strip()
        name = _NFDUMP_PROTO.get(proto, proto)
        entry = by.setdefault(name, {"records": 0, "packets": 0, "bytes": 0})
        entry["records"] += 1
        entry["packets"] += int(fields[header.index("ipkt")])
        entry["bytes"] += int(fields[header.index("ibyt")])
    return by, rows


# -- memory ----------------------------------------------------------------------------


def memory_bench(
    max_flows: int, flows_total: int = 2_000_000, batch: int = 16384
) -> dict[str, Any]:
    """Drive max_flows to the limit with distinct flows; report anonymous RSS and the bound."""
    import numpy as np

    from appliance.capture.config import MeterConfig
    from appliance.capture.decode import PacketColumns
    from appliance.capture.meter import FlowMeter

    base = _rss_anon_kib()
    meter = FlowMeter(MeterConfig(max_flows=max_flows, idle_timeout_s=3600))
    after_alloc = _rss_anon_kib()
    peak = after_alloc
    ended = 0
    t0 = 1_795_000_000_000_000_000
    rng = np.random.default_rng(5)
    for start in range(0, flows_total, batch):
        n = min(batch, flows_total - start)
        ids = np.arange(start, start + n, dtype=np.uint64)
        z64 = np.zeros(n, dtype=np.uint64)
        cols = PacketColumns(
            ts_ns=np.full(n, t0 + start * 1000, dtype=np.int64),
            vlan=np.zeros(n, dtype=np.uint16),
            ipver=np.full(n, 4, dtype=np.uint8),
            proto=np.full(n, 17, dtype=np.uint8),
            a_hi=z64,
            a_lo=ids >> np.uint64(16),
            b_hi=z64,
            b_lo=np.full(n, 0xC0000201, dtype=np.uint64),
            port_a=(ids & np.uint64(0xFFFF)).astype(np.uint32),
            port_b=np.full(n, 53, dtype=np.uint32),
            rev=rng.random(n) < 0.5,
            nbytes=np.full(n, 100, dtype=np.int64),
            tcp_flags=np.zeros(n, dtype=np.uint8),
            icmp_type=np.zeros(n, dtype=np.uint8),
            icmp_code=np.zeros(n, dtype=np.uint8),
        )
        ended += len(meter.add(cols))
        peak = max(peak, _rss_anon_kib())
    bound_kib = base + (max_flows * FlowMeter.SLOT_BYTES * 2 + 64 * 1024 * 1024) // 1024
    return {
        "max_flows": max_flows,
        "flows_offered": flows_total,
        "active_flows": meter.active_flows,
        "evicted": meter.stats.evicted,
        "flows_ended": ended,
        "slot_bytes": FlowMeter.SLOT_BYTES,
        "rss_anon_kib_before": base,
        "rss_anon_kib_table_allocated": after_alloc,
        "rss_anon_kib_peak": peak,
        "rss_anon_kib_bound": bound_kib,
        "within_bound": peak <= bound_kib and meter.active_flows <= max_flows,
    }


def _rss_anon_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0
