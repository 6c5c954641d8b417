"""The health a trial slot must show before it is committed, asked of the agent itself."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.update.device import Paths, probe_health


class _Agent(http.server.BaseHTTPRequestHandler):
    ready = 200
    acked = 0.0

    def do_GET(self) -> None:
        if self.path == "/ready":
            body, status = b"ready\n", self.ready
        else:
            body, status = f'agent_publish_total{{status="OK"}} {self.acked}\n'.encode(), 200
        self.send_response(status)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def agent() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Agent)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    _Agent.ready, _Agent.acked = 200, 0.0


def _paths(tmp_path: Path, *, ready: bool, bus: str = "") -> Paths:
    paths = Paths(ready_file=tmp_path / "ready", settings=tmp_path / "settings")
    if ready:
        paths.ready_file.write_text("")
    paths.settings.write_text("agent_id=x\n" + (f"bus={bus}\n" if bus else ""))
    return paths


def test_ready_and_a_ready_agent_without_a_bus_is_healthy(tmp_path: Path, agent: str) -> None:
    assert probe_health(_paths(tmp_path, ready=True), agent) == []


def test_what_is_missing_is_named(tmp_path: Path, agent: str) -> None:
    _Agent.ready = 503
    assert probe_health(_paths(tmp_path, ready=False), agent) == [
        "system not READY",
        "agent not ready",
    ]


def test_no_agent_is_not_healthy(tmp_path: Path) -> None:
    missing = probe_health(_paths(tmp_path, ready=True), "http://127.0.0.1:9")
    assert missing == ["agent not running"]


def test_with_a_bus_one_acknowledged_delivery_is_needed(tmp_path: Path, agent: str) -> None:
    paths = _paths(tmp_path, ready=True, bus="192.0.2.1:50051")
    assert probe_health(paths, agent) == ["no delivery acknowledged by the bus yet"]
    _Agent.acked = 3.0
    assert probe_health(paths, agent) == []
