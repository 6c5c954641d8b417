"""The `capture` configuration section (owned by appliance.capture).

```yaml
capture:
  interface: eth1            # the mirror port; several: "eth1,eth2" (each metered, flows
                             # labelled with their port)
  uplink_interface: eth0     # the box's own uplink: its addresses are filtered out by default
  promiscuous: true
  filter: ""                 # user filter, subset of the pcap filter language (docs/FLOWS.md)
  accept_non_ip: false       # let ARP & co. through the kernel filter (they are counted only)
  ring:
    block_size: 1048576      # bytes, a multiple of the page size
    block_count: 64
    retire_timeout_ms: 250   # the kernel hands over a partly filled block after this long
    snaplen: 256             # bytes per frame the kernel copies into the ring
  fanout_group: 0            # 0: no fanout; otherwise PACKET_FANOUT group id (hash mode)
  meter:
    idle_timeout_s: 60
    active_timeout_s: 1800
    close_linger_s: 5         # the close delay: a closed TCP connection's late packets
    max_flows: 200000
  counters_interval_s: 10
  counters_interfaces: []    # empty: every interface
  netns: ""                  # capture inside this named network namespace (tests, demos)
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from appliance.config import build_section

#: Environment overrides (variable -> key path below `capture`).
ENV_NAMES = {
    "IS_CAPTURE_INTERFACE": "interface",
    "IS_CAPTURE_FILTER": "filter",
    "IS_UPLINK_INTERFACE": "uplink_interface",
    "IS_MAX_FLOWS": "meter.max_flows",
}

PAGE_SIZE = 4096


@dataclass
class RingConfig:
    """Geometry of the TPACKET_V3 receive ring."""

    block_size: int = 1 << 20
    block_count: int = 64
    retire_timeout_ms: int = 250
    snaplen: int = 256

    def validate(self) -> None:
        if self.block_size <= 0 or self.block_size % PAGE_SIZE:
            raise ValueError(f"block_size: {self.block_size} is not a multiple of {PAGE_SIZE}")
        if self.block_count < 2:
            raise ValueError(f"block_count: {self.block_count} is below 2")
        if not 1 <= self.retire_timeout_ms <= 60_000:
            raise ValueError(f"retire_timeout_ms: {self.retire_timeout_ms} is not in 1..60000")
        if not 64 <= self.snaplen <= 65535:
            raise ValueError(f"snaplen: {self.snaplen} is not in 64..65535")


@dataclass
class MeterConfig:
    """Flow table limits and expiry rules (docs/FLOWS.md)."""

    idle_timeout_s: float = 60.0
    active_timeout_s: float = 1800.0
    #: The TCP close delay: a connection closed by an RST or by FINs both ways stays in the
    #: table this long, so that its own last packets (the final ACK, a retransmitted FIN) join
    #: it instead of starting a one-packet flow. Zeek's tcp_close_delay is 5 s; softflowd's
    #: tcp.fin timeout 300 s (it counts from the last packet, so it absorbs them too).
    close_linger_s: float = 5.0
    max_flows: int = 200_000

    def validate(self) -> None:
        if self.idle_timeout_s <= 0:
            raise ValueError(f"idle_timeout_s: {self.idle_timeout_s} must be positive")
        if self.active_timeout_s <= 0:
            raise ValueError(f"active_timeout_s: {self.active_timeout_s} must be positive")
        if self.close_linger_s < 0:
            raise ValueError(f"close_linger_s: {self.close_linger_s} must not be negative")
        if self.max_flows < 16:
            raise ValueError(f"max_flows: {self.max_flows} is below 16")


@dataclass
class CaptureConfig:
    """The whole `capture` section."""

    interface: str = "eth1"
    uplink_interface: str = "eth0"
    promiscuous: bool = True
    filter: str = ""
    accept_non_ip: bool = False
    fanout_group: int = 0
    ring: RingConfig = field(default_factory=RingConfig)
    meter: MeterConfig = field(default_factory=MeterConfig)
    counters_interval_s: float = 10.0
    counters_interfaces: list[str] = field(default_factory=list)
    #: Open the capture socket and read counters inside this named network namespace
    #: (/run/netns/NAME), while the agent itself stays in its own: tests, demos, containers.
    netns: str = ""

    @property
    def interfaces(self) -> list[str]:
        """The mirror ports `interface` names (comma-separated), in order."""
        return [name.strip() for name in self.interface.split(",")]

    def validate(self) -> None:
        names = self.interfaces
        for name in names:
            # Linux interface names: 1-15 bytes, no '/', no whitespace (dev_valid_name).
            if not name or len(name.encode()) > 15 or "/" in name or any(c.isspace() for c in name):
                raise ValueError(f"interface: {name!r} is not an interface name")
        if len(set(names)) != len(names):
            raise ValueError(f"interface: {self.interface!r} names a port twice")
        if not 0 <= self.fanout_group < 65536:
            raise ValueError(f"fanout_group: {self.fanout_group} is not in 0..65535")
        if self.counters_interval_s <= 0:
            raise ValueError(f"counters_interval_s: {self.counters_interval_s} must be positive")
        if self.filter:
            from appliance.capture.bpf import FilterSyntaxError, parse_filter

            try:
                parse_filter(self.filter)
            except FilterSyntaxError as exc:
                raise ValueError(f"filter: {exc}") from None


def load_capture_config(doc: dict[str, Any], env: dict[str, str] | None = None) -> CaptureConfig:
    """Build the section from a loaded document (appliance.config.load_document)."""
    return build_section(CaptureConfig, doc.get("capture"), "capture", env=env, env_names=ENV_NAMES)
