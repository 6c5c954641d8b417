"""The real agent process capturing on a mirror lab, forwarding to a real bus."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from testsupport.agentproc import AgentProc, agent_proc

from appliance.devkit.capture.lab import MirrorLab


@pytest.fixture
def lab() -> Iterator[MirrorLab]:
    with MirrorLab("ag") as lab:
        yield lab


@pytest.fixture
def agent_factory(pki: Path, lab: MirrorLab, tmp_path: Path) -> Iterator[Any]:
    made: list[AgentProc] = []

    def make(bus_port: int, **agent_overrides: Any) -> AgentProc:
        # agents of one test share the WAL and data folder: a second one continues the first's
        proc = agent_proc(
            pki, lab, tmp_path, bus_port, config=tmp_path / f"agent-{len(made)}.yaml",
            **agent_overrides,
        )  # fmt: skip
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.close()
