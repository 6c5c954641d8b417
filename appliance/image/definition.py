"""What an image is made of: image/debian.toml (every board) + image/boards/BOARD.toml.

The definitions are data in the image/ folder of the data folder (appliance.datafiles); this
module reads them into one typed, validated value. Unknown keys are errors that name the file
and the key.
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from appliance import datafiles
from appliance.errors import CommandError
from appliance.image.debian import Archive

#: The data folder (image/, overlays/, requirements.lock): appliance.datafiles explains the
#: lookup ($INFRASPECTRE_DATA, a wheel's packaged copy, or the source checkout).
SOURCE_DIR = datafiles.root()


@dataclasses.dataclass(frozen=True)
class Board:
    """One board an image is built for (image/boards/NAME.toml)."""

    name: str
    description: str
    boot_packages: tuple[str, ...]
    firmware: tuple[str, ...]
    dtbs: tuple[str, ...]
    config_txt: str
    console: str
    initramfs_modules: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Definition:
    """Everything `image build` needs to know besides the download cache."""

    source: Path
    archive: Archive
    board: Board
    packages: tuple[str, ...]
    boot_packages: tuple[str, ...]
    prune: tuple[str, ...]
    modules: tuple[str, ...]
    squashfs_options: tuple[str, ...]
    site_packages: str
    python_version: str
    platforms: tuple[str, ...]
    initramfs_modules: tuple[str, ...]

    @property
    def lock(self) -> Path:
        return self.source / "requirements.lock"

    @property
    def overlays(self) -> Path:
        return self.source / "overlays"

    @property
    def image_dir(self) -> Path:
        return self.source / "image"


def boards(source: Path = SOURCE_DIR) -> list[str]:
    """Names of the boards defined in source/image/boards."""
    return sorted(p.stem for p in (source / "image" / "boards").glob("*.toml"))


def load(board: str, source: Path = SOURCE_DIR) -> Definition:
    """Read and validate the definition of board from the source tree."""
    if not (source / "image" / "debian.toml").is_file():
        raise CommandError(f"no image definitions: {datafiles.missing(source / 'image')}")
    known = boards(source)
    if board not in known:
        raise CommandError(f"unknown board {board!r} (known: {', '.join(known) or 'none'})")
    common_path = source / "image" / "debian.toml"
    board_path = source / "image" / "boards" / f"{board}.toml"
    common = _read(common_path)
    spec = _read(board_path)
    _keys(common, common_path, "", {"archive", "root", "squashfs", "python", "initramfs"})
    archive = _table(
        common, common_path, "archive", {"mirror", "security_mirror", "suite", "components", "arch"}
    )
    root = _table(common, common_path, "root", {"packages", "boot_packages", "prune", "modules"})
    python = _table(common, common_path, "python", {"site_packages", "version", "platforms"})
    initramfs = _table(common, common_path, "initramfs", {"modules"})
    squashfs = _table(common, common_path, "squashfs", {"options"})
    fields = {f.name for f in dataclasses.fields(Board)} - {"name"}
    _keys(spec, board_path, "", fields)
    missing = fields - set(spec)
    if missing:
        raise CommandError(f"{board_path}: missing {', '.join(sorted(missing))}")
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()}
    b = Board(name=board, **values)
    return Definition(
        source=source,
        archive=Archive(
            mirror=archive["mirror"],
            security_mirror=archive["security_mirror"],
            suite=archive["suite"],
            components=tuple(archive["components"]),
            arch=archive["arch"],
        ),
        board=b,
        packages=tuple(root["packages"]),
        boot_packages=tuple(root["boot_packages"]) + b.boot_packages,
        prune=tuple(root["prune"]),
        modules=tuple(root["modules"]),
        squashfs_options=tuple(squashfs["options"]),
        site_packages=python["site_packages"],
        python_version=python["version"],
        platforms=tuple(python["platforms"]),
        initramfs_modules=tuple(initramfs["modules"]) + b.initramfs_modules,
    )


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise CommandError(f"{path}: {exc}") from exc


def _keys(doc: dict[str, Any], path: Path, where: str, allowed: set[str]) -> None:
    for key in doc:
        if key not in allowed:
            raise CommandError(f"{path}: unknown key {where}{key}")


def _table(doc: dict[str, Any], path: Path, name: str, keys: set[str]) -> dict[str, Any]:
    table = doc.get(name)
    if not isinstance(table, dict):
        raise CommandError(f"{path}: missing table [{name}]")
    _keys(table, path, f"{name}.", keys)
    missing = keys - set(table)
    if missing:
        raise CommandError(f"{path}: [{name}] lacks {', '.join(sorted(missing))}")
    return table
