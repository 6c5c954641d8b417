"""Ingest validation: every field of an envelope checked for what it means, before its signature.

`check_fields(env, size, cn, now_ns, limits)` returns None or a `Rejection`: one `Reject` kind
(the metric label, bounded) and a one-line message for the sender (the agent quarantines the
record with it). The first failure wins, in this order:

1. envelope: `version` known; `idempotency_key` present, at most 128 bytes, no control
   characters; serialized size at most `max_env_bytes`; `ts_ns` set, at most `max_future_skew`
   ahead of the bus clock and at most `max_past_age` behind it; `agent_id` equal to the
   certificate's CN; `seq` from 1 to 2^63-1; `sig` 64 bytes; `prev_sig` empty or 64 bytes; a
   payload (flow and/or counters);
2. flow: addresses are IPv4 or IPv6 addresses of one family (and of `ip_version` when set);
   ports and the ICMP id 0-65535; `proto` a protocol name or a number 0-255 that agrees with
   `ip_proto`; `ip_proto`, ICMP type and code 0-255; VLAN 0-4095; TCP flags within 12 bits;
   `end_reason` a known value; byte and packet counters below 2^63 (SQLite's integer);
   `start_time <= end_time` (and the ns fields likewise), the flow ending no later than
   `max_future_skew` after it was sealed and starting no earlier than the past bound;
   `interface` a printable name of at most 64 bytes;
3. counters: the sample time inside the same window; every counter below 2^63; interface names
   as above; at most `MAX_INTERFACES` interfaces;
4. health: the sample time inside the same window; counters below 2^63; version and slot
   printable (at most 64 and 8 bytes); a known forwarder state; a clock offset within
   +-10 years; at most `MAX_INTERFACES` capture interfaces with printable names.

Then (server.py) the Ed25519 signature, and (store.py, chain.py) idempotency conflicts, reused
sequence numbers and chain links. Nothing the store cannot hold gets past step 2.
"""

from __future__ import annotations

import enum
import re
import socket
from dataclasses import dataclass

from appliance.wire import (
    SUPPORTED_VERSIONS,
    AgentHealth,
    Envelope,
    FlowEvent,
    InterfaceCounters,
    InterfaceStats,
)

MAX_KEY_BYTES = 128
MAX_INTERFACE_BYTES = 64
MAX_INTERFACES = 256
#: SQLite integers are signed 64-bit: a uint64 at or above this cannot be stored.
INT64_LIMIT = 1 << 63
SIG_BYTES = 64
NS_PER_MS = 1_000_000

#: Protocol names the agent writes (appliance/capture/flows.py) and the usual others.
PROTO_NUMBERS = {
    "ICMP": 1, "IGMP": 2, "TCP": 6, "UDP": 17, "GRE": 47, "ESP": 50, "AH": 51, "ICMPV6": 58,
    "OSPF": 89, "PIM": 103, "VRRP": 112, "SCTP": 132,
}  # fmt: skip
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_PRINTABLE_NAME = re.compile(r"^[\x21-\x7e]*$")
_END_REASONS = frozenset(FlowEvent.EndReason.values())
_FLOW_U64 = (
    "bytes_tx", "bytes_rx", "packets_tx", "packets_rx", "start_time", "end_time", "start_ns",
    "end_ns",
)  # fmt: skip
_STATS_U64 = tuple(f.name for f in InterfaceStats.DESCRIPTOR.fields if f.type == f.TYPE_UINT64)
_HEALTH_U64 = tuple(f.name for f in AgentHealth.DESCRIPTOR.fields if f.type == f.TYPE_UINT64)
#: The forwarder's states (appliance/agent/forwarder.py State) a health record may report.
FORWARDER_STATES = frozenset({"connecting", "connected", "throttled", "backing_off", "stopped"})
MAX_CLOCK_OFFSET_MS = 10 * 365 * 86400 * 1000


class Reject(enum.Enum):
    """Why the bus refused something. The value is the `bus_rejected_total{reason}` label."""

    # the call, at the gate (appliance/bus/gate.py), before its message is read
    NO_IDENTITY = "no_identity"
    REVOKED = "revoked"
    UNTRUSTED = "untrusted"
    PEER_LIMIT = "peer_limit"
    OPEN_CALLS_LIMIT = "open_calls_limit"
    DEADLINE = "deadline"
    NO_MESSAGE = "no_message"
    EXTRA_MESSAGE = "extra_message"
    CANCELLED = "cancelled"
    # the call's message as a whole
    UNDECODABLE = "undecodable"
    BATCH_TOO_LARGE = "batch_too_large"
    # the envelope
    VERSION = "version"
    NO_KEY = "no_key"
    BAD_KEY = "bad_key"
    OVERSIZED = "oversized"
    NO_TIMESTAMP = "no_timestamp"
    FUTURE_TIMESTAMP = "future_timestamp"
    PAST_TIMESTAMP = "past_timestamp"
    AGENT_MISMATCH = "agent_mismatch"
    BAD_SEQ = "bad_seq"
    BAD_SIG_FIELD = "bad_sig_field"
    NO_PAYLOAD = "no_payload"
    # the payload's values
    BAD_ADDRESS = "bad_address"
    BAD_PORT = "bad_port"
    BAD_PROTO = "bad_proto"
    BAD_VLAN = "bad_vlan"
    BAD_COUNTER = "bad_counter"
    BAD_TIME = "bad_time"
    BAD_FIELD = "bad_field"
    # after the checks
    BAD_SIGNATURE = "bad_signature"
    CONFLICT = "conflict"
    SEQ_REUSED = "seq_reused"
    CHAIN_BROKEN = "chain_broken"
    UNSTORABLE = "unstorable"


@dataclass(frozen=True, slots=True)
class Rejection:
    """One refusal: its kind (bounded) and the sentence the sender gets."""

    kind: Reject
    message: str


@dataclass(frozen=True)
class Limits:
    """The configurable bounds of check_fields."""

    max_env_bytes: int
    max_future_skew_ns: int
    max_past_age_ns: int


def check_fields(
    env: Envelope, size: int, cn: str, now_ns: int, limits: Limits
) -> Rejection | None:
    """None when every field of env is acceptable from the peer cn, else the first rejection."""
    if env.version not in SUPPORTED_VERSIONS:
        return Rejection(Reject.VERSION, f"unknown envelope version {env.version[:16]!r}")
    key = env.idempotency_key
    if not key:
        return Rejection(Reject.NO_KEY, "missing idempotency key")
    if len(key.encode()) > MAX_KEY_BYTES:
        return Rejection(Reject.BAD_KEY, f"idempotency key longer than {MAX_KEY_BYTES} bytes")
    if _CONTROL.search(key):
        return Rejection(Reject.BAD_KEY, "idempotency key contains control characters")
    if size > limits.max_env_bytes:
        return Rejection(
            Reject.OVERSIZED,
            f"envelope of {size} bytes exceeds max_env_bytes {limits.max_env_bytes}",
        )
    window = _time_window(env.ts_ns, now_ns, limits, "timestamp")
    if window is not None:
        return window
    if env.agent_id != cn:
        return Rejection(
            Reject.AGENT_MISMATCH,
            f"agent_id {env.agent_id[:64]!r} does not match the certificate CN {cn!r}",
        )
    if not 1 <= env.seq < INT64_LIMIT:
        return Rejection(Reject.BAD_SEQ, f"seq {env.seq} is outside 1..2^63-1")
    if len(env.sig) != SIG_BYTES or len(env.prev_sig) not in (0, SIG_BYTES):
        return Rejection(Reject.BAD_SIG_FIELD, "sig must be 64 bytes and prev_sig empty or 64")
    has_flow, has_counters = env.HasField("flow"), env.HasField("counters")
    has_health = env.HasField("health")
    if not has_flow and not has_counters and not has_health:
        return Rejection(Reject.NO_PAYLOAD, "envelope carries no payload")
    bad = None
    if has_flow:
        bad = check_flow(env.flow, env.ts_ns, limits)
    if bad is None and has_counters:
        bad = check_counters(env.counters, now_ns, limits)
    if bad is None and has_health:
        bad = check_health(env.health, now_ns, limits)
    return bad


def _time_window(ts_ns: int, now_ns: int, limits: Limits, what: str) -> Rejection | None:
    if ts_ns == 0:
        return Rejection(Reject.NO_TIMESTAMP, f"missing {what}")
    if ts_ns > now_ns + limits.max_future_skew_ns:
        ahead = (ts_ns - now_ns) / 1e9
        return Rejection(Reject.FUTURE_TIMESTAMP, f"{what} {ahead:.0f} s in the future (clock?)")
    if ts_ns < now_ns - limits.max_past_age_ns:
        behind = (now_ns - ts_ns) / 1e9
        return Rejection(
            Reject.PAST_TIMESTAMP,
            f"{what} {behind:.0f} s in the past, beyond max_past_age_s "
            f"{limits.max_past_age_ns // 10**9}",
        )
    return None


def normal_ip(text: str) -> str:
    """The normal text form of an address check_flow accepted: IPv4 as given (inet_pton takes
    only the dotted-quad form without leading zeros), IPv6 as inet_ntop writes it (RFC 5952)."""
    if ":" not in text:
        return text
    return socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, text))


def _address_family(text: str) -> int:
    """4 or 6 for a valid textual address, 0 otherwise (inet_pton is strict: no zone ids,
    no shortened or octal IPv4 forms)."""
    family, version = (socket.AF_INET6, 6) if ":" in text else (socket.AF_INET, 4)
    try:
        socket.inet_pton(family, text)
    except (OSError, ValueError):
        return 0
    return version


def check_flow(f: FlowEvent, ts_ns: int, limits: Limits) -> Rejection | None:
    """The flow's values against their meaning (see the module docstring)."""
    src, dst = _address_family(f.src_ip), _address_family(f.dst_ip)
    if not src or not dst:
        bad = f.src_ip if not src else f.dst_ip
        return Rejection(Reject.BAD_ADDRESS, f"{bad[:64]!r} is not an IP address")
    if src != dst or f.ip_version not in (0, src):
        return Rejection(Reject.BAD_ADDRESS, "addresses and ip_version disagree on the family")
    if f.src_port > 0xFFFF or f.dst_port > 0xFFFF or f.icmp_id > 0xFFFF:
        return Rejection(Reject.BAD_PORT, "a port or the ICMP id is above 65535")
    proto = _proto_number(f.proto)
    if proto is None or (f.ip_proto and f.ip_proto != proto):
        return Rejection(Reject.BAD_PROTO, f"proto {f.proto[:16]!r} with ip_proto {f.ip_proto}")
    if f.ip_proto > 0xFF or f.icmp_type > 0xFF or f.icmp_code > 0xFF:
        return Rejection(Reject.BAD_FIELD, "ip_proto, icmp_type and icmp_code are 0-255")
    if f.vlan > 4095:
        return Rejection(Reject.BAD_VLAN, f"vlan {f.vlan} is outside 0-4095")
    if max(f.flags, f.flags_tx, f.flags_rx) > 0xFFF or f.end_reason not in _END_REASONS:
        return Rejection(Reject.BAD_FIELD, "TCP flags beyond 12 bits or an unknown end_reason")
    if (
        max(f.bytes_tx, f.bytes_rx, f.packets_tx, f.packets_rx, f.start_time, f.end_time)
        >= INT64_LIMIT
        or max(f.start_ns, f.end_ns) >= INT64_LIMIT
    ):
        name = next(n for n in _FLOW_U64 if getattr(f, n) >= INT64_LIMIT)
        return Rejection(Reject.BAD_COUNTER, f"{name} does not fit a signed 64-bit integer")
    if f.start_time > f.end_time or f.start_ns > f.end_ns:
        return Rejection(Reject.BAD_TIME, "the flow ends before it starts")
    if f.end_time * NS_PER_MS > ts_ns + limits.max_future_skew_ns:
        return Rejection(Reject.BAD_TIME, "the flow ends after it was sealed")
    if f.start_time * NS_PER_MS < ts_ns - limits.max_past_age_ns:
        return Rejection(Reject.BAD_TIME, "the flow starts before max_past_age_s")
    return _check_name(f.interface)


def _proto_number(proto: str) -> int | None:
    if proto.isdecimal() and len(proto) <= 3:
        number = int(proto)
        return number if number <= 0xFF else None
    return PROTO_NUMBERS.get(proto.upper())


def _check_name(name: str) -> Rejection | None:
    if not name:
        return None
    if len(name.encode()) > MAX_INTERFACE_BYTES or not _PRINTABLE_NAME.match(name):
        limit = MAX_INTERFACE_BYTES
        return Rejection(Reject.BAD_FIELD, f"interface name not printable or over {limit} bytes")
    return None


def check_counters(c: InterfaceCounters, now_ns: int, limits: Limits) -> Rejection | None:
    """The counters sample against its meaning (see the module docstring)."""
    window = _time_window(c.sample_ns, now_ns, limits, "counters sample time")
    if window is not None:
        return window
    if len(c.interfaces) > MAX_INTERFACES:
        return Rejection(Reject.BAD_FIELD, f"more than {MAX_INTERFACES} interfaces")
    if c.capture_packets >= INT64_LIMIT or c.capture_drops >= INT64_LIMIT:
        return Rejection(Reject.BAD_COUNTER, "a capture counter does not fit 64-bit signed")
    for stats in c.interfaces:
        bad = _check_name(stats.ifname)
        if bad is not None:
            return bad
        for name in _STATS_U64:
            if getattr(stats, name) >= INT64_LIMIT:
                return Rejection(Reject.BAD_COUNTER, f"{name} does not fit a signed 64-bit integer")
    return None


def check_health(h: AgentHealth, now_ns: int, limits: Limits) -> Rejection | None:
    """A health sample against its meaning (see the module docstring)."""
    window = _time_window(h.sample_ns, now_ns, limits, "health sample time")
    if window is not None:
        return window
    for name in _HEALTH_U64:
        if getattr(h, name) >= INT64_LIMIT:
            return Rejection(Reject.BAD_COUNTER, f"{name} does not fit a signed 64-bit integer")
    if abs(h.clock_offset_ms) > MAX_CLOCK_OFFSET_MS:
        return Rejection(Reject.BAD_TIME, "clock_offset_ms beyond 10 years")
    if h.forwarder_state and h.forwarder_state not in FORWARDER_STATES:
        return Rejection(Reject.BAD_FIELD, f"unknown forwarder_state {h.forwarder_state[:16]!r}")
    if (
        len(h.version.encode()) > 64
        or len(h.slot.encode()) > 8
        or not _PRINTABLE_NAME.match(h.version)
        or not _PRINTABLE_NAME.match(h.slot)
    ):
        return Rejection(Reject.BAD_FIELD, "version or slot not printable, or too long")
    if len(h.capture) > MAX_INTERFACES:
        return Rejection(Reject.BAD_FIELD, f"more than {MAX_INTERFACES} capture interfaces")
    for cap in h.capture:
        bad = _check_name(cap.ifname)
        if bad is not None:
            return bad
        if max(cap.packets, cap.drops, cap.own_frames) >= INT64_LIMIT:
            return Rejection(Reject.BAD_COUNTER, "a capture counter does not fit 64-bit signed")
    return None
