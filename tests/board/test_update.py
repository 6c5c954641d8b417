"""A/B updates on QEMU's Raspberry Pi 3 B (issue 13, phase 1: from a file on the box).

Every scenario boots a fresh copy of the session's image with a prepared /data (identity,
clock, bundles; updatekit) and drives `infraspectre update apply` on the console. The harness
plays the firmware: after the kernel's "Restarting system with command '0 tryboot'" it boots
what tryboot.txt names, otherwise what config.txt names; a power cut is a killed QEMU.

CI runs an update, a rollback, and one box cut during the slot write, right after the
switch and during the first boot of the new slot. `make soak` cuts a fresh box at each of
the updater's twelve checkpoints (UPDATE_SOAK=1).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from appliance.image import updatebundle
from appliance.qemu.fixtures import MirrorPort
from appliance.qemu.machine import Machine

from .conftest import EPOCH, UPDATE_KEY
from .updatekit import (
    boot_config,
    derive_image,
    make_pki,
    prepare_card,
    running,
    start_apply,
    wait_agent_ready,
    wait_paused,
    wait_trial_paused,
    wait_trial_reboot,
    wait_update_settled,
)

pytestmark = pytest.mark.timeout(2400)

B_BUILD = EPOCH + 1000
BOOT_TIMEOUT = 300.0


@pytest.fixture(scope="module")
def bundles(rpi_image: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """b.bundle: the session's system with a later build; broken-init.bundle: the same
    without /sbin/init (the trial kernel panics: switch_root has nothing to run)."""
    d = tmp_path_factory.mktemp("bundles")
    key = d / "update.key"
    from appliance.crypto.keys import write_signing_key

    write_signing_key(key, UPDATE_KEY)
    made = {}
    for name, build, remove in [
        ("b.bundle", B_BUILD, ()),
        ("broken-init.bundle", B_BUILD + 1, ("usr/sbin/init",)),
    ]:
        image = derive_image(rpi_image, d / f"{name}.img", build=build, remove=remove,
                             work=d / "work")  # fmt: skip
        updatebundle.make(image, key, d / name)
        image.unlink()
        made[name] = d / name
    return made


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def mirror() -> MirrorPort:
    port = MirrorPort()
    yield port  # type: ignore[misc]
    port.close()


@pytest.fixture
def box(  # type: ignore[no-untyped-def]
    boot_board, rpi_image: Path, bundles: dict[str, Path], pki: Path, mirror: MirrorPort,
    tmp_path: Path,
) -> Callable[..., Machine]:  # fmt: skip
    """Boot a prepared card (bundles on /data, optional pause checkpoint) on raspi3b."""

    def boot(*names: str, pause: str = "") -> Machine:
        card = prepare_card(rpi_image, tmp_path / "prepared.img",
                            bundles={n: bundles[n] for n in names}, pki=pki,
                            work=tmp_path / "prep", pause=pause)  # fmt: skip
        pi: Machine = boot_board(card, "raspi3b", mirror=mirror.mirror)
        assert running(pi) == ("a", EPOCH)
        return pi

    return boot


def _wal_pending(pi: Machine) -> int:
    """Records pending in the WAL, read with the agent stopped (it stays stopped)."""
    pi.run("pid=$(cat /run/appliance/agent.supervise); kill -TERM $pid; i=0; "
           "while kill -0 $pid 2>/dev/null && [ $i -lt 60 ]; do sleep 1; i=$((i+1)); done",
           timeout=120)  # fmt: skip
    report = pi.run("infraspectre wal inspect /data/wal --json 2>/dev/null", timeout=180)
    assert report.status == 0, report.output
    doc = json.loads(report.output.splitlines()[-1])
    assert doc["recovery"]["corrupt_records"] == 0
    return int(doc["stats"]["backlog_records"])


def test_update_from_a_file_runs_b_with_identity_settings_and_wal_intact(box) -> None:  # type: ignore[no-untyped-def]
    pi = box("b.bundle")
    wait_agent_ready(pi)
    keys = pi.run("sha256sum /data/keys/*").output
    settings = pi.run("cat /run/appliance/settings").output
    pending = _wal_pending(pi)
    assert pending > 0  # the agent sealed records (no bus: they wait in the WAL)
    mark = start_apply(pi, "b.bundle")
    wait_trial_reboot(pi, mark)
    pi.boot(BOOT_TIMEOUT)
    assert pi.boot_choices[-1] == ("tryboot.txt", "slot-b/")
    record = wait_update_settled(pi)
    assert record["state"] == "committed", record
    assert record["slots"]["b"]["status"] == "good"  # type: ignore[index]
    assert running(pi) == ("b", B_BUILD)
    assert pi.run("sha256sum /data/keys/*").output == keys
    assert pi.run("cat /run/appliance/settings").output == settings
    assert _wal_pending(pi) >= pending
    pi.power_cut()
    assert "os_prefix=slot-b/" in boot_config(pi.image)  # committed: the next boot is b


def test_a_bundle_whose_system_never_starts_rolls_back_to_a(box) -> None:  # type: ignore[no-untyped-def]
    pi = box("broken-init.bundle")
    mark = start_apply(pi, "broken-init.bundle")
    wait_trial_reboot(pi, mark)
    pi.power_on()
    pi.wait_off(BOOT_TIMEOUT)  # the trial kernel panics; the board resets (flag gone)
    assert "Kernel panic" in pi.console_log.read_text(errors="replace")
    pi.boot(BOOT_TIMEOUT)
    assert pi.boot_choices[-2:] == [("tryboot.txt", "slot-b/"), ("config.txt", "slot-a/")]
    record = wait_update_settled(pi)
    assert record["state"] == "rolled_back", record
    assert record["slots"]["b"]["status"] == "bad"  # type: ignore[index]
    assert "never reached its system" in record["last_result"]["reason"]  # type: ignore[index]
    assert running(pi) == ("a", EPOCH)


#: checkpoint -> (slot the box comes back on, update state it then settles in)
CUT_POINTS = {
    "verified": ("a", "writing"),
    "chunk-0-0": ("a", "writing"),
    "chunk-0-5": ("a", "writing"),
    "chunk-0-13": ("a", "writing"),
    "chunk-10-3": ("a", "writing"),
    "written": ("a", "written"),
    "tryboot-written": ("a", "written"),
    "switched": ("a", "rolled_back"),
    "trial-boot": ("a", "rolled_back"),
    "before-commit": ("a", "rolled_back"),
    "config-written": ("b", "committed"),
    "committed": ("b", "committed"),
}
#: points the trial boot reaches (the others are reached by `update apply` on slot a)
TRIAL_POINTS = {"trial-boot", "before-commit", "config-written", "committed"}
SOAK = bool(os.environ.get("UPDATE_SOAK"))


def _cut_at(pi: Machine, point: str, mark: int) -> None:
    """Wait for the updater to pause at point (on slot a, or in the trial boot), cut the
    power and boot again."""
    if point in TRIAL_POINTS:
        wait_trial_reboot(pi, mark)
        pi.power_on()
        wait_trial_paused(pi, point)
    else:
        wait_paused(pi, point, since=mark)
    pi.power_cut()
    pi.boot(BOOT_TIMEOUT)  # READY and a shell: a working system


def _settles(pi: Machine, point: str) -> dict[str, object]:
    slot, state = CUT_POINTS[point]
    record = wait_update_settled(pi)
    assert (running(pi)[0], record["state"]) == (slot, state), (point, record)
    return record


def test_power_cuts_during_the_write_after_the_switch_and_in_the_first_boot(box) -> None:  # type: ignore[no-untyped-def]
    # 1. during the slot write: back on a, and the same bundle resumes at its chunk
    pi = box("b.bundle", pause="chunk-0-5")
    _cut_at(pi, "chunk-0-5", start_apply(pi, "b.bundle"))
    record = _settles(pi, "chunk-0-5")
    assert record["progress"] == [0, 6], record
    # 2. right after the switch (tryboot.txt written, state trying, before the reboot)
    pi.run("echo switched > /data/update/pause")
    mark = start_apply(pi, "b.bundle")
    pi.console.wait_for("resuming the write", 600, since=mark)
    _cut_at(pi, "switched", mark)
    record = _settles(pi, "switched")
    assert "never reached its system" in record["last_result"]["reason"]  # type: ignore[index]
    # 3. during the first boot of the new slot (the trial): the reset brings back config.txt
    pi.run("echo trial-boot > /data/update/pause")
    _cut_at(pi, "trial-boot", start_apply(pi, "b.bundle"))
    assert pi.boot_choices[-2:] == [("tryboot.txt", "slot-b/"), ("config.txt", "slot-a/")]
    record = _settles(pi, "trial-boot")
    assert "was reset before it was healthy" in record["last_result"]["reason"]  # type: ignore[index]
    assert record["slots"]["b"]["status"] == "bad"  # type: ignore[index]


@pytest.mark.skipif(not SOAK, reason="the twelve-point campaign runs in `make soak`")
@pytest.mark.parametrize("point", tuple(CUT_POINTS))
def test_a_power_cut_during_an_update_comes_back_on_a_working_slot(box, point: str) -> None:  # type: ignore[no-untyped-def]
    pi = box("b.bundle", pause=point)
    _cut_at(pi, point, start_apply(pi, "b.bundle"))
    _, state = CUT_POINTS[point]
    _settles(pi, point)
    if state in ("writing", "written"):  # the same bundle resumes where the cut left it
        apply = "infraspectre update apply /data/bundles/b.bundle --no-reboot"
        log = pi.run(f"{apply} 2>&1", timeout=1200).output
        assert "resuming the write" in log and "state trying" in log, log
