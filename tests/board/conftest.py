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

from appliance.devkit.qemu.fixtures import *  # noqa: F403  (the plugin's fixtures and report hook)
from appliance.image import build, definition

CACHE = Path(os.environ.get("INFRASPECTRE_CACHE", definition.SOURCE_DIR / "cache")).resolve()
#: A fixed SOURCE_DATE_EPOCH (2026-11-27 00:00 UTC) so that two builds can be compared.
EPOCH = 1795737600


def build_rpi(out: Path) -> build.Result:
    """Build the rpi image into out from this session's inputs (cache, SOURCE_DATE_EPOCH)."""
    return build.build(definition.load("rpi"), out, CACHE, epoch=EPOCH)


@pytest.fixture(scope="session")
def rpi_build(tmp_path_factory: pytest.TempPathFactory) -> build.Result:
    """The rpi image, built once per session (the one CI boots on raspi3b)."""
    return build_rpi(tmp_path_factory.mktemp("image-rpi"))


@pytest.fixture(scope="session")
def rebuild_rpi() -> Callable[[Path], build.Result]:
    """Build the rpi image again, from the same inputs, into a given directory."""
    return build_rpi


@pytest.fixture(scope="session")
def rpi_image(rpi_build: build.Result) -> Path:
    """Path of the session's rpi image (boot copies of it, never the image itself)."""
    return rpi_build.image
