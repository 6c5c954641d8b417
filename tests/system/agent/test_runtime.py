"""The agent runtime with scripted sources, an in-memory WAL and a real bus over mTLS."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path
from typing import Any

from testsupport.flows import recent_flow
from testsupport.outbox import MemWal
from testsupport.sources import FixedCounters, ScriptedFlows

from appliance.agent.config import AgentConfig, AgentTls
from appliance.agent.runtime import Agent, load_identity
from appliance.bus.query import open_reader
from appliance.crypto import load_verify_key, verify_chain
from appliance.wire import Envelope, FlowEvent


def _flow(i: int) -> FlowEvent:
    return recent_flow(i, proto="UDP", dst_port=53)


def _config(pki: Path, port: int) -> AgentConfig:
    cfg = AgentConfig(
        bus=[f"127.0.0.1:{port}"], server_name="localhost", metrics_host="127.0.0.1",
        metrics_port=0,
        tls=AgentTls(cert_dir=pki / "agents/branch-1", ca=str(pki / "ca.crt")),
    )  # fmt: skip
    cfg.validate()
    return cfg


def test_flows_and_counters_reach_the_bus_signed_and_chained(
    pki: Path, bus_factory: Any, tmp_path: Path
) -> None:
    bus = bus_factory()
    cfg = _config(pki, bus.port)
    flows = ScriptedFlows([_flow(i) for i in range(300)], [_flow(900), _flow(901)])
    wal = MemWal()
    agent = Agent(
        cfg, load_identity(cfg), wal, flows, FixedCounters(), tmp_path, counters_interval_s=0.2
    )
    agent.start()
    for _ in range(200):  # bounded wait for delivery
        if agent.forwarder.stats.ok >= 300 and agent.ready:
            break
        time.sleep(0.05)
    assert agent.endpoint is not None
    url = f"http://127.0.0.1:{agent.endpoint.port}"
    assert urllib.request.urlopen(url + "/ready", timeout=5).status == 200
    metrics = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    assert 'agent_forwarder_state{state="connected"} 1.0' in metrics
    assert "agent_flows_sealed_total 300.0" in metrics
    agent.stop()  # seals the two open flows, flushes, finishes the chain
    assert flows.closed and wal.closed
    # deliver what the stop left in the WAL with a second agent run (same chain state)
    flows2 = ScriptedFlows([], [])
    agent2 = Agent(cfg, load_identity(cfg), wal, flows2, None, tmp_path)
    wal.closed = False
    agent2.start()
    for _ in range(200):
        if not wal.pending:
            break
        time.sleep(0.05)
    agent2.stop()
    rows = list(
        open_reader(bus.store.path).execute("SELECT kind, envelope FROM records ORDER BY seq")
    )
    kinds = [r[0] for r in rows]
    assert kinds.count("flow") == 302 and kinds.count("counters") >= 1
    envs = [Envelope.FromString(r[1]) for r in rows]
    key = load_verify_key(pki / "agents/branch-1/ed25519.pub")
    report = verify_chain(envs, key)
    assert report.ok, report  # one unbroken chain across the clean restart
    assert [e.seq for e in envs] == list(range(1, len(envs) + 1))
    shutdown = [e for e in envs if e.HasField("flow") and e.flow.end_reason == FlowEvent.SHUTDOWN]
    assert len(shutdown) == 2


def test_reload_changes_send_rate_and_bus_live_and_names_the_rest(
    pki: Path, bus_factory: Any, tmp_path: Path
) -> None:
    import dataclasses

    bus = bus_factory()
    cfg = _config(pki, bus.port)
    agent = Agent(cfg, load_identity(cfg), MemWal(), ScriptedFlows([], []), None, tmp_path)
    fresh = dataclasses.replace(
        cfg, send_rate=250.0, bus=[f"127.0.0.1:{bus.port}", "127.0.0.1:9"], batch_size=100
    )
    changed = agent.reconfigure(fresh)
    assert "send_rate=250.0" in changed
    assert f"bus=127.0.0.1:{bus.port},127.0.0.1:9" in changed
    assert "batch_size (takes effect after a restart)" in changed
    assert agent.forwarder.limiter.rate == 250.0
    assert all(len(w._factories) == 2 for w in agent.forwarder.workers)
    assert agent.reconfigure(fresh) == ["batch_size (takes effect after a restart)"]
