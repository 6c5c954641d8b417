"""`bench wal --on-dir`: the counter is the block device holding the directory."""

import tempfile
from pathlib import Path

import pytest

from appliance.devkit.wal.bench import BlockDirCounter
from appliance.errors import CommandError


def test_a_directory_on_no_block_device_is_refused_with_its_name() -> None:
    # /dev/shm is a tmpfs: its device number names no block device in /sys/dev/block
    with (
        tempfile.TemporaryDirectory(dir="/dev/shm") as tmp,
        pytest.raises(CommandError, match=r"is not on a block device"),
    ):
        BlockDirCounter(Path(tmp) / "bench")
