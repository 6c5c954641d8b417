"""What the update board tests share: derived images and bundles, prepared cards, and the
steps of an update driven on the console.

A "B" system is the session's image with a changed root: its squashfs unpacked, its
/etc/appliance/release given a later build (and, for the failure cases, something broken),
packed again the way `image build` packs a root (appliance.image.sdcard.make_root) and put
in a copy of the image's slot a, from which `image bundle` makes the signed bundle. The card a
test boots is the session's image with /data prepared on the host (sload.f2fs, as the build
makes it): an identity (so the agent runs and the trial can be healthy), the clock, the
bundles a technician would have copied, and optionally the checkpoint to pause at.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

from appliance.bus.server import BusServer
from appliance.devkit.qemu.fixtures import sparse_copy
from appliance.image import definition, firstboot, sdcard, settings, updatebundle
from appliance.pki import init_pki, issue_agent
from appliance.qemu.console import CommandResult
from appliance.qemu.machine import GUESTFWD_ADDR, Machine

AGENT_ID = "branch-042"
#: where the prepared cards hold the bundles (on /data)
BUNDLES = "/data/bundles"
#: health timeout given to `update apply` in the tests (the device's default is 300 s): the
#: trial's agent starts, imports and delivers once within it, on a host other boots load
HEALTH_TIMEOUT = 900
BOOT_TIMEOUT = 300.0


def derive_image(
    image: Path,
    out: Path,
    *,
    build: int,
    remove: tuple[str, ...] = (),
    work: Path,
    level: int | None = None,
) -> Path:
    """A copy of image whose slot a holds a root with release build `build`, without the paths
    in remove. The root is packed as `image build` packs one (sdcard.make_root with the rpi
    definition's options, the build time as its epoch), so a derived B differs from A as a
    next release would: a bundle of it shares A's unchanged chunks (delta downloads). level:
    another compression level, faster where the test is not about what the download shares
    (then every chunk differs from A's)."""
    work.mkdir(parents=True, exist_ok=True)
    squash, tree = work / "root.squashfs", work / "tree"
    updatebundle.extract_root(image, "a", squash)
    if tree.exists():
        shutil.rmtree(tree)
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(tree), str(squash)], check=True)
    release = tree / "etc/appliance/release"
    doc = json.loads(release.read_text())
    release.write_text(json.dumps({**doc, "build": build}, sort_keys=True) + "\n")
    for path in remove:
        (tree / path).unlink()
    new = work / "new.squashfs"
    options = list(definition.load("rpi").squashfs_options)
    if level is not None:
        options[options.index("-Xcompression-level") + 1] = str(level)
    sdcard.make_root(tree, new, build, options)
    shutil.rmtree(tree)
    sparse_copy(image, out)
    start, size = firstboot.mbr_partition(out, 2)
    assert new.stat().st_size <= size
    sdcard.copy_into(new, out, start)
    return out


def prepare_card(
    image: Path,
    out: Path,
    *,
    bundles: dict[str, Path],
    pki: Path,
    work: Path,
    pause: str = "",
    bus: str = "",
) -> Path:
    """A copy of image configured as branch AGENT_ID (delivering to bus, when given) whose
    /data holds its identity, the clock (now: inside its certificate's validity), the bundles
    and the checkpoint to pause at."""
    sparse_copy(image, out)
    settings.configure(out, {"agent_id": AGENT_ID, **({"bus": bus} if bus else {})}, [])
    tree = work / "data-tree"
    if tree.exists():
        shutil.rmtree(tree)
    keys = tree / "keys"
    keys.mkdir(parents=True)
    keys.chmod(0o700)
    agent = pki / "agents" / AGENT_ID
    for name in ("client.crt", "client.key", "ed25519.key"):
        shutil.copy2(agent / name, keys / name)
    shutil.copy2(pki / "ca.crt", keys / "ca.crt")
    (tree / "clock").write_text(f"{int(time.time())}\n")
    (tree / "bundles").mkdir()
    for name, path in bundles.items():
        shutil.copyfile(path, tree / "bundles" / name)
    if pause:
        (tree / "update").mkdir()
        (tree / "update/pause").write_text(pause + "\n")
    start, size = firstboot.mbr_partition(out, 4)
    data = work / "data.f2fs"
    sdcard.make_data(tree, size, data, int(time.time()))
    sdcard.copy_into(data, out, start)
    shutil.rmtree(tree)
    data.unlink()
    return out


def make_pki(directory: Path) -> Path:
    """The org PKI with AGENT_ID issued; the bus certificate names the address the guest
    dials."""
    init_pki(directory, [GUESTFWD_ADDR])
    issue_agent(directory, AGENT_ID)
    return directory


def boot_config(card: Path) -> str:
    """config.txt on the card's boot partition (read with mtools, as the harness does)."""
    spec = f"{card}@@{settings.boot_partition_offset(card)}"
    return subprocess.run(
        ["mtype", "-i", spec, "::/config.txt"], capture_output=True, text=True, check=True
    ).stdout


def running(pi: Machine) -> tuple[str, int]:
    """(slot, release build) of the running system."""
    slot = pi.run("sed -n 's/.*appliance\\.slot=\\([ab]\\).*/\\1/p' /proc/cmdline").output
    build = json.loads(pi.run("cat /etc/appliance/release").output)["build"]
    return slot.strip(), int(build)


def wait_agent_ready(pi: Machine, timeout: float = 900) -> None:
    """Until the agent answers 200 on /ready (its imports are slow on the emulated Pi). Asked
    with busybox wget, which fails on a 503: a Python per try would cost a minute each on a
    loaded host and starve the agent it waits for."""
    probe = "wget -q -O /dev/null http://127.0.0.1:9100/ready"
    result = pi.run(
        f"i=0; until {probe} 2>/dev/null; do i=$((i+2)); [ $i -gt {int(timeout)} ] && break;"
        " sleep 2; done; echo waited=$i",
        timeout=timeout + 300,  # the loop's own bound ends it first
    )
    waited = int(result.output.rsplit("waited=", 1)[1])
    assert waited <= timeout, (
        f"the agent was not ready in {timeout:.0f} s: {pi.run('tail /run/log/agent.log').output}"
    )


def start_apply(pi: Machine, bundle: str, *options: str) -> int:
    """Type `update apply` on the console (it ends in a reboot or a pause); console mark."""
    mark = pi.console.mark()
    pi.console.send(
        f"infraspectre update apply {BUNDLES}/{bundle} --health-timeout {HEALTH_TIMEOUT} "
        + " ".join(options)
    )
    return mark


def wait_paused(pi: Machine, checkpoint: str, since: int = 0, timeout: float = 900) -> None:
    """Until `update apply`, typed on the console, says it paused at checkpoint."""
    pi.console.wait_for(f"UPDATE-PAUSED {checkpoint}", timeout, since=since)


def wait_trial_paused(pi: Machine, checkpoint: str, timeout: float = 900) -> None:
    """On the trial boot (the shell up): until `update boot`, which rcS started in the
    background, says in its log that it paused at checkpoint."""
    pi.wait_ready(BOOT_TIMEOUT)
    log = "/run/log/update.log"
    result = pi.run(
        f"i=0; until grep -q 'UPDATE-PAUSED {checkpoint}' {log} 2>/dev/null || "
        f"[ $i -ge {int(timeout / 2)} ]; do sleep 2; i=$((i+1)); done; cat {log}",
        timeout=2 * timeout,  # the loop's own bound ends it first, with the log
    )
    assert f"UPDATE-PAUSED {checkpoint}" in result.output, result.output


def wait_trial_reboot(pi: Machine, since: int, timeout: float = 900) -> None:
    """Until the kernel restarts with the tryboot command, then the reset."""
    pi.console.wait_for(
        re.compile(r"Restarting system with command '0 tryboot'"), timeout, since=since
    )
    pi.wait_off(timeout=60)


def update_report(bus: BusServer) -> dict[str, object]:
    """The bus's latest update report from AGENT_ID (what `bus agents` shows); {} before one."""
    rows = [r for r in bus.updates.reports() if r.agent_id == AGENT_ID]
    return rows[0].as_json() if rows else {}


def wait_update_report(bus: BusServer, timeout: float, **want: object) -> dict[str, object]:
    """Until the bus's report from AGENT_ID has the wanted values; the report."""
    deadline = time.monotonic() + timeout
    rep: dict[str, object] = {}
    while time.monotonic() < deadline:
        rep = update_report(bus)
        if all(rep.get(k) == v for k, v in want.items()):
            return rep
        time.sleep(2)
    raise AssertionError(f"the bus's report {rep} never had {want}")


def wait_update_settled(pi: Machine, timeout: float = 1200) -> dict[str, object]:
    """Until the update state is neither trying nor in progress; the record."""
    result: CommandResult = pi.run(
        'i=0; while grep -q \'"state": "trying"\' /data/update/state.json && '
        f"[ $i -lt {int(timeout)} ]; do sleep 1; i=$((i+1)); done; cat /data/update/state.json",
        timeout=timeout + 60,
    )
    doc: dict[str, object] = json.loads(result.output)
    return doc
