"""The bounded, flash-friendly write-ahead log (see appliance.wal.format for the disk format).

Public surface: `Wal` (append / read / ack / flush / close / stats, recovery on open),
`WalConfig` (the `wal` config section), the `Storage` protocol with `FileStorage` (real files)
and, for tests, `SimDisk`. How the package is cut is in the docstring of appliance.wal.log.
"""

from appliance.wal.config import WalConfig, load_wal_config
from appliance.wal.errors import WalFull, WalLocked, WalUnavailable
from appliance.wal.index import Record
from appliance.wal.log import Wal
from appliance.wal.recovery import RecoveryReport, RecoveryState
from appliance.wal.stats import WalStats
from appliance.wal.storage import FileStorage, Storage, StorageFile

__all__ = [
    "FileStorage",
    "Record",
    "RecoveryReport",
    "RecoveryState",
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
