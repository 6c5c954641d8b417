"""Fixtures for the WAL unit tests: the same contract runs over real files and the SimDisk."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from testsupport.wal_helpers import Disk, small_config

from appliance.wal import Wal


@pytest.fixture(params=["files", "sim"])
def disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Disk]:
    yield Disk(request.param, tmp_path / "wal")


@pytest.fixture
def opener(disk: Disk) -> Callable[..., Wal]:
    def _open(**kw: object) -> Wal:
        return disk.open(small_config(disk.path, **kw))  # type: ignore[arg-type]

    return _open
