"""`infraspectre image build`: from the definitions in image/ to a flashable SD card image.

Steps (each reports its time on the terminal):

 1. packages   resolve the Debian packages for the board, download what the cache lacks
 2. unpack     extract them into a root tree (no maintainer script, no arm64 code runs)
 3. kernel     take the kernel, DTBs and firmware for the boot partition; depmod
 4. initramfs  busybox + init + the drivers that carry the card
 5. python     the locked cp311 aarch64 wheels, the appliance package, its C extensions
               cross-compiled for the device (appliance.image.native)
 6. root       prune, the kernel module subset, busybox applet links, overlays/, bytecode
 7. squashfs   the read-only root
 8. card       boot FAT32 | root squashfs | data f2fs in a power-of-two MBR image
 9. manifest   packages, versions, every file's hash, the image's sha256

Outputs in OUT: infraspectre-BOARD.img, infraspectre-BOARD.img.sha256, manifest.json.
Reproducible: the same definitions, lock, package files and SOURCE_DATE_EPOCH give the same
bytes. The cache (Debian .debs, wheels) is kept between builds; package indices are refreshed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from appliance import __version__
from appliance.errors import CommandError
from appliance.image import (
    bootcheck,
    debian,
    initramfs,
    manifest,
    native,
    overlay,
    rootfs,
    sdcard,
)
from appliance.image.definition import Definition
from appliance.update import firmware, slots

#: The appliance package that is running: the card gets its runtime part (rootfs.RUNTIME).
PACKAGE_DIR = Path(__file__).resolve().parents[1]

STEPS = 9


@dataclasses.dataclass(frozen=True)
class Result:
    """What a build produced."""

    image: Path
    manifest: Path
    sha256: str
    seconds: float


class Progress:
    """Step lines on a terminal (or any text stream): `image: [3/9] kernel ... 1.2 s`."""

    def __init__(self, stream: TextIO | None = sys.stderr) -> None:
        self.stream = stream
        self.number = 0

    @contextmanager
    def step(self, name: str) -> Iterator[Callable[[str], None]]:
        self.number += 1
        start = time.monotonic()
        notes: list[str] = []
        self._say(f"[{self.number}/{STEPS}] {name} ...")
        yield notes.append
        took = time.monotonic() - start
        detail = f" ({'; '.join(notes)})" if notes else ""
        self._say(f"[{self.number}/{STEPS}] {name} done in {took:.1f} s{detail}")

    def _say(self, line: str) -> None:
        if self.stream is not None:
            print(f"image: {line}", file=self.stream, flush=True)


def source_date_epoch(source: Path) -> int:
    """SOURCE_DATE_EPOCH from the environment, else the source tree's last commit time."""
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env:
        try:
            return int(env)
        except ValueError as exc:
            raise CommandError(f"SOURCE_DATE_EPOCH={env!r} is not a number of seconds") from exc
    proc = subprocess.run(
        ["git", "-C", str(source), "log", "-1", "--format=%ct"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode == 0 and proc.stdout.strip().isdigit():
        return int(proc.stdout.strip())
    raise CommandError("set SOURCE_DATE_EPOCH (the source tree is not a git checkout)")


def build(
    defn: Definition,
    out: Path,
    cache: Path,
    *,
    epoch: int,
    progress: Progress | None = None,
    keep_work: bool = False,
    update_keys: Sequence[Path] = (),
) -> Result:
    """Build the image of defn.board into out (created), using and filling cache. The root
    trusts the update_keys (Ed25519 public key files) for update bundles."""
    if os.geteuid() != 0:
        raise CommandError("image build runs as root: the root filesystem's files are root's")
    native.compiler()  # a missing cross compiler is said before minutes of work
    progress = progress or Progress()
    began = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    work = out / "work"
    if work.exists():
        shutil.rmtree(work)
    root = work / "root"
    boot = work / "boot"
    boot.mkdir(parents=True)
    board = defn.board

    with progress.step("packages") as note:
        apt = debian.AptCache(cache / "debian", defn.archive)
        apt.update()
        pkgs = apt.resolve(defn.packages)
        names = {p.name for p in pkgs}
        pkgs += [
            p
            for p in apt.resolve(defn.boot_packages)
            if (p.name in defn.boot_packages or p.name.startswith("linux-image-"))
            and p.name not in names
        ]
        pkgs.sort(key=lambda p: p.name)
        fetched = apt.download(pkgs)
        headers, includes = native.fetch_headers(apt, defn.python_version, work / "python-headers")
        note(f"{len(pkgs)} packages, {fetched} downloaded")

    with progress.step("unpack"):
        debian.extract(pkgs, root)

    with progress.step("kernel") as note:
        kver = rootfs.kernel_version(root)
        note(kver)
        shutil.copyfile(root / "boot" / f"vmlinuz-{kver}", boot / "vmlinuz")
        dtb_dir = root / "usr/lib" / f"linux-image-{kver}" / "broadcom"
        for dtb in board.dtbs:
            _take(dtb_dir / dtb, boot / dtb)
        for fw in board.firmware:
            _take(root / "usr/lib/raspi-firmware" / fw, boot / fw)
        rootfs.run(["depmod", "-b", str(root), kver], "depmod")

    with progress.step("initramfs") as note:
        order = rootfs.module_load_order(root, kver, defn.initramfs_modules)
        initramfs.build(
            root,
            kver,
            order,
            defn.image_dir / "initramfs" / "init",
            boot / "initrd.img",
            work / "initramfs",
            epoch,
        )
        note(f"{len(order)} modules, {(boot / 'initrd.img').stat().st_size // 1024} KiB")

    with progress.step("python") as note:
        wheels = cache / "wheels"
        rootfs.download_wheels(defn.lock, wheels, defn.python_version, defn.platforms)
        rootfs.install_wheels(
            defn.lock, wheels, root, defn.site_packages, defn.python_version, defn.platforms
        )
        rootfs.install_appliance(PACKAGE_DIR, root, defn.site_packages)
        built = native.build(
            PACKAGE_DIR, root / defn.site_packages / PACKAGE_DIR.name, includes, epoch
        )
        count = len(manifest.python_packages(root / defn.site_packages))
        note(f"{count} distributions, {len(built)} C extension(s) for aarch64")

    with progress.step("root") as note:
        rootfs.prune(root, defn.prune)
        rootfs.keep_modules(root, kver, defn.modules)
        links = rootfs.link_busybox(root)
        layers = [p for p in (defn.overlays / "base", defn.overlays / board.name) if p.is_dir()]
        for layer in layers:
            overlay.apply(layer, root)
        # the device's clock floor (etc/init.d/rcS): never earlier than the build
        (root / "etc/appliance/build-epoch").write_text(f"{epoch}\n")
        write_release(root, board.name, epoch, update_keys)
        rootfs.compile_bytecode(
            root, ["usr/lib/python3.11", "usr/lib/python3/dist-packages", defn.site_packages]
        )
        note(f"{links} busybox applets, overlays {', '.join(p.name for p in layers)}")

    with progress.step("squashfs") as note:
        squash = work / "root.squashfs"
        sdcard.make_root(root, squash, epoch, defn.squashfs_options)
        note(f"{squash.stat().st_size / sdcard.MIB:.1f} MiB")

    image = out / f"infraspectre-{board.name}.img"
    with progress.step("card") as note:
        files = boot_partition_files(defn, boot, work / "boot-set")
        boot_bytes = sum(p.stat().st_size for p in files.values())
        layout = sdcard.plan(squash.stat().st_size, boot_bytes)
        if board.config_txt:
            config = files[firmware.CONFIG].read_text()
            cmdline = files[slots.prefix("a") + "cmdline.txt"].read_text()
            lacking = bootcheck.missing(files, config, cmdline)
            if lacking:
                raise CommandError(f"the boot partition would lack {', '.join(lacking)}")
        sdcard.make_boot(files, layout.boot_size, work / "boot.vfat", work / "boot-staging", epoch)
        empty = work / "data-tree"
        empty.mkdir()
        sdcard.make_data(empty, layout.data_size, work / "data.f2fs", epoch)
        sdcard.assemble(layout, work / "boot.vfat", squash, work / "data.f2fs", image)
        boot_mib = layout.boot_size // sdcard.MIB
        note(f"{layout.total // sdcard.MIB} MiB, boot {boot_bytes / 1e6:.1f} MB of {boot_mib} MiB")

    with progress.step("manifest"):
        digest = manifest.sha256_file(image)
        (out / f"{image.name}.sha256").write_text(f"{digest}  {image.name}\n")
        doc = {
            "board": board.name,
            "appliance_version": __version__,
            "source_date_epoch": epoch,
            "image": {"file": image.name, "bytes": image.stat().st_size, "sha256": digest},
            "kernel": kver,
            "debian_packages": [
                {"name": p.name, "version": p.version, "arch": p.arch, "sha256": p.sha256()}
                for p in pkgs
            ],
            "python_packages": manifest.python_packages(root / defn.site_packages),
            # what the card's C extensions were compiled against (not installed on the card)
            "build_packages": [
                {"name": p.name, "version": p.version, "arch": p.arch, "sha256": p.sha256()}
                for p in [headers]
            ],
            "files": {
                "boot": manifest.tree_entries(work / "boot-set"),
                "root": manifest.tree_entries(root),
            },
        }
        manifest_path = out / "manifest.json"
        manifest.write(manifest_path, doc)

    if not keep_work:
        shutil.rmtree(work)
    return Result(image, manifest_path, digest, time.monotonic() - began)


#: where the root lists the update keys it trusts, and says what it is
UPDATE_KEYS_DIR = "etc/appliance/update-keys"
RELEASE = "etc/appliance/release"


def write_release(root: Path, board: str, epoch: int, update_keys: Sequence[Path]) -> None:
    """/etc/appliance/release (what this root is: the updater compares bundles with it) and
    the update keys the root trusts (/etc/appliance/update-keys/NAME.pub)."""
    release = {"board": board, "build": epoch, "version": __version__}
    (root / RELEASE).write_text(json.dumps(release, sort_keys=True) + "\n")
    keys = root / UPDATE_KEYS_DIR
    keys.mkdir(parents=True, exist_ok=True)
    for path in update_keys:
        from appliance.crypto.keys import load_verify_key, write_verify_key

        write_verify_key(keys / (path.stem + ".pub"), load_verify_key(path))


def boot_partition_files(defn: Definition, boot: Path, staging: Path) -> dict[str, Path]:
    """The boot partition of a fresh card (name on the card -> file in staging): the firmware
    and config.txt at the top, slot a's boot set in slot-a/ (its cmdline.txt naming
    partition 2 and appliance.slot=a). boot holds what the kernel step gathered."""
    board = defn.board
    if staging.exists():
        shutil.rmtree(staging)
    folder = staging / slots.prefix("a")
    folder.mkdir(parents=True)
    template = (defn.image_dir / "boot" / "cmdline.txt").read_text()
    template = template.replace("@CONSOLE@", board.console)
    (folder / "cmdline.txt").write_text(slots.cmdline_for(template, "a", f"{sdcard.DISK_ID:08x}"))
    firmware_files = set(board.firmware)
    for src in sorted(boot.iterdir()):
        dst = staging / src.name if src.name in firmware_files else folder / src.name
        shutil.copyfile(src, dst)
    if board.config_txt:
        shutil.copyfile(defn.image_dir / board.config_txt, staging / firmware.CONFIG)
    else:  # QEMU's virt board runs no firmware: the harness reads this one alone
        (staging / firmware.CONFIG).write_text(
            "# read by the QEMU harness, which plays the firmware's part on virt\n"
            f"[all]\nos_prefix={slots.prefix('a')}\nkernel=vmlinuz\n"
            "initramfs initrd.img followkernel\ncmdline=cmdline.txt\n"
        )
    return {str(p.relative_to(staging)): p for p in sorted(staging.rglob("*")) if p.is_file()}


def _take(src: Path, dst: Path) -> None:
    if not src.is_file():
        raise CommandError(f"the packages provide no {src.name} (looked in {src.parent})")
    shutil.copyfile(src, dst)
