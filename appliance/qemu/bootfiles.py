"""The kernel, initramfs, DTB and command line QEMU boots, read from the card itself.

QEMU does not run the Raspberry Pi firmware, so the harness plays its part: it reads the
files config.txt names from the card's first (FAT) partition with mtools, without mounting,
and boots them directly. What the board test boots is therefore what a real Pi loads.
"""

from __future__ import annotations

import dataclasses
import shutil
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path

from appliance.errors import CommandError

SECTOR = 512


@dataclasses.dataclass(frozen=True)
class BootFiles:
    """Files extracted from the boot partition into a directory."""

    kernel: Path
    initrd: Path
    cmdline: str
    dtb: Path | None


def first_partition_offset(image: Path) -> int:
    """Byte offset of partition 1 from the card's MBR."""
    with image.open("rb") as fh:
        mbr = fh.read(SECTOR)
    if len(mbr) < SECTOR or mbr[510:512] != b"\x55\xaa":
        raise CommandError(f"{image} has no MBR partition table")
    start = struct.unpack_from("<I", mbr, 446 + 8)[0]
    if start == 0:
        raise CommandError(f"{image}: partition 1 is empty")
    return int(start) * SECTOR


def extract(image: Path, dest: Path, dtb: str) -> BootFiles:
    """Copy vmlinuz, initrd.img, cmdline.txt and dtb (if any) off the card into dest."""
    dest.mkdir(parents=True, exist_ok=True)
    spec = f"{image}@@{first_partition_offset(image)}"
    wanted = ["vmlinuz", "initrd.img", "cmdline.txt"] + ([dtb] if dtb else [])
    for name in wanted:
        proc = subprocess.run(
            ["mcopy", "-o", "-n", "-i", spec, f"::{name}", str(dest / name)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise CommandError(f"{image}: no {name} on the boot partition ({proc.stderr.strip()})")
    return BootFiles(
        kernel=dest / "vmlinuz",
        initrd=dest / "initrd.img",
        cmdline=(dest / "cmdline.txt").read_text().strip(),
        dtb=dest / dtb if dtb else None,
    )


def board_cmdline(cmdline: str, console: str, extra: list[str]) -> str:
    """The card's command line with the board's console and the harness's additions.

    console= arguments are replaced (the card names the real Pi's); panic=-1 makes a guest
    panic end QEMU (with -no-reboot) instead of hanging the test.
    """
    args = [a for a in cmdline.split() if not a.startswith(("console=", "panic="))]
    return " ".join([*args, f"console={console}", "panic=-1", *extra])


def emulation_dtb(boot: BootFiles, disable: Sequence[str], delete: Sequence[str]) -> BootFiles:
    """boot with its DTB replaced by a copy that QEMU can boot (emulation only).

    disable: node paths set status = "disabled" (devices QEMU does not model); delete:
    "NODE PROPERTY" pairs removed. fdtput (device-tree-compiler) edits the copy; the file
    extracted from the card is left as it is, and the card itself is never touched.
    """
    if boot.dtb is None:
        raise CommandError("the board needs DTB fixups but boots without a DTB")
    copy = boot.dtb.with_name(boot.dtb.stem + ".emulated.dtb")
    shutil.copyfile(boot.dtb, copy)
    steps = [["fdtput", "-t", "s", str(copy), node, "status", "disabled"] for node in disable]
    steps += [["fdtput", "-d", str(copy), *pair.split()] for pair in delete]
    for step in steps:
        try:
            proc = subprocess.run(step, capture_output=True, text=True, check=False)
        except FileNotFoundError:
            raise CommandError("fdtput not found: install device-tree-compiler") from None
        if proc.returncode != 0:
            raise CommandError(f"DTB fixup {' '.join(step[3:])} failed: {proc.stderr.strip()}")
    return dataclasses.replace(boot, dtb=copy)
