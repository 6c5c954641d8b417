"""The box's own health, as a record sealed like any other (docs/AGENT.md, "Health").

Boxes sit behind branch NAT, where no Prometheus can scrape them, so their health travels to
the bus with their records: an `AgentHealth` payload, signed and chained by the same Sealer,
kept in the same WAL, sent by the same forwarder.

- `build_health` is pure: it turns the numbers the agent's parts report into the wire message,
  clamped to what the bus accepts (appliance/bus/validate.py check_health), so a sample is
  never refused for its values;
- what does not change while the agent runs (version, booted slot, certificate expiry) is read
  once, at start, into `HealthFacts`;
- `HealthSchedule` says when the next sample is due: soon after start (a fresh box shows up
  at the bus within seconds), then every `agent.health_interval_s`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509

from appliance.wire import AgentHealth, CaptureHealth

log = logging.getLogger(__name__)

#: The kernel command-line parameter naming the booted root slot (set by the A/B boot sets).
SLOT_PARAM = "appliance.slot"
SLOTS = frozenset({"a", "b"})

#: The first sample this long after start: the forwarder has had time to connect, and a new
#: box is visible at the bus without waiting a whole interval.
FIRST_SAMPLE_DELAY_S = 2.0

#: Bounds of the bus's check (validate.py): counters below 2^63, the offset within 10 years.
_U64_MAX = 2**63 - 1
_OFFSET_MAX_MS = 10 * 365 * 86400 * 1000
_VERSION_MAX_BYTES = 64


@dataclass(frozen=True)
class HealthFacts:
    """What a health sample says that does not change while the agent runs."""

    version: str
    slot: str
    cert_not_after_s: int


@dataclass(frozen=True)
class CaptureCounts:
    """One capture interface's kernel counters, accumulated since the agent started."""

    ifname: str
    packets: int
    drops: int
    own_frames: int


class WalBacklog(Protocol):
    """The part of the WAL's stats a health sample reports (appliance.wal.WalStats)."""

    @property
    def backlog_records(self) -> int: ...

    @property
    def backlog_bytes(self) -> int: ...

    @property
    def oldest_age_s(self) -> float: ...


def read_boot_slot(cmdline: Path) -> str:
    """The root slot the box booted, from `appliance.slot=a|b` on the kernel command line
    (/proc/cmdline); "" when the parameter is absent (not booted from a slotted card), the
    file is unreadable, or the value is not a slot we know (logged)."""
    try:
        words = cmdline.read_text(errors="replace").split()
    except OSError:
        return ""
    values = [w.partition("=")[2] for w in words if w.partition("=")[0] == SLOT_PARAM]
    if not values:
        return ""
    slot = values[-1]  # the kernel, too, lets the last of repeated parameters win
    if slot not in SLOTS:
        log.warning("ignoring %s=%r on the kernel command line: not a or b", SLOT_PARAM, slot[:16])
        return ""
    return slot


def read_cert_not_after(cert_pem: bytes) -> int:
    """The certificate's notAfter, UNIX seconds."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return int(cert.not_valid_after_utc.timestamp())


def _u64(value: float) -> int:
    if value != value or value <= 0:  # NaN or negative: nothing to report
        return 0
    return min(int(value), _U64_MAX)


def build_health(
    facts: HealthFacts,
    *,
    sample_ns: int,
    uptime_s: float,
    capture: Sequence[CaptureCounts],
    wal: WalBacklog,
    forwarder_state: str,
    clock_offset_s: float,
    quarantined: int,
) -> AgentHealth:
    """One health sample from the numbers the agent's parts report (pure)."""
    offset_ms = clock_offset_s * 1000 if math.isfinite(clock_offset_s) else 0.0
    return AgentHealth(
        sample_ns=sample_ns,
        version=facts.version.encode()[:_VERSION_MAX_BYTES].decode(errors="ignore"),
        slot=facts.slot,
        uptime_s=_u64(uptime_s),
        capture=[
            CaptureHealth(
                ifname=c.ifname,
                packets=_u64(c.packets),
                drops=_u64(c.drops),
                own_frames=_u64(c.own_frames),
            )
            for c in capture
        ],
        wal_backlog_records=_u64(wal.backlog_records),
        wal_backlog_bytes=_u64(wal.backlog_bytes),
        wal_oldest_age_ms=_u64(wal.oldest_age_s * 1000),
        forwarder_state=forwarder_state,
        # a box with no real-time clock can be decades behind before its first correction;
        # the bus refuses offsets beyond 10 years, so the sample says "at least that"
        clock_offset_ms=max(-_OFFSET_MAX_MS, min(_OFFSET_MAX_MS, round(offset_ms))),
        cert_not_after_s=_u64(facts.cert_not_after_s),
        quarantined=_u64(quarantined),
    )


@dataclass
class HealthSchedule:
    """When health samples are due, on a monotonic clock: `FIRST_SAMPLE_DELAY_S` after start
    (or the interval, when shorter), then every `interval_s`; never when interval_s is 0."""

    interval_s: float
    started: float
    _next: float | None = None

    def __post_init__(self) -> None:
        if self.interval_s > 0:
            self._next = self.started + min(FIRST_SAMPLE_DELAY_S, self.interval_s)

    def due(self, now: float) -> bool:
        """True when a sample is due at now; the next one is then scheduled an interval on
        (from now: a late sample does not cause a burst of catch-up samples)."""
        if self._next is None or now < self._next:
            return False
        self._next = now + self.interval_s
        return True
