"""Sections shared by several components (each component's own section lives with it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: Environment overrides of the `storage` section.
STORAGE_ENV = {"IS_DATA_DIR": "data_dir"}


@dataclass
class StorageConfig:
    """The `storage` section: where this machine keeps its state (the bus's store, the agent's
    keys and chain state). On the device it is the f2fs data partition, /data."""

    data_dir: Path = Path("data")
