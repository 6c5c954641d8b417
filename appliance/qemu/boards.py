"""Emulated-board definitions: qemu/boards/NAME.toml in the data folder (appliance.datafiles).

Each file gives QEMU's machine arguments and where the card, the console and the two NICs go:

    machine          arguments selecting the machine, CPU, memory, vCPUs
    dtb              the device tree file on the card's boot partition ("" = QEMU makes one)
    serial_before    -serial arguments before the console's (raspi3b: the PL011 is not it)
    console          the guest's console device for the kernel command line
    disk             arguments attaching the card; {image} is replaced by its path
    uplink, mirror   -device arguments of the NICs using netdevs `up` and `mirror`
    uplink_interface, mirror_interface   the names the guest gives those NICs

Optional keys, for boards the card's files do not boot unchanged under emulation:

    qemu             "system" (the machine's qemu-system-aarch64, the default) or "qemu10"
                     (the pinned QEMU 10 the harness fetches into the cache: appliance.qemu.qemu10)
    dtb_disable      device-tree nodes set status = "disabled" in a copy of the card's DTB
                     (devices QEMU does not model, whose probes panic or hang the kernel)
    dtb_delete       "NODE PROPERTY" pairs removed from that copy
    cmdline_extra    kernel arguments added under emulation only

The card's own files are never changed: a real Pi boots exactly what was built.
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
    qemu: str = "system"
    dtb_disable: tuple[str, ...] = ()
    dtb_delete: tuple[str, ...] = ()
    cmdline_extra: tuple[str, ...] = ()

    @property
    def dtb_fixups(self) -> bool:
        """Whether the card's DTB needs an emulation-only copy."""
        return bool(self.dtb_disable or self.dtb_delete)


#: Keys a board file may leave out (the dataclass defaults apply).
OPTIONAL = frozenset({"qemu", "dtb_disable", "dtb_delete", "cmdline_extra"})
QEMUS = ("system", "qemu10")


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
    missing = fields - OPTIONAL - set(doc)
    if unknown or missing:
        what = f"unknown key {sorted(unknown)[0]}" if unknown else f"missing {sorted(missing)[0]}"
        raise CommandError(f"{path}: {what}")
    if doc.get("qemu", "system") not in QEMUS:
        raise CommandError(f"{path}: qemu must be one of {', '.join(QEMUS)}")
    for pair in doc.get("dtb_delete", []):
        if len(str(pair).split()) != 2:
            raise CommandError(f"{path}: dtb_delete entry {pair!r} is not 'NODE PROPERTY'")
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in doc.items()}
    return BoardSpec(name=name, **values)
