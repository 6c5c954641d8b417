"""The card's C extensions, cross-compiled for the device's Python (cp311, aarch64).

The host builds its own copy of these with setup.py; the card needs the same sources built for
arm64, or `flows --pcap` and the live agent on the device would run the pure Python/numpy
fallbacks instead of what the host tests and benches. What ships is rootfs.NATIVE (an
allow-list, like rootfs.RUNTIME): the offline meter's record walk, decoder and JSON writer
(capture/_fastpath.c). The Ed25519 batch verifier (crypto/_ed25519_batch.c) is the bus's
alone (appliance.bus.server); the card runs the agent, which signs and never batch-verifies,
so it stays off the card.

Inputs, all pinned:
- the compiler: Debian's gcc-aarch64-linux-gnu with libc6-dev-arm64-cross (`make apt`);
- the headers: the arm64 libpython3.X-dev .deb of the same archive and suite the root's
  python3 comes from (so pyconfig.h is the device's own), unpacked into the build's work tree,
  never into the root;
- the flags: FLAGS below, fixed; no debug information (no build paths in the object), the
  file prefix mapped, symbols stripped, SOURCE_DATE_EPOCH in the environment (__DATE__).
Two builds from the same inputs give the same bytes (tests/unit/image/test_native.py).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from appliance.errors import CommandError
from appliance.image import debian, rootfs

#: The cross compiler (Debian package gcc-aarch64-linux-gnu).
CC = "aarch64-linux-gnu-gcc"
#: The suffix Debian's aarch64 python3.11 looks for (sysconfig EXT_SUFFIX on the device).
EXT_SUFFIX = ".cpython-311-aarch64-linux-gnu.so"
#: The device's multiarch triplet: where libpython3.X-dev keeps its pyconfig.h.
TRIPLET = "aarch64-linux-gnu"
#: Fixed code generation flags: setup.py's warnings, CPython's own -fwrapv and NDEBUG, and
#: what makes the object reproducible and small (no -g, stripped).
FLAGS = (
    "-shared",
    "-fPIC",
    "-O2",
    "-std=gnu11",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-fwrapv",
    "-DNDEBUG",
    "-s",
)


def headers_package(python_version: str) -> str:
    """The Debian package with the device Python's C headers and pyconfig.h."""
    return f"libpython{python_version}-dev"


def fetch_headers(
    apt: debian.AptCache, python_version: str, work: Path
) -> tuple[debian.Package, list[Path]]:
    """Download the arm64 headers package (cache) and unpack it into work: the package and the
    include dirs.

    Only that package is unpacked: its dependencies are resolved and downloaded by apt (they
    stay in the cache) but nothing of them is needed to compile against the headers."""
    name = headers_package(python_version)
    found = [p for p in apt.resolve([name]) if p.name == name]
    if not found:
        raise CommandError(f"the archive has no {name} for {apt.archive.arch}")
    apt.download(found)
    if work.exists():
        shutil.rmtree(work)
    debian.extract(found, work)
    include = work / "usr/include"
    pyconfig = include / TRIPLET / f"python{python_version}" / "pyconfig.h"
    if not pyconfig.is_file():
        raise CommandError(f"{found[0].filename} has no {pyconfig.relative_to(work)}")
    # Python.h's pyconfig.h is Debian's dispatcher: it includes <TRIPLET/python3.X/pyconfig.h>
    return found[0], [include / f"python{python_version}", include]


def compiler() -> str:
    """The cross compiler's path, or a one-line error saying how to get it."""
    path = shutil.which(CC)
    if path is None:
        raise CommandError(
            f"image build: the cross compiler {CC} is not installed "
            "(Debian packages gcc-aarch64-linux-gnu and libc6-dev-arm64-cross: run `make apt`)"
        )
    return path


def command(
    cc: str, source: Path, out: Path, includes: Sequence[Path], package_dir: Path
) -> list[str]:
    """The compiler's argument list for one extension (paths in the object are mapped to the
    package's name, so where the checkout lives does not change the bytes)."""
    args = [cc, *FLAGS, f"-ffile-prefix-map={package_dir}=appliance"]
    args += [f"-I{d}" for d in includes]
    return [*args, "-o", str(out), str(source)]


def target(rel_source: str) -> str:
    """The module file (below the package) a source of rootfs.NATIVE builds."""
    return rel_source.removesuffix(".c") + EXT_SUFFIX


def build(package_dir: Path, dest: Path, includes: Sequence[Path], epoch: int) -> list[str]:
    """Compile every rootfs.NATIVE source of package_dir into dest (the package's folder in the
    root); returns the module files written, relative to dest."""
    cc = compiler()
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(epoch), LC_ALL="C")
    written = []
    for rel in rootfs.NATIVE:
        out = dest / target(rel)
        out.parent.mkdir(parents=True, exist_ok=True)
        rootfs.run(command(cc, package_dir / rel, out, includes, package_dir), CC, env=env)
        written.append(target(rel))
    return written
