"""Each part of the card is byte-identical when built twice from the same inputs, whatever
the time of day or the files' mtimes (the fast version of the board tier's two-build test)."""

import os
import subprocess
import time
from pathlib import Path

from appliance.image import initramfs, sdcard

EPOCH = 1795737600
VERSION = "6.1.0-test-arm64"


def _fake_root(path: Path) -> Path:
    (path / "usr/bin").mkdir(parents=True)
    (path / "usr/bin/busybox").write_bytes(b"\x7fELF busybox stand-in")
    mdir = path / "usr/lib/modules" / VERSION / "kernel/fs"
    mdir.mkdir(parents=True)
    (mdir / "squashfs.ko").write_bytes(b"module")
    return path


def test_initramfs_is_identical_across_builds_and_holds_init_busybox_modules(
    tmp_path: Path,
) -> None:
    root = _fake_root(tmp_path / "root")
    init = tmp_path / "init"
    init.write_text("#!/bin/busybox sh\n")
    outs = []
    for n in (1, 2):
        os.utime(init, (time.time() + n, time.time() + n))
        out = tmp_path / f"initrd-{n}.img"
        initramfs.build(root, VERSION, ["kernel/fs/squashfs.ko"], init, out, tmp_path / "s", EPOCH)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    listing = subprocess.run(
        f"gzip -dc {tmp_path / 'initrd-1.img'} | cpio -t --quiet",
        shell=True, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert {"init", "bin/busybox", "lib/modules/modules.load",
            "lib/modules/kernel/fs/squashfs.ko"} <= set(listing)  # fmt: skip


def test_boot_partition_is_identical_across_builds(tmp_path: Path) -> None:
    src = tmp_path / "config.txt"
    src.write_text("arm_64bit=1\n")
    outs = []
    for n in (1, 2):
        os.utime(src, (time.time() + 100 * n, time.time() + 100 * n))
        out = tmp_path / f"boot-{n}.vfat"
        sdcard.make_boot({"config.txt": src}, 64 << 20, out, tmp_path / f"stage-{n}", EPOCH)
        outs.append(out.read_bytes())
        time.sleep(1.1)  # a different second for anything that would read the clock
    assert outs[0] == outs[1]


def test_data_partition_is_identical_across_builds(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    outs = []
    for n in (1, 2):
        out = tmp_path / f"data-{n}.f2fs"
        sdcard.make_data(tree, 64 << 20, out, EPOCH)
        outs.append(out.read_bytes())
        time.sleep(1.1)
    assert outs[0] == outs[1]
