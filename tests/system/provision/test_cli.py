"""Both provisioning commands as a technician runs them: `provision` on a serial port, the
box's `provision-responder` on the other end of a cable (two ptys joined by socat, raw, like a
USB-serial adapter on a console)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.crypto import load_signing_key
from appliance.pki import init_pki, load_trust_map

CLI = [sys.executable, "-m", "appliance"]


def provision(port: Path, pki: Path, agent_id: str, wait: int) -> subprocess.CompletedProcess[str]:
    """The technician's command, as typed."""
    return subprocess.run(
        [*CLI, "provision", "--port", str(port), "--pki", str(pki), "--agent-id", agent_id,
         "--wait", str(wait)],
        capture_output=True, text=True, timeout=wait + 60,
    )  # fmt: skip


@pytest.fixture
def cable(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Two pty ends joined like a null-modem cable: (box side, technician side)."""
    box, tech = tmp_path / "ttyBOX", tmp_path / "ttyTECH"
    proc = subprocess.Popen(
        ["socat", f"pty,raw,echo=0,link={box}", f"pty,raw,echo=0,link={tech}"],
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not (box.exists() and tech.exists()):
        assert time.monotonic() < deadline, "socat made no ptys"
        time.sleep(0.05)
    yield box, tech
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def responder(
    cable: tuple[Path, Path], tmp_path: Path
) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """The box: the responder on its console, its keys folder, a fake supervisor PID file."""
    keys = tmp_path / "box-keys"
    sleeper = subprocess.Popen(["sleep", "60"])  # stands in for the agent's supervisor
    wake = tmp_path / "agent.supervise"
    wake.write_text(f"{sleeper.pid}\n")
    with open(cable[0], "r+b", buffering=0) as tty:
        proc = subprocess.Popen(
            [*CLI, "provision-responder", "--keys", str(keys), "--wake", str(wake),
             "--clock-file", str(tmp_path / "clock")],
            stdin=tty, stdout=tty, stderr=subprocess.PIPE,
        )  # fmt: skip
    try:
        yield keys, sleeper
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        if sleeper.poll() is None:
            sleeper.kill()
        sleeper.wait()


def test_technician_provisions_a_box_over_a_serial_cable(
    cable: tuple[Path, Path], responder: tuple[Path, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    keys, supervisor = responder
    pki = tmp_path / "pki"
    init_pki(pki, [])
    run = provision(cable[1], pki, "branch-3", wait=60)
    assert run.returncode == 0, run.stderr
    assert "box answered: unprovisioned" in run.stdout
    assert "provisioned branch-3" in run.stdout
    signing = load_signing_key(keys / "ed25519.key")
    assert load_trust_map(pki / "trust_map.yaml").get("branch-3") == signing.verify_key
    assert (keys / "client.crt").exists() and (keys / "ca.crt").exists()
    # the clock the next boot starts from (rcS's floor) was saved with the identity
    assert abs(int((keys.parent / "clock").read_text()) - time.time()) < 60
    # the agent's supervisor was woken (SIGUSR1 ends the `sleep` standing in for it)
    assert supervisor.wait(timeout=10) == -signal.SIGUSR1
    # a second run refuses to re-key without --replace, and says so in one line
    again = provision(cable[1], pki, "branch-3", wait=30)
    assert again.returncode != 0
    assert again.stderr.strip().splitlines()[-1] == (
        "infraspectre: the box is already provisioned as branch-3: pass --replace to give it a "
        "new identity"
    )


def test_no_box_on_the_port_is_a_one_line_error(cable: tuple[Path, Path], tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    init_pki(pki, [])
    run = provision(cable[1], pki, "b-1", wait=2)
    assert run.returncode != 0
    assert run.stderr.strip().startswith("infraspectre: no answer from the box")
    assert len(run.stderr.strip().splitlines()) == 1


def test_a_missing_port_is_a_one_line_error(tmp_path: Path) -> None:
    run = provision(tmp_path / "ttyUSB9", tmp_path, "b-1", wait=5)
    assert run.returncode != 0
    assert run.stderr.startswith("infraspectre: cannot open")
    assert len(run.stderr.strip().splitlines()) == 1
