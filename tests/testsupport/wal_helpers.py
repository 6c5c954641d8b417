"""Helpers shared by the WAL unit tests (imported by file name: tests are not a package)."""

from __future__ import annotations

from pathlib import Path

from appliance.devkit.wal.simdisk import SimDisk
from appliance.wal import Storage, Wal, WalConfig
from appliance.wal.storage import FileStorage

SEG = 64 * 1024


def small_config(path: Path, segments: int = 8, **kw: object) -> WalConfig:
    """A WAL of `segments` 64 KiB segments (fast to fill in a unit test)."""
    cfg = WalConfig(path=path, segment_bytes=SEG, max_wal_bytes=8192 + segments * SEG)
    for key, value in kw.items():
        setattr(cfg, key, value)
    cfg.validate()
    return cfg


class Disk:
    """Opens WALs on one storage (a directory or a SimDisk) and reopens them after a crash."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind = kind
        self.path = path
        self.sim = SimDisk() if kind == "sim" else None

    def storage(self) -> Storage:
        return self.sim if self.sim is not None else FileStorage(self.path)

    def open(self, cfg: WalConfig) -> Wal:
        return Wal.open(cfg, storage=self.storage(), background=False)
