"""Debian arm64 packages for the image: resolve, download into the cache, extract.

This is what `mmdebstrap --variant=extract` does (apt resolves the closure of the requested
packages against an empty dpkg status; the .debs are unpacked, no maintainer script and no arm64
code runs), done with apt and dpkg-deb directly so that the build owns two things mmdebstrap
hides: the exact package list with versions and hashes (for the manifest) and a persistent
download cache (a warm rebuild downloads nothing but the package indices).

Layout of the cache directory (gitignored, shared between builds):
  apt/lists/     package indices (refreshed by every build: `apt-get update`)
  apt/status     an empty dpkg status: apt resolves as for an empty system
  debs/          downloaded .deb files, kept across builds
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

from appliance.errors import CommandError

KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")

#: "Inst NAME (VERSION ORIGINS [ARCH])" lines of `apt-get -s install`.
_INST = re.compile(r"^Inst (\S+) \((\S+) .*\[(\S+)\]\)")


@dataclasses.dataclass(frozen=True)
class Package:
    """One resolved Debian package and its downloaded file."""

    name: str
    version: str
    arch: str
    path: Path

    @property
    def filename(self) -> str:
        return self.path.name

    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Archive:
    """Where packages come from: one mirror per suite, with components."""

    mirror: str
    security_mirror: str
    suite: str
    components: tuple[str, ...]
    arch: str

    def sources_list(self) -> str:
        comps = " ".join(self.components)
        opts = f"[arch={self.arch} signed-by={KEYRING}]"
        return (
            f"deb {opts} {self.mirror} {self.suite} {comps}\n"
            f"deb {opts} {self.mirror} {self.suite}-updates {comps}\n"
            f"deb {opts} {self.security_mirror} {self.suite}-security {comps}\n"
        )


class AptCache:
    """apt, pointed at a private state and cache directory and at the target architecture."""

    def __init__(self, cache_dir: Path, archive: Archive) -> None:
        self.dir = cache_dir
        self.archive = archive
        self.debs = cache_dir / "debs"

    def _options(self) -> list[str]:
        apt = self.dir / "apt"
        opts = {
            "Dir::Etc::SourceList": str(apt / "sources.list"),
            "Dir::Etc::SourceParts": str(apt / "sources.list.d"),
            "Dir::Etc::Preferences": "/dev/null",
            "Dir::Etc::PreferencesParts": str(apt / "preferences.d"),
            "Dir::State": str(apt / "state"),
            "Dir::State::Lists": str(apt / "lists"),
            "Dir::State::Status": str(apt / "status"),
            "Dir::Cache": str(apt / "cache"),
            "Dir::Cache::Archives": str(self.debs),
            "Dir::Log": str(apt / "log"),
            "APT::Architecture": self.archive.arch,
            "APT::Architectures": self.archive.arch,
            "APT::Install-Recommends": "false",
            "APT::Install-Suggests": "false",
            # our directories belong to root; apt's _apt sandbox user could not write them
            "APT::Sandbox::User": "root",
        }
        return [f"-o{k}={v}" for k, v in opts.items()]

    def _prepare(self) -> None:
        apt = self.dir / "apt"
        for sub in ("sources.list.d", "preferences.d", "state", "lists/partial", "cache", "log"):
            (apt / sub).mkdir(parents=True, exist_ok=True)
        (self.debs / "partial").mkdir(parents=True, exist_ok=True)
        (apt / "sources.list").write_text(self.archive.sources_list())
        (apt / "status").write_text("")

    def _run(self, args: Sequence[str]) -> str:
        cmd = ["apt-get", "-q", *self._options(), *args]
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
            raise CommandError(f"apt-get {args[0]} failed: {' | '.join(tail)}")
        return proc.stdout

    def update(self) -> None:
        """Refresh the package indices (network)."""
        self._prepare()
        self._run(["update"])

    def resolve(self, names: Sequence[str]) -> list[Package]:
        """The full dependency closure of names, as apt would install it on an empty system."""
        out = self._run(["-s", "install", *names])
        pkgs = []
        for line in out.splitlines():
            m = _INST.match(line)
            if m:
                name, version, arch = m.groups()
                filename = f"{name}_{version.replace(':', '%3a')}_{arch}.deb"
                pkgs.append(Package(name, version, arch, self.debs / filename))
        if not pkgs:
            raise CommandError(f"apt resolved nothing for {' '.join(names)}")
        return sorted(pkgs, key=lambda p: p.name)

    def download(self, pkgs: Sequence[Package]) -> int:
        """Fetch the packages not yet in the cache; returns how many were downloaded."""
        missing = [p for p in pkgs if not p.path.exists()]
        if missing:
            self._run(
                ["install", "--download-only", "-y", *(f"{p.name}={p.version}" for p in missing)]
            )
        absent = [p.filename for p in pkgs if not p.path.exists()]
        if absent:
            raise CommandError(f"apt did not download {', '.join(absent[:3])}")
        return len(missing)


def extract(pkgs: Sequence[Package], root: Path) -> None:
    """Unpack the packages' files into root (merged /usr, as bookworm installs it)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "usr").mkdir(exist_ok=True)
    for name in ("bin", "sbin", "lib"):
        (root / "usr" / name).mkdir(exist_ok=True)
        link = root / name
        if not link.is_symlink():
            link.symlink_to(f"usr/{name}")
    for pkg in pkgs:
        deb = subprocess.Popen(
            ["dpkg-deb", "--fsys-tarfile", str(pkg.path)], stdout=subprocess.PIPE
        )
        tar = subprocess.run(
            ["tar", "-x", "-C", str(root), "--keep-directory-symlink", "--no-same-owner"],
            stdin=deb.stdout,
            capture_output=True,
            check=False,
        )
        if deb.wait() != 0 or tar.returncode != 0:
            raise CommandError(f"cannot extract {pkg.filename}: {tar.stderr.decode().strip()}")
