"""The bus's configuration: its own `eventbus` section plus the shared `storage` section."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from appliance.bus.export.config import ExportConfig
from appliance.bus.jetstream.config import JetStreamConfig
from appliance.config import (
    STORAGE_ENV,
    CertFiles,
    StorageConfig,
    build_section,
    load_document,
)

#: The seed design's environment names, mapped to key paths below `eventbus`.
EVENTBUS_ENV = {
    "BUS_SERVER_HOST": "host",
    "BUS_SERVER_PORT": "port",
    "BUS_METRICS_PORT": "metrics_port",
    "BUS_HEALTH_PORT": "health_port",
    "BUS_OVERLOAD": "overload",
    "BUS_MAX_INFLIGHT": "max_inflight",
    "BUS_HARD_MAX": "hard_max",
    "IS_CERT_DIR": "tls.cert_dir",
    "IS_TRUST_MAP": "trust_map",
    "BUS_DB_SYNC": "db_sync",
    "BUS_SINK": "sink",
    "BUS_NATS_SERVERS": "jetstream.servers",
}


#: Hard ceiling on any gRPC message the bus accepts, whatever max_batch and max_env_bytes say.
#: Every call admitted may hold one message of this size (plus its parsed form) while it is
#: received and verified, and the agent's own channel refuses to send more than 64 MiB
#: (appliance/wire/channel.py): a larger cap could only be reached by a client that is not ours.
RECEIVE_CEILING = 64 * 1024 * 1024


def _port(name: str, value: int, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if not low <= value <= 65535:
        raise ValueError(f"{name}: {value} is not a TCP port")


@dataclass
class TlsConfig(CertFiles):
    """Where the bus finds its credentials (the layout `infraspectre pki init` writes)."""


@dataclass
class UpdateDeliveryConfig:
    """`eventbus.update`: bundles stored on the bus and served to boxes (appliance/bus/updates.py,
    docs/UPDATE.md "Delivery through the bus")."""

    #: The org update keys (`pki init-update-key` .pub files) an upload must be signed by;
    #: relative paths are taken against tls.cert_dir.
    keys: list[Path] = field(default_factory=lambda: [Path("update.pub")])
    #: Folder of the bundles and updates.sqlite; relative to storage.data_dir.
    dir: Path = Path("updates")
    #: Largest chunk one Fetch call returns.
    max_chunk_bytes: int = 256 * 1024
    #: Bundle bytes per second served to one certificate name (0: unlimited).
    rate_bytes_per_peer: int = 4 * 1024 * 1024

    def validate(self) -> None:
        if not 4096 <= self.max_chunk_bytes <= 4 * 1024 * 1024:
            raise ValueError(
                f"max_chunk_bytes: {self.max_chunk_bytes} must be from 4096 to 4194304"
            )
        if self.rate_bytes_per_peer != 0 and self.rate_bytes_per_peer < self.max_chunk_bytes:
            raise ValueError(
                f"rate_bytes_per_peer: {self.rate_bytes_per_peer} must be 0 (unlimited) or at "
                f"least max_chunk_bytes ({self.max_chunk_bytes})"
            )


@dataclass
class EventBusConfig:
    """The `eventbus` section. Ports 0 pick a free port (tests); metrics/health -1 disables."""

    host: str = "0.0.0.0"
    port: int = 50051
    metrics_port: int = 9000
    health_port: int = 8080
    tls: TlsConfig = field(default_factory=TlsConfig)
    #: agent id -> Ed25519 key; relative paths are taken against tls.cert_dir.
    trust_map: Path = Path("trust_map.yaml")
    overload: bool = False
    max_inflight: int = 32
    hard_max: int = 128
    backoff_hint_ms: int = 250
    max_backoff_hint_ms: int = 5000
    #: Largest envelope accepted. 8 KiB is 16-25 flow envelopes' worth (~300-500 bytes each)
    #: and an interface-counters sample of about 40 interfaces with every counter at 64 bits;
    #: with max_batch 5000 it keeps the largest legal batch (39 MiB) under RECEIVE_CEILING.
    max_env_bytes: int = 8192
    max_batch: int = 5000
    max_future_skew_s: float = 300.0
    #: How old an envelope (and its flow) may be: a box's WAL can hold days of backlog.
    max_past_age_s: float = 30 * 86400.0
    #: A hole in an agent's sequence numbers still open after this is recorded as a gap event.
    gap_settle_s: float = 60.0
    #: Retention: records older than this are deleted (at least max_past_age_s, so that a
    #: retransmission of a pruned record is refused as too old instead of stored again).
    retention_max_age_s: float = 90 * 86400.0
    #: Retention: the oldest records are deleted while the store's used pages exceed this
    #: (0: no size bound). The default fits a small disk.
    retention_max_bytes: int = 2 << 30
    #: Per-agent series at /metrics (one set per trust-map agent); off for very large fleets.
    per_agent_metrics: bool = True
    #: An agent with no stored record for this long is "silent" in `bus agents`.
    silent_after_s: float = 300.0
    #: Requests whose rows wait in the store queue above this depth get RETRY (store pressure).
    max_store_queue_rows: int = 50000
    shutdown_grace_s: float = 5.0
    #: Threads verifying one large batch in parallel; 0 means one per CPU.
    verify_threads: int = 0
    #: SQLite synchronous mode of the store: "full" fsyncs each group commit (an OK means the
    #: record survives a power cut at the bus), "normal" survives a process crash only.
    db_sync: Literal["full", "normal"] = "full"
    db_name: str = "bus.sqlite"
    # -- the gate: identity and resource bounds before a message is read (appliance/bus/gate.py)
    #: Certificates refused even when their CN is trusted again (`pki revoke` writes it);
    #: relative paths are taken against the trust map's folder; a missing file revokes nothing.
    revocation_list: Path = Path("revoked.yaml")
    #: Publish calls open at once, whether waiting for, receiving or processing their message.
    max_open_calls: int = 128
    #: Of those, calls from one certificate name (an agent runs at most 16: max_in_flight).
    max_calls_per_peer: int = 16
    #: Time from a call's opening to its one message fully received; then it is cancelled.
    message_deadline_s: float = 20.0
    #: A TLS handshake not finished by then is dropped (gRPC core's default is 120 s).
    handshake_timeout_s: float = 10.0
    #: A connection with no call for this long is closed with GOAWAY (the agent reconnects).
    max_connection_idle_s: float = 300.0
    # -- the sink: where accepted envelopes go (appliance/bus/sink.py, docs/SCALE.md)
    #: "sqlite": the embedded store above; "jetstream": a replicated NATS JetStream stream
    #: (this bus is then a stateless replica; `bus consume` writes the store).
    sink: Literal["sqlite", "jetstream"] = "sqlite"
    jetstream: JetStreamConfig = field(default_factory=JetStreamConfig)
    # -- export: stored flows sent on to collectors (appliance/bus/export/, docs/EXPORT.md)
    export: ExportConfig = field(default_factory=ExportConfig)
    # -- updates delivered through the bus
    update: UpdateDeliveryConfig = field(default_factory=UpdateDeliveryConfig)

    def validate(self) -> None:
        _port("port", self.port, allow_zero=True)
        for name in ("metrics_port", "health_port"):
            value = getattr(self, name)
            if value != -1:
                _port(name, value, allow_zero=True)
        if self.max_inflight < 1:
            raise ValueError(f"max_inflight: {self.max_inflight} must be at least 1")
        if self.hard_max < self.max_inflight:
            raise ValueError(f"hard_max: {self.hard_max} is below max_inflight {self.max_inflight}")
        if self.backoff_hint_ms < 1:
            raise ValueError(f"backoff_hint_ms: {self.backoff_hint_ms} must be positive")
        if self.max_env_bytes < 256:
            raise ValueError(f"max_env_bytes: {self.max_env_bytes} is too small (minimum 256)")
        if self.verify_threads < 0:
            raise ValueError(f"verify_threads: {self.verify_threads} must be 0 (auto) or more")
        if self.max_batch < 1:
            raise ValueError(f"max_batch: {self.max_batch} must be at least 1")
        if not 0 < self.max_future_skew_s <= 86400:
            raise ValueError(f"max_future_skew_s: {self.max_future_skew_s} must be in (0, 86400]")
        if not 3600 <= self.max_past_age_s <= 10 * 365 * 86400:
            raise ValueError(
                f"max_past_age_s: {self.max_past_age_s} must be from 3600 (1 hour) to 10 years"
            )
        if not 1 <= self.gap_settle_s <= 86400:
            raise ValueError(f"gap_settle_s: {self.gap_settle_s} must be from 1 to 86400")
        if self.retention_max_age_s < self.max_past_age_s:
            raise ValueError(
                f"retention_max_age_s: {self.retention_max_age_s} is below max_past_age_s "
                f"{self.max_past_age_s} (a pruned record could be stored again)"
            )
        if self.retention_max_bytes != 0 and self.retention_max_bytes < 16 << 20:
            raise ValueError(
                f"retention_max_bytes: {self.retention_max_bytes} must be 0 (off) or at least "
                "16777216 (16 MiB)"
            )
        if self.silent_after_s <= 0:
            raise ValueError(f"silent_after_s: {self.silent_after_s} must be positive")
        if self.receive_cap() > RECEIVE_CEILING:
            raise ValueError(
                f"max_batch: {self.max_batch} envelopes of max_env_bytes {self.max_env_bytes} "
                f"make a legal batch of up to {self.receive_cap()} bytes, over the "
                f"{RECEIVE_CEILING >> 20} MiB receive ceiling: lower max_batch or max_env_bytes"
            )
        if self.max_open_calls < self.hard_max:
            raise ValueError(
                f"max_open_calls: {self.max_open_calls} is below hard_max {self.hard_max}"
            )
        if not 1 <= self.max_calls_per_peer <= self.max_open_calls:
            raise ValueError(
                f"max_calls_per_peer: {self.max_calls_per_peer} must be 1..max_open_calls "
                f"({self.max_open_calls})"
            )
        for name in ("message_deadline_s", "handshake_timeout_s", "max_connection_idle_s"):
            value = getattr(self, name)
            if not 0 < value <= 3600:
                raise ValueError(f"{name}: {value} must be more than 0 and at most 3600 seconds")

        if self.sink == "jetstream" and self.export.ipfix.collectors:
            raise ValueError(
                "export: with sink jetstream the replicas store nothing to export: run "
                "`infraspectre bus export ipfix` beside `infraspectre bus consume` instead"
            )

    def receive_cap(self) -> int:
        """The largest gRPC message accepted: the largest legal PublishBatchRequest.

        Each envelope is framed as field 1 (one tag byte) plus its length as a varint.
        """
        framing = 1 + (self.max_env_bytes.bit_length() + 6) // 7
        return self.max_batch * (self.max_env_bytes + framing)

    def revocation_list_path(self) -> Path:
        if self.revocation_list.is_absolute():
            return self.revocation_list
        return self.trust_map_path().parent / self.revocation_list

    def update_key_paths(self) -> list[Path]:
        return [k if k.is_absolute() else self.tls.cert_dir / k for k in self.update.keys]

    def trust_map_path(self) -> Path:
        return (
            self.trust_map if self.trust_map.is_absolute() else self.tls.cert_dir / self.trust_map
        )


@dataclass
class BusSettings:
    """Everything `bus serve` needs, validated at start-up."""

    eventbus: EventBusConfig
    storage: StorageConfig


def load_bus_settings(path: Path | None, env: Mapping[str, str] | None = None) -> BusSettings:
    """Read the file (optional), apply environment overrides, validate strictly."""
    environ: Mapping[str, str] = os.environ if env is None else env
    doc: dict[str, Any] = load_document(path)
    return BusSettings(
        eventbus=build_section(
            EventBusConfig, doc.get("eventbus"), "eventbus", env=environ, env_names=EVENTBUS_ENV
        ),
        storage=build_section(
            StorageConfig, doc.get("storage"), "storage", env=environ, env_names=STORAGE_ENV
        ),
    )
