"""BusServer's explicit lifecycle over loopback: start once, serve, stop; the context manager."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from appliance.bus.server import BusServer, ServerState
from appliance.config import StorageConfig
from appliance.fsm import IllegalTransition


def test_a_bus_starts_once_and_as_a_context_manager_stops_on_leaving(
    bus_factory: Any, tmp_path: Path
) -> None:
    first: BusServer = bus_factory()
    with pytest.raises(IllegalTransition, match="bus server: no transition from SERVING on START"):
        first.start()
    assert first.state is ServerState.SERVING and first.ready
    first.stop()
    assert first.state is ServerState.STOPPED
    with pytest.raises(IllegalTransition):
        first.start()
    again = tmp_path / "again"
    settings = dataclasses.replace(first.settings, storage=StorageConfig(data_dir=again))
    with BusServer(settings) as bus:
        assert bus.state is ServerState.SERVING and bus.port > 0
        assert (again / settings.eventbus.db_name).exists()
    assert bus.state is ServerState.STOPPED and not bus.ready
