"""The bus's pidfile and `bus reload`: signal the one bus of a data_dir, never a guess."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from appliance.bus.pidfile import PIDFILE, PidFile
from appliance.cli import main
from appliance.errors import CommandError


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("IS_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


@pytest.fixture
def kills(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    return sent


def test_reload_signals_the_bus_that_holds_the_pidfile(
    data_dir: Path, kills: list[tuple[int, int]], capsys: pytest.CaptureFixture[str]
) -> None:
    held = PidFile.acquire(data_dir / PIDFILE)
    try:
        assert main(["bus", "reload"]) == 0
    finally:
        held.release()
    assert kills == [(os.getpid(), signal.SIGHUP)]
    assert f"pid {os.getpid()}" in capsys.readouterr().out
    assert not (data_dir / PIDFILE).exists()


def test_reload_without_a_bus_is_one_line(
    data_dir: Path, kills: list[tuple[int, int]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bus", "reload"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is the bus running" in err and str(data_dir) in err
    assert kills == []


def test_reload_refuses_a_stale_pidfile(
    data_dir: Path, kills: list[tuple[int, int]], capsys: pytest.CaptureFixture[str]
) -> None:
    """A bus killed with -9 leaves its pidfile; its pid may now be anybody's."""
    data_dir.mkdir()
    (data_dir / PIDFILE).write_text(f"{os.getpid()}\n")
    assert main(["bus", "reload"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stale" in err
    assert kills == []


def test_a_second_bus_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    first = PidFile.acquire(tmp_path / PIDFILE)
    try:
        with pytest.raises(CommandError, match=rf"another bus \(pid {os.getpid()}\)"):
            PidFile.acquire(tmp_path / PIDFILE)
    finally:
        first.release()
    PidFile.acquire(tmp_path / PIDFILE).release()  # free again once the first let go


def test_a_stale_pidfile_is_taken_over_by_a_new_bus(tmp_path: Path) -> None:
    (tmp_path / PIDFILE).write_text("999999999\n")
    held = PidFile.acquire(tmp_path / PIDFILE)
    assert (tmp_path / PIDFILE).read_text() == f"{os.getpid()}\n"
    held.release()
