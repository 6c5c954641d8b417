"""Emulated-board definitions: qemu/boards/NAME.toml in the data folder (appliance.datafiles).

Each file gives QEMU's machine arguments and where the card, the console and the two NICs go:

    machine          arguments selecting the machine, CPU, memory, vCPUs
    dtb              the device tree file on the card's boot partition ("" = QEMU makes one)
    serial_before    -serial arguments before the console's (raspi3b: the PL011 is not it)
    console          the guest's console device for the kernel command line
    disk             arguments attaching the card; {image} is replaced by its path
    uplink, mirror   -device arguments of the NICs using netdevs `up` and `mirror`
    uplink_interface, mirror_interface   the names the guest gives those NICs
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

from appliance import datafiles
from appliance.errors import CommandError

#: qemu/boards in the data folder (appliance.datafiles: $INFRASPECTRE_DATA, a wheel's packaged
#: copy, or the source checkout).
BOARDS_DIR = datafiles.root() / "qemu" / "boards"


@dataclasses.dataclass(frozen=True)
class BoardSpec:
    """How to emulate one board."""

    name: str
    description: str
    machine: tuple[str, ...]
    dtb: str
    serial_before: tuple[str, ...]
    console: str
    disk: tuple[str, ...]
    uplink: tuple[str, ...]
    uplink_interface: str
    mirror: tuple[str, ...]
    mirror_interface: str


def names(directory: Path = BOARDS_DIR) -> list[str]:
    """The boards defined in directory."""
    return sorted(p.stem for p in directory.glob("*.toml"))


def load(name: str, directory: Path = BOARDS_DIR) -> BoardSpec:
    """Read qemu/boards/NAME.toml strictly (unknown or missing keys are errors)."""
    path = directory / f"{name}.toml"
    if not directory.is_dir():
        raise CommandError(f"no board definitions: {datafiles.missing(directory)}")
    if not path.is_file():
        raise CommandError(f"unknown board {name!r} (known: {', '.join(names(directory))})")
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise CommandError(f"{path}: {exc}") from exc
    fields = {f.name for f in dataclasses.fields(BoardSpec)} - {"name"}
    unknown = set(doc) - fields
    missing = fields - set(doc)
    if unknown or missing:
        what = f"unknown key {sorted(unknown)[0]}" if unknown else f"missing {sorted(missing)[0]}"
        raise CommandError(f"{path}: {what}")
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in doc.items()}
    return BoardSpec(name=name, **values)
