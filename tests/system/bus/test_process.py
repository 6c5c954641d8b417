"""`infraspectre bus serve` as a process: SIGHUP reloads the trust map without dropping
connections; SIGTERM finishes, commits and exits 0; tail and query show what was stored."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.devkit.localprocs import free_port
from appliance.pki.trustmap import add_trust_entry
from appliance.wire import PublishAck, PublishBatchRequest

CLI = [sys.executable, "-m", "appliance"]


@pytest.fixture
def bus_proc(pki: Path, tmp_path: Path) -> Any:
    trust = tmp_path / "trust.yaml"
    add_trust_entry(trust, "branch-1", str(pki / "agents/branch-1/ed25519.pub"))
    port = free_port()
    config = tmp_path / "bus.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "eventbus": {
                    "host": "127.0.0.1", "port": port, "metrics_port": 0, "health_port": 0,
                    "tls": {"cert_dir": str(pki)}, "trust_map": str(trust),
                },
                "storage": {"data_dir": str(tmp_path / "data")},
            }
        )
    )  # fmt: skip
    proc = subprocess.Popen(
        [*CLI, "bus", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline() if proc.stdout else ""
    assert "bus ready" in line, proc.stderr.read() if proc.stderr else ""
    yield proc, port, trust, config
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _publish_once_reloaded(p: Any) -> int:
    """The status of a publish by an agent just added to the trust map, once it is loaded."""
    for _ in range(50):  # bounded: the reload happens in a thread right after the signal
        try:
            return int(p.stub.Publish(p.sealer.seal(p.flow()), timeout=10).status)
        except Exception:
            time.sleep(0.1)
    raise AssertionError("trust map was not reloaded")


def test_sighup_reloads_trust_map_without_dropping_connections(
    pki: Path, bus_proc: Any, publisher: Any
) -> None:
    proc, port, trust, _ = bus_proc
    p1 = publisher(pki, port, "branch-1")
    p2 = publisher(pki, port, "branch-2")
    assert p1.stub.Publish(p1.sealer.seal(p1.flow()), timeout=10).status == PublishAck.OK
    with pytest.raises(Exception, match="not in the trust map"):
        p2.stub.Publish(p2.sealer.seal(p2.flow()), timeout=10)
    add_trust_entry(trust, "branch-2", str(pki / "agents/branch-2/ed25519.pub"))
    os.kill(proc.pid, signal.SIGHUP)
    assert _publish_once_reloaded(p2) == PublishAck.OK
    # the connection opened before the reload still works
    assert p1.stub.Publish(p1.sealer.seal(p1.flow()), timeout=10).status == PublishAck.OK


def test_bad_trust_map_on_reload_keeps_the_old_one(
    pki: Path, bus_proc: Any, publisher: Any
) -> None:
    proc, port, trust, _ = bus_proc
    trust.write_text("agents: [broken\n")
    os.kill(proc.pid, signal.SIGHUP)
    time.sleep(0.5)
    p1 = publisher(pki, port, "branch-1")
    assert p1.stub.Publish(p1.sealer.seal(p1.flow()), timeout=10).status == PublishAck.OK


def test_sigterm_commits_and_exits_zero_then_query_and_tail_show_flows(
    pki: Path, bus_proc: Any, publisher: Any
) -> None:
    proc, port, _, config = bus_proc
    p = publisher(pki, port)
    envs = [p.sealer.seal(p.flow(i)) for i in range(20)]
    resp = p.stub.PublishBatch(PublishBatchRequest(envelopes=envs), timeout=10)
    assert {a.status for a in resp.acks} == {PublishAck.OK}
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    out = subprocess.run(
        [*CLI, "bus", "query", "--config", str(config), "--json", "--port", "40003"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == 1 and rows[0]["src_port"] == 40003 and rows[0]["bytes_tx"] == 1003
    out = subprocess.run(
        [*CLI, "bus", "tail", "--config", str(config), "--from-start", "--count", "20"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    lines = out.stdout.splitlines()
    assert lines[0].startswith("time (UTC)") and len(lines) == 21
    assert "192.0.2.10:40000" in lines[1]


def test_bad_config_is_one_line_nonzero(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("eventbus:\n  port: 99999\n")
    out = subprocess.run(
        [*CLI, "bus", "serve", "--config", str(config)], capture_output=True, text=True
    )
    assert out.returncode == 1
    assert out.stderr.strip() == "infraspectre: eventbus.port: 99999 is not a TCP port"
    env = {**os.environ, "BUS_SERVER_PORT": "0", "BUS_METRICS_PORT": "-1", "BUS_HEALTH_PORT": "-1"}
    out = subprocess.run(
        [*CLI, "bus", "serve"], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert out.returncode == 1
    assert "cannot read CA certificate certs/ca.crt" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_bus_reload_finds_the_bus_by_its_pidfile_which_goes_when_it_stops(
    pki: Path, bus_proc: Any, publisher: Any, tmp_path: Path
) -> None:
    proc, port, trust, config = bus_proc
    pidfile = tmp_path / "data" / "bus.pid"
    assert pidfile.read_text() == f"{proc.pid}\n"
    add_trust_entry(trust, "branch-2", str(pki / "agents/branch-2/ed25519.pub"))
    done = subprocess.run(
        [*CLI, "bus", "reload", "--config", str(config)], capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0 and f"pid {proc.pid}" in done.stdout, done.stderr
    p2 = publisher(pki, port, "branch-2")
    assert _publish_once_reloaded(p2) == PublishAck.OK
    second = subprocess.run(
        [*CLI, "bus", "serve", "--config", str(config)], capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert second.returncode == 1 and f"another bus (pid {proc.pid})" in second.stderr
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert not pidfile.exists()
