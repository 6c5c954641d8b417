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
        self.path = bundle
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


# -- delta: only what the running slot lacks ------------------------------------------------


def _seed_running_slot(device: Any, b: Path, changed_chunk: int = 3) -> None:
    """Slot a (running) holds b's root with one byte changed in changed_chunk, and b's kernel."""
    from testsupport.update_rig import CHUNK

    root = bytearray(root_of(b))
    root[changed_chunk * CHUNK + 1] ^= 0x01
    with device.path("/dev/mmcblk0p2").open("r+b") as fh:
        fh.write(bytes(root))
    src = b.parent / f"src-{b.name}"
    device.path("/boot/firmware/slot-a/vmlinuz").write_bytes((src / "vmlinuz").read_bytes())


def _pieces_of(manifest: Any, index: int, n: int, piece: int = 32768) -> set[int]:
    from appliance.update import delta

    c = next(c for c in delta.chunks(manifest) if (c.index, c.n) == (index, n))
    return {off for off, _ in delta.ranges((c,), piece)}


def _read_manifest(b: Path) -> Any:
    from appliance.update import bundle

    with b.open("rb") as fh:
        return bundle.read_manifest(fh, [KEY.verify_key])


def test_only_what_the_running_slot_lacks_is_fetched(tmp_path: Path, device: Any) -> None:
    b = make_bundle(tmp_path, KEY)
    _seed_running_slot(device, b)
    bus = MemoryBus(b)
    poller = _poller(tmp_path, bus)
    assert poller.check_once() == "applied"
    manifest = _read_manifest(b)
    names = [f.name for f in manifest.files]
    want = (
        {0}  # the head: header, manifest, signature
        | _pieces_of(manifest, 0, 3)  # the changed root chunk
        | _pieces_of(manifest, names.index("cmdline.txt"), 0)  # a template, never on the slot
        | _pieces_of(manifest, names.index("initrd.img"), 0)  # not on the running slot
    )
    assert {off for off, _ in bus.fetched} == want
    assert len(bus.fetched) == len(want)  # each piece once
    assert sum(n for _, n in bus.fetched) < len(bus.data) // 2
    assert bus.reports[-1].fetched == sum(n for _, n in bus.fetched)  # reported to the bus
    # the system the update reboots into (a new agent) still reports what the download took
    assert _poller(tmp_path, bus).check_once() == "skipped"  # a trial is running
    assert bus.reports[-1].fetched == sum(n for _, n in bus.fetched)
    root = root_of(b)
    assert device.slot_bytes("b")[: len(root)] == root  # the rest came from slot a
    assert device.reboot_requested() == "tryboot"


def _cut_in_the_changed_chunk(tmp_path: Path, device: Any) -> tuple[Any, MemoryBus, list[int]]:
    """A delta download cut by the power after the changed root chunk's first piece."""
    b = make_bundle(tmp_path, KEY)
    _seed_running_slot(device, b)
    manifest = _read_manifest(b)
    changed = sorted(_pieces_of(manifest, 0, 3))
    bus = MemoryBus(b)
    bus.fail_at = changed[1]
    with pytest.raises(OSError):
        _poller(tmp_path, bus).check_once()
    return manifest, bus, changed


def test_a_cut_delta_download_resumes_without_fetching_again_what_is_on_disk(
    tmp_path: Path, device: Any
) -> None:
    _, bus, changed = _cut_in_the_changed_chunk(tmp_path, device)
    part = tmp_path / "data/update-download" / f"{bus.sha}.part"
    assert part.stat().st_size == len(bus.data)  # full length from the start, holes elsewhere
    first = list(bus.fetched)
    assert first[:2] == [(0, 32768), (changed[0], 32768)]
    bus.fetched.clear()
    assert _poller(tmp_path, bus).check_once() == "applied"
    again = {off for off, _ in bus.fetched}
    assert not again & {off for off, _ in first}  # neither the head nor the first piece again
    assert set(changed[1:]) <= again
    root = root_of(Path(str(bus.path)))
    assert device.slot_bytes("b")[: len(root)] == root


def test_a_torn_piece_is_fetched_again(tmp_path: Path, device: Any) -> None:
    """A piece the cut left written but wrong (no hole, bad bytes) is fetched once more."""
    manifest, bus, changed = _cut_in_the_changed_chunk(tmp_path, device)
    part = tmp_path / "data/update-download" / f"{bus.sha}.part"
    with part.open("r+b") as fh:  # torn: the piece's blocks are there, its bytes are not
        fh.seek(manifest.offset(0, 3) + 100)
        fh.write(b"\0" * 1000)
    bus.fetched.clear()
    assert _poller(tmp_path, bus).check_once() == "applied"
    assert (changed[0], 32768) in bus.fetched


def test_a_tampered_chunk_from_the_bus_is_refused_with_its_reason(
    tmp_path: Path, device: Any
) -> None:
    b = make_bundle(tmp_path, KEY)
    _seed_running_slot(device, b)
    manifest = _read_manifest(b)
    bus = MemoryBus(b)
    data = bytearray(bus.data)
    data[manifest.offset(0, 3) + 40] ^= 0xFF
    bus.data = bytes(data)
    assert _poller(tmp_path, bus).check_once() == "refused"
    assert "hash mismatch in root, chunk 3" in bus.reports[-1].last_reason
    assert "os_prefix=slot-a/" in device.boot_text("config.txt")
    assert device.reboot_requested() == ""


def test_a_head_that_does_not_verify_is_refused_by_the_updater(tmp_path: Path, device: Any) -> None:
    b = make_bundle(tmp_path, SigningKey(bytes(range(1, 33))))  # a key the box does not trust
    bus = MemoryBus(b)
    assert _poller(tmp_path, bus).check_once() == "refused"
    assert "bad signature" in bus.reports[-1].last_reason
    assert bus.fetched == [(0, 32768)]  # the head alone: no payload for an untrusted bundle


def test_the_download_pauses_at_its_checkpoint_after_the_first_piece(
    tmp_path: Path, device: Any
) -> None:
    from appliance.agent.updates import device_paths
    from appliance.update.device import Updater

    class Paused(Exception):
        pass

    def sleep(seconds: float) -> None:
        raise Paused

    b = make_bundle(tmp_path, KEY)
    bus = MemoryBus(b)
    device.path("/data/update/pause").write_text("download-1\n")
    cfg = AgentUpdate(device_root=tmp_path / "device", rate_bytes_s=0, chunk_bytes=65536)
    from appliance.agent.updates import FolderSystem

    paths = device_paths(cfg.device_root)
    updater = Updater(paths, FolderSystem(paths), log=lambda line: None, sleep=sleep)
    poller = UpdatePoller(cfg, bus, tmp_path / "data", updater=updater)  # type: ignore[arg-type]
    with pytest.raises(Paused):
        poller.check_once()
    assert bus.fetched == [(0, 32768)]
    assert not device.path("/data/update/pause").exists()  # one shot
    assert _poller(tmp_path, bus).check_once() == "applied"
