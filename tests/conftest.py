"""Test tiers by folder: tests/unit (pure, no root), tests/system (root), tests/board (QEMU).

The marker of each test comes from its folder, so `pytest -m unit` selects a tier. System and
board tests need root; run as another user they fail with that reason instead of being skipped,
so a green run can never hide an untested feature.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TIERS = ("unit", "system", "board")
ROOT = Path(__file__).parent
sys.path.insert(0, str(ROOT))  # makes tests/testsupport importable in importlib mode


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        rel = Path(str(item.fspath)).relative_to(ROOT)
        tier = rel.parts[0]
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if (
        item.get_closest_marker("system") or item.get_closest_marker("board")
    ) and os.geteuid() != 0:
        pytest.fail("this tier needs root (network namespaces, loop devices, QEMU): run as root")
