"""The initramfs: busybox, image/initramfs/init and the drivers that carry the card.

A newc cpio archive, gzip-compressed, built reproducibly: sorted members, every timestamp
SOURCE_DATE_EPOCH, every owner root. Layout inside:

    init                          image/initramfs/init (busybox sh)
    bin/busybox                   the root's busybox-static (arm64)
    lib/modules/modules.load      module paths in load order (dependencies first)
    lib/modules/kernel/...        those modules
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from appliance.errors import CommandError


def build(
    root: Path,
    kernel_version: str,
    modules: Sequence[str],
    init: Path,
    out: Path,
    staging: Path,
    epoch: int,
) -> None:
    """Write the gzip-compressed cpio to out; modules are paths below lib/modules/VERSION."""
    if staging.exists():
        shutil.rmtree(staging)
    (staging / "bin").mkdir(parents=True)
    shutil.copyfile(root / "usr/bin/busybox", staging / "bin/busybox")
    (staging / "bin/busybox").chmod(0o755)
    shutil.copyfile(init, staging / "init")
    (staging / "init").chmod(0o755)
    mdir = staging / "lib/modules"
    mdir.mkdir(parents=True)
    for rel in modules:
        dst = mdir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / "usr/lib/modules" / kernel_version / rel, dst)
    (mdir / "modules.load").write_text("".join(f"{m}\n" for m in modules))
    members = sorted(str(p.relative_to(staging)) for p in staging.rglob("*"))
    for p in [staging, *(staging / m for m in members)]:
        os.utime(p, (epoch, epoch), follow_symlinks=False)
    with out.open("wb") as fh:
        cpio = subprocess.Popen(
            ["cpio", "--quiet", "-o", "-H", "newc", "--reproducible", "-R", "0:0"],
            cwd=staging,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        gz = subprocess.Popen(["gzip", "-n", "-9"], stdin=cpio.stdout, stdout=fh)
        assert cpio.stdin is not None and cpio.stdout is not None
        cpio.stdout.close()
        cpio.stdin.write("".join(f"{m}\n" for m in [".", *members]).encode())
        cpio.stdin.close()
        if cpio.wait() != 0 or gz.wait() != 0:
            raise CommandError("cpio/gzip failed writing the initramfs")
