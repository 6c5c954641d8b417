"""The build manifest (manifest.json next to the image): what exactly is on the card.

    {
      "format": 1,
      "board": "rpi", "appliance_version": "0.1.0", "source_date_epoch": 1764201600,
      "image": {"file": "infraspectre-rpi.img", "bytes": 268435456, "sha256": "..."},
      "kernel": "6.1.0-56-arm64",
      "debian_packages": [{"name", "version", "arch", "sha256"}, ...],   sorted by name
      "python_packages": [{"name", "version"}, ...],                      the lock, as installed
      "files": {"boot": [...], "root": [...]}                             sorted by path
    }

A file entry is {"path", "mode", "bytes", "sha256"}, a symlink {"path", "link"}, a directory
{"path", "mode", "dir": true}. The manifest describes the image; it is not inside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

FORMAT = 1


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def tree_entries(tree: Path) -> list[dict[str, Any]]:
    """One entry per path below tree (not following links), sorted by path."""
    entries: list[dict[str, Any]] = []
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = str(path.relative_to(tree))
            st = path.lstat()
            mode = f"{stat.S_IMODE(st.st_mode):04o}"
            if stat.S_ISLNK(st.st_mode):
                entries.append({"path": rel, "link": os.readlink(path)})
            elif stat.S_ISDIR(st.st_mode):
                entries.append({"path": rel, "mode": mode, "dir": True})
            else:
                entries.append(
                    {"path": rel, "mode": mode, "bytes": st.st_size, "sha256": sha256_file(path)}
                )
    return sorted(entries, key=lambda e: e["path"])


def python_packages(site: Path) -> list[dict[str, str]]:
    """Name and version of every distribution installed in site (its *.dist-info/METADATA)."""
    found = []
    for info in sorted(site.glob("*.dist-info")):
        meta: dict[str, str] = {}
        for line in (info / "METADATA").read_text(errors="replace").splitlines():
            if not line:
                break
            key, _, value = line.partition(": ")
            if key in ("Name", "Version") and key not in meta:
                meta[key] = value.strip()
        found.append({"name": meta.get("Name", info.name), "version": meta.get("Version", "")})
    return sorted(found, key=lambda p: p["name"].lower())


def write(path: Path, doc: dict[str, Any]) -> None:
    """Write the manifest with sorted keys (byte-identical for identical builds)."""
    path.write_text(json.dumps({"format": FORMAT, **doc}, indent=1, sort_keys=True) + "\n")


def read(path: Path) -> dict[str, Any]:
    """Load a manifest written by write()."""
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc
