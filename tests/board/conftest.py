"""Board tier: the image is built once per session and booted under QEMU.

The QEMU fixtures (boot_board, boot_board_shared, host_listener, console logs in failed
reports) come from the plugin appliance.devkit.qemu.fixtures. The download cache is ./cache (or
$INFRASPECTRE_CACHE), shared with `infraspectre image build`, so only the first run on a
machine downloads packages and wheels.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from appliance.crypto.keys import write_verify_key
from appliance.devkit.qemu.fixtures import *  # noqa: F403  (the plugin's fixtures and report hook)
from appliance.image import build, definition
from appliance.qemu.machine import Machine

CACHE = Path(os.environ.get("INFRASPECTRE_CACHE", definition.SOURCE_DIR / "cache")).resolve()
#: A fixed SOURCE_DATE_EPOCH (2026-11-27 00:00 UTC) so that two builds can be compared.
EPOCH = 1795737600
#: What an unprovisioned box's console (the provisioning responder) repeats.
PROVISIONING_BANNER = "InfraSpectre provisioning console (unprovisioned)"


#: The org update key of the board tests: a fixed seed, so two builds trust the same key
#: (never a real key: the seed is in the source).
UPDATE_KEY = SigningKey(bytes(range(100, 132)))


def build_rpi(out: Path) -> build.Result:
    """Build the rpi image into out from this session's inputs (cache, SOURCE_DATE_EPOCH),
    trusting the test update key."""
    # the same file name in both builds: the root lists it (update-keys/org-test.pub)
    pub = out.parent / "board-update-key" / "org-test.pub"
    write_verify_key(pub, UPDATE_KEY.verify_key)
    return build.build(definition.load("rpi"), out, CACHE, epoch=EPOCH, update_keys=[pub])


#: INFRASPECTRE_BOARD_IMAGE=DIR boots the image an earlier session built from this same tree
#: into DIR (infraspectre-rpi.img, its .sha256, manifest.json) instead of building it again: a
#: build takes 5-15 min on a loaded host. For re-running a few board tests by hand; CI never
#: sets it.
PREBUILT = os.environ.get("INFRASPECTRE_BOARD_IMAGE", "")


@pytest.fixture(scope="session")
def rpi_build(tmp_path_factory: pytest.TempPathFactory) -> build.Result:
    """The rpi image, built once per session (the one CI boots on raspi3b)."""
    if PREBUILT:
        d = Path(PREBUILT)
        sha = (d / "infraspectre-rpi.img.sha256").read_text().split()[0]
        return build.Result(d / "infraspectre-rpi.img", d / "manifest.json", sha, 0.0)
    return build_rpi(tmp_path_factory.mktemp("image-rpi"))


@pytest.fixture(scope="session")
def rebuild_rpi() -> Callable[[Path], build.Result]:
    """Build the rpi image again, from the same inputs, into a given directory."""
    return build_rpi


@pytest.fixture(scope="session")
def rpi_image(request: pytest.FixtureRequest) -> Path:
    """Path of the session's rpi image (boot copies of it, never the image itself).

    $INFRASPECTRE_BOARD_IMAGE names an image built before (`make image`) to boot instead of
    building one for the session: a developer's loop on one test; CI never sets it. Tests of
    the build itself (manifest, reproducibility) still build through rpi_build."""
    prebuilt = os.environ.get("INFRASPECTRE_BOARD_IMAGE")
    if prebuilt:
        if not Path(prebuilt).is_file():
            raise pytest.UsageError(f"INFRASPECTRE_BOARD_IMAGE={prebuilt}: no such image")
        return Path(prebuilt).resolve()
    result: build.Result = request.getfixturevalue("rpi_build")
    return result.image


def _provision_over_console(machine: Machine, pki: Path, agent_id: str) -> str:
    """A technician's `infraspectre provision` over the box's console (released meanwhile);
    asserts success and returns its output."""
    machine.console.wait_for(PROVISIONING_BANNER, timeout=420)
    port = machine.release_console()
    try:
        run = subprocess.run(
            [sys.executable, "-m", "appliance", "provision", "--port",
             f"socket://127.0.0.1:{port}", "--pki", str(pki), "--agent-id", agent_id,
             "--wait", "240"],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
    finally:
        machine.attach_console()
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"provisioned {agent_id}" in run.stdout
    return run.stdout


@pytest.fixture(scope="session")
def provision_over_console() -> Callable[[Machine, Path, str], str]:
    """provision_over_console(machine, pki, agent_id) -> the provision command's output."""
    return _provision_over_console
