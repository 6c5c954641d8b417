"""A -> B through the bus on QEMU's Raspberry Pi 3 B (issue 13, delivery through the bus).

A box is booted on the session's image (system A) with its identity on /data, delivering to a
real bus on the host through the uplink's guestfwd; the bus holds bundle B (the session's
system with a later build) as the desired version of the box's group. Nothing is typed on the
console to update: the agent's poller asks the bus and downloads, at its bounded rate, the
chunks of B its running slot lacks (the power is cut after the first piece is on /data: the
download resumes after the boot); it hands the download to the updater, which writes slot b
and reboots into the trial; the harness plays the firmware (tryboot.txt); B proves healthy
(READY, its agent, a delivery acknowledged) and is committed; its agent reports it, with the
bytes it fetched, and the bus shows the new build on slot b, committed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from testsupport.bus_rows import stored_rows

from appliance.bus.config import BusSettings, EventBusConfig, TlsConfig, UpdateDeliveryConfig
from appliance.bus.server import BusServer
from appliance.config import StorageConfig
from appliance.crypto.keys import write_signing_key, write_verify_key
from appliance.devkit.qemu.fixtures import MirrorPort
from appliance.image import updatebundle
from appliance.qemu.machine import GUESTFWD_ADDR, Machine

from .conftest import EPOCH, UPDATE_KEY
from .updatekit import (
    AGENT_ID,
    boot_config,
    derive_image,
    make_pki,
    prepare_card,
    running,
    wait_paused,
    wait_trial_reboot,
    wait_update_report,
)

#: B is A's system with a later build, packed as the image build packs it (zstd 19): the box
#: fetches only the chunks its running slot lacks (the superblock's and the tail's, ~8 MB of
#: the ~93 MB bundle), ~3 minutes through the emulated USB network adapter (40-70 KB/s). Packing
#: B takes minutes too, so the test runs in `make soak` (UPDATE_SOAK=1); CI covers delivery
#: through the bus with a real bus and agent process on loopback
#: (tests/system/agent/test_update_bus.py) and the update itself on raspi3b from a file.
SOAK = bool(os.environ.get("UPDATE_SOAK"))
pytestmark = [
    pytest.mark.timeout(7200),
    pytest.mark.skipif(not SOAK, reason="A -> B through the bus on raspi3b runs in `make soak`"),
]

#: the chunks a delta from A to B fetches at most: the superblock's and the tail's (the root
#: puts the appliance and its release last), 4 MiB each, and the head
DELTA_MAX = 3 * (4 << 20)
B_BUILD = EPOCH + 2000
BOOT_TIMEOUT = 300.0


@pytest.fixture(scope="module")
def b_bundle(rpi_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bus-bundles")
    key = d / "update.key"
    write_signing_key(key, UPDATE_KEY)
    image = derive_image(rpi_image, d / "b.img", build=B_BUILD, work=d / "work")
    updatebundle.make(image, key, d / "b.bundle")
    image.unlink()
    return d / "b.bundle"


@pytest.fixture
def update_bus(tmp_path: Path) -> Iterator[tuple[BusServer, Path]]:
    pki = make_pki(tmp_path / "pki")
    pub = tmp_path / "update.pub"
    write_verify_key(pub, UPDATE_KEY.verify_key)
    cfg = EventBusConfig(host="127.0.0.1", port=0, metrics_port=-1, health_port=-1)
    cfg.tls = TlsConfig(cert_dir=pki)
    cfg.update = UpdateDeliveryConfig(keys=[pub])
    cfg.validate()
    data = tmp_path / "bus-data"
    data.mkdir()
    with BusServer(BusSettings(eventbus=cfg, storage=StorageConfig(data_dir=data))) as bus:
        yield bus, pki


def test_a_to_b_through_the_bus(  # type: ignore[no-untyped-def]
    boot_board, rpi_image: Path, b_bundle: Path, update_bus, tmp_path: Path
) -> None:
    bus, pki = update_bus
    info = bus.updates.upload(b_bundle, [UPDATE_KEY.verify_key])
    bus.updates.set_desired("group", "default", info.sha256)
    card = prepare_card(rpi_image, tmp_path / "prepared.img", bundles={}, pki=pki,
                        work=tmp_path / "prep", bus=f"{GUESTFWD_ADDR}:50051",
                        pause="download-1")  # fmt: skip
    mirror = MirrorPort()
    try:
        pi: Machine = boot_board(card, "raspi3b", mirror=mirror.mirror, uplink_port=bus.port)
        assert running(pi) == ("a", EPOCH)
        mark = pi.console.mark()
        keys = pi.run("sha256sum /data/keys/*").output
        # the box reports A, asks at its agent's start, downloads at 1 MiB/s, writes slot b
        # and reboots with the tryboot flag: nothing typed on the console
        rep = wait_update_report(bus, 900, build=EPOCH)
        assert (rep["slot"], rep["board"]) == ("a", "rpi")
        # the power goes while the first piece of the download is on /data; back up, the
        # agent resumes the download where it stood
        wait_paused(pi, "download-1", since=mark, timeout=1800)
        pi.power_cut()
        pi.boot(BOOT_TIMEOUT)
        assert running(pi) == ("a", EPOCH)
        mark = pi.console.mark()
        wait_trial_reboot(pi, mark, timeout=5400)
        pi.boot(BOOT_TIMEOUT)
        assert pi.boot_choices[-1] == ("tryboot.txt", "slot-b/")
        rep = wait_update_report(bus, 900, state="committed", build=B_BUILD)
        assert (rep["slot"], rep["last_result"]) == ("b", "committed")
        # a delta: the box fetched what its running slot lacked, not the bundle
        assert 0 < int(str(rep["fetched"])) <= DELTA_MAX < b_bundle.stat().st_size, rep
        assert running(pi) == ("b", B_BUILD)
        assert pi.run("sha256sum /data/keys/*").output == keys  # identity intact
        record = json.loads(pi.run("cat /data/update/state.json").output)
        assert record["state"] == "committed"
        assert pi.run("ls /data/update-download/ | grep -c part || true").output.strip() == "0"
        rows = stored_rows(bus, AGENT_ID)
        seqs = [int(r["seq"]) for r in rows]
        assert rows and len(set(seqs)) == len(seqs)  # the chain continued, no seq twice
        pi.power_cut()
        assert "os_prefix=slot-b/" in boot_config(pi.image)
    finally:
        mirror.close()
