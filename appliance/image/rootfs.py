"""The root filesystem tree: unpacked Debian packages made into the appliance's root.

Every step works on a directory on the host and runs no arm64 code: pruning, the kernel
module subset (with the host's depmod), busybox applet links, the locked Python wheels for the
device's interpreter, the appliance package's runtime part (RUNTIME, an allow-list: the
development kit stays off the card) and precompiled bytecode.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from appliance import __version__
from appliance.errors import CommandError

#: Distribution name of the appliance package (pyproject.toml [project] name).
DIST_NAME = "infraspectre-edge"


def prune(root: Path, paths: Iterable[str]) -> None:
    """Remove paths (relative to root, glob patterns) that the device does not need."""
    for pattern in paths:
        for target in sorted(root.glob(pattern), reverse=True):
            if target.is_symlink() or target.is_file():
                target.unlink()
            elif target.is_dir():
                shutil.rmtree(target)


def kernel_version(root: Path) -> str:
    """The one kernel version the root's packages installed (lib/modules/VERSION)."""
    versions = sorted(p.name for p in (root / "usr/lib/modules").iterdir() if p.is_dir())
    if len(versions) != 1:
        raise CommandError(f"expected one kernel in the root, found {versions or 'none'}")
    return versions[0]


def keep_modules(root: Path, version: str, keep: Sequence[str]) -> None:
    """Delete every module outside keep (paths below kernel/), then rebuild modules.dep."""
    base = root / "usr/lib/modules" / version / "kernel"
    kept = [base / k for k in keep]
    for mod in sorted(base.rglob("*.ko")):
        if not any(mod == k or k in mod.parents for k in kept):
            mod.unlink()
    for d in sorted((p for p in base.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(d.iterdir()):
            d.rmdir()
    run(["depmod", "-b", str(root), version], "depmod")


def module_load_order(root: Path, version: str, names: Sequence[str]) -> list[str]:
    """Module paths (relative to lib/modules/VERSION) to insmod, dependencies first."""
    mdir = root / "usr/lib/modules" / version
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (mdir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        by_name[Path(path).name.removesuffix(".ko").replace("-", "_")] = path
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in reversed(deps[path]):
            visit(dep)
        order.append(path)

    for name in names:
        found = by_name.get(name.replace("-", "_"))
        if found is None:
            raise CommandError(f"kernel {version} has no module {name} (built in or renamed?)")
        visit(found)
    return order


def busybox_applets(busybox: Path) -> list[str]:
    """The applet names compiled into a busybox binary, read from the binary itself.

    Busybox keeps its applet names as one sorted, NUL-separated table that starts with "[" and
    "[["; reading it avoids running the arm64 binary to ask `busybox --list`.
    """
    data = busybox.read_bytes()
    start = data.find(b"\0[\0[[\0")
    if start < 0:
        raise CommandError(f"{busybox}: no applet table found")
    names = []
    for raw in data[start + 1 : start + 1 + 16384].split(b"\0"):
        if not re.fullmatch(rb"[a-z0-9_.\[\]-]+", raw):
            break
        names.append(raw.decode())
    return names


def link_busybox(root: Path) -> int:
    """Link every busybox applet into usr/bin unless a package already installed that name."""
    busybox = root / "usr/bin/busybox"
    count = 0
    for name in busybox_applets(busybox):
        if name == "busybox":
            continue
        if any(
            (root / d / name).exists() or (root / d / name).is_symlink()
            for d in ("usr/bin", "usr/sbin")
        ):
            continue
        (root / "usr/bin" / name).symlink_to("busybox")
        count += 1
    return count


def pip(args: Sequence[str], what: str) -> None:
    """Run the host's pip (the one of this interpreter) for the device's wheels."""
    run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], what)


def download_wheels(lock: Path, wheels: Path, version: str, platforms: Sequence[str]) -> None:
    """Put the device's wheels of every pinned requirement into the cache (no-op when warm)."""
    wheels.mkdir(parents=True, exist_ok=True)
    tags = [*_platform_args(version, platforms), "--no-deps", "-d", str(wheels), "-r", str(lock)]
    try:
        pip(["download", "-q", "--no-index", "--find-links", str(wheels), *tags], "pip download")
    except CommandError:
        pip(["download", "-q", *tags], "pip download")


def install_wheels(
    lock: Path, wheels: Path, root: Path, site: str, version: str, platforms: Sequence[str]
) -> None:
    """Install the cached device wheels of every pinned requirement into the root's site."""
    target = root / site
    pip(
        [
            "install",
            "-q",
            "--no-index",
            "--find-links",
            str(wheels),
            "--no-deps",
            "--no-compile",
            "--target",
            str(target),
            *_platform_args(version, platforms),
            "-r",
            str(lock),
        ],
        "pip install",
    )
    scripts = target / "bin"
    if scripts.is_dir():
        bindir = root / "usr/local/bin"
        bindir.mkdir(parents=True, exist_ok=True)
        for script in sorted(scripts.iterdir()):
            text = script.read_bytes()
            if text.startswith(b"#!"):
                text = b"#!/usr/bin/python3" + text[text.index(b"\n") :]
            (bindir / script.name).write_bytes(text)
            (bindir / script.name).chmod(0o755)
        shutil.rmtree(scripts)


def _platform_args(version: str, platforms: Sequence[str]) -> list[str]:
    args = ["--only-binary=:all:", "--implementation", "cp", "--python-version", version]
    for p in platforms:
        args += ["--platform", p]
    return args


#: The card's Python payload: what of appliance/ ships, by path below the package (a folder
#: ends in "/" and ships whole). An allow-list, so that anything new stays off the card until it
#: is named here: the development kit (devkit/: benches, the demo, the lab, the simulated disk,
#: the pytest plugin) never is. tests/unit/image/test_rootfs.py checks that everything these
#: import (also inside functions) is on the list, and tests/board/test_card.py that the built
#: card's manifest holds no development module, pytest or scapy.
RUNTIME = (
    "__init__.py",
    "__main__.py",
    "py.typed",
    "cli.py",
    "configcheck.py",
    "datafiles.py",
    "errors.py",
    "fsm.py",
    "logformat.py",
    "observability.py",
    "sysclock.py",
    "agent/",
    "bus/",
    "capture/",
    "config/",
    "crypto/",
    "image/",
    "pki/",
    "provision/",
    "qemu/",
    "update/",
    "wal/",
    "wire/",
)
#: The card's C extensions, by source below the package: cross-compiled for the device by
#: appliance.image.native (the module file next to its source), an allow-list like RUNTIME.
#: The bus's Ed25519 batch verifier (crypto/_ed25519_batch.c) is not here: the card runs the
#: agent, which never batch-verifies.
NATIVE = ("capture/_fastpath.c",)
#: File kinds a runtime folder ships (sources, typing stubs and markers, package data).
SHIPPED_SUFFIXES = frozenset({".py", ".pyi", ".yaml", ".typed"})


def runtime_files(package_dir: Path) -> list[Path]:
    """The files of package_dir that RUNTIME puts on the card, sorted, relative to it."""
    found = []
    for src in sorted(package_dir.rglob("*")):
        rel = src.relative_to(package_dir)
        if "__pycache__" in rel.parts or src.is_dir() or src.suffix not in SHIPPED_SUFFIXES:
            continue
        if str(rel) in RUNTIME or f"{rel.parts[0]}/" in RUNTIME:
            found.append(rel)
    return found


def install_appliance(package_dir: Path, root: Path, site: str) -> list[str]:
    """Copy the appliance package's runtime files (RUNTIME: sources and package data) and its
    dist-info."""
    target = root / site / package_dir.name
    copied = []
    for rel in runtime_files(package_dir):
        dst = target / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(package_dir / rel, dst)
        copied.append(str(rel))
    info = root / site / f"{DIST_NAME.replace('-', '_')}-{__version__}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {DIST_NAME}\nVersion: {__version__}\n"
    )
    (info / "entry_points.txt").write_text("[console_scripts]\ninfraspectre = appliance.cli:main\n")
    (info / "top_level.txt").write_text(f"{package_dir.name}\n")
    (info / "INSTALLER").write_text("infraspectre image build\n")
    return copied


def compile_bytecode(root: Path, dirs: Sequence[str]) -> None:
    """Precompile every module to .pyc as the device will find it (paths as on the device).

    unchecked-hash pycs carry no source mtime (reproducible, and the read-only root never
    changes under them); PYTHONHASHSEED=0 fixes the order of set constants in the bytecode.
    """
    if sys.version_info[:2] != (3, 11):
        raise CommandError("the image's Python is 3.11: run the build with a Python 3.11")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONHASHSEED"] = "0"
    for rel in dirs:
        path = root / rel
        if not path.is_dir():
            continue
        cmd = [
            sys.executable,
            "-m",
            "compileall",
            "-q",
            "-f",
            "--invalidation-mode",
            "unchecked-hash",
            "-s",
            str(root),
            "-p",
            "/",
            str(path),
        ]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        # a few test and template files in third-party trees are not valid Python 3: compileall
        # reports them and compiles the rest, which is all the device needs
        if proc.returncode not in (0, 1):
            raise CommandError(f"compileall {rel} failed: {proc.stderr.strip()[-300:]}")


def run(cmd: Sequence[str], what: str, env: Mapping[str, str] | None = None) -> str:
    """Run a host tool; a failure becomes a one-line CommandError naming the tool."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    except FileNotFoundError as exc:
        raise CommandError(f"{what}: {cmd[0]} is not installed (make apt installs it)") from exc
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise CommandError(f"{what} failed: {' | '.join(lines[-3:])}")
    return str(proc.stdout)
