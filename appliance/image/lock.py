"""requirements.lock as data: the one set of Python versions the host and the device run."""

from __future__ import annotations

import re
from pathlib import Path


def normalise(name: str) -> str:
    """A distribution name as PEP 503 compares them (PyNaCl == pynacl, typing_extensions ==
    typing-extensions)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read(path: Path) -> dict[str, str]:
    """{normalised name: version} of every `name==version` pin (comments ignored)."""
    pins = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[normalise(name)] = version.strip()
    return pins
