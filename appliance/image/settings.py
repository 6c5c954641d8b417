"""First-boot settings on the card's boot partition: `infraspectre.txt`, as Raspberry Pi
Imager leaves Wi-Fi and SSH settings there, readable and editable on any computer.

Format: UTF-8 text, one `key=value` per line, `#` comments. The device's rcS reads it at every
boot (after it, `infraspectre.KEY=VALUE` kernel arguments win). Keys:

    agent_id   the device's agent identity and hostname   [A-Za-z0-9][A-Za-z0-9._-]{0,62}
    bus        the EventBus address, HOST:PORT            host name, IPv4 or [IPv6]
    uplink     the uplink interface (default eth0)        a Linux interface name
    mirror     the mirror-port interfaces                 interface names, comma-separated

Values are validated here so that the device can read the file with its shell safely; the
device additionally ignores any line that is not `key=value` with a plain value.

The boot partition is FAT: it is read and written with mtools at its offset in the image or
on the card, never mounted. Only a card of ours is touched (appliance.image.sdcard's
`boot_partition_offset` checks the MBR disk id and the FAT label first).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from appliance.errors import CommandError
from appliance.image.sdcard import boot_partition_offset

FILENAME = "infraspectre.txt"

_IFNAME = r"[A-Za-z0-9_.-]{1,15}"
_HOST = r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])"
PATTERNS = {
    "agent_id": re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}"),
    "bus": re.compile(rf"{_HOST}:(?:[1-9][0-9]{{0,4}})"),
    "uplink": re.compile(_IFNAME),
    "mirror": re.compile(rf"{_IFNAME}(?:,{_IFNAME})*"),
}
HEADER = (
    "# InfraSpectre Edge first-boot settings, read by the device at every boot.\n"
    "# Written by `infraspectre image configure`; keys: agent_id, bus, uplink, mirror.\n"
)


def validate(key: str, value: str) -> str:
    """value if it is a valid setting for key; a CommandError naming the key otherwise."""
    pattern = PATTERNS.get(key)
    if pattern is None:
        raise CommandError(f"unknown setting {key!r} (known: {', '.join(PATTERNS)})")
    if not pattern.fullmatch(value):
        raise CommandError(f"{key}: {value!r} is not valid")
    if key == "bus" and int(value.rsplit(":", 1)[1]) > 65535:
        raise CommandError(f"bus: port of {value!r} is out of range")
    return value


def parse(text: str) -> dict[str, str]:
    """The settings in a file's text (unknown keys are kept out, invalid values refused)."""
    found = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise CommandError(f"{FILENAME}:{number}: expected key=value")
        found[key.strip()] = validate(key.strip(), value.strip())
    return found


def render(values: Mapping[str, str]) -> str:
    """The file's text for values, keys in a fixed order."""
    return HEADER + "".join(f"{k}={values[k]}\n" for k in PATTERNS if k in values)


def _mtools(card: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    return subprocess.run(
        [*args[:1], "-i", f"{card}@@{boot_partition_offset(card)}", *args[1:]],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )


def read(card: Path) -> dict[str, str]:
    """The settings on card (empty when it has none)."""
    proc = _mtools(card, ["mtype", f"::{FILENAME}"])
    if proc.returncode != 0:
        return {}
    return parse(proc.stdout)


def write(card: Path, values: Mapping[str, str]) -> None:
    """Replace the settings file on card's boot partition with values."""
    for key, value in values.items():
        validate(key, value)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / FILENAME
        local.write_text(render(values))
        proc = _mtools(card, ["mcopy", "-o", str(local), f"::{FILENAME}"])
    if proc.returncode != 0:
        raise CommandError(f"cannot write {FILENAME} on {card}: {proc.stderr.strip()}")


def configure(card: Path, updates: Mapping[str, str], unset: list[str]) -> dict[str, str]:
    """Merge updates into the card's settings, drop the unset keys, write; the result."""
    values = read(card)
    for key in unset:
        if key not in PATTERNS:
            raise CommandError(f"unknown setting {key!r} (known: {', '.join(PATTERNS)})")
        values.pop(key, None)
    for key, value in updates.items():
        values[key] = validate(key, value)
    write(card, values)
    return values
