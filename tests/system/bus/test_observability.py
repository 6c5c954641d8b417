"""Metrics move as the seed names them; health endpoints and the gRPC health service answer."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from appliance.bus.server import BusServer
from appliance.wire import PublishBatchRequest


def _scrape(port: int) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for line in body.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) (\S+)$", line)
        if m:
            samples[m.group(1)] = float(m.group(2))
    return samples


def test_seed_metric_names_move_as_expected(pki: Path, bus_factory: Any, publisher: Any) -> None:
    bus: BusServer = bus_factory()
    p = publisher(pki, bus.port)
    before = _scrape(bus.metrics_port)
    for name in (
        'bus_publish_total{status="OK"}', 'bus_publish_total{status="RETRY"}',
        'bus_publish_total{status="INVALID"}', "bus_invalid_total", "bus_retry_total",
        "bus_inflight_requests", "bus_publish_latency_ms_count",
    ):  # fmt: skip
        assert name in before, name
    good = [p.sealer.seal(p.flow(i)) for i in range(5)]
    bad = p.sealer.seal(p.flow(7))
    bad.flow.bytes_rx += 1
    p.stub.PublishBatch(PublishBatchRequest(envelopes=[*good, bad]), timeout=10)
    bus.service.admission.overload = True
    p.stub.PublishBatch(PublishBatchRequest(envelopes=good[:2]), timeout=10)
    after = _scrape(bus.metrics_port)

    def delta(name: str) -> float:
        return after[name] - before.get(name, 0.0)

    assert delta('bus_publish_total{status="OK"}') == 5
    assert delta('bus_publish_total{status="INVALID"}') == 1
    assert delta('bus_publish_total{status="RETRY"}') == 2
    assert delta("bus_invalid_total") == 1
    assert delta("bus_retry_total") == 2
    assert delta("bus_publish_latency_ms_count") == 2
    assert delta('bus_rejected_total{reason="bad_signature"}') == 1
    assert after['bus_agent_last_seen_timestamp_seconds{agent="branch-1"}'] > 0
    assert after["bus_store_bytes"] > 0
    assert after["bus_inflight_requests"] == 0


def test_health_endpoints_and_grpc_health(pki: Path, bus_factory: Any, publisher: Any) -> None:
    bus: BusServer = bus_factory()
    for path, body in (("/healthz", "ok"), ("/ready", "ready")):
        url = f"http://127.0.0.1:{bus.health_port}{path}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.status == 200 and resp.read().decode().strip() == body
    p = publisher(pki, bus.port)
    stub = health_pb2_grpc.HealthStub(p.channel)
    for service in ("", "infraspectre.EventBus"):
        resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    bus.stop()
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{bus.health_port}/ready", timeout=2)
    except OSError:
        pass  # endpoint closed on shutdown: also a "not ready"
    else:
        raise AssertionError("/ready still answered after stop")
    _ = grpc  # the channel is closed with the test
