"""Root tree helpers that read files only: module load order, busybox applet table."""

from pathlib import Path

import pytest

from appliance.errors import CommandError
from appliance.image import rootfs

VERSION = "6.1.0-test-arm64"


def _modules_dep(tmp_path: Path, text: str) -> Path:
    mdir = tmp_path / "usr/lib/modules" / VERSION
    mdir.mkdir(parents=True)
    (mdir / "modules.dep").write_text(text)
    return tmp_path


def test_dependencies_load_before_the_module_and_only_once(tmp_path: Path) -> None:
    root = _modules_dep(
        tmp_path,
        "kernel/a/cdc_ether.ko: kernel/a/usbnet.ko kernel/a/mii.ko\n"
        "kernel/a/usbnet.ko: kernel/a/mii.ko\n"
        "kernel/a/mii.ko:\n"
        "kernel/b/phy-generic.ko:\n",
    )
    order = rootfs.module_load_order(root, VERSION, ["phy_generic", "cdc_ether", "usbnet"])
    assert order == [
        "kernel/b/phy-generic.ko",
        "kernel/a/mii.ko",
        "kernel/a/usbnet.ko",
        "kernel/a/cdc_ether.ko",
    ]


def test_an_unknown_module_is_an_error_naming_it(tmp_path: Path) -> None:
    root = _modules_dep(tmp_path, "kernel/a/mii.ko:\n")
    with pytest.raises(CommandError, match="no module squashfs"):
        rootfs.module_load_order(root, VERSION, ["squashfs"])


def test_busybox_applets_are_read_from_the_binarys_name_table(tmp_path: Path) -> None:
    binary = tmp_path / "busybox"
    binary.write_bytes(b"\x7fELF junk\0\0[\0[[\0acpid\0ash\0udhcpc\0zcat\0\x01\x02tail")
    assert rootfs.busybox_applets(binary) == ["[", "[[", "acpid", "ash", "udhcpc", "zcat"]


def test_a_binary_without_an_applet_table_is_refused(tmp_path: Path) -> None:
    binary = tmp_path / "busybox"
    binary.write_bytes(b"\x7fELF nothing here")
    with pytest.raises(CommandError, match="no applet table"):
        rootfs.busybox_applets(binary)
