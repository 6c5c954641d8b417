"""Small card images for the `image flash` / `image configure` tests, written byte by byte.

The layout follows the MBR and FAT32 specifications (not appliance.image.sdcard's reader),
so a test can make an image that is ours and one that differs in exactly one respect.
"""

from __future__ import annotations

from pathlib import Path

#: appliance.image.sdcard.DISK_ID, spelled out: a test must notice if the constant changes.
OUR_DISK_ID = 0x5EC7E0A1
BOOT_START_SECTOR = 8


def card_header(
    *, disk_id: int = OUR_DISK_ID, part_type: int = 0x0C, label: bytes = b"BOOT"
) -> bytes:
    """An MBR with partition 1 (FAT, at sector 8) followed by a FAT32 boot sector."""
    mbr = bytearray(512)
    mbr[440:444] = disk_id.to_bytes(4, "little")
    entry = 446
    mbr[entry] = 0x80
    mbr[entry + 4] = part_type
    mbr[entry + 8 : entry + 12] = BOOT_START_SECTOR.to_bytes(4, "little")
    mbr[entry + 12 : entry + 16] = (64 * 2048).to_bytes(4, "little")
    mbr[510:512] = b"\x55\xaa"
    boot = bytearray(512)
    boot[0:3] = b"\xeb\x58\x90"
    boot[3:11] = b"mkfs.fat"
    boot[11:13] = (512).to_bytes(2, "little")
    boot[0x42] = 0x29
    boot[0x43:0x47] = bytes.fromhex("cdab3412")
    boot[0x47:0x52] = label.ljust(11, b" ")
    boot[0x52:0x5A] = b"FAT32   "
    boot[510:512] = b"\x55\xaa"
    return bytes(mbr) + bytes(512 * (BOOT_START_SECTOR - 1)) + bytes(boot)


def write_card(path: Path, size: int = 1 << 20, **kw: object) -> Path:
    """A card image of size bytes at path: card_header(**kw), then a non-zero pattern."""
    head = card_header(**kw)  # type: ignore[arg-type]
    body = bytes(range(256)) * ((size - len(head)) // 256 + 1)
    path.write_bytes((head + body)[:size])
    return path
