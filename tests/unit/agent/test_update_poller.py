"""The update poller against a bus in memory and a device in a folder: resume by offset,
refusals reported and not retried, nothing asked while a trial runs, room kept on /data."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey
from testsupport.update_rig import make_bundle, make_device, root_of

from appliance.agent.config import AgentUpdate
from appliance.agent.updates import UpdatePoller
from appliance.errors import CommandError
from appliance.update.state import State
from appliance.wire import pb

KEY = SigningKey(bytes(range(60, 92)))


class MemoryBus:
    """Check and Fetch over one stored bundle; records what it was told and asked."""

    def __init__(self, bundle: Path | None, version: str = "0.2.0", build: int = 2000) -> None:
        self.data = bundle.read_bytes() if bundle else b""
        self.sha = hashlib.sha256(self.data).hexdigest()
        self.version, self.build = version, build
        self.reports: list[Any] = []
        self.fetched: list[tuple[int, int]] = []
        self.fail_at: int | None = None

    def check(self, status: Any) -> Any:
        self.reports.append(status)
        if not self.data:
            return pb.UpdateOffer()
        return pb.UpdateOffer(version=self.version, build=self.build, bundle=self.sha,
                              size=len(self.data), max_chunk=32768)  # fmt: skip

    def fetch(self, sha: str, offset: int, length: int) -> Any:
        if self.fail_at is not None and offset >= self.fail_at:
            self.fail_at = None
            raise OSError("the power went")
        self.fetched.append((offset, length))
        piece = self.data[offset : offset + length]
        return pb.UpdateChunk(offset=offset, data=piece, eof=offset + len(piece) >= len(self.data))

    def close(self) -> None:
        pass


def _poller(tmp_path: Path, bus: MemoryBus) -> UpdatePoller:
    cfg = AgentUpdate(device_root=tmp_path / "device", rate_bytes_s=0, chunk_bytes=65536)
    return UpdatePoller(cfg, bus, tmp_path / "data")  # type: ignore[arg-type]


@pytest.fixture
def device(tmp_path: Path) -> Any:
    return make_device(tmp_path / "device", KEY)


def test_nothing_offered_reports_and_does_nothing(tmp_path: Path, device: Any) -> None:
    bus = MemoryBus(None)
    assert _poller(tmp_path, bus).check_once() == "idle"
    rep = bus.reports[-1]
    assert (rep.version, rep.build, rep.board, rep.slot, rep.state) == (
        "0.1.0", 1000, "rpi", "a", "idle",
    )  # fmt: skip


def test_a_cut_download_resumes_at_the_files_length(tmp_path: Path, device: Any) -> None:
    b = make_bundle(tmp_path, KEY)
    bus = MemoryBus(b)
    bus.fail_at = 3 * 32768
    with pytest.raises(OSError):
        _poller(tmp_path, bus).check_once()
    bus.fetched.clear()
    assert _poller(tmp_path, bus).check_once() == "applied"
    assert bus.fetched[0] == (3 * 32768, 32768)  # from where the file ended, in served chunks
    root = root_of(b)
    assert device.slot_bytes("b")[: len(root)] == root
    assert device.reboot_requested() == "tryboot"
    assert bus.reports[-1].state == "trying"
    assert not list((tmp_path / "data/update-download").glob("*.part"))


def test_while_a_trial_runs_nothing_is_downloaded(tmp_path: Path, device: Any) -> None:
    bus = MemoryBus(make_bundle(tmp_path, KEY))
    _poller(tmp_path, bus).check_once()
    bus.fetched.clear()
    assert _poller(tmp_path, bus).check_once() == "skipped"
    assert bus.fetched == []


def test_a_refused_bundle_is_reported_at_once_and_not_fetched_again(
    tmp_path: Path, device: Any
) -> None:
    bus = MemoryBus(make_bundle(tmp_path, KEY, version="0.0.9", build=900), "0.0.9", 900)
    poller = _poller(tmp_path, bus)
    assert poller.check_once() == "refused"
    last = bus.reports[-1]
    assert last.last_result == "refused" and "older than the running 0.1.0" in last.last_reason
    assert last.state == State.IDLE.value and last.download == ""
    bus.fetched.clear()
    assert poller.check_once() == "skipped" and bus.fetched == []
    assert "os_prefix=slot-a/" in device.boot_text("config.txt")


def test_a_bundle_that_would_fill_data_is_refused(tmp_path: Path, device: Any) -> None:
    bus = MemoryBus(make_bundle(tmp_path, KEY))
    poller = _poller(tmp_path, bus)
    offer = bus.check(poller.status())
    offer.size = 1 << 50
    with pytest.raises(CommandError, match="no room for the"):
        poller.download(offer)
