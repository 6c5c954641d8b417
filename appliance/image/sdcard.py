"""The SD card image: an MBR with boot (FAT32) | root slot a | root slot b | data (f2fs).

Built without mounting anything (the host kernel has neither vfat nor f2fs): each partition is
made in its own file by userspace tools (mkfs.fat + mcopy, mksquashfs, mkfs.f2fs + sload.f2fs)
and copied into place. Layout invariants (docs/UPDATE.md, "The card"):

- partition 1 starts at 4 MiB (erase-block alignment); every partition is 4 MiB aligned;
- p1 boot (FAT32, BOOT_SIZE): the firmware and one boot set per slot (slot-a/, slot-b/);
  p2 and p3 the root slots a and b (SLOT_SIZE each: fixed, not sized to today's root, because
  partitions cannot move once a card is in the field); p4 /data, the rest (at least
  MIN_DATA_SIZE; grown to the card's end on first boot);
- a fresh card holds the system in slot a; slot b is zeros until the first update (so the
  compressed image does not grow by a second root);
- the image size is a power of two (QEMU's SD card model refuses anything else);
- the MBR disk identifier is fixed per build (`DISK_ID`); a boot set's command line finds its
  root as PARTUUID=<id>-02 or -03 and the initramfs finds the card by it;
- every timestamp is SOURCE_DATE_EPOCH and every volume id/UUID is fixed: same inputs, same bytes.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from appliance.errors import CommandError
from appliance.image.rootfs import run

MIB = 1 << 20
ALIGN = 4 * MIB
#: MBR disk identifier (also the FAT volume id): fixed, so rebuilds are identical.
DISK_ID = 0x5EC7E0A1
#: f2fs UUID of the data partition (fixed for the same reason).
DATA_UUID = "5ec7e0a1-da7a-4f2f-8a3e-000000000003"
#: two boot sets (kernel 33 MB, initramfs 2.3 MB, DTBs: ~36 MB each) + firmware (~5 MB):
#: ~77 MB; 192 MiB leaves each boot set room to grow 2.4x (docs/UPDATE.md, "The card")
BOOT_SIZE = 192 * MIB
#: each root slot: today's root squashfs is 55 MiB; 256 MiB leaves room to grow 4.6x.
#: Together with BOOT_SIZE this keeps the image at 1 GiB (a power of two) with 316 MiB of /data
SLOT_SIZE = 256 * MIB
MIN_DATA_SIZE = 64 * MIB
#: FAT volume label of the boot partition.
BOOT_LABEL = "BOOT"
SECTOR = 512
_FAT_TYPES = (0x0B, 0x0C)  # FAT32 (CHS), FAT32 (LBA)


def boot_partition_offset(card: Path) -> int:
    """Byte offset of the FAT boot partition of card, an image or card of ours.

    Ours means: an MBR with our disk identifier (DISK_ID), partition 1 of a FAT32 type, and a
    FAT32 boot sector there labelled BOOT_LABEL. Anything else (a pcap, another system's card,
    a disk) is refused with a CommandError that says what differs, before anything is written.
    """
    try:
        with card.open("rb") as fh:
            mbr = fh.read(SECTOR)
            if len(mbr) < SECTOR or mbr[510:512] != b"\x55\xaa":
                raise _foreign(card, "no MBR")
            disk_id = int.from_bytes(mbr[440:444], "little")
            if disk_id != DISK_ID:
                raise _foreign(card, f"MBR disk id 0x{disk_id:08x}, ours is 0x{DISK_ID:08x}")
            start = int.from_bytes(mbr[446 + 8 : 446 + 12], "little")
            if start == 0 or mbr[446 + 4] not in _FAT_TYPES:
                raise _foreign(card, "partition 1 is not a FAT boot partition")
            fh.seek(start * SECTOR)
            boot = fh.read(SECTOR)
    except OSError as exc:
        raise CommandError(f"cannot read {card}: {exc.strerror}") from exc
    if len(boot) < SECTOR or boot[510:512] != b"\x55\xaa" or boot[0x52:0x5A] != b"FAT32   ":
        raise _foreign(card, "partition 1 holds no FAT32 file system")
    label = boot[0x47:0x52].decode("ascii", "replace").rstrip()
    if boot[0x42] != 0x29 or label != BOOT_LABEL:
        raise _foreign(card, f"its boot partition is labelled {label!r}, ours {BOOT_LABEL!r}")
    return start * SECTOR


def _foreign(card: Path, why: str) -> CommandError:
    return CommandError(f"{card} is not an InfraSpectre card image: {why}")


@dataclasses.dataclass(frozen=True)
class Layout:
    """Partition offsets and sizes in bytes; total is a power of two."""

    boot_start: int
    boot_size: int
    slot_a_start: int
    slot_b_start: int
    slot_size: int
    data_start: int
    data_size: int
    total: int

    @property
    def partitions(self) -> list[tuple[int, int, str]]:
        """(start, size, MBR type) of partitions 1-4."""
        return [
            (self.boot_start, self.boot_size, "c"),
            (self.slot_a_start, self.slot_size, "83"),
            (self.slot_b_start, self.slot_size, "83"),
            (self.data_start, self.data_size, "83"),
        ]


def plan(root_bytes: int, boot_bytes: int = 0) -> Layout:
    """The smallest power-of-two card with the boot partition, two root slots and a minimal
    data partition; refuses a root or boot content that does not fit (with what it needs)."""
    if root_bytes > SLOT_SIZE:
        raise CommandError(
            f"the root ({root_bytes / MIB:.0f} MiB) exceeds a root slot ({SLOT_SIZE // MIB} MiB)"
        )
    if boot_bytes > BOOT_SIZE:
        raise CommandError(
            f"the boot files ({boot_bytes / MIB:.0f} MiB) exceed the boot partition "
            f"({BOOT_SIZE // MIB} MiB)"
        )
    slot_a = ALIGN + BOOT_SIZE
    data_start = slot_a + 2 * SLOT_SIZE
    need = data_start + MIN_DATA_SIZE
    total = 1 << (need - 1).bit_length()
    return Layout(
        ALIGN, BOOT_SIZE, slot_a, slot_a + SLOT_SIZE, SLOT_SIZE, data_start,
        total - data_start, total,
    )  # fmt: skip


def _align_up(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def make_boot(files: Mapping[str, Path], size: int, out: Path, staging: Path, epoch: int) -> None:
    """A FAT32 file system holding files (name on the card -> source), fixed ids and times."""
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    for name in sorted(files):
        dst = staging / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(files[name], dst)
        os.utime(dst, (epoch, epoch))
    out.unlink(missing_ok=True)
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(epoch), TZ="UTC")
    run(
        [
            "mkfs.fat",
            "-C",
            "-F",
            "32",
            "-n",
            BOOT_LABEL,
            "-i",
            f"{DISK_ID:08X}",
            "--invariant",
            str(out),
            str(size // 1024),
        ],
        "mkfs.fat",
        env=env,
    )
    # folder by folder, names sorted: the FAT's directory order must not depend on the order
    # in which the host's file system lists a folder (mcopy -s would follow it)
    folders = sorted({str(Path(n).parent) for n in files} - {"."})
    for folder in folders:
        run(["mmd", "-i", str(out), f"::/{folder}"], "mmd", env=env)
    for folder in [".", *folders]:
        names = [str(staging / n) for n in sorted(files) if str(Path(n).parent) == folder]
        target = "::/" if folder == "." else f"::/{folder}/"
        run(["mcopy", "-i", str(out), "-m", "-Q", *names, target], "mcopy", env=env)


#: What changes between our releases, written last in the root squashfs (mksquashfs `-sort`:
#: a lower priority is written later; everything else keeps priority 0). An update downloads
#: only the 4 MiB chunks the running slot lacks (appliance.update.delta): with these at the end,
#: a release that changes the appliance's own package and its release file changes the
#: squashfs's tail (and its superblock), not every chunk after the first change. Globs relative
#: to the root; a directory's priority covers everything below it (.py, .pyc, data).
CHANGES_LAST = (
    ("usr/local/lib/python3*/dist-packages/appliance", -2),
    ("usr/local/lib/python3*/dist-packages/infraspectre*.dist-info", -2),
    ("etc/appliance", -3),
)


def sort_entries(tree: Path) -> list[str]:
    """The mksquashfs sort file's lines for tree (CHANGES_LAST that exist, sorted)."""
    lines = []
    for pattern, priority in CHANGES_LAST:
        for path in sorted(tree.glob(pattern)):
            rel = path.relative_to(tree).as_posix()
            if any(c.isspace() for c in rel):  # the sort file is "PATH PRIORITY" per line
                raise CommandError(f"cannot order {rel!r} in the squashfs: a space in its name")
            lines.append(f"{rel} {priority}")
    return lines


def make_root(tree: Path, out: Path, epoch: int, options: Sequence[str]) -> None:
    """A squashfs of tree (compression options given): owners and modes as in the tree (the
    build runs as root, overlays declare theirs), every time epoch, sorted (reproducible), and
    what changes between releases last (CHANGES_LAST). The one way a root image is made: the
    build and the update tests' derived roots both come through here."""
    out.unlink(missing_ok=True)
    order = out.with_name(out.name + ".sort")
    entries = sort_entries(tree)
    order.write_text("".join(line + "\n" for line in entries))
    try:
        run(
            [
                "mksquashfs",
                str(tree),
                str(out),
                "-noappend",
                *options,
                *(["-sort", str(order)] if entries else []),
                "-mkfs-time",
                str(epoch),
                "-all-time",
                str(epoch),
                "-no-xattrs",
                "-quiet",
                "-no-progress",
                "-reproducible",
            ],
            "mksquashfs",
            # mksquashfs (4.5+) refuses SOURCE_DATE_EPOCH together with -mkfs-time/-all-time;
            # the build already took its time from the variable (build.source_date_epoch).
            env={k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"},
        )
    finally:
        order.unlink(missing_ok=True)


def make_data(tree: Path, size: int, out: Path, epoch: int) -> None:
    """An f2fs file system of size bytes holding tree, with a fixed UUID and timestamps."""
    out.unlink(missing_ok=True)
    with out.open("wb") as fh:
        fh.truncate(size)
    run(
        [
            "mkfs.f2fs",
            "-q",
            "-f",
            "-l",
            "data",
            "-U",
            DATA_UUID,
            "-T",
            str(epoch),
            "-r",
            "-t",
            "0",
            str(out),
        ],
        "mkfs.f2fs",
    )
    run(["sload.f2fs", "-f", str(tree), "-T", str(epoch), "-t", "/", str(out)], "sload.f2fs")


def assemble(layout: Layout, boot: Path, root: Path, data: Path, out: Path) -> None:
    """Write the MBR and copy boot, root (into slot a) and data into an image of layout.total
    bytes; slot b stays a hole until the first update."""
    out.unlink(missing_ok=True)
    with out.open("wb") as fh:
        fh.truncate(layout.total)
    s = SECTOR
    rows = [
        f"start={start // s}, size={size // s}, type={kind}" + (", bootable" if n == 0 else "")
        for n, (start, size, kind) in enumerate(layout.partitions)
    ]
    table = f"label: dos\nlabel-id: 0x{DISK_ID:08x}\nunit: sectors\n\n" + "\n".join(rows) + "\n"
    proc = subprocess.run(
        ["sfdisk", "--no-reread", "--no-tell-kernel", "-q", str(out)],
        input=table,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise CommandError(f"sfdisk failed: {proc.stderr.strip()}")
    for part, offset, limit in (
        (boot, layout.boot_start, layout.boot_size),
        (root, layout.slot_a_start, layout.slot_size),
        (data, layout.data_start, layout.data_size),
    ):
        if part.stat().st_size > limit:
            raise CommandError(f"{part.name} ({part.stat().st_size} bytes) exceeds its partition")
        copy_into(part, out, offset)


def copy_into(src: Path, dst: Path, offset: int) -> None:
    """Copy src into dst at offset, in place, keeping holes where src has zero blocks."""
    block = MIB
    zero = bytes(block)
    with src.open("rb") as fin, dst.open("r+b") as fout:
        pos = offset
        while chunk := fin.read(block):
            if chunk != zero[: len(chunk)]:
                fout.seek(pos)
                fout.write(chunk)
            pos += len(chunk)
