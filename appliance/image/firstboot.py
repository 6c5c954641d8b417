"""Device-side first-boot helpers (run on the appliance by /usr/lib/appliance/grow-data).

    python3 -m appliance.image.firstboot resize-partition /dev/mmcblk0 3

tells the running kernel the new size of partition N after sfdisk grew it in the on-card MBR.
The kernel will not re-read a partition table while another partition of the disk is in use
(the root is mounted from p2), and busybox has no partx/resizepart, so this issues the
BLKPG_RESIZE_PARTITION ioctl for that one partition. Idempotent: resizing to the current
size is a no-op.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import sys
from pathlib import Path

BLKPG = 0x1269
BLKPG_RESIZE_PARTITION = 3
SECTOR = 512


class _Partition(ctypes.Structure):
    _fields_ = [
        ("start", ctypes.c_longlong),
        ("length", ctypes.c_longlong),
        ("pno", ctypes.c_int),
        ("devname", ctypes.c_char * 64),
        ("volname", ctypes.c_char * 64),
    ]


class _Arg(ctypes.Structure):
    _fields_ = [
        ("op", ctypes.c_int),
        ("flags", ctypes.c_int),
        ("datalen", ctypes.c_int),
        ("data", ctypes.c_void_p),
    ]


def mbr_partition(disk: Path, number: int) -> tuple[int, int]:
    """(start, length) in bytes of primary partition number (1-4) in disk's MBR."""
    with disk.open("rb") as fh:
        mbr = fh.read(SECTOR)
    entry = 446 + 16 * (number - 1)
    start = int.from_bytes(mbr[entry + 8 : entry + 12], "little")
    sectors = int.from_bytes(mbr[entry + 12 : entry + 16], "little")
    return start * SECTOR, sectors * SECTOR


def resize_partition(disk: Path, number: int) -> None:
    """Make the kernel's view of partition number match the disk's MBR."""
    start, length = mbr_partition(disk, number)
    part = _Partition(start=start, length=length, pno=number)
    arg = _Arg(
        op=BLKPG_RESIZE_PARTITION,
        flags=0,
        datalen=ctypes.sizeof(part),
        data=ctypes.cast(ctypes.pointer(part), ctypes.c_void_p),
    )
    fd = os.open(disk, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, BLKPG, arg)
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    """Command line: resize-partition DISK N."""
    if len(argv) != 3 or argv[0] != "resize-partition":
        print("usage: firstboot resize-partition DISK N", file=sys.stderr)
        return 2
    try:
        resize_partition(Path(argv[1]), int(argv[2]))
    except OSError as exc:
        print(f"firstboot: cannot resize partition {argv[2]} of {argv[1]}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
