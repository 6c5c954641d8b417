"""Overlays: files laid into the root verbatim, with permissions declared, not implied.

overlays/LAYER/ mirrors the target filesystem; overlays/LAYER.manifest declares, one per line,
every path the layer puts into the root:

    PATH MODE UID:GID        a file (or directory) of the layer, e.g. `etc/inittab 0644 0:0`
    PATH/ MODE UID:GID       a directory the layer creates (a mount point), e.g. `data/ 0755 0:0`
    PATH -> TARGET           a symbolic link, e.g. `usr/sbin/init -> ../bin/busybox`

`#` starts a comment. A file in the layer that the manifest does not declare, or a declared
file the layer lacks, is an error: what the device gets is exactly what was reviewed. git keeps
only the executable bit, so the mode in the tree is never trusted.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from appliance.errors import CommandError


@dataclasses.dataclass(frozen=True)
class Entry:
    """One declared path: a file or directory with mode and owner, or a symlink."""

    path: str
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    link: str | None = None
    directory: bool = False


def read_manifest(path: Path) -> list[Entry]:
    """Parse LAYER.manifest; errors name the file and line."""
    entries = []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise CommandError(f"cannot read overlay manifest {path}: {exc.strerror}") from exc
    for number, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{path}:{number}"
        fields = line.split()
        if len(fields) == 3 and fields[1] == "->":
            entries.append(Entry(fields[0].strip("/"), link=fields[2]))
            continue
        if len(fields) != 3:
            raise CommandError(f"{where}: expected `PATH MODE UID:GID` or `PATH -> TARGET`")
        rel, mode, owner = fields
        try:
            uid, gid = (int(x) for x in owner.split(":"))
            entries.append(Entry(rel.strip("/"), int(mode, 8), uid, gid, None, rel.endswith("/")))
        except ValueError as exc:
            raise CommandError(f"{where}: bad mode {mode!r} or owner {owner!r}") from exc
    return entries


def check_layer(layer: Path, entries: list[Entry]) -> None:
    """Every file of the layer is declared and every declared file exists."""
    declared = {e.path for e in entries if e.link is None and not e.directory}
    present = {str(p.relative_to(layer)) for p in layer.rglob("*") if p.is_file() or p.is_symlink()}
    undeclared = sorted(present - declared)
    if undeclared:
        raise CommandError(
            f"overlay {layer.name}: undeclared file {undeclared[0]}"
            f" (declare it in {layer.name}.manifest)"
        )
    missing = sorted(declared - present)
    if missing:
        raise CommandError(f"overlay {layer.name}: declared {missing[0]} is not in the layer")


def apply(layer: Path, root: Path) -> list[Entry]:
    """Lay the layer into root with its declared modes, owners and links."""
    entries = read_manifest(layer.with_suffix(".manifest"))
    check_layer(layer, entries)
    for e in entries:
        dst = root / e.path
        dst.parent.mkdir(parents=True, exist_ok=True)
        if e.link is not None:
            if dst.is_symlink() or dst.exists():
                dst.unlink()
            dst.symlink_to(e.link)
            continue
        src = layer / e.path
        if e.directory:
            dst.mkdir(exist_ok=True)
        else:
            if dst.is_symlink():
                dst.unlink()
            shutil.copyfile(src, dst)
        os.chmod(dst, e.mode)
        os.chown(dst, e.uid, e.gid)
    return entries
