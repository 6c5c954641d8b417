"""The `eventbus.export.ipfix` section: where the bus sends its flows, and how.

```yaml
eventbus:
  export:
    ipfix:
      collectors:
        - {address: "198.51.100.7:4739", transport: udp, mode: uniflow}
        - {address: "[2001:db8::9]:4739", transport: tcp}
      domains: {branch-0042: 42}        # agent id -> observationDomainId (else a stable hash)
      interfaces: {eth1: 1}             # capture interface -> ingressInterface (else a hash)
```

No collector: no exporter runs. Strict like every section: unknown keys are errors naming
their path (`eventbus.export.ipfix.collectors[0].adress: unknown key`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

from appliance.bus.export.ipfix import MAX_MESSAGE_BYTES, MIN_MESSAGE_BYTES, Mode


def split_host_port(text: str) -> tuple[str, int]:
    """'host:port', '[v6]:port' or 'v6-address:port' -> (host, port); ValueError naming it."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdecimal():
        raise ValueError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{text!r} is not HOST:PORT (write IPv6 as [addr]:port)") from None
    number = int(port)
    if not 1 <= number <= 65535:
        raise ValueError(f"{text!r}: {number} is not a port")
    return host, number


@dataclass
class CollectorConfig:
    """One collector: `address` HOST:PORT, `transport` udp or tcp, `mode` biflow (RFC 5103,
    one record per flow) or uniflow (a record per direction, for collectors that read only
    uniflows)."""

    address: str = ""
    transport: Literal["udp", "tcp"] = "udp"
    mode: Literal["biflow", "uniflow"] = "biflow"

    def validate(self) -> None:
        try:
            split_host_port(self.address)
        except ValueError as exc:
            raise ValueError(f"address: {exc}") from None

    @property
    def name(self) -> str:
        """The `collector` label of the export metrics and the state file's name."""
        return f"{self.transport}://{self.address}"

    def host_port(self) -> tuple[str, int]:
        return split_host_port(self.address)

    def flow_mode(self) -> Mode:
        return Mode(self.mode)


@dataclass
class IpfixConfig:
    """`eventbus.export.ipfix` (see the module docstring and docs/EXPORT.md)."""

    collectors: list[CollectorConfig] = field(default_factory=list)
    #: agent id -> observationDomainId; unmapped agents get a stable hash of their id.
    domains: dict[str, int] = field(default_factory=dict)
    #: capture interface name -> ingressInterface; unmapped names get a stable hash.
    interfaces: dict[str, int] = field(default_factory=dict)
    #: Largest IPFIX message. Over UDP keep it under the path MTU (1400 fits Ethernet with
    #: room for tunnels); over TCP larger messages cost fewer syscalls.
    max_message_bytes: int = 1400
    #: UDP: templates (and the options records naming agents and interfaces) are sent again
    #: this often, and after this many messages of a domain, whichever comes first, so that
    #: a collector that restarts decodes again within that bound.
    template_refresh_s: float = 60.0
    template_refresh_messages: int = 100
    #: Flows read from the store per step (the in-memory window is a few such batches).
    batch_flows: int = 500
    #: TCP: batches sent and not yet acknowledged by the collector's TCP, at most.
    max_unacked_batches: int = 8
    #: How often an idle exporter looks for newly stored flows.
    poll_s: float = 0.2
    #: Where a collector seen for the first time starts: `latest` (flows stored from then on;
    #: `bus export ipfix --since` replays history) or `oldest` (everything the store holds).
    start_at: Literal["latest", "oldest"] = "latest"
    #: TCP: reconnect backoff ceiling (1 s doubling up to this, with jitter).
    reconnect_max_s: float = 30.0
    #: Exporter state (each collector's position in the store); relative to storage.data_dir.
    state_dir: str = "export"

    def validate(self) -> None:
        seen: set[str] = set()
        for i, c in enumerate(self.collectors):
            try:
                c.validate()
            except ValueError as exc:
                raise ValueError(f"collectors[{i}].{exc}") from None
            if c.name in seen:
                raise ValueError(f"collectors[{i}]: {c.name} is listed twice")
            seen.add(c.name)
        for what, mapping, top in (
            ("domains", self.domains, 0xFFFFFFFF),
            ("interfaces", self.interfaces, 0xFFFFFFFF),
        ):
            for key, value in mapping.items():
                if not 1 <= value <= top:
                    raise ValueError(f"{what}.{key}: {value} must be 1..{top}")
        if not MIN_MESSAGE_BYTES <= self.max_message_bytes <= MAX_MESSAGE_BYTES:
            raise ValueError(
                f"max_message_bytes: {self.max_message_bytes} must be "
                f"{MIN_MESSAGE_BYTES}..{MAX_MESSAGE_BYTES}"
            )
        if not 1 <= self.template_refresh_s <= 86400:
            raise ValueError(f"template_refresh_s: {self.template_refresh_s} must be 1..86400")
        if self.template_refresh_messages < 1:
            raise ValueError(
                f"template_refresh_messages: {self.template_refresh_messages} must be at least 1"
            )
        if not 1 <= self.batch_flows <= 100_000:
            raise ValueError(f"batch_flows: {self.batch_flows} must be 1..100000")
        if not 1 <= self.max_unacked_batches <= 1000:
            raise ValueError(f"max_unacked_batches: {self.max_unacked_batches} must be 1..1000")
        if not 0.01 <= self.poll_s <= 60:
            raise ValueError(f"poll_s: {self.poll_s} must be 0.01..60")
        if not 1 <= self.reconnect_max_s <= 3600:
            raise ValueError(f"reconnect_max_s: {self.reconnect_max_s} must be 1..3600")
        if not self.state_dir:
            raise ValueError("state_dir: must not be empty")


@dataclass
class ExportConfig:
    """`eventbus.export`: the bus's exporters (IPFIX today)."""

    ipfix: IpfixConfig = field(default_factory=IpfixConfig)

    def validate(self) -> None:
        self.ipfix.validate()
