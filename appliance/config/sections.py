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


@dataclass
class CertFiles:
    """Where a component finds its TLS credentials: file names relative to cert_dir unless
    absolute. Each component subclasses it with its own defaults."""

    cert_dir: Path = Path("certs")
    ca: str = "ca.crt"
    cert: str = "server.crt"
    key: str = "server.key"

    def path(self, name: str) -> Path:
        """name resolved against cert_dir."""
        p = Path(name)
        return p if p.is_absolute() else self.cert_dir / p
