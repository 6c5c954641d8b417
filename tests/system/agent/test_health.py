"""The box's health reaches the bus as sealed records: a real agent capturing on a mirror lab,
a real bus over loopback mTLS, health every second."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from testsupport.outbox import MemWal
from testsupport.sources import ScriptedFlows

from appliance import __version__
from appliance.agent.config import AgentConfig, AgentTls
from appliance.agent.health import read_boot_slot
from appliance.agent.runtime import Agent, load_identity
from appliance.bus.query import open_reader
from appliance.crypto import load_verify_key, verify_chain
from appliance.devkit.capture.labtraffic import ping
from appliance.wire import Envelope


def _envelopes(bus: Any) -> list[Envelope]:
    rows = open_reader(bus.store.path).execute(
        "SELECT envelope FROM records WHERE agent_id = 'branch-1' ORDER BY seq"
    )
    return [Envelope.FromString(r[0]) for r in rows]


def _kinds(bus: Any) -> dict[str, int]:
    rows = open_reader(bus.store.path).execute("SELECT kind, count(*) FROM records GROUP BY kind")
    return {str(k): int(n) for k, n in rows}


def test_the_agent_seals_its_health_and_the_bus_stores_it(
    bus_factory: Any, agent_factory: Any, lab: Any, pki: Path
) -> None:
    bus = bus_factory()
    agent = agent_factory(bus.port, health_interval_s=1).start(env={"IS_LOG_FORMAT": "json"})
    sent = ping(lab)
    mirrored = sent.packets_tx + sent.packets_rx
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:  # three samples, one connected and after the pings
        healths = [e for e in _envelopes(bus) if e.HasField("health")]
        if len(healths) >= 3 and any(
            e.health.forwarder_state == "connected" and e.health.capture[0].packets >= mirrored
            for e in healths
        ):
            break
        time.sleep(0.2)
    assert agent.stop() == 0

    envs = _envelopes(bus)
    healths = [e for e in envs if e.HasField("health")]
    assert len(healths) >= 3, _kinds(bus)
    assert _kinds(bus)["health"] == len(healths)  # stored as kind 'health'
    # sealed in the same chain as the flows and counters, by the same key
    report = verify_chain(envs, load_verify_key(pki / "agents/branch-1/ed25519.pub"))
    assert report.ok, report
    assert [e.seq for e in envs] == list(range(1, len(envs) + 1))

    cert = x509.load_pem_x509_certificate((pki / "agents/branch-1/client.crt").read_bytes())
    not_after = int(cert.not_valid_after_utc.timestamp())
    uptimes = []
    for env in healths:
        h = env.health
        assert h.version == __version__
        assert h.slot == read_boot_slot(Path("/proc/cmdline"))  # "" on a host
        assert h.cert_not_after_s == not_after
        assert env.ts_ns - 1_000_000_000 <= h.sample_ns <= env.ts_ns
        assert h.forwarder_state in {"connecting", "connected"}
        assert [c.ifname for c in h.capture] == ["m1"]
        assert h.capture[0].drops == 0 and h.capture[0].own_frames == 0
        assert h.wal_backlog_records < env.seq  # at most what was sealed before it
        assert (h.wal_backlog_records == 0) == (h.wal_backlog_bytes == 0)
        assert h.wal_oldest_age_ms <= (h.uptime_s + 1) * 1000
        assert abs(h.clock_offset_ms) < 5000  # the same machine's clock
        assert h.quarantined == 0
        uptimes.append(h.uptime_s)
    assert uptimes == sorted(uptimes) and uptimes[-1] > uptimes[0]
    assert any(
        e.health.forwarder_state == "connected" and e.health.capture[0].packets >= mirrored
        for e in healths
    )

    # the agent's log, asked for in JSON by the environment: one object per line
    lines = "".join(agent.logs).splitlines()
    records = [json.loads(line) for line in lines]
    assert records and all({"ts", "level", "logger", "message"} <= set(r) for r in records)
    assert any("running" in r["message"] for r in records), lines


def test_the_sample_names_the_slot_booted_and_the_parts_as_they_are(
    pki: Path, tmp_path: Path
) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("console=ttyAMA0 root=/dev/mmcblk0p3 appliance.slot=b rootwait\n")
    cfg = AgentConfig(
        bus=["127.0.0.1:9"], metrics_port=-1,
        tls=AgentTls(cert_dir=pki / "agents/branch-1", ca=str(pki / "ca.crt")),
    )  # fmt: skip
    wal = MemWal()
    wal.append("k1", b"x" * 100)
    agent = Agent(
        cfg, load_identity(cfg), wal, ScriptedFlows([], []), None, tmp_path, cmdline=cmdline
    )
    h = agent.health_sample()  # not started: no pipeline thread to race with
    assert (h.slot, h.version, h.forwarder_state) == ("b", __version__, "connecting")
    assert (h.wal_backlog_records, h.wal_backlog_bytes) == (1, 100)
    assert [(c.ifname, c.packets) for c in h.capture] == [("mirror0", 10)]
    assert h.cert_not_after_s == load_identity(cfg).cert_not_after_s > 0
