"""A real Prometheus (Debian's /usr/bin/prometheus) for the operations tests: its HTTP API and
bounded waits on it.

Each one runs on a free loopback port with its storage in the test's temporary folder and a
short retention, and is stopped by its own PID when the test ends, whatever the outcome.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass
class Prometheus:
    """A running Prometheus and its HTTP API."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str, **params: str) -> dict[str, Any]:
        """GET /api/v1/<path>; the decoded answer, whatever its status (errors included)."""
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as r:
                return json.loads(r.read())  # type: ignore[no-any-return]
        except urllib.error.HTTPError as exc:  # 400/422 carry the error as JSON
            return json.loads(exc.read())  # type: ignore[no-any-return]

    def query(self, promql: str) -> dict[str, Any]:
        return self.api("query", query=promql)

    def value(self, promql: str) -> float | None:
        """The single value of an instant query; None when it returns nothing."""
        res = self.query(promql)
        assert res["status"] == "success", (promql, res)
        result = res["data"]["result"]
        return float(result[0]["value"][1]) if result else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, check: Callable[[], bool], timeout_s: float, prom: Prometheus) -> None:
    """Polls check() until it holds; fails after timeout_s naming what never happened."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s:.0f} s\n{prom.log.read_text()[-2000:]}")
        if prom.process.poll() is not None:
            pytest.fail(f"prometheus exited ({prom.process.returncode}):\n{prom.log.read_text()}")
        time.sleep(0.5)
