"""Helpers of the JetStream system tests (tests/system/scale/): bus replicas as real processes,
configurations on a local cluster, and signed agents that fail over between replicas."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml

from appliance.crypto import Sealer, load_signing_key
from appliance.devkit.bus.natscluster import LocalCluster
from appliance.devkit.localprocs import loopback_bus_sections
from appliance.wire import Envelope, PublishAck, PublishBatchRequest
from appliance.wire.channel import eventbus_stub, mtls_channel
from testsupport.flows import recent_flow

CLI = [sys.executable, "-m", "appliance"]
AGENTS = ("branch-1", "branch-2", "branch-3")


def write_config(
    path: Path, pki: Path, data_dir: Path, port: int, cluster: LocalCluster, **jetstream: Any
) -> Path:
    """A bus configuration with sink jetstream on the cluster (replicas 3)."""
    doc = loopback_bus_sections(
        pki, data_dir, port, sink="jetstream",
        jetstream={"servers": cluster.urls, "replicas": 3, "max_bytes": 256 << 20,
                   "ack_wait_s": 3.0, **jetstream},
    )  # fmt: skip
    path.write_text(yaml.safe_dump(doc))
    return path


class Replica:
    """One `bus serve` process (sink jetstream) on a fixed port: kill -9 and start again."""

    def __init__(self, config: Path, port: int) -> None:
        self.config = config
        self.port = port
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [*CLI, "bus", "serve", "--config", str(self.config)],
            stdout=subprocess.PIPE,
            stderr=(self.config.parent / f"bus-{self.port}.log").open("a"),
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "bus ready" not in line:
            self.proc.wait(timeout=30)
            log = (self.config.parent / f"bus-{self.port}.log").read_text()[-2000:]
            raise AssertionError(f"replica on {self.port} did not start: {log}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


def consumer_config(scale_pki: Path, tmp_path: Path, cluster: LocalCluster) -> Path:
    folder = tmp_path / "consumer"
    folder.mkdir(exist_ok=True)
    return write_config(
        folder / "bus.yaml", scale_pki, folder / "data", 1, cluster, duplicate_window_s=3.0
    )


@dataclass
class FailoverAgent:
    """An agent's forwarder in miniature: seals a chain of envelopes, publishes batches to one
    replica, moves to the next on an error or RETRY (honouring the hint), resends exactly the
    envelopes not yet acknowledged OK (byte-identical), until `batches` batches are OK."""

    pki: Path
    agent: str
    ports: list[int]
    batches: int
    batch_size: int = 20
    ok: dict[str, bytes] = field(default_factory=dict)  # idempotency key -> envelope bytes
    sent: dict[str, bytes] = field(default_factory=dict)
    ok_by_port: dict[int, int] = field(default_factory=dict)
    retries: int = 0
    reasons: set[str] = field(default_factory=set)
    error: str = ""

    def __post_init__(self) -> None:
        adir = self.pki / "agents" / self.agent
        self.sealer = Sealer(self.agent, load_signing_key(adir / "ed25519.key"))
        self.stubs = [
            eventbus_stub(
                mtls_channel(
                    f"127.0.0.1:{port}", ca=self.pki / "ca.crt", cert=adir / "client.crt",
                    key=adir / "client.key", server_name="localhost",
                )
            )
            for port in self.ports
        ]  # fmt: skip
        self.current = 0
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            for b in range(self.batches):
                pending = [
                    self.sealer.seal(recent_flow(b * self.batch_size + i))
                    for i in range(self.batch_size)
                ]
                for env in pending:
                    self.sent[env.idempotency_key] = env.SerializeToString()
                self._deliver(pending)
                if self.stop.is_set():
                    return
        except Exception as exc:  # reported by the test
            self.error = f"{type(exc).__name__}: {exc}"

    def _deliver(self, pending: list[Envelope]) -> None:
        deadline = time.monotonic() + 300
        while pending and not self.stop.is_set():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.agent}: {len(pending)} envelopes never acknowledged")
            port = self.ports[self.current]
            try:
                acks = (
                    self.stubs[self.current]
                    .PublishBatch(PublishBatchRequest(envelopes=pending), timeout=15)
                    .acks
                )
            except grpc.RpcError:
                self.retries += 1
                self.current = (self.current + 1) % len(self.stubs)  # fail over
                time.sleep(0.2)
                continue
            left = []
            hint = 0
            for env, ack in zip(pending, acks, strict=True):
                if ack.status == PublishAck.OK:
                    self.ok[env.idempotency_key] = env.SerializeToString()
                    self.ok_by_port[port] = self.ok_by_port.get(port, 0) + 1
                elif ack.status == PublishAck.RETRY:
                    self.reasons.add(ack.reason)
                    hint = max(hint, ack.backoff_hint_ms)
                    left.append(env)
                else:
                    raise AssertionError(f"{self.agent}: INVALID {ack.reason}")
            if left:
                self.retries += 1
                self.current = (self.current + 1) % len(self.stubs)
                time.sleep(min(hint, 2000) / 1000)
            pending = left


def publish_raw(pki: Path, agent: str, port: int, envelopes: list[bytes]) -> list[int]:
    """Send stored envelopes again, byte for byte; their ack statuses."""
    adir = pki / "agents" / agent
    stub = eventbus_stub(
        mtls_channel(
            f"127.0.0.1:{port}", ca=pki / "ca.crt", cert=adir / "client.crt",
            key=adir / "client.key", server_name="localhost",
        )
    )  # fmt: skip
    batch = PublishBatchRequest(envelopes=[Envelope.FromString(b) for b in envelopes])
    return [a.status for a in stub.PublishBatch(batch, timeout=30).acks]
