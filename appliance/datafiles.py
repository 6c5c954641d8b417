"""Where the host-side data of the image builder and the board harness is: the folders image/,
overlays/ and qemu/boards/ and the file requirements.lock, laid out as at the top of the source
tree. One explicit lookup, in this order:

1. `$INFRASPECTRE_DATA`, when set: a folder laid out like the source tree's top (a checkout);
2. `appliance/_data/` inside the installed package, through importlib.resources: a wheel
   carries the data there (setup.py's build_py copies it in);
3. the source checkout the package is imported from (a checkout or an editable install).

The lookup never fails by itself (the card carries none of this data and must still start);
whoever reads a file that is not there says so and names INFRASPECTRE_DATA.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

#: The environment variable naming the data folder explicitly.
DATA_ENV = "INFRASPECTRE_DATA"
#: What setup.py copies into a wheel's appliance/_data/, relative to the source tree's top.
SHIPPED = ("image", "overlays", "qemu/boards", "requirements.lock")
#: The package folder of the copy inside a wheel.
PACKAGED = "_data"


def root(environ: Mapping[str, str] = os.environ) -> Path:
    """The data folder, by the rules in the module docstring (not checked for content)."""
    explicit = environ.get(DATA_ENV)
    if explicit:
        return Path(explicit)
    packaged = Path(str(resources.files("appliance") / PACKAGED))
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[1]


def missing(what: Path) -> str:
    """The end of an error message for a data file or folder that is not there."""
    return (
        f"{what} does not exist: set {DATA_ENV} to a source checkout of infraspectre-edge "
        "(the folder holding image/, overlays/, qemu/boards/ and requirements.lock)"
    )
