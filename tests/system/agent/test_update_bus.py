"""Updates delivered through the bus: a real bus, the real agent process (its poller), the
real updater writing into a device folder whose slots are plain files (agent.update.
device_root), the real `bus update` and `bus agents` commands.

What stands in for the device: the firmware's choice after the reboot the updater asked for
(the test switches the command line and the release, DeviceRoot.boot_on) and rcS's
`update boot` (the test runs the updater's on_boot with a healthy probe)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from nacl.signing import SigningKey
from testsupport.update_rig import (
    DeviceRoot,
    HealthySystem,
    make_bundle,
    make_device,
    root_of,
    write_update_key,
)

from appliance.bus.config import UpdateDeliveryConfig
from appliance.errors import CommandError
from appliance.update import bundle
from appliance.update.device import Updater
from appliance.update.state import State
from appliance.wire import pb

#: test keys from fixed seeds (never real ones)
KEY = SigningKey(bytes(range(40, 72)))
CHUNK_SERVED = 32 * 1024


@dataclasses.dataclass
class Rig:
    bus: Any
    config: Path
    device: DeviceRoot
    tmp: Path

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "appliance", "bus", *args, "--config", str(self.config)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    def ok(self, *args: str) -> str:
        proc = self.cli(*args)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def report(self, agent: str = "branch-1") -> dict[str, Any]:
        """The agent's latest report as the serving bus holds it (read in process: the
        polling loops below would otherwise start a Python per look)."""
        return next((r.as_json() for r in self.bus.updates.reports() if r.agent_id == agent), {})

    def wait_report(self, timeout: float = 120, **want: Any) -> dict[str, Any]:
        """The agent's report once it has every wanted field (a bounded wait, not a timing
        assertion: the poller asks every 5 s)."""
        deadline = time.monotonic() + timeout
        rep: dict[str, Any] = {}
        while time.monotonic() < deadline:
            rep = self.report()
            if all(rep.get(k) == v for k, v in want.items()):
                return rep
            time.sleep(0.5)
        raise AssertionError(f"report {rep} never had {want}")


@pytest.fixture
def rig(bus_factory: Any, pki: Path, tmp_path: Path) -> Rig:
    keys = tmp_path / "update-keys"
    keys.mkdir()
    pub = write_update_key(keys, KEY)
    update = UpdateDeliveryConfig(keys=[pub], max_chunk_bytes=CHUNK_SERVED)
    bus = bus_factory(update=update)
    config = tmp_path / "bus.yaml"
    doc = {
        "eventbus": {"tls": {"cert_dir": str(pki)}, "update": {"keys": [str(pub)]}},
        "storage": {"data_dir": str(tmp_path / "data")},
    }
    config.write_text(yaml.safe_dump(doc))
    return Rig(bus, config, make_device(tmp_path / "device", KEY), tmp_path)


def _agent(agent_factory: Any, rig: Rig) -> Any:
    update = {
        "interval_s": 5, "device_root": str(rig.device.root), "group": "lab",
        "rate_bytes_s": 512 * 1024, "chunk_bytes": 64 * 1024,
    }  # fmt: skip
    return agent_factory(rig.bus.port, update=update).start()


def _bus_metrics(bus: Any) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{bus.metrics_port}/metrics", timeout=10) as r:
        return str(r.read().decode())


def test_a_to_b_through_the_bus_is_reported_after_the_reboot(rig: Rig, agent_factory: Any) -> None:
    b = make_bundle(rig.tmp, KEY, version="0.2.0", build=2000)
    out = rig.ok("update", "upload", str(b))
    assert "stored 0.2.0 (build 2000" in out
    assert "group lab: should run 0.2.0" in rig.ok("update", "set", "--group", "lab", "0.2.0")
    agent = _agent(agent_factory, rig)

    # the box downloads, the updater writes slot b and asks for the trial boot
    rep = rig.wait_report(state="trying")
    assert (rep["version"], rep["slot"], rep["update_group"]) == ("0.1.0", "a", "lab")
    assert rep["fetched"] == b.stat().st_size  # slot a holds none of it: every byte fetched
    assert rig.device.reboot_requested() == "tryboot"
    root = root_of(b)
    assert rig.device.slot_bytes("b")[: len(root)] == root
    assert rig.device.slot_bytes("a") == bytes(len(rig.device.slot_bytes("a")))
    assert "os_prefix=slot-b/" in rig.device.boot_text("tryboot.txt")
    assert "os_prefix=slot-a/" in rig.device.boot_text("config.txt")
    # every byte came once, in chunks no bigger than the bus serves
    metrics = _bus_metrics(rig.bus)
    size = b.stat().st_size
    assert f"bus_update_bytes_total {float(size)}" in metrics
    assert f"bus_update_chunks_total {float(-(-size // CHUNK_SERVED))}" in metrics
    assert agent.stop() == 0

    # the reboot: the firmware tries slot b, rcS's `update boot` finds it healthy and commits
    rig.device.boot_on("b", "0.2.0", 2000)
    paths = _paths(rig.device)
    rec = Updater(paths, HealthySystem(), log=lambda line: None).on_boot()
    assert rec.state is State.COMMITTED
    assert "os_prefix=slot-b/" in rig.device.boot_text("config.txt")

    # the new system's agent reports it from the updater's persisted record
    agent = _agent(agent_factory, rig)
    rep = rig.wait_report(state="committed", version="0.2.0")
    assert (rep["slot"], rep["last_result"], rep["last_version"]) == ("b", "committed", "0.2.0")
    rows = [json.loads(line) for line in rig.ok("agents", "--json").splitlines()]
    me = next(r for r in rows if r["agent_id"] == "branch-1")
    assert (me["system_version"], me["update_state"], me["update_result"]) == (
        "0.2.0", "committed", "committed",
    )  # fmt: skip
    assert me["slot"] == "b"
    assert (
        'bus_agent_update_info{agent="branch-1",result="committed",slot="b",state="committed",'
        'version="0.2.0"} 1.0'
    ) in _bus_metrics(rig.bus)
    # the box runs what it should: nothing more is offered or downloaded
    assert not list((rig.tmp / "data/update-download").glob("*.part"))
    assert agent.stop() == 0


def _paths(device: DeviceRoot) -> Any:
    from appliance.agent.updates import device_paths

    return device_paths(device.root)


def _damage(stored: Path, how: str) -> None:
    data = bytearray(stored.read_bytes())
    with stored.open("rb") as fh:
        manifest = bundle.read_manifest(fh, [KEY.verify_key])
    if how == "signature":
        data[manifest.payload_offset - 10] ^= 0xFF
    elif how == "hash":
        data[manifest.offset(0, 2) + 10] ^= 0xFF
    elif how == "truncated":
        del data[-1000:]
    stored.write_bytes(bytes(data))


def test_hostile_bundles_via_the_bus_are_refused_before_any_switch_with_the_reason_reported(
    rig: Rig, agent_factory: Any
) -> None:
    """The bus verified each bundle at upload; then its stored copy is damaged (a disk or a
    person between upload and delivery), or it is a downgrade: the box refuses each one
    before anything switches, and the one-line reason is what the bus shows."""
    agent = _agent(agent_factory, rig)
    cases = [
        ("signature", "0.2.0", 2001, "bad signature"),
        ("hash", "0.2.0", 2002, "hash mismatch in root, chunk 2"),
        ("truncated", "0.2.0", 2003, "truncated"),
        ("downgrade", "0.0.9", 900, "is older than the running 0.1.0"),
    ]
    for how, version, build, reason in cases:
        b = make_bundle(rig.tmp, KEY, version=version, build=build)
        sha = rig.bus.updates.upload(b, [KEY.verify_key]).sha256  # what `bus update upload` does
        if how != "downgrade":
            _damage(rig.tmp / "data/updates/bundles" / f"{sha}.bundle", how)
        rig.bus.updates.set_desired("agent", "branch-1", sha)
        rep = rig.wait_report(last_result="refused", state="idle", **{"download": ""})
        deadline = time.monotonic() + 120
        while reason not in rep["last_reason"] and time.monotonic() < deadline:
            time.sleep(0.5)
            rep = rig.report()
        assert reason in rep["last_reason"], (how, rep)
        assert "\n" not in rep["last_reason"]
        assert (rig.tmp / "data/update-download" / f"{sha}.refused").exists()
        # nothing switched: no trial, the committed slot unchanged, no reboot asked for
        assert not rig.device.path("/boot/firmware/tryboot.txt").exists()
        assert "os_prefix=slot-a/" in rig.device.boot_text("config.txt")
        assert rig.device.reboot_requested() == ""
    out = rig.ok("update", "status")
    assert "last refused" in out and "0.0.9 (build 900) is older than the running 0.1.0" in out
    assert "downloading" not in out
    assert agent.stop() == 0


@pytest.mark.parametrize(
    ("junk", "reason"),
    [
        ("not-a-bundle", "bundle refused: not an InfraSpectre update bundle"),
        ("other-key", "bundle refused: bad signature"),
        ("truncated", "bundle refused: truncated"),
    ],
)
def test_bus_update_upload_refuses_junk_with_one_line(rig: Rig, junk: str, reason: str) -> None:
    path = rig.tmp / f"{junk}.bundle"
    if junk == "not-a-bundle":
        path.write_bytes(b"hello\n" * 100)
    elif junk == "other-key":
        path = make_bundle(rig.tmp, SigningKey(bytes(range(1, 33))), build=3001)
    else:
        good = make_bundle(rig.tmp, KEY, build=3002)
        path.write_bytes(good.read_bytes()[:-77])
    with pytest.raises(CommandError) as info:
        rig.bus.updates.upload(path, [KEY.verify_key])
    assert reason in str(info.value) and "\n" not in str(info.value)
    if junk == "other-key":  # the command says it in one line on stderr, exit status 1
        proc = rig.cli("update", "upload", str(path))
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
        assert reason in proc.stderr
    assert not list((rig.tmp / "data/updates/bundles").glob("*"))


def test_update_calls_pass_the_gate_like_every_publish(rig: Rig, pki: Path) -> None:
    """A certificate of our CA whose name left the trust map gets nothing: no check, no chunk."""
    import grpc

    from appliance.wire.channel import mtls_channel

    b = make_bundle(rig.tmp, KEY, build=4000)
    sha = rig.ok("update", "upload", str(b)).split()[-1]
    trust = rig.tmp / "trust_map.yaml"
    trust.write_text("\n".join(ln for ln in trust.read_text().splitlines() if "branch-2" not in ln))
    assert rig.bus.reload_trust_map()
    agent = pki / "agents" / "branch-2"
    channel = mtls_channel(
        f"127.0.0.1:{rig.bus.port}", ca=pki / "ca.crt", cert=agent / "client.crt",
        key=agent / "client.key", server_name="localhost",
    )  # fmt: skip
    try:
        for method, req in [
            ("/infraspectre.Updates/Check", pb.UpdateCheckRequest()),
            ("/infraspectre.Updates/Fetch", pb.UpdateFetchRequest(bundle=sha, length=4096)),
        ]:
            with pytest.raises(grpc.RpcError) as info:
                channel.unary_unary(method, None, None)(req.SerializeToString(), timeout=30)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "not in the trust map" in (info.value.details() or "")
    finally:
        channel.close()
    assert "branch-2" not in rig.ok("update", "status")
