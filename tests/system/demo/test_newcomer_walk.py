"""The newcomer walk: every command README.md and docs/*.md show in a shell block, run verbatim
(`sh -c LINE`) in a clean folder, in the docs' order, each expected to exit 0.

The folder holds only what a fresh clone gives a newcomer and the docs point at (`docs/`,
`contrib/`) plus the inputs a doc assumes the reader brings (GIVEN: a capture file); no
certificates, store or venv. `infraspectre` is found on PATH (the venv's bin). Everything runs
in a network namespace of its own, so the bus's fixed default ports (50051, 9000, 8080) are
private to the walk. A `cd` line changes the folder for the rest of that doc's lines.

Commands that run until stopped (SERVERS) are started in the background, must come up (the bus
says it is ready; a tail stays running) and are stopped at the end, the bus with SIGTERM (exit
0), a tail with Ctrl-C (SIGINT: "interrupted", exit 130); the signal goes to the command, by
PID, not to the `sh` around it, which then exits with the command's status. SKIPPED lists
every command that is not run, with the reason (QEMU, hardware, root-owned system folders,
minutes of benchmark); the test fails when a doc shows a command that is in neither list, so
the walk grows with the docs.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.devkit.capture.synth import generate

REPO = Path(__file__).resolve().parents[3]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

#: Not run, and why. Keys are the command lines exactly as the docs show them (comment cut).
SKIPPED = {
    "make demo": "has its own system test (tests/system/demo/test_demo.py)",
    "make demo-board": "boots the card on the emulated Pi for minutes (tests/system/demo/"
    "test_demo_board.py: its refusals and teardown; tests/board/test_provisioning.py: the same "
    "boot, provisioning and delivery)",
    "make test": "runs every tier, this walk included",
    "sudo infraspectre image build --board rpi --out out/rpi": "downloads Debian packages; "
    "minutes (tests/system/image)",
    "ls out/rpi": "lists the image build's output (skipped above)",
    'command="/usr/lib/appliance/agent-run"': "a service definition, not a command",
    'check="/usr/local/bin/infraspectre agent --help"': "a service definition, not a command",
    'backoff="1 60"': "a service definition, not a command",
    "infraspectre image configure out/rpi/infraspectre-rpi.img --agent-id branch-042 "
    "--bus bus.example.net:50051": "needs the built image",
    "infraspectre image configure card.img --unset bus --mirror eth1,eth2": "needs a card image",
    "infraspectre image flash out/rpi/infraspectre-rpi.img /dev/sdX --agent-id branch-042 "
    "--bus 192.0.2.10:50051": "hardware: an SD card",
    "infraspectre image flash out/rpi/infraspectre-rpi.img vm-disk.img --force": "needs the "
    "built image",
    "infraspectre qemu boot out/rpi/infraspectre-rpi.img --board raspi3b --snapshot": "QEMU",
    "infraspectre qemu boot card.img --board virt --console-port 4555 --uplink-port 50051": "QEMU",
    "infraspectre config check /data/config/infraspectre.yaml --component agent": "a path on "
    "the device",
    "infraspectre bus export ipfix --collector 198.51.100.7:4739 --since 2h --until 1h": "needs "
    "a collector at that address (tests/system/bus/test_export_ipfix.py runs it against nfcapd)",
    "cp contrib/prometheus/prometheus.yml contrib/prometheus/infraspectre.rules.yml "
    "/etc/prometheus/": "installs into the host's /etc",
    "sed -i 's/bus.example.net:9000/bus.corp.example:9000/' /etc/prometheus/prometheus.yml": "edits"
    " the host's /etc",
    "promtool check config /etc/prometheus/prometheus.yml": "reads the host's /etc (the rules "
    "are checked below; tests/system/ops runs Prometheus)",
    "systemctl restart prometheus": "a system service",
    "cp contrib/grafana/provisioning/datasources/infraspectre.yml "
    "/etc/grafana/provisioning/datasources/": "installs into the host's /etc",
    "cp contrib/grafana/provisioning/dashboards/infraspectre.yml  "
    "/etc/grafana/provisioning/dashboards/": "installs into the host's /etc",
    "install -D -m 0644 contrib/grafana/infraspectre-fleet.json "
    "/var/lib/grafana/dashboards/infraspectre/infraspectre-fleet.json": "installs into /var/lib",
    "systemctl restart grafana-server": "a system service",
    "infraspectre bench flows --json": "a benchmark: minutes of CPU",
    ".venv/bin/pytest -q tests/system/scale": "a test tier of the checkout (make test runs it)",
    "infraspectre bench flows --live --json --duration 3": "a benchmark: minutes of CPU",
    "infraspectre bench flows --memory --json": "a benchmark: minutes of CPU",
    "infraspectre bench flows --json --concurrent 100000 --repeat 5": "a benchmark: minutes of "
    "CPU (tests/unit/capture/test_synth_concurrent.py meters a small one against its truth)",
    "infraspectre bench flows --json --packets 1000000 --repeat 5": "a benchmark: minutes of CPU",
    "infraspectre bench flows --json --packets 1000000 --repeat 7": "a benchmark: minutes of CPU "
    "(tests/unit/capture/test_bench_parsing.py, tests/system/capture/test_flows_peers.py)",
    "infraspectre bench flows --json --packets 2000000 --repeat 5": "a benchmark: minutes of CPU",
    "infraspectre bench flows --json --packets 2000000 --repeat 7": "a benchmark: minutes of CPU",
    "infraspectre bench live --json --rates 2000,10000,50000 --duration 30 --idle 10": "a "
    "benchmark: minutes (tests/system/capture/test_agent_live_bench.py runs a short one)",
    "infraspectre bench live --json --rates 2000,10000,50000 --duration 30 --idle 5": "a "
    "benchmark: minutes (tests/system/capture/test_agent_live_bench.py runs a short one)",
    "infraspectre bench flows --json --packets 1000000 --concurrent 100000 --repeat 3": "a "
    "benchmark: minutes of CPU (tests/unit/capture/test_native_meter.py meters the concurrent "
    "generator's captures both ways)",
    "sudo infraspectre bench flows --board raspi3b --json": "a benchmark on an emulated Pi: "
    "many minutes (tests/unit/capture/test_board_bench.py; tests/board/test_raspi3b.py meters "
    "on the Pi)",
    "sudo infraspectre bench flows --board raspi3b --json --repeat 5": "a benchmark on an "
    "emulated Pi: many minutes",
    "infraspectre provision --port /dev/ttyUSB0 --pki pki --agent-id branch-042": "hardware: a "
    "box on a serial cable",
    # updates: a bundle needs a built image (minutes); these run in the update tests
    "sudo infraspectre image build --board rpi --out out/rpi --update-key keys/update.pub": "an "
    "image build: minutes (tests/system/image; the board tests build with an update key)",
    "infraspectre image bundle out/rpi/infraspectre-rpi.img --key keys/update.key --out "
    "rpi-0.2.0.bundle": "needs the built image (tests/unit/update/test_image_bundle.py)",
    "infraspectre image bundle out/rpi/infraspectre-rpi.img --key keys/update.key --out "
    "rpi.bundle": "needs the built image (tests/unit/update/test_image_bundle.py)",
    "infraspectre bench update out/rpi/infraspectre-rpi.img rpi.bundle --json": "a benchmark "
    "on an emulated Pi: many minutes (tests/unit/update/test_bench.py)",
    "infraspectre image bundle B.img --key keys/update.key --out B.bundle": "needs two built "
    "images (tests/unit/update/test_bench.py builds cards of its own)",
    "infraspectre bench update A.img B.bundle --network-only --json": "needs two built images "
    "(tests/unit/update/test_bench.py)",
    "infraspectre update apply /data/rpi-0.2.0.bundle": "runs on the box "
    "(tests/board/test_update.py)",
    "infraspectre update status": "runs on the box (tests/board/test_update.py)",
    **{
        f"infraspectre bus update {args} --config bus.yaml": "needs a bundle from a built image "
        "and the bus's configuration (tests/system/agent/test_update_bus.py runs the commands)"
        for args in (
            "upload rpi-0.2.0.bundle",
            "set --group default 0.2.0",
            "set --agent branch-0042 0.2.1",
            "set --agent branch-0042 none",
            "status [--json]",
            "status",
        )
    },
    "infraspectre bus agents --config bus.yaml": "the bus's configuration of the update example "
    "(tests/system/bus/test_fleet_view.py runs `bus agents`)",
}

#: Commands that run until stopped: how they say they are up ("" = they only have to stay up).
SERVERS = {
    "infraspectre bus serve": "bus ready on port",
    "infraspectre bus tail": "",
    "infraspectre bus tail --where 'bytes > 1000000 or agent = \"branch-0042\"'": "",
}


def doc_commands(path: Path) -> list[str]:
    """The command lines of path's sh blocks, in order: comments cut, continuations joined."""
    out: list[str] = []
    for block in re.findall(r"```(?:sh|bash|shell)\n(.*?)```", path.read_text(), re.S):
        pending = ""
        for raw in block.splitlines():
            line = pending + raw.strip()
            if line.endswith("\\"):
                pending = line[:-1].rstrip() + " "
                continue
            pending = ""
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def test_every_doc_command_is_walked_or_skipped_with_a_reason() -> None:
    shown = {cmd for doc in DOCS for cmd in doc_commands(doc)}
    # the walk runs as root in a few minutes: a benchmark or a sudo line is skipped, with why
    slow = sorted(c for c in _walked(shown) if " bench " in f" {c} " or c.startswith("sudo "))
    assert slow == [], "benchmarks and sudo lines belong in SKIPPED, with the reason"
    assert sorted(set(SKIPPED) - shown) == [], "SKIPPED names commands no doc shows any more"


def _walked(shown: set[str]) -> set[str]:
    return {c for c in shown if c not in SKIPPED and c not in SERVERS}


@pytest.fixture
def walk_dir(tmp_path: Path) -> Path:
    """A clean folder with what a clone gives (docs/, contrib/) and what a doc assumes the
    reader brings: branch.pcap, the capture FLOWS.md meters."""
    folder = tmp_path / "newcomer"
    folder.mkdir()
    for name in ("docs", "contrib"):
        shutil.copytree(REPO / name, folder / name)
    generate(folder / "branch.pcap", seed=7, packets=3000, flows=200)
    return folder


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"iswalk-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=30)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


#: every documented command, servers among them, each a Python start (seconds on a busy 2-core
#: machine): a hang guard, not a speed target (each command has its own 180 s limit)
@pytest.mark.timeout(1200)
def test_the_docs_quick_start_commands_run_verbatim(walk_dir: Path, netns: str) -> None:
    for tool in ("sqlite3", "promtool"):  # make apt installs them: missing is a failure
        assert shutil.which(tool), f"{tool} missing: run make apt"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for key in [k for k in env if k.startswith(("IS_", "BUS_"))]:
        del env[key]  # the walk is a newcomer's shell: no overrides
    servers: list[tuple[str, subprocess.Popen[str]]] = []
    failures: list[str] = []
    ran: list[str] = []
    try:
        for doc in DOCS:
            cwd = walk_dir
            for cmd in doc_commands(doc):
                if cmd in SKIPPED:
                    continue
                if cmd.startswith("cd "):
                    cwd = (cwd / cmd[3:].strip()).resolve()
                    continue
                argv = ["ip", "netns", "exec", netns, "sh", "-c", cmd]
                if cmd in SERVERS:
                    servers.append((cmd, _start(argv, cwd, env, SERVERS[cmd])))
                    continue
                proc = subprocess.run(
                    argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=180
                )
                ran.append(cmd)
                if proc.returncode != 0:
                    failures.append(f"{doc.name}: `{cmd}` exited {proc.returncode}: "
                                    f"{proc.stderr.strip()[-300:]}")  # fmt: skip
        for cmd, server in servers:
            if server.poll() is not None:
                failures.append(f"`{cmd}` ended by itself ({server.returncode}): "
                                f"{server.communicate()[1][-300:]}")  # fmt: skip
    finally:
        for cmd, server in reversed(servers):
            if server.poll() is None:
                _signal_command(server.pid, signal.SIGTERM if "bus serve" in cmd else signal.SIGINT)
            try:
                _, err = server.communicate(timeout=60)
            except subprocess.TimeoutExpired:  # never leave one running: the next must stop too
                _signal_command(server.pid, signal.SIGKILL)
                server.kill()
                _, err = server.communicate(timeout=60)
                failures.append(f"`{cmd}` did not stop within 60 s of its signal")
            # A tail ends with Ctrl-C: it says "interrupted" and exits 130.
            wanted = 0 if "bus serve" in cmd else 130
            clean = "Traceback" not in err and ("bus serve" in cmd or "interrupted" in err)
            if (server.returncode != wanted or not clean) and not failures:
                failures.append(f"`{cmd}` exited {server.returncode} when stopped: {err[-300:]}")
    assert failures == []
    # the walk did something: the bus answered its queries and a CSV was written
    assert "infraspectre bus query --agent branch-0042 --since 1h --proto TCP --json" in ran
    assert (walk_dir / "out.csv").read_text().startswith("agent_id,seq,src_ip")
    assert len((walk_dir / "flows.jsonl").read_text().splitlines()) == 200


def _start(argv: list[str], cwd: Path, env: dict[str, str], ready: str) -> subprocess.Popen[str]:
    """Start a long-running command; with a ready line, wait (bounded by its output ending)
    until it prints it."""
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if ready:
        assert proc.stdout is not None
        for line in proc.stdout:  # ends at EOF if the command dies
            if ready in line:
                break
        else:
            _, err = proc.communicate(timeout=60)
            raise AssertionError(f"`{argv[-1]}` did not get ready: {err[-300:]}")
    return proc


def _signal_command(sh_pid: int, sig: int) -> None:
    """Send sig to what `sh -c` runs: its children (by PID), or sh itself if it exec'd."""
    children = Path(f"/proc/{sh_pid}/task/{sh_pid}/children")
    try:
        pids = [int(p) for p in children.read_text().split()]
    except OSError:
        pids = []
    for pid in pids or [sh_pid]:
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            os.kill(pid, sig)
