"""The device side against plain files: apply, refusals, resume, trial, commit, rollback."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from appliance.errors import CommandError
from appliance.update import bundle
from appliance.update.state import State

from .conftest import KEY, OTHER_KEY, Box, PowerCut, make_bundle


def _applied(box: Box, tmp_path: Path) -> Path:
    path = make_bundle(tmp_path)
    box.updater().apply(path)
    return path


def test_apply_writes_the_inactive_slot_and_asks_for_a_trial_boot(box: Box, tmp_path: Path) -> None:
    _applied(box, tmp_path)
    rec = box.updater().store.load()
    assert rec.state is State.TRYING and (rec.target, rec.previous) == ("b", "a")
    src = tmp_path / "src-b.bundle"
    root = (src / "root.img").read_bytes()
    assert box.slot_bytes("b")[: len(root)] == root
    assert box.slot_bytes("a") == bytes(len(box.slot_bytes("a")))  # the running slot untouched
    assert (box.paths.boot_dir / "slot-b/vmlinuz").read_bytes() == (src / "vmlinuz").read_bytes()
    cmdline = box.boot_text("slot-b/cmdline.txt")
    assert "root=PARTUUID=5ec7e0a1-03" in cmdline and "appliance.slot=b" in cmdline
    assert "os_prefix=slot-b/" in box.boot_text("tryboot.txt")
    assert "os_prefix=slot-a/" in box.boot_text("config.txt")  # nothing committed yet
    assert box.system.reboots == [True]
    assert box.system.remounts[-1] is False  # the boot partition is left read-only


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("signature", "bad signature"),
        ("payload", "hash mismatch in root, chunk 2"),
        ("truncate", "truncated"),
        ("downgrade", "is older than the running 0.1.0"),
        ("same", "is the running version"),
        ("board", "it is for board pi9"),
    ],
)
def test_a_refused_bundle_switches_nothing_and_leaves_a_one_line_reason(
    box: Box, tmp_path: Path, damage: str, reason: str
) -> None:
    kwargs: dict[str, object] = {
        "signature": {"key": OTHER_KEY},
        "downgrade": {"version": "0.0.9"},
        "same": {"version": "0.1.0", "build": 1000},
        "board": {"board": "pi9"},
    }.get(damage, {})
    path = make_bundle(tmp_path, **kwargs)  # type: ignore[arg-type]
    if damage == "payload":
        with path.open("rb") as fh:
            at = bundle.read_manifest(fh, [KEY.verify_key]).offset(0, 2) + 10
        data = bytearray(path.read_bytes())
        data[at] ^= 0xFF
        path.write_bytes(bytes(data))
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CommandError) as info:
        box.updater().apply(path)
    assert reason in str(info.value) and "\n" not in str(info.value)
    rec = box.updater().store.load()
    assert rec.state is State.IDLE
    assert rec.last_result["result"] == "refused" and reason in rec.last_result["reason"]
    assert not (box.paths.boot_dir / "tryboot.txt").exists()
    assert "os_prefix=slot-a/" in box.boot_text("config.txt")
    assert box.system.reboots == []


def test_allow_downgrade_installs_an_older_version(box: Box, tmp_path: Path) -> None:
    path = make_bundle(tmp_path, version="0.0.9")
    box.updater().apply(path, allow_downgrade=True)
    assert box.updater().store.load().state is State.TRYING


def test_a_power_cut_during_the_write_resumes_at_the_recorded_chunk(
    box: Box, tmp_path: Path
) -> None:
    path = make_bundle(tmp_path)
    box.paths.pause.write_text("chunk-0-3\n")
    with pytest.raises(PowerCut):
        box.updater().apply(path)
    rec = box.updater().store.load()
    assert (rec.state, rec.progress) == (State.WRITING, (0, 4))
    box.lines.clear()
    box.updater().apply(path)
    assert any("resuming the write" in line and "chunk 4" in line for line in box.lines)
    root = (tmp_path / "src-b.bundle/root.img").read_bytes()
    assert box.slot_bytes("b")[: len(root)] == root
    assert box.updater().store.load().state is State.TRYING


def test_a_different_bundle_after_a_cut_starts_the_slot_over(box: Box, tmp_path: Path) -> None:
    box.paths.pause.write_text("chunk-0-3\n")
    with pytest.raises(PowerCut):
        box.updater().apply(make_bundle(tmp_path))
    box.lines.clear()
    box.updater().apply(make_bundle(tmp_path, build=3000, name="c.bundle"))
    assert not any("resuming" in line for line in box.lines)


def _trial(box: Box, tmp_path: Path) -> None:
    _applied(box, tmp_path)
    box.boot_on("b")  # the firmware read tryboot.txt


def test_a_healthy_trial_is_committed_by_rewriting_config_in_place(
    box: Box, tmp_path: Path
) -> None:
    _trial(box, tmp_path)
    before = box.boot_text("config.txt")
    rec = box.updater().on_boot()
    assert rec.state is State.COMMITTED and rec.slots["b"]["status"] == "good"
    after = box.boot_text("config.txt")
    assert len(after) == len(before) and after == before.replace("slot-a/", "slot-b/")
    assert rec.last_result["result"] == "committed"
    assert box.system.reboots == [True]  # the trial's reboot only


def test_a_trial_that_never_gets_healthy_is_marked_bad_and_rolled_back(
    box: Box, tmp_path: Path
) -> None:
    _trial(box, tmp_path)
    box.system.missing = ["agent not running"]
    rec = box.updater().on_boot()
    assert rec.state is State.ROLLED_BACK and rec.slots["b"]["status"] == "bad"
    assert "not healthy after 300 s: agent not running" in rec.last_result["reason"]
    assert "os_prefix=slot-a/" in box.boot_text("config.txt")
    assert box.system.reboots == [True, False]  # back to config.txt: slot a
    assert box.clock[0] >= 300


def test_health_that_comes_late_but_in_time_commits(box: Box, tmp_path: Path) -> None:
    _trial(box, tmp_path)
    box.system.missing = ["system not READY"]
    updater = box.updater()
    real = updater.sleep

    def sleep(seconds: float) -> None:
        real(seconds)
        if box.clock[0] >= 20:
            box.system.missing = []

    updater.sleep = sleep
    assert updater.on_boot().state is State.COMMITTED


@pytest.mark.parametrize(
    ("trial_boots", "reason"),
    [(0, "never reached its system"), (1, "was reset before it was healthy")],
)
def test_coming_back_on_the_old_slot_during_a_trial_is_a_rollback(
    box: Box, tmp_path: Path, trial_boots: int, reason: str
) -> None:
    _trial(box, tmp_path)
    if trial_boots:
        box.paths.pause.write_text("trial-boot\n")
        with pytest.raises(PowerCut):  # the power is cut during the trial boot
            box.updater().on_boot()
    box.boot_on("a")  # the tryboot flag is gone: config.txt, slot a
    rec = box.updater().on_boot()
    assert rec.state is State.ROLLED_BACK and reason in rec.last_result["reason"]
    assert rec.slots["b"]["status"] == "bad"
    assert box.system.reboots == [True]  # already on the old slot: no reboot


def test_a_power_cut_during_the_commit_comes_back_and_commits(box: Box, tmp_path: Path) -> None:
    _trial(box, tmp_path)
    box.paths.pause.write_text("config-written\n")
    with pytest.raises(PowerCut):
        box.updater().on_boot()
    # config.txt already names b: the next plain boot runs b, still trying, and commits
    assert "os_prefix=slot-b/" in box.boot_text("config.txt")
    assert box.updater().on_boot().state is State.COMMITTED


def test_a_failed_health_after_a_cut_commit_puts_config_back_to_the_old_slot(
    box: Box, tmp_path: Path
) -> None:
    _trial(box, tmp_path)
    box.paths.pause.write_text("config-written\n")
    with pytest.raises(PowerCut):
        box.updater().on_boot()
    box.system.missing = ["agent not ready"]
    assert box.updater().on_boot().state is State.ROLLED_BACK
    assert "os_prefix=slot-a/" in box.boot_text("config.txt")


def test_no_update_starts_while_a_trial_runs(box: Box, tmp_path: Path) -> None:
    _applied(box, tmp_path)
    with pytest.raises(CommandError, match="slot b is being tried"):
        box.updater().apply(make_bundle(tmp_path, build=3000, name="c.bundle"))


def test_the_next_update_goes_to_the_slot_not_running(box: Box, tmp_path: Path) -> None:
    _trial(box, tmp_path)
    box.updater().on_boot()
    box.system.reboots.clear()
    path = make_bundle(tmp_path, version="0.3.0", name="c.bundle")
    rec = box.updater().apply(path)
    assert (rec.target, rec.previous) == ("a", "b")
    root = (tmp_path / "src-c.bundle/root.img").read_bytes()
    assert (
        hashlib.sha256(box.slot_bytes("a")[: len(root)]).digest() == hashlib.sha256(root).digest()
    )
    assert "os_prefix=slot-a/" in box.boot_text("tryboot.txt")


def test_every_new_boot_set_name_is_made_durable_before_a_chunk_of_it_is_recorded(
    box: Box, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On vfat a long file name spans directory entries that fsync of the file does not
    write: after a power cut the recorded progress named chunks of a DTB the boot partition no
    longer listed, and the resumed write failed. Each new name's folder is fsynced first."""
    from appliance.update import device as device_module

    events: list[tuple[str, str]] = []
    real_fsync_dir = device_module.fsync_dir

    def fsync_dir(folder: Path) -> None:
        events.append(("fsync-dir", str(folder)))
        real_fsync_dir(folder)

    monkeypatch.setattr(device_module, "fsync_dir", fsync_dir)
    updater = box.updater()
    real_save = updater.store.save

    def save(rec: object) -> None:
        events.append(("save", _progress(rec)))
        real_save(rec)  # type: ignore[arg-type]

    monkeypatch.setattr(updater.store, "save", save)
    path = make_bundle(tmp_path)
    updater.apply(path)
    with path.open("rb") as fh:
        manifest = bundle.read_manifest(fh, [KEY.verify_key])
    folder = str(box.paths.boot_dir / "slot-b")
    checked = 0
    for index, entry in enumerate(manifest.files):
        if entry.target != "boot" or not entry.chunks:
            continue
        # between the record that names the file's first chunk as next and the record of
        # that chunk written, the file is created: its folder must be fsynced in between
        start = events.index(("save", f"{index}-0"))
        written = next(i for i in range(start + 1, len(events)) if events[i][0] == "save")
        assert ("fsync-dir", folder) in events[start:written], (entry.name, events)
        checked += 1
    assert checked >= 2, manifest.files  # the bundle has boot files to check


def _progress(rec: object) -> str:
    progress = getattr(rec, "progress", None) or (0, 0)
    return f"{progress[0]}-{progress[1]}"
