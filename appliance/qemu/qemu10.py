"""QEMU 10 for the boards the system QEMU (Debian 12: 7.2) cannot emulate, e.g. raspi4b.

Nothing on the machine is installed or replaced. Debian bookworm-backports builds QEMU 10 for
bookworm; its three .debs are downloaded into a private cache folder and unpacked there with
`dpkg-deb -x`; the harness runs that folder's binary with `-L <folder>/usr/share/qemu` (its own
firmware and option ROMs). The system's qemu-system-arm (raspi3b, virt) is untouched.

Cache layout (below $INFRASPECTRE_CACHE or ./cache, gitignored):
    qemu10/apt/                 private apt state (sources list: bookworm-backports, amd64)
    qemu10/debs/                the downloaded .debs
    qemu10/VERSION/root/        the unpacked packages; root/.complete marks a finished unpack

Fetching is checked twice: apt verifies the archive's signed Release file
(debian-archive-keyring) and each file's hash in the signed index; then every .deb must match
the SHA-256 pinned in PACKAGES below. When the backports archive has moved on to a newer build
(it keeps only the newest), the pinned files are fetched by their SHA-1 from
snapshot.debian.org instead and still checked against the pinned SHA-256. A mismatch is an
error, never a fallback to an unverified file.

`python -m appliance.qemu.qemu10` (what `make qemu10` and `make test` run) fetches and prints
the binary's path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from appliance.errors import CommandError

#: The Debian version of the three packages, and the unpacked tree's folder name.
VERSION = "1:10.0.2+ds-2+deb13u1~bpo12+1"
SUITE = "bookworm-backports"
MIRROR = "http://deb.debian.org/debian"
SNAPSHOT = "https://snapshot.debian.org/file/"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


@dataclasses.dataclass(frozen=True)
class Deb:
    """One pinned package file: its name, architecture and hashes (measured 2026-11-29)."""

    name: str
    arch: str
    sha256: str
    sha1: str  # snapshot.debian.org's key for the file

    @property
    def filename(self) -> str:
        return f"{self.name}_{VERSION.replace(':', '%3a')}_{self.arch}.deb"


PACKAGES = (
    Deb(
        "qemu-system-arm",
        "amd64",
        "edebbab09db3882c48ef9c00049c7c6a2d76d195cb88d830baadd1fb705bbc66",
        "4e5b5e514ccd6b18ee5be1eba63c9fa11d0417d2",
    ),
    Deb(
        "qemu-system-common",
        "amd64",
        "23a4672a138832d7173855e981aa8282c73ef5e04e080fa7ada9f82c6b34f507",
        "7b8b7bfa931a61a9d866e63a96c6d57803c57607",
    ),
    Deb(
        "qemu-system-data",
        "all",
        "2d831088187087013b3fcbd19bdfb955b182a2d5a08f6dafa0ad1c6d2007fb4e",
        "87a9a71b73c693363a986fd8a8c411a1c50f9376",
    ),
)


def default_cache() -> Path:
    """$INFRASPECTRE_CACHE, or ./cache in the source tree (shared with the image build)."""
    env = os.environ.get("INFRASPECTRE_CACHE")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "cache"


def root_dir(cache: Path | None = None) -> Path:
    """Where the pinned QEMU 10 is (or will be) unpacked."""
    return (cache or default_cache()) / "qemu10" / VERSION.replace(":", "_") / "root"


def command(cache: Path | None = None) -> list[str]:
    """The QEMU 10 arm64 binary with its data folder (`-L`), fetched first if needed."""
    root = ensure(cache)
    return [str(root / "usr/bin/qemu-system-aarch64"), "-L", str(root / "usr/share/qemu")]


def ensure(cache: Path | None = None) -> Path:
    """Fetch, verify and unpack the pinned packages once; returns the unpacked root."""
    base = (cache or default_cache()) / "qemu10"
    root = root_dir(cache)
    if (root / ".complete").is_file():
        return root
    debs = base / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    missing = [d for d in PACKAGES if not _verified(debs / d.filename, d)]
    if missing:
        try:
            _apt_download(base, missing)
        except CommandError as exc:  # the archive moved on: the pinned build from snapshot
            print(f"qemu10: {exc}; fetching the pinned files from {SNAPSHOT}", file=sys.stderr)
        for deb in missing:
            if not _verified(debs / deb.filename, deb):
                _snapshot_download(debs / deb.filename, deb)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    for deb in PACKAGES:
        proc = subprocess.run(
            ["dpkg-deb", "-x", str(debs / deb.filename), str(root)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise CommandError(f"cannot unpack {deb.filename}: {proc.stderr.strip()}")
    binary = root / "usr/bin/qemu-system-aarch64"
    if not binary.is_file():
        raise CommandError(f"{binary} missing after unpacking QEMU {VERSION}")
    (root / ".complete").write_text(VERSION + "\n")
    return root


def _verified(path: Path, deb: Deb) -> bool:
    """Whether path exists with the pinned SHA-256; a file with another hash is removed."""
    if not path.is_file():
        return False
    if hashlib.sha256(path.read_bytes()).hexdigest() == deb.sha256:
        return True
    path.unlink()
    return False


def _apt_download(base: Path, debs: list[Deb]) -> None:
    """`apt-get download` of the pinned versions against a private bookworm-backports index."""
    apt = base / "apt"
    for sub in ("lists/partial", "state", "cache", "log", "sources.list.d", "preferences.d"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    source = f"deb [arch=amd64 signed-by={KEYRING}] {MIRROR} {SUITE} main\n"
    (apt / "sources.list").write_text(source)
    (apt / "status").write_text("")
    opts = {
        "Dir::Etc::SourceList": apt / "sources.list",
        "Dir::Etc::SourceParts": apt / "sources.list.d",
        "Dir::Etc::Preferences": "/dev/null",
        "Dir::Etc::PreferencesParts": apt / "preferences.d",
        "Dir::State": apt / "state",
        "Dir::State::Lists": apt / "lists",
        "Dir::State::Status": apt / "status",
        "Dir::Cache": apt / "cache",
        "Dir::Log": apt / "log",
        "APT::Architecture": "amd64",
        "APT::Sandbox::User": "root",
    }
    args = ["apt-get", "-q", *(f"-o{k}={v}" for k, v in opts.items())]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", LC_ALL="C")
    for step in (["update"], ["download", *(f"{d.name}={VERSION}" for d in debs)]):
        proc = subprocess.run(
            [*args, *step], cwd=base / "debs", capture_output=True, text=True, env=env, check=False
        )
        if proc.returncode != 0:
            tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:]
            raise CommandError(f"apt-get {step[0]} from {SUITE} failed: {' '.join(tail)}")


def _snapshot_download(path: Path, deb: Deb, attempts: int = 3) -> None:
    """The pinned file from snapshot.debian.org by SHA-1, checked against its SHA-256."""
    url = SNAPSHOT + deb.sha1
    error = ""
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=60) as resp:
                data = resp.read()
        except OSError as exc:
            error = str(exc)
            time.sleep(2**attempt)
            continue
        if hashlib.sha256(data).hexdigest() != deb.sha256:
            raise CommandError(f"{url}: SHA-256 differs from the pinned {deb.sha256} ({deb.name})")
        tmp = path.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.rename(path)
        return
    raise CommandError(f"cannot fetch {deb.filename} ({url}): {error}")


def main() -> int:
    try:
        print(command()[0])
    except CommandError as exc:
        print(f"qemu10: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
