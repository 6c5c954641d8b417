"""The agent's `agent` configuration section (the `wal` and `capture` sections belong to those
components; `storage.data_dir` is shared)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from appliance.config import CertFiles

#: Environment overrides (the seed's IS_* names) -> key paths below `agent`.
AGENT_ENV = {
    "IS_AGENT_ID": "id",
    "IS_BUS_ADDR": "bus",
    "IS_CERT_DIR": "tls.cert_dir",
    "AGENT_METRICS_PORT": "metrics_port",
    "AGENT_SEND_RATE": "send_rate",
    "IS_CLOCK_FROM_BUS": "clock_from_bus",
    "IS_CLOCK_FILE": "clock_file",
    "IS_HEALTH_INTERVAL_S": "health_interval_s",
}

#: A day: a box heard from less often than that is indistinguishable from a dead one.
MAX_HEALTH_INTERVAL_S = 86400.0


@dataclass
class AgentTls(CertFiles):
    """The agent's credentials: TLS client identity, the org CA, the envelope-signing key.

    On the device cert_dir is /data/keys (written by serial provisioning); on a host,
    `pki issue-agent DIR ID` writes DIR/agents/ID, with the CA at DIR/ca.crt.
    """

    cert_dir: Path = Path("identity")
    cert: str = "client.crt"
    key: str = "client.key"
    signing_key: str = "ed25519.key"


@dataclass
class AgentUpdate:
    """`agent.update`: the poller that asks the bus for updates (agent/updates.py)."""

    #: Ask the bus this often (seconds), the first time soon after start; 0: never ask.
    interval_s: float = 900.0
    #: Download at most this many bundle bytes per second (0: as fast as the bus serves).
    rate_bytes_s: int = 1024 * 1024
    #: Bytes asked per Fetch call (the bus may serve fewer: eventbus.update.max_chunk_bytes).
    chunk_bytes: int = 256 * 1024
    #: The group whose desired version applies when none is set for this box itself.
    group: str = "default"
    #: Seconds the new system has to prove healthy before it is rolled back.
    health_timeout_s: float = 300.0
    #: The folder that stands for the device's `/` to the updater: "/" on a box; a test
    #: rig's folder where slots are plain files (no mount, no reboot: the request is recorded).
    device_root: Path = Path("/")

    def validate(self) -> None:
        if self.interval_s != 0 and not 5 <= self.interval_s <= 7 * 86400:
            raise ValueError(
                f"update.interval_s: {self.interval_s} must be 0 (off) or 5..604800 seconds"
            )
        if self.rate_bytes_s != 0 and self.rate_bytes_s < 4096:
            raise ValueError(
                f"update.rate_bytes_s: {self.rate_bytes_s} must be 0 (unlimited) or >= 4096"
            )
        if not 4096 <= self.chunk_bytes <= 4 * 1024 * 1024:
            raise ValueError(f"update.chunk_bytes: {self.chunk_bytes} must be 4096..4194304")
        if not self.group or len(self.group) > 64 or not self.group.isprintable():
            raise ValueError(f"update.group: {self.group!r} must be 1..64 printable characters")
        if not 10 <= self.health_timeout_s <= 86400:
            raise ValueError(
                f"update.health_timeout_s: {self.health_timeout_s} must be 10..86400 seconds"
            )
        if not self.device_root.is_absolute():
            raise ValueError(f"update.device_root: {self.device_root} must be an absolute path")


@dataclass
class AgentConfig:
    """The `agent` section."""

    #: Agent id; empty means "the CN of the client certificate" (they must agree anyway).
    id: str = ""
    #: Bus addresses (host:port), tried in order; a failure moves to the next one.
    bus: list[str] = field(default_factory=lambda: ["127.0.0.1:50051"])
    #: Name checked against the bus certificate when it differs from the address (a tunnel).
    server_name: str = ""
    tls: AgentTls = field(default_factory=AgentTls)
    #: /metrics, /healthz and /ready on this port (-1: off, 0: any free port).
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9100
    batch_size: int = 500
    #: Batches in flight at once (forwarder workers): the bus verifies one while it commits
    #: another. 1 keeps strict delivery order.
    max_in_flight: int = 2
    #: Envelopes per second at most towards the bus (0: unlimited).
    send_rate: float = 0.0
    publish_timeout_s: float = 30.0
    backoff_base_ms: int = 500
    backoff_cap_ms: int = 30000
    #: On SIGTERM: stop capture, seal open flows, flush, and exit within this bound.
    shutdown_timeout_s: float = 10.0
    #: Bounded quarantine of envelopes the bus refused (kept for inspection).
    quarantine_max_bytes: int = 4 * 1024 * 1024
    #: Step the system clock forward to the bus's when it lags (agent/clock.py): on in the
    #: device image (no real-time clock, no network time), off elsewhere.
    clock_from_bus: bool = False
    #: After a step, save the time here (the device's boot floor, /data/clock); "" : nowhere.
    clock_file: str = ""
    #: Seal a health record (agent/health.py) this often, the first soon after start; 0: never.
    health_interval_s: float = 60.0
    #: Updates delivered through the bus (agent/updates.py).
    update: AgentUpdate = field(default_factory=AgentUpdate)

    def validate(self) -> None:
        if not self.bus:
            raise ValueError("bus: at least one bus address (host:port) is needed")
        for i, addr in enumerate(self.bus):
            host, sep, port = addr.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"bus[{i}]: {addr!r} is not host:port")
        if self.metrics_port != -1 and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port: {self.metrics_port} is not a TCP port")
        if not 1 <= self.batch_size <= 5000:
            raise ValueError(f"batch_size: {self.batch_size} must be 1..5000 (the bus's max_batch)")
        if not 1 <= self.max_in_flight <= 16:
            raise ValueError(f"max_in_flight: {self.max_in_flight} must be 1..16")
        if self.send_rate < 0:
            raise ValueError(f"send_rate: {self.send_rate} must be >= 0")
        if self.backoff_base_ms <= 0 or self.backoff_cap_ms < self.backoff_base_ms:
            raise ValueError("backoff_base_ms: need 0 < backoff_base_ms <= backoff_cap_ms")
        if self.shutdown_timeout_s <= 0:
            raise ValueError(f"shutdown_timeout_s: {self.shutdown_timeout_s} must be positive")
        if self.health_interval_s != 0 and not 1 <= self.health_interval_s <= MAX_HEALTH_INTERVAL_S:
            raise ValueError(
                f"health_interval_s: {self.health_interval_s} must be 0 (off) or 1..86400 seconds"
            )
