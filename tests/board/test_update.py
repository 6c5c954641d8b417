"""A/B updates on QEMU's Raspberry Pi 3 B (issue 13: from a file on the box).

Every scenario boots a fresh copy of the session's image with a prepared /data (identity,
clock, bundles; updatekit), configured to deliver to a real bus on the host (mTLS gRPC through
the uplink's guestfwd), and drives `infraspectre update apply` on the console. The harness
plays the firmware: after the kernel's "Restarting system with command '0 tryboot'" it boots
what tryboot.txt names, otherwise what config.txt names; a power cut is a killed QEMU.

CI runs two boxes. The first is refused four bad bundles (nothing switches), then tries a
bundle without /sbin/init and rolls back by itself. The second takes the update A -> B through
one power cut at a checkpoint of the updater drawn with a printed seed (UPDATE_CUT_SEED=N
repeats a draw), then carries the update to its commit; after the cut it delivers again, and at
the end it runs B with its identity and settings, the bus holding every record it
acknowledged. `make soak` (UPDATE_SOAK=1) cuts a fresh box at each of the twelve checkpoints,
and runs the chain of three cuts on one box (one drawn from each phase: during the slot write,
the same bundle then resumes; between the switch and the commit, back on A, rolled back; during
the commit, on B, committed) with the chain's records checked end to end.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from testsupport.bus_rows import stored_rows

from appliance import __version__
from appliance.bus.config import BusSettings, EventBusConfig, TlsConfig
from appliance.bus.server import BusServer
from appliance.config import StorageConfig
from appliance.crypto.keys import write_signing_key
from appliance.devkit.qemu.fixtures import MirrorPort
from appliance.image import updatebundle
from appliance.qemu.machine import GUESTFWD_ADDR, Machine
from appliance.update import bundle as bundle_format

from .conftest import EPOCH, UPDATE_KEY
from .updatekit import (
    AGENT_ID,
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
    wait_update_report,
    wait_update_settled,
)

pytestmark = pytest.mark.timeout(3600)

B_BUILD = EPOCH + 1000
#: the third release of the soak's walk, applied on B
C_BUILD = EPOCH + 3000
BOOT_TIMEOUT = 300.0
#: the refusals the first box is shown: bundle -> the reason its one error line gives
REFUSALS = {
    "bad-signature.bundle": "bundle refused: bad signature",
    "wrong-hash.bundle": "bundle refused: hash mismatch in root, chunk 1",
    "truncated.bundle": "bundle refused: truncated",
    "downgrade.bundle": "is older than the running",
}


def _small_bundle(d: Path, name: str, build: int) -> Path:
    """A genuine signed bundle with a 6 MiB root (two chunks): what the refusals need."""
    root, cmdline = d / f"{name}.root", d / f"{name}.cmdline"
    root.write_bytes(random.Random(build).randbytes(6 << 20))
    cmdline.write_text("console=ttyS1,115200 root=@ROOT@ appliance.slot=@SLOT@\n")
    out = d / name
    bundle_format.write(out, version=__version__, build=build, board="rpi", root=root,
                        boot={bundle_format.CMDLINE: cmdline}, key=UPDATE_KEY)  # fmt: skip
    root.unlink()
    cmdline.unlink()
    return out


def _damage(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def _system_bundle(rpi_image: Path, out: Path, build: int, remove: tuple[str, ...] = ()) -> Path:
    """A signed bundle of the session's system with another build (without the paths in
    remove), packed at a fast level: these bundles test the update from a file, not what a
    delta shares."""
    key = out.parent / "update.key"
    if not key.exists():
        write_signing_key(key, UPDATE_KEY)
    image = derive_image(rpi_image, out.with_suffix(".img"), build=build, remove=remove,
                         work=out.parent / "work", level=3)  # fmt: skip
    updatebundle.make(image, key, out)
    image.unlink()
    return out


@pytest.fixture(scope="module")
def bundles(rpi_image: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """b.bundle: the session's system with a later build; broken-init.bundle: the same
    without /sbin/init (the trial kernel panics: switch_root has nothing to run); and the
    four refused ones, small: a flipped signature byte, a flipped byte in the root's second
    chunk, one cut short, and an older build of the running version."""
    d = tmp_path_factory.mktemp("bundles")
    made = {
        "b.bundle": _system_bundle(rpi_image, d / "b.bundle", B_BUILD),
        "broken-init.bundle": _system_bundle(
            rpi_image, d / "broken-init.bundle", B_BUILD + 1, remove=("usr/sbin/init",)
        ),
    }
    for name in REFUSALS:
        build = EPOCH - 1 if name == "downgrade.bundle" else B_BUILD + 2
        made[name] = path = _small_bundle(d, name, build)
        with path.open("rb") as fh:
            manifest = bundle_format.read_manifest(fh, [UPDATE_KEY.verify_key])
        if name == "bad-signature.bundle":
            _damage(path, manifest.payload_offset - 1)
        elif name == "wrong-hash.bundle":
            _damage(path, manifest.offset(0, 1) + 100)
        elif name == "truncated.bundle":
            path.write_bytes(path.read_bytes()[: manifest.offset(0, 1)])
    return made


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def host_bus(pki: Path, tmp_path: Path) -> Iterator[BusServer]:
    """The bus a box delivers to (and whose acknowledgement its trial's health waits for):
    one per box, since every box starts the same agent's chain at 1."""
    cfg = EventBusConfig(host="127.0.0.1", port=0, metrics_port=-1, health_port=-1)
    cfg.tls = TlsConfig(cert_dir=pki)
    cfg.validate()
    data = tmp_path / "bus-data"
    data.mkdir()
    with BusServer(BusSettings(eventbus=cfg, storage=StorageConfig(data_dir=data))) as bus:
        yield bus


@pytest.fixture
def mirror() -> MirrorPort:
    port = MirrorPort()
    yield port  # type: ignore[misc]
    port.close()


@pytest.fixture
def box(  # type: ignore[no-untyped-def]
    boot_board, rpi_image: Path, bundles: dict[str, Path], pki: Path, mirror: MirrorPort,
    host_bus: BusServer, tmp_path: Path,
) -> Callable[..., Machine]:  # fmt: skip
    """Boot a prepared card (the named bundles and those in more on /data, optional pause
    checkpoint) on raspi3b, delivering to host_bus."""

    def boot(*names: str, pause: str = "", more: dict[str, Path] | None = None) -> Machine:
        card = prepare_card(rpi_image, tmp_path / "prepared.img",
                            bundles={**{n: bundles[n] for n in names}, **(more or {})}, pki=pki,
                            work=tmp_path / "prep", pause=pause,
                            bus=f"{GUESTFWD_ADDR}:50051")  # fmt: skip
        pi: Machine = boot_board(card, "raspi3b", mirror=mirror.mirror,
                                 uplink_port=host_bus.port)  # fmt: skip
        assert running(pi) == ("a", EPOCH)
        return pi

    return boot


def _delivers_again(
    bus: BusServer, before: list[dict[str, object]], what: str
) -> list[dict[str, object]]:
    """Until the box delivered records beyond before (the agent is running again); every
    record acknowledged before is still stored, no sequence number twice."""
    rows = stored_rows(bus, AGENT_ID, timeout=420, more_than=len(before), poll_s=2)
    assert len(rows) > len(before), f"{what}: the box delivered nothing more"
    keys = {(r["seq"], r["idem_key"]) for r in rows}
    assert {(r["seq"], r["idem_key"]) for r in before} <= keys, what
    seqs = [int(str(r["seq"])) for r in rows]
    assert len(set(seqs)) == len(seqs), f"{what}: a sequence number was used twice"
    return rows


def test_bad_bundles_are_refused_then_a_system_that_never_starts_rolls_back(  # type: ignore[no-untyped-def]
    box, host_bus: BusServer
) -> None:
    """One box (a boot costs minutes): four bad bundles refused with one line each and nothing
    switched; then a signed bundle whose system has no init: the trial kernel panics, the
    board resets, the firmware boots A again, the updater records the rollback and the agent
    reports it to the bus."""
    pi = box(*REFUSALS, "broken-init.bundle")
    # one console command for the four (each start of Python costs minutes on a loaded host)
    result = pi.run(
        f"for n in {' '.join(REFUSALS)}; do "
        "infraspectre update apply /data/bundles/$n --no-reboot 2>&1; echo rc=$?; done",
        timeout=2400,
    )
    outputs = [o.strip() for o in result.output.split("rc=")]
    assert len(outputs) == len(REFUSALS) + 1, result.output
    for (name, reason), out, rc in zip(REFUSALS.items(), outputs, outputs[1:], strict=False):
        lines = [line for line in out.splitlines() if line.strip()]
        lines = lines[1:] if lines and lines[0].isdigit() else lines  # the previous status
        assert rc.split()[0] == "1", (name, result.output)
        assert len(lines) == 1 and lines[0].startswith("infraspectre: "), (name, result.output)
        assert reason in lines[0], (name, lines[0])
    status = json.loads(pi.run("infraspectre update status", timeout=1200).output)
    assert status["state"] == "idle", status
    assert status["committed_slot"] == "a", status
    results = status["history"][-len(REFUSALS) :]
    assert [r["result"] for r in results] == ["refused"] * len(REFUSALS), status
    for (name, reason), entry in zip(REFUSALS.items(), results, strict=True):
        assert reason in entry["reason"], (name, entry)
    assert pi.run("ls /boot/firmware/tryboot.txt 2>/dev/null; true").output == ""
    pi.power_cut()
    assert "os_prefix=slot-a/" in boot_config(pi.image)
    pi.boot(BOOT_TIMEOUT)
    assert running(pi) == ("a", EPOCH)
    _rolls_back_from_a_system_that_never_starts(pi)
    # the failure reaches the bus: the agent back on A reports it at its first check
    rep = wait_update_report(host_bus, 900, last_result="rolled_back")
    assert (rep["slot"], rep["build"], rep["state"]) == ("a", EPOCH, "rolled_back"), rep
    assert rep["last_version"] == __version__, rep
    assert "never reached its system" in str(rep["last_reason"]), rep


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
#: the CI draw: one point of each phase
PHASES = (
    tuple(p for p, (_, state) in CUT_POINTS.items() if state in ("writing", "written")),
    tuple(p for p, (_, state) in CUT_POINTS.items() if state == "rolled_back"),
    tuple(p for p, (_, state) in CUT_POINTS.items() if state == "committed"),
)
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


@pytest.fixture
def cut_draw(request: pytest.FixtureRequest) -> tuple[str, str, str]:
    """One checkpoint of each phase, from UPDATE_CUT_SEED or a fresh seed, printed."""
    seed = int(os.environ.get("UPDATE_CUT_SEED") or random.SystemRandom().randrange(10**6))
    rng = random.Random(seed)
    draw = tuple(rng.choice(phase) for phase in PHASES)
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        print(f"\npower cuts: UPDATE_CUT_SEED={seed} draws {', '.join(draw)}", flush=True)
    return draw  # type: ignore[return-value]


@pytest.mark.skipif(not SOAK, reason="the three-cut chain runs in `make soak`")
def test_update_a_to_b_through_power_cuts_in_the_write_the_trial_and_the_commit(  # type: ignore[no-untyped-def]
    box, host_bus: BusServer, cut_draw: tuple[str, str, str]
) -> None:
    written, rolled, committed = cut_draw
    pi = box("b.bundle", pause=written)
    wait_agent_ready(pi)
    delivered = _delivers_again(host_bus, [], "before the update")
    keys = pi.run("sha256sum /data/keys/*").output
    settings = pi.run("cat /run/appliance/settings").output
    # 1. during the slot write (or just after it): back on a; the same bundle resumes
    _cut_at(pi, written, start_apply(pi, "b.bundle"))
    record = _settles(pi, written)
    assert record["slots"]["b"]["status"] in ("writing", "written"), record  # type: ignore[index]
    delivered = _delivers_again(host_bus, delivered, f"after the cut at {written}")
    # 2. between the switch and the commit: back on a, rolled back, b marked bad
    pi.run(f"echo {rolled} > /data/update/pause")
    mark = start_apply(pi, "b.bundle")
    pi.console.wait_for("resuming the write", 600, since=mark)
    _cut_at(pi, rolled, mark)
    if rolled in TRIAL_POINTS:
        assert pi.boot_choices[-2:] == [("tryboot.txt", "slot-b/"), ("config.txt", "slot-a/")]
    record = _settles(pi, rolled)
    assert record["slots"]["b"]["status"] == "bad", record  # type: ignore[index]
    reason = record["last_result"]["reason"]  # type: ignore[index]
    assert ("never reached its system" if rolled == "switched"
            else "was reset before it was healthy") in reason, record  # fmt: skip
    delivered = _delivers_again(host_bus, delivered, f"after the cut at {rolled}")
    # 3. during the commit: the trial proved healthy (a delivery acknowledged); on b
    pi.run(f"echo {committed} > /data/update/pause")
    _cut_at(pi, committed, start_apply(pi, "b.bundle"))
    assert pi.boot_choices[-2:] == [("tryboot.txt", "slot-b/"), ("config.txt", "slot-b/")]
    record = _settles(pi, committed)
    assert record["slots"]["b"]["status"] == "good", record  # type: ignore[index]
    assert running(pi) == ("b", B_BUILD)
    assert pi.run("sha256sum /data/keys/*").output == keys
    assert pi.run("cat /run/appliance/settings").output == settings
    rows = _delivers_again(host_bus, delivered, "on b")
    assert max(int(str(r["seq"])) for r in rows) > max(int(str(r["seq"])) for r in delivered)
    # one chain all along: started once, never re-keyed (cuts may leave restarts and gaps)
    with sqlite3.connect(f"file:{host_bus.store.path}?mode=ro", uri=True) as conn:
        kinds = [k for (k,) in conn.execute(
            "SELECT kind FROM chain_events WHERE agent_id = ?", (AGENT_ID,))]  # fmt: skip
    assert kinds.count("start") == 1 and "rekey" not in kinds, kinds
    pi.power_cut()
    assert "os_prefix=slot-b/" in boot_config(pi.image)  # committed: the next boot is b


def _rolls_back_from_a_system_that_never_starts(pi: Machine) -> None:
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


@pytest.fixture
def one_cut(request: pytest.FixtureRequest) -> str:
    """CI's sample of the twelve-point campaign: one checkpoint, from UPDATE_CUT_SEED or a
    fresh seed, printed."""
    seed = int(os.environ.get("UPDATE_CUT_SEED") or random.SystemRandom().randrange(10**6))
    point = random.Random(seed).choice(tuple(CUT_POINTS))
    capman = request.config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        print(f"\npower cut: UPDATE_CUT_SEED={seed} draws {point}", flush=True)
    return point


def test_update_a_to_b_through_a_power_cut_at_a_drawn_point(  # type: ignore[no-untyped-def]
    box, host_bus: BusServer, one_cut: str
) -> None:
    """A power cut at one of the updater's twelve checkpoints (seeded draw), then the update
    carried to its end: the box comes back on a working slot, delivers again, and the same
    bundle (resumed, or applied again after a rollback) ends committed on b with identity,
    settings and every acknowledged record intact."""
    pi = box("b.bundle", pause=one_cut)
    wait_agent_ready(pi)
    delivered = _delivers_again(host_bus, [], "before the update")
    keys = pi.run("sha256sum /data/keys/*").output
    settings = pi.run("cat /run/appliance/settings").output
    _cut_at(pi, one_cut, start_apply(pi, "b.bundle"))
    record = _settles(pi, one_cut)
    delivered = _delivers_again(host_bus, delivered, f"after the cut at {one_cut}")
    if record["state"] != "committed":
        mark = start_apply(pi, "b.bundle")
        wait_trial_reboot(pi, mark)
        pi.boot(BOOT_TIMEOUT)
        record = wait_update_settled(pi)
    assert record["state"] == "committed", record
    assert running(pi) == ("b", B_BUILD)
    assert pi.run("sha256sum /data/keys/*").output == keys
    assert pi.run("cat /run/appliance/settings").output == settings
    _delivers_again(host_bus, delivered, "on b")
    pi.power_cut()
    assert "os_prefix=slot-b/" in boot_config(pi.image)


@pytest.mark.skipif(not SOAK, reason="the twelve-point campaign runs in `make soak`")
@pytest.mark.parametrize("point", tuple(CUT_POINTS))
def test_a_power_cut_during_an_update_comes_back_on_a_working_slot(  # type: ignore[no-untyped-def]
    box, host_bus: BusServer, point: str
) -> None:
    pi = box("b.bundle", pause=point)
    wait_agent_ready(pi)
    delivered = _delivers_again(host_bus, [], f"before the cut at {point}")
    _cut_at(pi, point, start_apply(pi, "b.bundle"))
    _, state = CUT_POINTS[point]
    _settles(pi, point)
    _delivers_again(host_bus, delivered, f"after the cut at {point}")
    if state in ("writing", "written"):  # the same bundle resumes where the cut left it
        apply = "infraspectre update apply /data/bundles/b.bundle --no-reboot"
        log = pi.run(f"{apply} 2>&1", timeout=1200).output
        assert "resuming the write" in log and "state trying" in log, log


@pytest.fixture(scope="module")
def c_bundle(rpi_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A third release (for the walk's last cut, taken on B)."""
    return _system_bundle(rpi_image, tmp_path_factory.mktemp("c") / "c.bundle", C_BUILD)


@pytest.mark.skipif(not SOAK, reason="the twelve-cut walk runs in `make soak`")
def test_one_box_through_a_power_cut_at_each_of_the_twelve_checkpoints(  # type: ignore[no-untyped-def]
    box, host_bus: BusServer, c_bundle: Path
) -> None:
    """The twelve checkpoints on one box, one cut each, in the order an update reaches them:
    the write's (each time the same bundle resumes where the cut left it), the switch's and the
    trial's (each time back on A, rolled back; the bundle is applied again), the commit's (on
    B); the last cut, at `committed`, is taken during a second update, B -> C, into slot a.
    After every cut the box runs the slot the checkpoint promises, in the state it promises,
    and delivers again with every acknowledged record still stored; at the end it runs C with
    its identity and settings, one record chain all along."""
    pi = box("b.bundle", more={"c.bundle": c_bundle})
    wait_agent_ready(pi)
    delivered = _delivers_again(host_bus, [], "before the first cut")
    keys = pi.run("sha256sum /data/keys/*").output
    settings = pi.run("cat /run/appliance/settings").output
    old, new, name = "a", "b", "b.bundle"
    started = time.monotonic()
    for point, (back_on, state) in CUT_POINTS.items():
        if point == "committed":  # B is committed: the last cut comes in B -> C
            assert running(pi) == ("b", B_BUILD)
            old, new, name = "b", "a", "c.bundle"
        # (the first apply makes /data/update)
        pause = pi.run(f"mkdir -p /data/update && echo {point} > /data/update/pause && "
                       "cat /data/update/pause").output  # fmt: skip
        assert pause.strip() == point, pause
        _cut_at(pi, point, start_apply(pi, name))
        record = wait_update_settled(pi)
        slot = old if back_on == "a" else new
        assert (running(pi)[0], record["state"]) == (slot, state), (point, record)
        delivered = _delivers_again(host_bus, delivered, f"after the cut at {point}")
        print(f"cut at {point}: back on {slot}, {state}, {len(delivered)} records stored "
              f"({time.monotonic() - started:.0f} s)", flush=True)  # fmt: skip
    assert running(pi) == ("a", C_BUILD)
    assert pi.run("sha256sum /data/keys/*").output == keys
    assert pi.run("cat /run/appliance/settings").output == settings
    with sqlite3.connect(f"file:{host_bus.store.path}?mode=ro", uri=True) as conn:
        kinds = [k for (k,) in conn.execute(
            "SELECT kind FROM chain_events WHERE agent_id = ?", (AGENT_ID,))]  # fmt: skip
    assert kinds.count("start") == 1 and "rekey" not in kinds, kinds
    pi.power_cut()
    assert "os_prefix=slot-a/" in boot_config(pi.image)  # C committed in slot a
