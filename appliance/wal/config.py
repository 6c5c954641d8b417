"""The `wal` configuration section (owned here, built strictly by appliance.config)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from appliance.config import build_section
from appliance.wal.format import CURSOR_FILE_BYTES, PAGE

#: Environment variables that override `wal` keys (the seed's name).
ENV_NAMES = {"IS_WAL_PATH": "path"}

#: Where the WAL lives on the device's data partition (the host default is ./data/wal).
DEVICE_PATH = Path("/data/wal")


@dataclass
class WalConfig:
    """Tuning of the write-ahead log; every default is safe for a Raspberry Pi's SD card.

    flush_interval_ms is the loss window on power failure *and* the wear control: at low rates
    each flush writes one 4 KiB page, so a longer interval writes less. cursor_* bound how many
    acked records may be delivered again after a crash (the bus deduplicates them).
    """

    path: Path = Path("data/wal")
    segment_bytes: int = 4 * 1024 * 1024
    max_wal_bytes: int = 64 * 1024 * 1024
    flush_interval_ms: int = 1000
    flush_bytes: int = 1024 * 1024
    cursor_every_acks: int = 10000
    cursor_interval_ms: int = 1000
    full_policy: Literal["drop_oldest", "refuse"] = "drop_oldest"
    compaction_min_gain: float = 1.0
    preallocate: bool = False

    def validate(self) -> None:
        """Raise ValueError('key: reason') for a value the WAL cannot run with."""
        if self.segment_bytes < 4 * PAGE or self.segment_bytes % PAGE:
            raise ValueError(
                f"segment_bytes: {self.segment_bytes} must be a multiple of {PAGE} "
                f"and at least {4 * PAGE}"
            )
        if self.max_wal_bytes < CURSOR_FILE_BYTES + 2 * self.segment_bytes:
            raise ValueError(
                f"max_wal_bytes: {self.max_wal_bytes} must hold the cursor "
                f"({CURSOR_FILE_BYTES} B) and at least two segments of {self.segment_bytes} B"
            )
        if self.flush_interval_ms <= 0:
            raise ValueError(f"flush_interval_ms: {self.flush_interval_ms} must be positive")
        if self.flush_bytes < PAGE:
            raise ValueError(f"flush_bytes: {self.flush_bytes} must be at least {PAGE}")
        if self.cursor_every_acks <= 0:
            raise ValueError(f"cursor_every_acks: {self.cursor_every_acks} must be positive")
        if self.cursor_interval_ms <= 0:
            raise ValueError(f"cursor_interval_ms: {self.cursor_interval_ms} must be positive")
        if self.compaction_min_gain <= 0:
            raise ValueError(f"compaction_min_gain: {self.compaction_min_gain} must be > 0")

    @property
    def max_segments(self) -> int:
        """How many segment files fit in the bound next to the cursor file."""
        return (self.max_wal_bytes - CURSOR_FILE_BYTES) // self.segment_bytes


def load_wal_config(document: Mapping[str, Any], env: Mapping[str, str] | None = None) -> WalConfig:
    """The `wal` section of a loaded config document, with IS_WAL_PATH applied."""
    return build_section(
        WalConfig,
        document.get("wal"),
        "wal",
        env=os.environ if env is None else env,
        env_names=ENV_NAMES,
    )
