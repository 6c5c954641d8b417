"""Built cards kept for development runs (`infraspectre demo --board`), keyed on their sources.

A card is built once per state of what goes onto it and then reused: the key is a SHA-256 over
the board's name, the fixed SOURCE_DATE_EPOCH below, the runtime part of the appliance package
(appliance.image.rootfs.runtime_files: the development kit is not on the card, so editing it
keeps the card), and every file of image/, overlays/ and requirements.lock. A change to any of
them gives a new key and so a new build (3-15 min here); the Debian packages themselves come
from the download cache that `image build` keeps.

Layout under the cache folder: cards/KEY/infraspectre-BOARD.img (+ .sha256, manifest.json).
A build goes to cards/KEY.partial-PID first and is renamed into place only once complete, so
an interrupted build is never mistaken for a card, and is removed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from appliance.image import build, definition, rootfs

#: SOURCE_DATE_EPOCH of the kept cards (2026-11-27 00:00 UTC, the board tier's): a fixed
#: value, so that a new commit that changes nothing on the card keeps its key. It is also the
#: box's clock floor; provisioning sets the clock.
EPOCH = 1795737600


def source_key(
    defn: definition.Definition, epoch: int = EPOCH, package_dir: Path = build.PACKAGE_DIR
) -> str:
    """The key of the card defn builds with package_dir's runtime part: a hash over what goes
    onto it (module docstring)."""
    digest = hashlib.sha256(f"{defn.board.name}\0{epoch}\0".encode())
    files = [(f"appliance/{rel}", package_dir / rel)
             for rel in rootfs.runtime_files(package_dir)]  # fmt: skip
    for top in (defn.image_dir, defn.overlays):
        files += [(str(p.relative_to(defn.source)), p) for p in sorted(top.rglob("*"))
                  if p.is_file() and "__pycache__" not in p.parts]  # fmt: skip
    files.append(("requirements.lock", defn.lock))
    for name, path in files:
        digest.update(f"{name}\0{path.stat().st_mode & 0o777:o}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def card_path(cache: Path, board: str = "rpi") -> Path:
    """Where the kept card of the current sources is (or would be)."""
    defn = definition.load(board)
    return cache / "cards" / source_key(defn) / f"infraspectre-{defn.board.name}.img"


def build_or_reuse(cache: Path, board: str = "rpi") -> tuple[Path, bool]:
    """The kept card of the current sources, built first if there is none; (image, built)."""
    image = card_path(cache, board)
    if image.is_file():
        return image, False
    partial = image.parent.with_name(f"{image.parent.name}.partial-{os.getpid()}")
    try:
        build.build(definition.load(board), partial, cache, epoch=EPOCH)
        partial.rename(image.parent)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return image, True
