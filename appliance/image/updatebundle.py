"""`infraspectre image bundle`: an update bundle made from a built card image.

The bundle carries exactly what the image's committed slot holds: the root squashfs
(partition 2 or 3, up to the squashfs's own length, 4 KiB aligned) and that slot's boot set
folder on the FAT (read with mtools, never mounted), its cmdline.txt turned back into the
template the device fills in for the slot it installs to. Version, build and board come from
the root's own /etc/appliance/release, so a bundle cannot claim to be another version than
the system it carries. The format is appliance.update.bundle's.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

from nacl.signing import VerifyKey

from appliance.crypto.keys import load_signing_key, load_verify_key
from appliance.errors import CommandError
from appliance.image import firstboot, sdcard
from appliance.update import bundle, firmware, slots

#: squashfs superblock: magic at 0, bytes_used (u64, little-endian) at 40
SQUASHFS_MAGIC = b"hsqs"
PAGE = 4096


def _mtools(image: Path, args: list[str]) -> str:
    spec = f"{image}@@{sdcard.boot_partition_offset(image)}"
    proc = subprocess.run([args[0], "-i", spec, *args[1:]], capture_output=True, check=False)
    if proc.returncode != 0:
        raise CommandError(f"{image}: {args[0]} failed: {proc.stderr.decode().strip()}")
    return proc.stdout.decode(errors="replace")


def committed_slot(image: Path) -> str:
    """The slot the image's config.txt selects."""
    text = _mtools(image, ["mtype", f"::/{firmware.CONFIG}"])
    slot = slots.slot_of_prefix(firmware.os_prefix(text) or "")
    if slot is None:
        raise CommandError(f"{image}: config.txt selects no slot (os_prefix=slot-a/ or slot-b/)")
    return slot


def extract_root(image: Path, slot: str, out: Path) -> int:
    """Copy the slot's squashfs (its bytes_used, rounded up to 4 KiB) into out; its length."""
    start, size = firstboot.mbr_partition(image, slots.PARTITION[slot])
    with image.open("rb") as fh:
        fh.seek(start)
        head = fh.read(64)
        if head[:4] != SQUASHFS_MAGIC:
            raise CommandError(f"{image}: slot {slot} holds no squashfs")
        used = int.from_bytes(head[40:48], "little")
        length = -(-used // PAGE) * PAGE
        if length > size:
            raise CommandError(f"{image}: slot {slot}'s squashfs overruns its partition")
        fh.seek(start)
        left = length
        with out.open("wb") as dst:
            while left:
                data = fh.read(min(left, 1 << 20))
                if not data:
                    raise CommandError(f"{image}: ends inside slot {slot}")
                dst.write(data)
                left -= len(data)
    return length


def release_of(root: Path) -> dict[str, object]:
    """/etc/appliance/release of a root squashfs (unsquashfs -cat)."""
    proc = subprocess.run(
        ["unsquashfs", "-cat", str(root), "etc/appliance/release"],
        capture_output=True,
        check=False,
    )
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        doc = None
    if proc.returncode != 0 or not isinstance(doc, dict):
        raise CommandError("the root has no readable /etc/appliance/release (image too old?)")
    return doc


def cmdline_template(text: str, slot: str) -> str:
    """A slot's cmdline.txt back into the template (@ROOT@, @SLOT@); refuses one that does
    not name its own slot."""
    root = f"PARTUUID={sdcard.DISK_ID:08x}-{slots.PARTITION[slot]:02d}"
    arg = f"{slots.CMDLINE_ARG}={slot}"
    words = text.split()
    if f"root={root}" not in words or arg not in words:
        raise CommandError(f"slot {slot}'s cmdline.txt does not name root={root} and {arg}")
    words = ["root=@ROOT@" if w == f"root={root}" else w for w in words]
    words = [f"{slots.CMDLINE_ARG}=@SLOT@" if w == arg else w for w in words]
    return " ".join(words) + "\n"


def slot_files(image: Path, work: Path) -> tuple[str, Path, dict[str, Path]]:
    """The image's committed slot: (slot, its root squashfs in work/root.squashfs, its boot set
    files as on the card in work/boot/)."""
    slot = committed_slot(image)
    folder = slots.prefix(slot)
    work.mkdir(parents=True, exist_ok=True)
    root = work / "root.squashfs"
    extract_root(image, slot, root)
    listing = _mtools(image, ["mdir", "-b", f"::/{folder}"])
    names = sorted(
        line.strip().rsplit("/", 1)[-1]
        for line in listing.splitlines()
        if line.strip() and not line.strip().endswith("/")
    )
    boot: dict[str, Path] = {}
    for name in names:
        dst = work / "boot" / name
        dst.parent.mkdir(exist_ok=True)
        _mtools(image, ["mcopy", "-n", f"::/{folder}{name}", str(dst)])
        boot[name] = dst
    return slot, root, boot


def trusted_keys(root: Path, work: Path) -> list[VerifyKey]:
    """The update keys a root squashfs trusts (its /etc/appliance/update-keys/*.pub)."""
    out = work / "update-keys"
    proc = subprocess.run(
        ["unsquashfs", "-q", "-n", "-d", str(out), str(root), "etc/appliance/update-keys"],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise CommandError(f"the root trusts no update key: {proc.stderr.decode().strip()[:200]}")
    return [load_verify_key(p) for p in sorted(out.glob("etc/appliance/update-keys/*.pub"))]


def make(image: Path, key_file: Path, out: Path) -> bundle.Manifest:
    """Write the bundle of image's committed slot to out, signed with the key in key_file."""
    key = load_signing_key(key_file)
    with tempfile.TemporaryDirectory(prefix="bundle-") as tmp:
        slot, root, boot = slot_files(image, Path(tmp))
        rel = release_of(root)
        if bundle.CMDLINE not in boot:
            raise CommandError(f"{image}: {slots.prefix(slot)} has no {bundle.CMDLINE}")
        cmdline = boot[bundle.CMDLINE]
        cmdline.write_text(cmdline_template(cmdline.read_text(), slot))
        return bundle.write(
            out,
            version=str(rel["version"]),
            build=int(str(rel["build"])),
            board=str(rel["board"]),
            root=root,
            boot=boot,
            key=key,
        )
