"""Where the bus listens: IPv6 and dual-stack hosts, a taken port, and a truthful /ready."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from testsupport.flows import recent_flow

from appliance.bus.server import BusServer
from appliance.crypto import Sealer, load_signing_key
from appliance.wire import PublishAck
from appliance.wire.channel import eventbus_stub, mtls_channel

INFRASPECTRE = Path(sys.executable).parent / "infraspectre"
OK = PublishAck.OK


_SEALERS: dict[Path, Sealer] = {}


def _publish_via(pki: Path, target: str, i: int) -> Any:
    """One flow over a fresh channel; one sealer per PKI, so the chain's seq never repeats."""
    adir = pki / "agents" / "branch-1"
    channel = mtls_channel(
        target, ca=pki / "ca.crt", cert=adir / "client.crt", key=adir / "client.key",
        server_name="localhost",
    )  # fmt: skip
    with channel:
        sealer = _SEALERS.setdefault(
            pki, Sealer("branch-1", load_signing_key(adir / "ed25519.key"))
        )
        flow = recent_flow(i)
        flow.src_ip, flow.dst_ip = "2001:db8::10", "2001:db8::20"
        return eventbus_stub(channel).Publish(sealer.seal(flow), timeout=10).status


def _get(host: str, port: int | None, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_ipv6_loopback_host_serves_grpc_and_http(pki: Path, bus_factory: Any, stored: Any) -> None:
    bus: BusServer = bus_factory(host="::1")
    assert _publish_via(pki, f"[::1]:{bus.port}", 1) == OK
    assert _get("[::1]", bus.health_port, "/ready") == 200
    assert _get("[::1]", bus.metrics_port, "/metrics") == 200
    assert stored(bus) == 1


def test_dual_stack_host_is_reached_over_ipv4_and_ipv6(
    pki: Path, bus_factory: Any, stored: Any
) -> None:
    bus: BusServer = bus_factory(host="::")
    assert _publish_via(pki, f"127.0.0.1:{bus.port}", 1) == OK
    assert _publish_via(pki, f"[::1]:{bus.port}", 2) == OK
    for host in ("127.0.0.1", "[::1]"):
        assert _get(host, bus.health_port, "/healthz") == 200
        assert _get(host, bus.metrics_port, "/metrics") == 200
    assert stored(bus) == 2


def test_ready_consults_the_store_and_every_registered_condition(bus: BusServer) -> None:
    assert _get("127.0.0.1", bus.health_port, "/ready") == 200
    bus.store.healthy = lambda: False  # type: ignore[attr-defined]  # the store's own verdict
    assert _get("127.0.0.1", bus.health_port, "/ready") == 503
    del bus.store.healthy  # type: ignore[attr-defined]
    assert _get("127.0.0.1", bus.health_port, "/ready") == 200
    bus.readiness.append(lambda: False)
    assert _get("127.0.0.1", bus.health_port, "/ready") == 503
    assert _get("127.0.0.1", bus.health_port, "/healthz") == 200


@pytest.mark.parametrize("taken", ["grpc", "health"])
def test_serve_on_a_taken_port_prints_one_line_and_creates_no_store(
    pki: Path, tmp_path: Path, taken: str
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        ports = {"port": 0, "metrics_port": -1, "health_port": -1}
        ports["port" if taken == "grpc" else "health_port"] = busy
        config = tmp_path / "bus.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "eventbus": {"host": "127.0.0.1", **ports, "tls": {"cert_dir": str(pki)}},
                    "storage": {"data_dir": str(tmp_path / "data")},
                }
            )
        )
        proc = subprocess.run(
            [str(INFRASPECTRE), "bus", "serve", "--config", str(config)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert proc.returncode != 0
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("infraspectre: cannot ")
    assert ("address in use" if taken == "grpc" else "Address already in use") in proc.stderr
    # the pidfile's folder may exist; no store was created, and no pidfile is left behind
    assert not (tmp_path / "data" / "bus.sqlite").exists()
    assert not (tmp_path / "data" / "bus.pid").exists()
