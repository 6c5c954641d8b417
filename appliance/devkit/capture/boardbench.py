"""`infraspectre bench flows --board raspi3b`: the whole-process bench inside the emulated Pi.

The same side-by-side as the host bench (appliance.devkit.capture.bench), run on the
architecture we ship. Absolute figures under TCG emulation mean little; the ratio of the two
tools in the same guest, alternating, means a lot.

1. The bench card: the rpi image (`image build`: the appliance with its C fast path
   cross-compiled for aarch64) plus BENCH_PACKAGES (softflowd, nfdump's nfcapd, GNU time from
   Debian bookworm arm64). A bench-only variant, never the shipped card; built into
   CACHE/bench-card/ and reused while its inputs (card_inputs) are unchanged.
2. The capture: the host bench's seeded synthetic capture (synth.cached_capture) with its
   ground truth, put into a fresh f2fs of the card copy's data partition (/data/bench/), with a
   one-frame capture for the start-up baseline.
3. The guest: QEMU (appliance.qemu.machine: restrict=on, no uplink destination at all) boots
   the card; the supervised services are stopped (the unprovisioned agent would otherwise
   share the CPU), and the capture is read into the page cache before every timed run (the
   in-process run's numpy uses enough of the guest's 1 GiB to evict part of it, and the next
   tool would then also time the emulated SD card); then, --repeat times, alternating:
   - ours: `infraspectre flows --pcap F --json` to a file in /tmp (tmpfs);
   - softflowd: `softflowd -r F -c none -m 200000 -v 9` exporting NetFlow v9 to nfcapd on the
     guest's loopback (as on the host);
   - ours in-process: PcapReader -> Decoder -> FlowMeter in one interpreter (start-up, imports
     and output excluded);
   each tool under GNU time in the guest (CPU seconds, peak RSS, wall seconds). Their records
   are totalled in the guest by GUEST_HELPER (a small script put on the guest) after the
   timed run, and checked on the host against the generator's truth.
   "matches_host_bytes": the guest's JSON lines hash to the same sha256 as the host's
   `flows --pcap` output on the same file; "native_fastpath": the guest imported
   appliance.capture._fastpath (without it the meter runs its numpy/Python fallbacks);
   "native_meter": the guest's `flows --pcap F --json` ran the native meter, numpy never
   imported (docs/FLOWS.md "The native meter").
The result has the host bench's fields and ratios, plus "board" and "machine".
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from appliance.errors import CommandError

#: What the bench card carries beyond the shipped card (Debian bookworm arm64 packages).
BENCH_PACKAGES = ("softflowd", "nfdump", "time")
#: Boards the bench boots (qemu/boards): the Pi's own SoC, or the fast generic board.
BOARDS = ("raspi3b", "virt")
#: A fixed SOURCE_DATE_EPOCH for the bench card (2026-11-27 00:00 UTC, as the board tests).
EPOCH = 1795737600
#: Defaults: a few hundred thousand frames keep one run of the bench under ~20 min here.
DEFAULT_PACKETS = 300_000
DEFAULT_REPEAT = 3
MAX_PACKETS = 1_000_000
MAX_REPEAT = 10
#: Where the capture lands on the guest (the data partition) and where outputs go (tmpfs).
GUEST_DIR = "/data/bench"
GUEST_TMP = "/tmp/bench"
NFCAPD_PORT = 9995
#: Generous bounds for one guest command on a loaded 2-core host (TCG is slow).
COMMAND_TIMEOUT = 1800.0
BOOT_TIMEOUT = 600.0

#: Run on the guest (put there as GUEST_DIR/summary.py) after each timed run; prints one JSON
#: object. Modes: `jsonl FILE` (our JSON lines: per-protocol flows/packets/bytes, sha256),
#: `csv FILE` (nfdump -o csv rows: per-protocol records/packets/bytes), `inproc PCAP` (our
#: meter in-process, timed from opening the file to the last flow), `native` (whether the C
#: fast path imports). Only the standard library and the card's appliance package.
GUEST_HELPER = r"""
import hashlib, json, sys, time

def jsonl(path):
    by, digest = {}, hashlib.sha256()
    with open(path, "rb") as f:
        for line in f:
            digest.update(line)
            rec = json.loads(line)
            e = by.setdefault(rec["proto"], {"flows": 0, "packets": 0, "bytes": 0})
            e["flows"] += 1
            e["packets"] += rec["packets_tx"] + rec["packets_rx"]
            e["bytes"] += rec["bytes_tx"] + rec["bytes_rx"]
    return {"by_proto": dict(sorted(by.items())), "sha256": digest.hexdigest()}

NAMES = {"ICMP6": "ICMPV6", "IPv6-ICMP": "ICMPV6"}

def csv(path):
    cols = {"pr": 7, "ipkt": 11, "ibyt": 12}
    by, rows, header = {}, 0, False
    for line in open(path, errors="replace"):
        fields = line.rstrip("\n").split(",")
        if fields[0] == "ts":
            cols = {k: fields.index(k) for k in cols}
            header = True
            continue
        if line.startswith("Summary"):
            if rows:
                break
            continue
        if len(fields) < 13:
            continue
        try:
            packets, nbytes = int(fields[cols["ipkt"]]), int(fields[cols["ibyt"]])
        except ValueError:
            continue
        rows += 1
        proto = fields[cols["pr"]].strip()
        e = by.setdefault(NAMES.get(proto, proto), {"records": 0, "packets": 0, "bytes": 0})
        e["records"] += 1
        e["packets"] += packets
        e["bytes"] += nbytes
    return {"by_proto": dict(sorted(by.items())), "records": rows, "header": header}

def inproc(path):
    from pathlib import Path
    from appliance.capture.offline import meter_pcap
    start, cpu0 = time.perf_counter(), time.process_time()
    flows, s = meter_pcap(Path(path))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu0
    return {"seconds": round(seconds, 4), "cpu_seconds": round(cpu, 4), "frames": s.frames,
            "packets_per_s": round(s.frames / seconds), "flows": len(flows),
            "packets": s.meter.packets, "non_ip": s.decode.non_ip_total,
            "by_proto": flows.totals_by_proto(), "peak_flows": s.meter.peak_flows}

def native():
    import platform
    from appliance.capture import _fastpath, pcap, flows, decode
    return {"native": all(m._fastpath is not None for m in (pcap, flows, decode)),
            "meter_json": hasattr(_fastpath, "meter_json"),
            "module": _fastpath.__file__, "machine": platform.machine()}

mode = sys.argv[1]
if mode == "native":
    out = native()
else:
    out = {"jsonl": jsonl, "csv": csv, "inproc": inproc}[mode](sys.argv[2])
print("SUMMARY " + json.dumps(out, sort_keys=True))
"""


def register_args(p: argparse.ArgumentParser) -> None:
    """The board bench's options of `bench flows` (the rest are the host bench's)."""
    p.add_argument(
        "--board",
        choices=BOARDS,
        help="run the bench inside this emulated board (bench card: softflowd, nfcapd, time)",
    )
    p.add_argument(
        "--card-cache",
        type=Path,
        help="--board: where the bench card is built and reused (default CACHE/bench-card)",
    )


def check_args(args: argparse.Namespace) -> tuple[int, int]:
    """Validate the board bench's arguments; (packets, repeat) with the board's defaults."""
    if args.live or args.memory:
        raise CommandError("--board runs the offline bench: drop --live and --memory")
    if getattr(args, "concurrent", None) is not None:
        raise CommandError("--board meters the synthetic capture or --pcap: drop --concurrent")
    packets = DEFAULT_PACKETS if args.packets is None else args.packets
    repeat = DEFAULT_REPEAT if args.repeat is None else args.repeat
    if not 1_000 <= packets <= MAX_PACKETS:
        raise CommandError(f"--packets must be between 1000 and {MAX_PACKETS} with --board")
    if not 1 <= repeat <= MAX_REPEAT:
        raise CommandError(f"--repeat must be between 1 and {MAX_REPEAT} with --board")
    if args.pcap is not None and not args.pcap.is_file():
        raise CommandError(f"{args.pcap}: no such file")
    if args.truth is not None and args.pcap is None:
        raise CommandError("--truth goes with --pcap")
    return packets, repeat


# -- guest output ----------------------------------------------------------------------


def parse_time(text: str) -> tuple[float, float, int]:
    """GNU time's `-f "%U %S %M %e"` line: (CPU seconds, wall seconds, peak RSS KiB)."""
    fields = text.split()
    if len(fields) < 4:
        raise CommandError(f"no resource usage from GNU time in the guest: {text.strip()[:120]!r}")
    try:
        user, system, rss, wall = float(fields[-4]), float(fields[-3]), int(fields[-2]), fields[-1]
        return user + system, max(float(wall), 0.01), rss
    except ValueError:
        raise CommandError(
            f"unreadable GNU time line from the guest: {text.strip()[:120]!r}"
        ) from None


def parse_summary(text: str) -> dict[str, Any]:
    """The JSON object GUEST_HELPER printed (its `SUMMARY {...}` line)."""
    for line in reversed(text.splitlines()):
        if line.startswith("SUMMARY "):
            try:
                value = json.loads(line.removeprefix("SUMMARY "))
            except json.JSONDecodeError:
                break
            if isinstance(value, dict):
                return value
    raise CommandError(f"the guest's summary is missing: {text.strip()[-200:]!r}")


def _timed_fields(time_line: str, frames: int) -> dict[str, Any]:
    cpu, wall, rss = parse_time(time_line)
    return {
        "seconds": round(wall, 4),
        "cpu_seconds": round(cpu, 4),
        "peak_rss_kib": rss,
        "frames": frames,
        "packets_per_s": round(frames / wall),
    }


def ours_run(time_line: str, stderr: str, summary: dict[str, Any]) -> dict[str, Any]:
    """One whole-process run of ours on the guest, in the host bench's run shape."""
    from appliance.devkit.capture.bench import _SUMMARY

    m = _SUMMARY.search(stderr)
    if m is None:
        raise CommandError(f"infraspectre flows printed no summary on the guest: {stderr[-200:]!r}")
    flows, frames, packets, non_ip, peak = (int(g) for g in m.groups())
    return {
        **_timed_fields(time_line, frames),
        "flows": flows,
        "packets": packets,
        "non_ip": non_ip,
        "by_proto": summary["by_proto"],
        "peak_flows": peak,
        "sha256": summary["sha256"],
    }


def softflowd_run(time_line: str, stdout: str, summary: dict[str, Any]) -> dict[str, Any]:
    """One softflowd run on the guest, in the host bench's run shape."""
    from appliance.devkit.capture.bench import _softflowd_flows, _softflowd_frames

    frames = _softflowd_frames(stdout)
    if frames == 0:
        raise CommandError(f"softflowd read no packets on the guest: {stdout.strip()[-200:]!r}")
    return {
        **_timed_fields(time_line, frames),
        "flows": _softflowd_flows(stdout),
        "netflow_records": summary["records"],
        "by_proto": summary["by_proto"],
    }


def report(
    ours_runs: list[dict[str, Any]],
    inproc_runs: list[dict[str, Any]],
    sf_runs: list[dict[str, Any]],
    baselines: tuple[int, int],
    truth: Any,
) -> dict[str, Any]:
    """The host bench's result fields and ratios from the guest's runs; here every run of ours
    (not only the median one) must match the truth, and all must write the same lines."""
    from appliance.devkit.capture.bench import _matches, compare_runs

    result = compare_runs(ours_runs, inproc_runs, sf_runs, baselines, truth)
    result["runs_identical_output"] = len({r["sha256"] for r in ours_runs}) == 1
    if truth is not None:
        result["matches_truth"] = all(_matches(r, truth) for r in ours_runs)
        result["in_process_matches_truth"] = all(_matches(r, truth) for r in inproc_runs)
    return result


# -- the bench card --------------------------------------------------------------------


def _files(paths: Iterable[Path]) -> Iterable[Path]:
    for path in paths:
        if path.is_file():
            yield path
        elif path.is_dir():
            yield from sorted(
                p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts
            )


def card_inputs(source: Path, package_dir: Path) -> str:
    """A digest of everything the bench card is built from here (definitions, overlays, lock,
    the card's part of the package, the C sources, BENCH_PACKAGES, EPOCH): a change rebuilds it.
    (The Debian archive can move on between builds: a card is reused until its inputs change.)"""
    from appliance.image import rootfs

    digest = hashlib.sha256(f"{BENCH_PACKAGES} {EPOCH}\n".encode())
    shipped = [package_dir / r for r in rootfs.runtime_files(package_dir)]
    shipped += [package_dir / r for r in rootfs.NATIVE]
    roots = [source / "image", source / "overlays", source / "requirements.lock"]
    for path in [*_files(roots), *shipped]:
        digest.update(os.path.relpath(path, source).encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def bench_card(cache: Path, card_dir: Path) -> Path:
    """The bench card image in card_dir, built (as root) unless its inputs are unchanged."""
    from appliance.image import build, definition

    package_dir = Path(build.__file__).resolve().parents[1]
    key = card_inputs(definition.SOURCE_DIR, package_dir)
    image = card_dir / "infraspectre-rpi.img"
    stamp = card_dir / "inputs.sha256"
    if image.is_file() and stamp.is_file() and stamp.read_text().strip() == key:
        print(f"bench: reusing the bench card {image}", file=sys.stderr)
        return image
    defn = definition.load("rpi")
    variant = dataclasses.replace(defn, packages=(*defn.packages, *BENCH_PACKAGES))
    stamp.unlink(missing_ok=True)
    result = build.build(variant, card_dir, cache.resolve(), epoch=EPOCH)
    stamp.write_text(key + "\n")
    return result.image


def card_with_capture(image: Path, files: dict[str, Path], card: Path, work: Path) -> None:
    """A copy of image as card whose data partition is a fresh f2fs holding files (name on the
    guest below GUEST_DIR -> host file)."""
    from appliance.devkit.qemu.fixtures import sparse_copy
    from appliance.image import firstboot, sdcard

    sparse_copy(image, card)
    start, size = firstboot.mbr_partition(card, 4)
    tree = work / "data-tree"
    bench = tree / Path(GUEST_DIR).name
    bench.mkdir(parents=True)
    need = sum(p.stat().st_size for p in files.values())
    if need > size - 32 * sdcard.MIB:
        raise CommandError(
            f"the capture ({need / sdcard.MIB:.0f} MiB) does not fit the card's data partition "
            f"({size // sdcard.MIB} MiB): use fewer --packets"
        )
    for name, path in files.items():
        shutil.copyfile(path, bench / name)
    data = work / "data.f2fs"
    sdcard.make_data(tree, size, data, EPOCH)
    with card.open("r+b") as out, data.open("rb") as src:
        out.seek(start)
        shutil.copyfileobj(src, out, 1 << 20)
    data.unlink()
    shutil.rmtree(tree)


# -- the run ---------------------------------------------------------------------------


class Guest:
    """The booted bench card: console commands with generous timeouts and clear failures."""

    def __init__(self, machine: Any) -> None:
        self.machine = machine

    def sh(self, command: str, what: str) -> str:
        result = self.machine.run(command, timeout=COMMAND_TIMEOUT)
        if result.status != 0:
            raise CommandError(f"{what} failed on the guest: {result.output.strip()[-200:]!r}")
        return str(result.output)

    def warm(self, path: str) -> None:
        """path into the page cache, before every timed run: a run would otherwise also time
        the emulated SD card (QEMU's sdhost, slow) for what the run before it evicted."""
        self.sh(f"cat {path} > /dev/null", "reading the capture")

    def helper(self, *args: str) -> dict[str, Any]:
        out = self.sh(f"python3 {GUEST_DIR}/summary.py {' '.join(args)}", f"summary {args[0]}")
        return parse_summary(out)

    def ours(self, pcap: str) -> dict[str, Any]:
        out, err = f"{GUEST_TMP}/flows.jsonl", f"{GUEST_TMP}/flows.err"
        timed = _timed(f"infraspectre flows --pcap {pcap} --json > {out} 2> {err}")
        status = self.machine.run(timed, timeout=COMMAND_TIMEOUT)
        stderr = self.sh(f"cat {err}", "reading ours' stderr")
        if status.status != 0:
            raise CommandError(f"infraspectre flows failed on the guest: {stderr.strip()[-200:]!r}")
        time_line = self.sh(f"cat {GUEST_TMP}/time", "reading GNU time")
        summary = self.helper("jsonl", out)
        self.sh(f"rm -f {out}", "cleaning up")
        return ours_run(time_line, stderr, summary)

    def softflowd(self, pcap: str) -> dict[str, Any]:
        nf = f"{GUEST_TMP}/nf"
        self.sh(f"rm -rf {nf} && mkdir -p {nf}", "preparing nfcapd's folder")
        self.sh(
            f"/usr/bin/nfcapd -w {nf} -b 127.0.0.1 -p {NFCAPD_PORT} -B 8000000 "
            f"> {GUEST_TMP}/nfcapd.log 2>&1 & echo $! > {GUEST_TMP}/nfcapd.pid",
            "starting nfcapd",
        )
        port = f"{NFCAPD_PORT:04X}"
        self.sh(
            f"i=0; until grep -q ':{port} ' /proc/net/udp; do i=$((i+1)); "
            f"[ $i -gt 600 ] && exit 1; sleep 0.5; done",
            "waiting for nfcapd to listen",
        )
        sf_out = f"{GUEST_TMP}/softflowd.out"
        timed = _timed(
            f"/usr/sbin/softflowd -r {pcap} -c none -m 200000 -v 9 "
            f"-n 127.0.0.1:{NFCAPD_PORT} > {sf_out} 2>&1"
        )
        status = self.machine.run(timed, timeout=COMMAND_TIMEOUT)
        stdout = self.sh(f"cat {sf_out}", "reading softflowd's output")
        # let nfcapd drain its socket, then stop it: it writes its file on the way out
        self.sh(
            f"sleep 2; pid=$(cat {GUEST_TMP}/nfcapd.pid); kill $pid; "
            "i=0; while kill -0 $pid 2>/dev/null; do i=$((i+1)); [ $i -gt 600 ] && exit 1; "
            "sleep 0.5; done",
            "stopping nfcapd",
        )
        if status.status != 0:
            raise CommandError(f"softflowd failed on the guest: {stdout.strip()[-200:]!r}")
        time_line = self.sh(f"cat {GUEST_TMP}/time", "reading GNU time")
        self.sh(f"/usr/bin/nfdump -R {nf} -o csv > {GUEST_TMP}/nf.csv", "nfdump")
        summary = self.helper("csv", f"{GUEST_TMP}/nf.csv")
        return softflowd_run(time_line, stdout, summary)


def _timed(command: str) -> str:
    return f'/usr/bin/time -q -o {GUEST_TMP}/time -f "%U %S %M %e" sh -c "exec {command}"'


def host_output_sha256(pcap: Path) -> str:
    """sha256 of the host's own `infraspectre flows --pcap F --json` lines."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.run(
            [sys.executable, "-m", "appliance", "flows", "--pcap", str(pcap), "--json"],
            stdout=out,
            stderr=subprocess.PIPE,
            timeout=1800,
            check=False,
        )
        if proc.returncode != 0:
            raise CommandError(f"infraspectre flows failed on the host: {proc.stderr[-200:]!r}")
        out.seek(0)
        digest = hashlib.sha256()
        while chunk := out.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def machine_info() -> dict[str, Any]:
    """Where the bench ran: the host (emulation's speed depends on it) and its load."""
    return {
        "host": platform.machine(),
        "host_cpus": os.cpu_count(),
        "host_load_average": [round(x, 2) for x in os.getloadavg()],
        "emulation": "QEMU TCG",
    }


def run_board_bench(args: argparse.Namespace) -> dict[str, Any]:
    """The whole board bench (see the module docstring); one JSON-ready dict."""
    from appliance.capture.pcap import write_pcap
    from appliance.devkit.capture.bench import _ONE_FRAME, native_meter_reads
    from appliance.devkit.capture.synth import Truth, cached_capture
    from appliance.qemu import boards
    from appliance.qemu.machine import Machine

    packets, repeat = check_args(args)
    if os.geteuid() != 0:
        raise CommandError("bench flows --board runs as root (it builds the bench card)")
    truth: Truth | None = None
    if args.pcap is not None:
        pcap = args.pcap
        if args.truth is not None:
            truth = Truth.from_json(args.truth.read_text())
    else:
        pcap, truth = cached_capture(args.cache, args.seed, packets)
    started = time.monotonic()
    image = bench_card(args.cache, args.card_cache or args.cache / "bench-card")
    host_sha = host_output_sha256(pcap)
    load_before = machine_info()["host_load_average"]
    with tempfile.TemporaryDirectory(prefix="isbench-board-") as tmp:
        work = Path(tmp)
        one = work / "one-frame.pcap"
        write_pcap(one, [(1_795_000_000_000_000_000, _ONE_FRAME)])
        helper = work / "summary.py"
        helper.write_text(GUEST_HELPER)
        card = work / "card.img"
        files = {"capture.pcap": pcap, "one-frame.pcap": one, "summary.py": helper}
        card_with_capture(image, files, card, work)
        machine = Machine(boards.load(args.board), card, work / args.board)
        try:
            boot_s = machine.boot(BOOT_TIMEOUT)
            guest = Guest(machine)
            # the supervised services (the unprovisioned agent) would share the guest's CPU
            guest.sh(
                "for f in /run/appliance/*.supervise; do kill $(cat $f) 2>/dev/null; done; "
                f"sleep 3; ip link set lo up; mkdir -p {GUEST_TMP}; "
                # nfcapd asks for an 8 MB socket buffer (-B); the kernel caps it at rmem_max
                # (208 KiB by default), and under emulation it then loses NetFlow datagrams
                "echo 16777216 > /proc/sys/net/core/rmem_max",
                "stopping the services",
            )
            native = guest.helper("native")
            big, small = f"{GUEST_DIR}/capture.pcap", f"{GUEST_DIR}/one-frame.pcap"
            guest.warm(big)
            base_ours = guest.ours(small)["peak_rss_kib"]
            base_sf = 0 if args.no_softflowd else guest.softflowd(small)["peak_rss_kib"]
            ours_runs: list[dict[str, Any]] = []
            sf_runs: list[dict[str, Any]] = []
            inproc_runs: list[dict[str, Any]] = []
            for n in range(repeat):
                print(f"bench: {args.board} run {n + 1}/{repeat}", file=sys.stderr, flush=True)
                guest.warm(big)
                ours_runs.append(guest.ours(big))
                if not args.no_softflowd:
                    guest.warm(big)
                    sf_runs.append(guest.softflowd(big))
                guest.warm(big)
                inproc_runs.append(guest.helper("inproc", big))
            cpuinfo = guest.sh(
                "grep -m1 -i 'model name\\|CPU part' /proc/cpuinfo; nproc", "cpuinfo"
            )
        finally:
            machine.power_cut()
    result = report(ours_runs, inproc_runs, sf_runs, (base_ours, base_sf), truth)
    result["capture"] = {
        "path": str(pcap),
        "frames": ours_runs[0]["frames"],
        "bytes": pcap.stat().st_size,
    }
    result["board"] = args.board
    result["native_fastpath"] = bool(native.get("native")) and native.get("machine") == "aarch64"
    # The guest's `flows --json` took the native meter (no numpy): it has it, and the same
    # code on the host reads this file natively (the decision depends on the file alone).
    result["native_meter"] = (
        result["native_fastpath"] and bool(native.get("meter_json")) and native_meter_reads(pcap)
    )
    result["matches_host_bytes"] = all(r["sha256"] == host_sha for r in ours_runs)
    info = machine_info()
    info["host_load_average_before"] = load_before
    info["guest_cpu"] = " ".join(cpuinfo.split())
    info["boot_s"] = round(boot_s, 1)
    info["bench_s"] = round(time.monotonic() - started, 1)
    result["machine"] = info
    return result
