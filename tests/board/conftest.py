"""Board tier: the image is built once per session and booted under QEMU.

The QEMU fixtures (boot_board, boot_board_shared, host_listener, console logs in failed
reports) come from the plugin appliance.devkit.qemu.fixtures. The download cache is ./cache (or
$INFRASPECTRE_CACHE), shared with `infraspectre image build`, so only the first run on a
machine downloads packages and wheels.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from appliance.crypto.keys import write_verify_key
from appliance.devkit.qemu import box
from appliance.devkit.qemu.fixtures import *  # noqa: F403  (the plugin's fixtures and report hook)
from appliance.image import build, definition
from appliance.qemu.machine import Machine

CACHE = Path(os.environ.get("INFRASPECTRE_CACHE", definition.SOURCE_DIR / "cache")).resolve()
#: A fixed SOURCE_DATE_EPOCH (2026-11-27 00:00 UTC) so that two builds can be compared.
EPOCH = 1795737600
#: What an unprovisioned box's console (the provisioning responder) repeats.
PROVISIONING_BANNER = box.PROVISIONING_BANNER


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


#: INFRASPECTRE_BOARD_IMAGE=IMAGE (or the directory holding infraspectre-rpi.img, its .sha256
#: and manifest.json) boots an image an earlier run built from this same tree instead of building
#: it again (a build takes 3-15 min): for re-running a few board tests by hand; CI never sets it.
#: The update tests need it built as the session builds it (build_rpi: EPOCH, UPDATE_KEY).
PREBUILT = os.environ.get("INFRASPECTRE_BOARD_IMAGE", "")


def _prebuilt_image() -> Path:
    path = Path(PREBUILT)
    image = path / "infraspectre-rpi.img" if path.is_dir() else path
    if not image.is_file():
        raise pytest.UsageError(f"INFRASPECTRE_BOARD_IMAGE={PREBUILT}: no such image")
    return image.resolve()


@pytest.fixture(scope="session")
def rpi_build(tmp_path_factory: pytest.TempPathFactory) -> build.Result:
    """The rpi image, built once per session (the one CI boots on raspi3b)."""
    if PREBUILT:
        image = _prebuilt_image()
        sha = image.with_name(image.name + ".sha256").read_text().split()[0]
        return build.Result(image, image.with_name("manifest.json"), sha, 0.0)
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
    if PREBUILT:
        return _prebuilt_image()
    result: build.Result = request.getfixturevalue("rpi_build")
    return result.image


def _provision_over_console(machine: Machine, pki: Path, agent_id: str) -> str:
    """A technician's `infraspectre provision` over the box's console (the development kit's
    box.provision_over_console, the demo's own path); fails the test with all it said."""
    try:
        return box.provision_over_console(machine, pki, agent_id)
    except box.ProvisioningFailed as exc:
        pytest.fail(exc.output)


@pytest.fixture(scope="session")
def provision_over_console() -> Callable[[Machine, Path, str], str]:
    """provision_over_console(machine, pki, agent_id) -> the provision command's output."""
    return _provision_over_console
