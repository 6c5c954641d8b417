"""`infraspectre image flash`: write an image to an SD card (or a file), then verify it.

What is refused, checked before a single byte is written (each with the reason and the fix):
- a block device that is not removable (a system disk, a loop device): cards are removable;
- a partition rather than the whole card;
- a device that is in use: any of its partitions mounted or used as swap;
- a device smaller than the image;
- a regular file or a path that does not exist, unless --force (image files for tests and VMs);
- an image that is not one of ours (appliance.image.sdcard.boot_partition_offset: MBR disk id,
  FAT boot partition and its label), such as a capture file given by mistake.

The write goes in 4 MiB blocks with progress, ends with fsync, then the target is read back
(after dropping its cached pages) and its first len(image) bytes must hash to the image's
sha256. The checks read sysfs and the mount table through paths passed in, so they are tested
on a fake sysfs tree.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import sys
import time
from pathlib import Path
from typing import TextIO

from appliance.errors import CommandError
from appliance.image.sdcard import boot_partition_offset

BLOCK = 4 << 20


@dataclasses.dataclass(frozen=True)
class System:
    """Where the checks look: the sysfs root, the mount table and the swap table."""

    sys: Path = Path("/sys")
    mounts: Path = Path("/proc/self/mounts")
    swaps: Path = Path("/proc/swaps")


def check_target(image_bytes: int, target: Path, force: bool, system: System = System()) -> str:
    """Why target may be written ("block device" or "file"); CommandError when refused."""
    try:
        st = target.stat()
    except FileNotFoundError:
        st = None
    if st is None or stat.S_ISREG(st.st_mode):
        if not force:
            raise CommandError(
                f"{target} is not a block device: pass --force to write an image file there"
            )
        return "file"
    if not stat.S_ISBLK(st.st_mode):
        raise CommandError(f"{target} is neither a block device nor a regular file")
    check_block_device(
        image_bytes, f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}", str(target), system
    )
    return "block device"


def check_block_device(image_bytes: int, dev: str, label: str, system: System = System()) -> None:
    """Refuse block device dev ("MAJOR:MINOR", shown as label) unless it is a whole,
    removable, unused card at least image_bytes large."""
    node_link = system.sys / "dev" / "block" / dev
    if not node_link.exists():
        raise CommandError(f"{label}: no {node_link} in sysfs")
    node = node_link.resolve()
    name = node.name
    if (node / "partition").exists():
        raise CommandError(f"{label} is partition {name}: give the whole card ({node.parent.name})")
    if _read(node / "removable") != "1":
        raise CommandError(
            f"{label} ({name}) is not a removable device: refusing to overwrite a fixed disk"
        )
    parts = {name} | {p.name for p in node.iterdir() if (p / "partition").exists()}
    busy = sorted(_in_use(parts, system))
    if busy:
        raise CommandError(f"{label} is in use ({', '.join(busy)}): unmount it first")
    size = int(_read(node / "size") or "0") * 512
    if size < image_bytes:
        raise CommandError(
            f"{label} holds {size / 2**20:.0f} MiB, the image needs {image_bytes / 2**20:.0f} MiB"
        )


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _in_use(names: set[str], system: System) -> set[str]:
    used = set()
    for table, column in ((system.mounts, 0), (system.swaps, 0)):
        for line in _read(table).splitlines():
            fields = line.split()
            if fields and fields[column].startswith("/dev/"):
                dev = os.path.basename(os.path.realpath(fields[column]))
                if dev in names or Path(fields[column]).name in names:
                    used.add(f"{fields[column]} {'swap' if table == system.swaps else 'mounted'}")
    return used


def flash(
    image: Path,
    target: Path,
    *,
    force: bool = False,
    system: System = System(),
    progress: TextIO | None = sys.stderr,
) -> str:
    """Write image to target after the checks, verify by reading back; the image's sha256."""
    try:
        size = image.stat().st_size
    except OSError as exc:
        raise CommandError(f"cannot read image {image}: {exc.strerror}") from exc
    boot_partition_offset(image)
    kind = check_target(size, target, force, system)
    flags = os.O_WRONLY | (os.O_CREAT | os.O_TRUNC if kind == "file" else os.O_EXCL)
    digest = hashlib.sha256()
    start = time.monotonic()
    try:
        out = os.open(target, flags, 0o644)
    except OSError as exc:
        raise CommandError(f"cannot open {target} for writing: {exc.strerror}") from exc
    try:
        with image.open("rb") as src:
            done = 0
            while block := src.read(BLOCK):
                digest.update(block)
                os.write(out, block)
                done += len(block)
                _report(progress, "writing", done, size, start)
        os.fsync(out)
    finally:
        os.close(out)
    _report(progress, "written", size, size, start, end=True)
    expected = digest.hexdigest()
    found = _read_back(target, size, progress)
    if found != expected:
        raise CommandError(
            f"verification failed: {target} reads back {found[:16]}…, image is {expected[:16]}…"
        )
    return expected


def _read_back(target: Path, size: int, progress: TextIO | None) -> str:
    digest = hashlib.sha256()
    start = time.monotonic()
    fd = os.open(target, os.O_RDONLY)
    try:
        # read the medium, not the page cache the write just filled
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        left = size
        while left:
            block = os.read(fd, min(BLOCK, left))
            if not block:
                break
            digest.update(block)
            left -= len(block)
            _report(progress, "verifying", size - left, size, start)
    finally:
        os.close(fd)
    _report(progress, "verified", size, size, start, end=True)
    return digest.hexdigest()


def _report(
    stream: TextIO | None, what: str, done: int, total: int, start: float, end: bool = False
) -> None:
    if stream is None or not (end or stream.isatty()):
        return
    rate = done / max(time.monotonic() - start, 1e-6) / 2**20
    line = f"\rflash: {what} {done / 2**20:.0f}/{total / 2**20:.0f} MiB ({rate:.0f} MiB/s)"
    stream.write(line + ("\n" if end else ""))
    stream.flush()
