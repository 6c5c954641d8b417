"""Image definitions in image/: every board loads; mistakes name the file and the key."""

import shutil
from pathlib import Path

import pytest

from appliance.errors import CommandError
from appliance.image import definition


@pytest.mark.parametrize("board", definition.boards())
def test_every_board_loads_with_the_common_packages(board: str) -> None:
    defn = definition.load(board)
    assert "python3" in defn.packages
    assert "linux-image-arm64" in defn.boot_packages
    assert {"squashfs", "f2fs", "vfat"} <= set(defn.initramfs_modules)


def test_the_rpi_board_carries_the_firmware_and_the_sd_drivers() -> None:
    defn = definition.load("rpi")
    assert "raspi-firmware" in defn.boot_packages
    assert {"bcm2835", "sdhci-iproc", "dwc2"} <= set(defn.initramfs_modules)


def test_an_unknown_board_lists_the_known_ones() -> None:
    with pytest.raises(CommandError, match=r"unknown board 'pi5'.*qemu-virt, rpi"):
        definition.load("pi5")


def test_an_unknown_key_names_the_file_and_key(tmp_path: Path) -> None:
    shutil.copytree(definition.SOURCE_DIR / "image", tmp_path / "image")
    board = tmp_path / "image" / "boards" / "rpi.toml"
    board.write_text(board.read_text() + 'colour = "red"\n')
    with pytest.raises(CommandError, match=r"rpi.toml: unknown key colour"):
        definition.load("rpi", tmp_path)
