"""The fleet at a real bus: a health record reaches the per-agent series and `bus agents`, and a
box that stops sending shows as silent."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from appliance.bus.server import BusServer
from appliance.crypto import sign_envelope
from appliance.wire import AgentHealth, CaptureHealth, Envelope, PublishAck


def _health_envelope(p: Any) -> Envelope:
    env = p.sealer.seal(p.flow())
    env.ClearField("flow")
    health = AgentHealth(
        sample_ns=time.time_ns(),
        version="0.1.0",
        slot="a",
        uptime_s=42,
        forwarder_state="connected",
        wal_backlog_records=3,
        clock_offset_ms=15,
        capture=[CaptureHealth(ifname="eth1", packets=9, drops=2)],
    )
    env.health.CopyFrom(health)
    sign_envelope(env, p.sealer._key)
    return env


def _agents(bus: BusServer, silent_after: float) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "appliance", "bus", "agents", "--db", str(bus.store.path),
         "--silent-after", str(silent_after), "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_health_reaches_the_fleet_view_and_a_stopped_box_turns_silent(
    publisher: Any, pki: Path, bus: BusServer
) -> None:
    p = publisher(pki, bus.port, "branch-1")
    assert p.stub.Publish(_health_envelope(p), timeout=10).status == PublishAck.OK
    q = publisher(pki, bus.port, "branch-2")
    assert q.stub.Publish(q.sealer.seal(q.flow()), timeout=10).status == PublishAck.OK
    with urllib.request.urlopen(f"http://127.0.0.1:{bus.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    assert 'bus_agent_info{agent="branch-1",slot="a",version="0.1.0"} 1.0' in text
    assert 'bus_agent_capture_drops_total{agent="branch-1"} 2.0' in text
    assert 'bus_agent_records_total{agent="branch-2"} 1.0' in text
    rows = {r["agent_id"]: r for r in _agents(bus, silent_after=60)}
    assert rows["branch-1"]["state"] == "ok" and rows["branch-1"]["forwarder_state"] == "connected"
    assert rows["branch-2"]["state"] == "ok"
    time.sleep(2.5)  # both boxes stop; branch-2 sends once more
    assert q.stub.Publish(q.sealer.seal(q.flow(1)), timeout=10).status == PublishAck.OK
    rows_now = _agents(bus, silent_after=2)
    assert [(r["agent_id"], r["state"]) for r in rows_now] == [
        ("branch-1", "silent"),
        ("branch-2", "ok"),
    ]
