"""The agent needs root's CAP_NET_RAW and nothing else (docs/AGENT.md)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from appliance.bus.query import Query, open_reader, query

ONLY_NET_RAW = ["setpriv", "--inh-caps=-all,+net_raw", "--ambient-caps=-all,+net_raw",
                "--bounding-set=-all,+net_raw"]  # fmt: skip


def test_agent_runs_with_only_cap_net_raw(pki: Path, bus_factory: Any, tmp_path: Path) -> None:
    bus = bus_factory()
    config = tmp_path / "agent.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "agent": {
                    "bus": [f"127.0.0.1:{bus.port}"], "server_name": "localhost",
                    "tls": {"cert_dir": str(pki / "agents/branch-1"), "ca": str(pki / "ca.crt")},
                    "metrics_port": -1,
                },
                "capture": {
                    "interface": "lo", "uplink_interface": "none0",
                    "ring": {"block_count": 4}, "meter": {"idle_timeout_s": 1.0},
                },
                "wal": {"path": str(tmp_path / "wal"), "flush_interval_ms": 200},
                "storage": {"data_dir": str(tmp_path / "data")},
            }
        )
    )  # fmt: skip
    proc = subprocess.Popen(
        [*ONLY_NET_RAW, sys.executable, "-m", "appliance", "agent", "run", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and "ready" in proc.stdout.readline()
        subprocess.run(["ping", "-c", "2", "-i", "0.2", "127.0.0.1"], check=True,
                       capture_output=True, timeout=10)  # fmt: skip
        rows: list[Any] = []
        for _ in range(100):  # bounded wait for the loopback ping's flow
            rows = query(open_reader(bus.store.path), Query(proto="ICMP", address="127.0.0.1"))
            if rows:
                break
            time.sleep(0.2)
        assert rows and rows[0]["packets_tx"] >= 2
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
