"""BusServer's lifecycle without a network: construction opens nothing, moves follow the table."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.bus.config import load_bus_settings
from appliance.bus.server import LIFECYCLE, BusServer, ServerEvent, ServerState
from appliance.fsm import IllegalTransition


def test_every_state_stops_and_only_a_new_server_starts() -> None:
    assert all(LIFECYCLE[(s, ServerEvent.STOP)] is ServerState.STOPPED for s in ServerState)
    assert [s for s in ServerState if (s, ServerEvent.START) in LIFECYCLE] == [ServerState.NEW]


def test_constructing_a_bus_opens_nothing_and_a_stopped_one_never_starts(tmp_path: Path) -> None:
    env = {"IS_DATA_DIR": str(tmp_path / "data"), "IS_CERT_DIR": str(tmp_path / "pki")}
    bus = BusServer(load_bus_settings(None, env=env))
    assert bus.state is ServerState.NEW and bus.ready is False
    bus.stop()
    bus.wait()  # returns at once: there is nothing to wait for
    assert bus.state is ServerState.STOPPED
    with pytest.raises(IllegalTransition, match="bus server: no transition from STOPPED on START"):
        bus.start()
    assert list(tmp_path.iterdir()) == []  # no store, no folder: nothing was bound or opened
