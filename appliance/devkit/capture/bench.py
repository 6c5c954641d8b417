"""`infraspectre bench flows`: our meter against softflowd on the same capture, same run.

Offline (default): a seeded 1M-frame synthetic capture (cached under --cache, keyed by seed and
size), or with --concurrent N one whose N flows are all open at once until the end of the file
(synth.generate_concurrent: --packets // N rounds of one frame per flow, 1 s apart; the table's
worst case), or --pcap FILE [--truth FILE]. Each tool meters the whole file --repeat times,
alternating, as a user meets it: a whole process that starts, meters and writes its records.
- ours: `infraspectre flows --pcap FILE --json` (this interpreter, `-m appliance`), JSON lines
  to a file; its totals are read back from that file.
- softflowd: `softflowd -r FILE -c none -m 200000 -v 9 -n 127.0.0.1:9995`, exporting NetFlow
  v9 to nfcapd on the loopback of a network namespace of its own; its records are read back
  with `nfdump -o csv` (rows counted: `nfdump -I` ignores filters).
Per run: wall seconds, CPU seconds and peak RSS of the process (os.wait4's rusage; softflowd's
`ip netns exec` execs it in place, so the figures are softflowd's own). The headline "ratio" is
ours / softflowd in packets/s on the median runs; "ratio_best" on the best runs, "ratio_cpu" on
the least CPU seconds each needed in any run (the steadiest figure on a busy machine);
"rss_ratio" ours / softflowd on the largest peak RSS of any run. "rss_per_flow_bytes": peak
RSS less the same process's peak on a one-frame capture (start-up, imports), over the flows it
held at its peak (ours: the meter's peak table; softflowd: its flows, as `-r` never expires by
time, every flow stays in its table until the end).
"native_meter": whether ours ran the native meter (`flows --json` in C, numpy never
imported) or the numpy path (pcapng, big-endian files); docs/FLOWS.md "The native meter".
"ours_in_process" is also measured, alternating with the others: from opening the file to the
last flow record in columnar form (PcapReader -> Decoder -> FlowMeter -> FlowBatch), start-up,
imports and output excluded; "ratio_in_process" sets it against softflowd's whole process.
"matches_truth" compares our whole-process output's flows, packets and bytes per protocol, and
frames, with the generator's truth ("in_process_matches_truth" the same for the in-process
run). softflowd's packets per protocol are compared too; its bytes include Ethernet padding and
it keys ICMP without the echo id, so its flow count differs by design (docs/FLOWS.md).

--memory: pushes many distinct flows through a meter with the configured max_flows and samples
the process's anonymous RSS, against the documented bound (docs/PERFORMANCE.md): the numpy
FlowMeter, and under "compiled" the live agent's compiled meter (frames in, as from the ring).

--live: see appliance.devkit.capture.livebench.

--board raspi3b|virt: the offline bench inside the emulated board, on a bench-only card that
carries softflowd: see appliance.devkit.capture.boardbench.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from appliance.devkit.capture import boardbench
from appliance.errors import CommandError

if TYPE_CHECKING:
    from appliance.devkit.capture.synth import Truth

NFCAPD_PORT = 9995
#: Both meters' table size in these runs: ours' default max_flows and softflowd's `-m`.
TABLE_FLOWS = 200_000
#: GNU time (Debian package `time`): CPU and peak RSS of one command, see _timed_process.
TIME = "/usr/bin/time"


def register(sub: Any) -> None:
    """Add `bench flows`."""
    p = sub.add_parser("flows", help="flow metering: ours vs softflowd on one capture")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--pcap", type=Path, help="meter this capture instead of the synthetic one")
    p.add_argument("--truth", type=Path, help="ground truth JSON for --pcap (synth.Truth)")
    p.add_argument("--seed", type=int, default=1, help="synthetic capture seed (default 1)")
    p.add_argument(
        "--packets", type=int, help="synthetic capture size (default 1,000,000; --board 300,000)"
    )
    p.add_argument(
        "--concurrent",
        type=int,
        metavar="N",
        help=f"a capture of N flows all open at once (at most {TABLE_FLOWS:,}), --packets // N "
        "frames each",
    )
    p.add_argument("--cache", type=Path, default=Path("cache"), help="where captures are kept")
    p.add_argument(
        "--repeat", type=int, help="runs per tool, median reported (default 7; --board 3)"
    )
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
    boardbench.register_args(p)
    p.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> int:
    if args.board is not None:
        result = boardbench.run_board_bench(args)
    elif args.live:
        from appliance.devkit.capture.livebench import run_live_bench

        result = run_live_bench(
            [int(r) for r in args.rates.split(",") if r.strip()], args.duration, args.cache
        )
    elif args.memory:
        compiled = compiled_memory_bench(args.max_flows)  # first: its table is freed after
        result = memory_bench(args.max_flows)
        if compiled is not None:
            result["compiled"] = compiled
            result["within_bound"] = result["within_bound"] and compiled["within_bound"]
    else:
        args.packets = 1_000_000 if args.packets is None else args.packets
        args.repeat = 7 if args.repeat is None else args.repeat
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
    from appliance.capture.pcap import write_pcap
    from appliance.devkit.capture.synth import Truth, cached_capture

    truth: Truth | None = None
    if args.pcap is not None:
        if args.concurrent is not None:
            raise CommandError("--concurrent makes its own capture: not with --pcap")
        path = args.pcap
        if not path.exists():
            raise CommandError(f"{path}: no such file")
        if args.truth is not None:
            truth = Truth.from_json(args.truth.read_text())
    elif args.concurrent is not None:
        path, truth = _concurrent_capture(args)
    else:
        path, truth = cached_capture(args.cache, args.seed, args.packets)
    run_softflowd = not args.no_softflowd
    _require_tools(TIME)
    if run_softflowd:
        _require_tools("softflowd", "nfcapd", "nfdump", "ip")
    ours_runs: list[dict[str, Any]] = []
    inproc_runs: list[dict[str, Any]] = []
    sf_runs: list[dict[str, Any]] = []
    _compile_package()
    with tempfile.TemporaryDirectory(prefix="isbench-flows-") as tmp:
        # One frame: what each process costs before it meters anything (start-up, imports).
        tiny = Path(tmp) / "one-frame.pcap"
        write_pcap(tiny, [(1_795_000_000_000_000_000, _ONE_FRAME)])
        ours_base = _run_ours_process(tiny, Path(tmp))["peak_rss_kib"]
        sf_base = _run_softflowd(tiny)["peak_rss_kib"] if run_softflowd else 0
        for _ in range(max(args.repeat, 1)):
            ours_runs.append(_run_ours_process(path, Path(tmp)))
            if run_softflowd:
                sf_runs.append(_run_softflowd(path))
            inproc_runs.append(_run_ours(path))
    result = compare_runs(ours_runs, inproc_runs, sf_runs, (ours_base, sf_base), truth)
    result["native_meter"] = native_meter_reads(path)
    result["capture"] = {"path": str(path), "frames": result["ours"]["frames"]}
    result["capture"]["bytes"] = path.stat().st_size
    if args.concurrent is not None:
        result["capture"]["concurrent_flows"] = args.concurrent
    return result


def native_meter_reads(path: Path) -> bool:
    """Whether our whole-process runs took the native meter (no numpy) on this file, rather
    than the numpy path (docs/FLOWS.md "The native meter")."""
    try:
        from appliance.capture import _fastpath
    except ImportError:  # pragma: no cover (a checkout without `make venv`)
        return False
    return bool(_fastpath.native_reads(str(path)))


def compare_runs(
    ours_runs: list[dict[str, Any]],
    inproc_runs: list[dict[str, Any]],
    sf_runs: list[dict[str, Any]],
    baselines: tuple[int, int],
    truth: Any,
) -> dict[str, Any]:
    """The result's tools, truth checks and ratios from the runs of each tool (baselines: the
    peak RSS KiB of ours and softflowd on the one-frame capture)."""
    ours = _median_run(ours_runs)
    inproc = _median_run(inproc_runs)
    ours["peak_rss_kib_max"] = max(int(r["peak_rss_kib"]) for r in ours_runs)
    ours["rss_per_flow_bytes"] = _per_flow(
        ours["peak_rss_kib_max"], baselines[0], ours["peak_flows"]
    )
    result: dict[str, Any] = {"ours": ours, "ours_in_process": inproc}
    if truth is not None:
        result["truth"] = truth.by_proto
        result["matches_truth"] = _matches(ours, truth)
        result["in_process_matches_truth"] = _matches(inproc, truth)
    if sf_runs:
        sf = _median_run(sf_runs)
        sf["peak_rss_kib_max"] = max(int(r["peak_rss_kib"]) for r in sf_runs)
        sf["rss_per_flow_bytes"] = _per_flow(sf["peak_rss_kib_max"], baselines[1], sf["flows"])
        result["softflowd"] = sf
        result["ratio"] = round(ours["packets_per_s"] / sf["packets_per_s"], 3)
        result["ratio_best"] = round(ours["best_packets_per_s"] / sf["best_packets_per_s"], 3)
        result["ratio_cpu"] = round(sf["min_cpu_seconds"] / max(ours["min_cpu_seconds"], 1e-9), 3)
        result["ratio_in_process"] = round(inproc["packets_per_s"] / sf["packets_per_s"], 3)
        result["rss_ratio"] = round(ours["peak_rss_kib_max"] / sf["peak_rss_kib_max"], 3)
        if truth is not None:
            sf_packets = {k: v["packets"] for k, v in sf["by_proto"].items()}
            result["softflowd_packets_match_truth"] = sf_packets == {
                k: v["packets"] for k, v in truth.by_proto.items()
            }
    return result


def _concurrent_capture(args: argparse.Namespace) -> tuple[Path, Truth]:
    """--concurrent N: the cached capture of N flows open at once, --packets // N rounds."""
    from appliance.devkit.capture.synth import cached_concurrent_capture

    n = args.concurrent
    if not 1 <= n <= TABLE_FLOWS:
        raise CommandError(
            f"--concurrent {n}: from 1 to {TABLE_FLOWS} flows (both meters' table size here)"
        )
    rounds = args.packets // n
    if not 3 <= rounds < 1800:
        raise CommandError(
            f"--concurrent {n} --packets {args.packets}: each flow needs 3 to 1799 frames "
            f"(--packets from {3 * n} to {1799 * n})"
        )
    return cached_concurrent_capture(args.cache, args.seed, n, rounds)


#: A minimal Ethernet + IPv4 + UDP frame (documentation addresses), for the start-up baseline.
_ONE_FRAME = bytes.fromhex(
    "020000000002020000000001080045000020000100004011f8d2c0000201c000020213880035000c0000"
) + bytes(18)


def _compile_package() -> None:
    """Byte-compile the appliance package, as pip does when it installs one: in a source
    checkout run with PYTHONDONTWRITEBYTECODE (set on our build machines) every `flows` run
    would otherwise compile our modules again (~0.03 s CPU and 2 MiB of peak RSS here), a cost
    no installed copy pays."""
    import compileall

    import appliance

    for root in appliance.__path__:
        compileall.compile_dir(root, quiet=2, workers=1)


def _matches(run: dict[str, Any], truth: Any) -> bool:
    return bool(
        run["by_proto"] == truth.by_proto
        and run["frames"] == truth.frames
        and run["non_ip"] == truth.non_ip
    )


def _per_flow(peak_kib: int, base_kib: int, flows: int) -> int:
    return round((peak_kib - base_kib) * 1024 / flows) if flows else 0


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = sorted(runs, key=lambda r: float(r["seconds"]))
    out = dict(ordered[len(ordered) // 2])
    out["runs_seconds"] = [round(float(r["seconds"]), 4) for r in runs]
    out["best_packets_per_s"] = round(out["frames"] / float(ordered[0]["seconds"]))
    out["min_cpu_seconds"] = min(float(r["cpu_seconds"]) for r in runs)
    return out


_SUMMARY = re.compile(
    r"flows: (\d+) flows, (\d+) frames, (\d+) IP packets.*non-IP (\d+).*peak table (\d+)"
)


def _run_ours_process(path: Path, tmp: Path) -> dict[str, Any]:
    """`infraspectre flows --pcap path --json` as a process of its own, JSON lines to a file."""
    out_path, err_path = tmp / "flows.jsonl", tmp / "flows.err"
    cmd = [sys.executable, "-m", "appliance", "flows", "--pcap", str(path), "--json"]
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        seconds, cpu, rss, status = _timed_process(cmd, out, err)
    err_text = err_path.read_text(errors="replace")
    if status != 0:
        raise CommandError(f"infraspectre flows failed: {err_text.strip()[:200]}")
    m = _SUMMARY.search(err_text)
    if m is None:
        raise CommandError(f"infraspectre flows printed no summary: {err_text.strip()[:200]}")
    flows, frames, packets, non_ip, peak = (int(g) for g in m.groups())
    by: dict[str, dict[str, int]] = {}
    with open(out_path, "rb") as f:
        for line in f:
            rec = json.loads(line)
            entry = by.setdefault(rec["proto"], {"flows": 0, "packets": 0, "bytes": 0})
            entry["flows"] += 1
            entry["packets"] += rec["packets_tx"] + rec["packets_rx"]
            entry["bytes"] += rec["bytes_tx"] + rec["bytes_rx"]
    out_path.unlink()
    return {
        "seconds": round(seconds, 4),
        "cpu_seconds": round(cpu, 4),
        "peak_rss_kib": rss,
        "frames": frames,
        "packets_per_s": round(frames / seconds),
        "flows": flows,
        "packets": packets,
        "non_ip": non_ip,
        "by_proto": dict(sorted(by.items())),
        "peak_flows": peak,
    }


def _timed_process(
    cmd: list[str], stdout: IO[bytes], stderr: IO[bytes]
) -> tuple[float, float, int, int]:
    """Run cmd to its end: (wall seconds, CPU seconds, peak RSS KiB, exit status).

    CPU and peak RSS come from GNU time, which forks cmd from its own small process: a child
    of this process would carry this process's peak RSS (numpy, the in-process runs) in its
    own ru_maxrss, since the kernel keeps the larger of the pre-exec and post-exec peaks."""
    with tempfile.NamedTemporaryFile(prefix="isbench-time-", mode="r") as usage:
        timed = [TIME, "-q", "-o", usage.name, "-f", "%U %S %M", *cmd]
        if cmd[:3] == ["ip", "netns", "exec"]:  # time runs inside: it measures the tool only
            timed = [*cmd[:4], TIME, "-q", "-o", usage.name, "-f", "%U %S %M", *cmd[4:]]
        start = time.perf_counter()
        status = subprocess.run(timed, stdout=stdout, stderr=stderr, timeout=600).returncode
        seconds = time.perf_counter() - start
        fields = usage.read().split()
    if len(fields) < 3:
        raise CommandError(f"{cmd[0]}: no resource usage from {TIME} (status {status})")
    user, system, rss = fields[-3:]
    return seconds, float(user) + float(system), int(rss), status


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
        softflowd_cmd += ["-m", str(TABLE_FLOWS), "-v", "9", "-n", f"127.0.0.1:{NFCAPD_PORT}"]
        nfcapd = subprocess.Popen(
            nfcapd_cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_udp_listener(ns, NFCAPD_PORT)
            with open(flowdir / "softflowd.out", "w+b") as out:
                seconds, cpu, rss, status = _timed_process(softflowd_cmd, out, out)
                out.seek(0)
                stdout = out.read().decode(errors="replace")
            if status != 0:
                raise CommandError(f"softflowd failed: {stdout.strip()[:200]}")
            time.sleep(0.5)  # let nfcapd drain its socket before it is told to stop
        finally:
            nfcapd.send_signal(signal.SIGTERM)
            try:
                nfcapd.wait(timeout=20)
            except subprocess.TimeoutExpired:
                nfcapd.kill()
                nfcapd.wait()
        by_proto, records = _nfdump_totals(flowdir)
    frames = _softflowd_frames(stdout)
    return {
        "seconds": round(seconds, 4),
        "cpu_seconds": round(cpu, 4),
        "peak_rss_kib": rss,
        "frames": frames,
        "packets_per_s": round(frames / seconds),
        "flows": _softflowd_flows(stdout),
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


#: One Ethernet/IPv4/UDP frame, 192.0.2.1:53 <- 0.0.0.0:0; compiled_memory_bench writes
#: the source address and port of each distinct flow into copies of it.
_UDP_FRAME = bytes.fromhex(
    "020000000002 020000000001 0800"  # Ethernet
    "4500 001c 0000 0000 4011 0000 00000000 c0000201"  # IPv4, total length 28
    "0000 0035 0008 0000"  # UDP
)


def compiled_memory_bench(
    max_flows: int, flows_total: int = 2_000_000, batch: int = 16384
) -> dict[str, Any] | None:
    """memory_bench for the live agent's compiled meter (None where it is not built): the
    same distinct flows, as frames; its bound uses _fastpath.SLOT_BYTES."""
    import numpy as np

    from appliance.capture.config import MeterConfig
    from appliance.capture.decode import FrameBatch
    from appliance.capture.source import CompiledMeter

    try:
        from appliance.capture import _fastpath
    except ImportError:  # not built: the numpy meter is the live one
        return None
    width = len(_UDP_FRAME)
    template = np.frombuffer(_UDP_FRAME, dtype=np.uint8)
    base = _rss_anon_kib()
    meter = CompiledMeter(MeterConfig(max_flows=max_flows, idle_timeout_s=3600))
    after_alloc = _rss_anon_kib()
    peak = after_alloc
    ended = 0
    t0 = 1_795_000_000_000_000_000
    for start in range(0, flows_total, batch):
        n = min(batch, flows_total - start)
        ids = np.arange(start, start + n, dtype=np.uint32)
        frames = np.tile(template, (n, 1))
        frames[:, 26:30] = (ids >> np.uint32(16)).astype(">u4").view(np.uint8).reshape(n, 4)
        frames[:, 34:36] = (ids & np.uint32(0xFFFF)).astype(">u2").view(np.uint8).reshape(n, 2)
        ended += len(
            meter.add(
                FrameBatch(
                    data=frames.reshape(-1),
                    offsets=np.arange(n, dtype=np.int64) * width,
                    caplen=np.full(n, width, dtype=np.int64),
                    ts_ns=np.full(n, t0 + start * 1000, dtype=np.int64),
                )
            )
        )
        peak = max(peak, _rss_anon_kib())
    bound_kib = base + (max_flows * _fastpath.SLOT_BYTES * 2 + 64 * 1024 * 1024) // 1024
    out = {
        "max_flows": max_flows,
        "flows_offered": flows_total,
        "packets_metered": meter.stats.packets,
        "active_flows": meter.active_flows,
        "evicted": meter.stats.evicted,
        "flows_ended": ended,
        "slot_bytes": _fastpath.SLOT_BYTES,
        "rss_anon_kib_before": base,
        "rss_anon_kib_table_allocated": after_alloc,
        "rss_anon_kib_peak": peak,
        "rss_anon_kib_bound": bound_kib,
        "within_bound": peak <= bound_kib and meter.active_flows <= max_flows,
    }
    del meter
    return out


def _rss_anon_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0
