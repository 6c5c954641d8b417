"""The bounded, flash-friendly write-ahead log (see appliance.wal.format for the disk format).

Public surface: `Wal` (append / read / ack / flush / close / stats, recovery on open),
`WalConfig` (the `wal` config section), `EnvelopeQueue` (the seed's store/drain/mark_sent),
the `Storage` protocol with `FileStorage` (real files) and, for tests, `SimDisk`.
"""

from appliance.wal.config import WalConfig, load_wal_config
from appliance.wal.log import (
    Record,
    RecoveryReport,
    RecoveryState,
    Wal,
    WalFull,
    WalLocked,
    WalStats,
    WalUnavailable,
)
from appliance.wal.queue import EnvelopeQueue, Storable
from appliance.wal.storage import FileStorage, Storage, StorageFile

__all__ = [
    "EnvelopeQueue",
    "FileStorage",
    "Record",
    "RecoveryReport",
    "RecoveryState",
    "Storable",
    "Storage",
    "StorageFile",
    "Wal",
    "WalConfig",
    "WalFull",
    "WalLocked",
    "WalStats",
    "WalUnavailable",
    "load_wal_config",
]
