"""The kernel, initramfs, DTB and command line QEMU boots, chosen as the Pi firmware chooses.

QEMU does not run the Raspberry Pi firmware, so the harness plays its part: it reads the
card's first (FAT) partition with mtools, without mounting, and

- reads `config.txt`, or `tryboot.txt` when the last boot ended with a reboot that asked for
  tryboot (the kernel printed "Restarting system with command '0 tryboot'": the firmware's
  one-shot flag; any other end of a boot leaves it clear) — without a tryboot.txt the firmware
  reads config.txt;
- applies it the firmware's way (appliance.update.firmware: `[all]` and the model's section,
  `os_prefix` in front of the kernel, initramfs, cmdline and DTB, ignored when the kernel or
  DTB is missing there);
- boots those files directly.

So the same files decide under QEMU and on a Pi: an update that writes tryboot.txt or commits
config.txt is tested by what the harness boots next.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path

from appliance.errors import CommandError
from appliance.update import firmware

SECTOR = 512
#: the kernel's last line of a reboot that asks the firmware for a trial boot
TRYBOOT_LINE = re.compile(r"reboot: Restarting system with command '(?:\d+ )?tryboot'")


@dataclasses.dataclass(frozen=True)
class BootFiles:
    """Files extracted from the boot partition into a directory."""

    kernel: Path
    initrd: Path
    cmdline: str
    dtb: Path | None
    #: the firmware file that decided (config.txt or tryboot.txt) and its os_prefix
    config: str = firmware.CONFIG
    prefix: str = ""


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


def model_of(dtb: str) -> str:
    """The firmware's model section for a board's DTB name (pi3 unless a Pi 4 DTB)."""
    return "pi4" if dtb.startswith("bcm2711") else "pi3"


def list_files(image: Path) -> set[str]:
    """Every file on the boot partition, lower-cased (FAT), as `folder/name`."""
    spec = f"{image}@@{first_partition_offset(image)}"
    proc = subprocess.run(
        ["mdir", "-b", "-/", "-i", spec, "::/"], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise CommandError(f"{image}: cannot list the boot partition ({proc.stderr.strip()})")
    return {
        line.strip().removeprefix("::/").lower()
        for line in proc.stdout.splitlines()
        if line.strip() and not line.strip().endswith("/")
    }


def _copy(image: Path, name: str, dest: Path) -> None:
    spec = f"{image}@@{first_partition_offset(image)}"
    proc = subprocess.run(
        ["mcopy", "-o", "-n", "-i", spec, f"::/{name}", str(dest)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise CommandError(f"{image}: no {name} on the boot partition ({proc.stderr.strip()})")


def extract(image: Path, dest: Path, dtb: str, *, tryboot: bool = False) -> BootFiles:
    """Copy the kernel, initramfs, command line and dtb (if any) that the firmware would
    load off the card into dest: from config.txt, or tryboot.txt when tryboot is set."""
    dest.mkdir(parents=True, exist_ok=True)
    present = list_files(image)
    name = firmware.TRYBOOT if tryboot and firmware.TRYBOOT in present else firmware.CONFIG
    if name not in present:
        raise CommandError(f"{image}: no {name} on the boot partition")
    _copy(image, name, dest / name)
    text = (dest / name).read_text()
    boot = firmware.boot_set(
        text,
        model_of(dtb),
        (dtb,) if dtb else (),
        config=name,
        exists=lambda path: path.lower() in present,
    )
    if boot.initramfs is None:
        raise CommandError(f"{image}: {name} names no initramfs (the card cannot boot without)")
    _copy(image, boot.kernel, dest / "vmlinuz")
    _copy(image, boot.initramfs, dest / "initrd.img")
    _copy(image, boot.cmdline, dest / "cmdline.txt")
    dtb_path = None
    if dtb:
        wanted = boot.dtbs[0] if boot.dtbs else boot.prefix + dtb
        _copy(image, wanted, dest / dtb)
        dtb_path = dest / dtb
    return BootFiles(
        kernel=dest / "vmlinuz",
        initrd=dest / "initrd.img",
        cmdline=(dest / "cmdline.txt").read_text().strip(),
        dtb=dtb_path,
        config=name,
        prefix=boot.prefix,
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
