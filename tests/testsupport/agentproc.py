"""The real agent process for system tests: `infraspectre agent run` as a child, and the
configuration of an agent capturing on a mirror lab's tap port and forwarding to a loopback bus."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from appliance.devkit.capture.lab import MirrorLab
from appliance.devkit.localprocs import free_port


class AgentProc:
    """`infraspectre agent run` as a child process; killed at teardown whatever happened."""

    def __init__(self, config: Path, metrics_port: int) -> None:
        self.config = config
        self.metrics_port = metrics_port
        self.proc: subprocess.Popen[str] | None = None
        self.logs: list[str] = []

    def start(self, env: dict[str, str] | None = None) -> AgentProc:
        """Run it (env: variables added to ours) and wait for its ready line."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "appliance", "agent", "run", "--config", str(self.config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=None if env is None else {**os.environ, **env},
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "ready" not in line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"agent did not start: {line!r} {err[-2000:]}")
        return self

    def metrics(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        body = urllib.request.urlopen(url, timeout=5).read().decode()
        out = {}
        for line in body.splitlines():
            m = re.match(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) (\S+)$", line)
            if m:
                out[m.group(1)] = float(m.group(2))
        return out

    def wait_metric(self, name: str, at_least: float, timeout: float = 30) -> float:
        deadline = time.monotonic() + timeout
        value = 0.0
        while time.monotonic() < deadline:
            value = self.metrics().get(name, 0.0)
            if value >= at_least:
                return value
            time.sleep(0.1)
        raise AssertionError(f"{name} stayed at {value} < {at_least}")

    def stop(self, sig: str = "TERM") -> int:
        assert self.proc is not None
        if sig == "KILL":
            self.proc.kill()
        else:
            self.proc.terminate()
        rc = self.proc.wait(timeout=30)
        if self.proc.stderr:
            self.logs.append(self.proc.stderr.read())
        return rc

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def agent_proc(
    pki: Path,
    lab: MirrorLab,
    workdir: Path,
    bus_port: int,
    *,
    config: Path,
    agent_id: str = "branch-1",
    **agent_overrides: Any,
) -> AgentProc:
    """An agent with identity agent_id of pki, capturing on the lab's tap port m1, its WAL and
    data under workdir (give each agent identity its own), forwarding to the bus on
    127.0.0.1:bus_port, its configuration written to config."""
    metrics_port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    agent = {
        "bus": [f"127.0.0.1:{bus_port}"], "server_name": "localhost",
        "tls": {"cert_dir": str(pki / "agents" / agent_id), "ca": str(pki / "ca.crt")},
        "metrics_host": "127.0.0.1", "metrics_port": metrics_port,
        "backoff_base_ms": 100, "backoff_cap_ms": 1000,
    }  # fmt: skip
    agent.update(agent_overrides)
    doc = {
        "agent": agent,
        "capture": {
            "interface": "m1", "netns": lab.ns["T"], "uplink_interface": "none0",
            "meter": {"idle_timeout_s": 1.0, "close_linger_s": 0.5, "active_timeout_s": 60},
            "counters_interval_s": 2.0,
        },
        "wal": {"path": str(workdir / "wal"), "flush_interval_ms": 200},
        "storage": {"data_dir": str(workdir / "data")},
    }  # fmt: skip
    config.write_text(yaml.safe_dump(doc))
    return AgentProc(config, metrics_port)
