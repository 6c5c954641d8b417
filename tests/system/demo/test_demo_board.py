"""`demo --board` without a board: its refusals come first, each one line with exit status 1,
and a failure after the demo has started things (its workspace, PKI and host bus) still tears
all of it down. The whole demo (QEMU raspi3b, provisioning, mirrored traffic) runs by hand
(`make demo-board`): the board tier already boots, provisions and delivers in every CI run
(tests/board/test_provisioning.py), through the same appliance.devkit.qemu.box steps."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.devkit.demo_board import host_private_keys


def _demo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", "demo", *args],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


def _refused(run: subprocess.CompletedProcess[str], says: str) -> None:
    assert run.returncode == 1, run.stdout + run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], run.stderr
    assert "Traceback" not in run.stderr


def _refused_in_process(capsys: pytest.CaptureFixture[str], says: str, *args: str) -> None:
    """The CLI's own entry point, in this process (the refusals come before anything starts,
    so nothing needs a process of its own): exit status 1 and one line."""
    status = main(["demo", *args])
    err = capsys.readouterr().err
    assert status == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], err


@pytest.fixture
def some_file(tmp_path: Path) -> Path:
    path = tmp_path / "not-a-card.img"
    path.write_bytes(b"\0" * (1 << 20))
    return path


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--image", "x.img"], "--image goes with --board"),
        (["--bus-port", "5000"], "--bus-port goes with --board"),
        (["--board", "--image", "/nonexistent/card.img"], "no card image at /nonexistent/card.img"),
        (["--board", "--bus-port", "70000"], "--bus-port 70000: a TCP port is 1-65535"),
        (["--board", "--timeout", "0"], "--timeout 0: must be positive"),
    ],
)
def test_bad_options_are_refused_before_anything_starts(
    capsys: pytest.CaptureFixture[str], args: list[str], says: str
) -> None:
    _refused_in_process(capsys, says, *args)


def test_a_missing_qemu_is_named(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    some_file: Path,
) -> None:  # fmt: skip
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no QEMU, no socat
    _refused_in_process(capsys, "qemu-system-aarch64 is not on PATH",
                        "--board", "--image", str(some_file))  # fmt: skip


def test_a_taken_bus_port_is_named(capsys: pytest.CaptureFixture[str], some_file: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        args = ["--board", "--image", str(some_file), "--bus-port", str(port)]
        _refused_in_process(capsys, f"port {port} on 127.0.0.1 is taken", *args)


def test_a_failure_after_the_start_tears_everything_down(tmp_path: Path, some_file: Path) -> None:
    """The bus is running and the workspace holds the PKI when the card turns out not to be
    one: the bus is stopped by its PID and the workspace removed."""
    workspaces = tmp_path / "tmp"
    workspaces.mkdir()
    run = _demo("--board", "--image", str(some_file),
                env={**os.environ, "TMPDIR": str(workspaces)})  # fmt: skip
    _refused(run, f"{some_file} is not an InfraSpectre card image")
    started = re.search(r"host bus \(pid (\d+)\)", run.stdout)
    assert started, run.stdout  # the failure came after the bus started: teardown was needed
    pid = int(started.group(1))
    cmdline = Path(f"/proc/{pid}/cmdline")
    assert not cmdline.exists() or b"bus\0serve" not in cmdline.read_bytes(), "the bus still runs"
    assert list(workspaces.iterdir()) == [], "the workspace was left behind"


def test_host_private_keys_finds_pem_and_key_files(tmp_path: Path) -> None:
    """The check the demo makes of what provisioning left on the host must be able to fail."""
    (tmp_path / "client.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "ed25519.pub").write_bytes(b"\x01" * 32)
    assert host_private_keys(tmp_path) == []
    (tmp_path / "client.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    (tmp_path / "ed25519.key").write_bytes(b"\x02" * 32)
    assert host_private_keys(tmp_path) == ["client.pem", "ed25519.key"]
