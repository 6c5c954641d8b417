"""Ingest validation: every field checked for what it means, a typed reason for each refusal,
and nothing accepted that the store cannot hold (property-based: decode -> validate -> store).

The property tests run a bounded number of examples in CI; `HYPOTHESIS_PROFILE=soak` runs many
more (docs/PERFORMANCE.md records such a run).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from appliance.bus.server import envelope_record
from appliance.bus.store import FlowStore, Outcome
from appliance.bus.validate import Limits, Reject, check_fields
from appliance.crypto import Sealer, sign_envelope
from appliance.wire import (
    AgentHealth,
    CaptureHealth,
    Envelope,
    FlowEvent,
    InterfaceCounters,
    InterfaceStats,
)

settings.register_profile("ci", max_examples=300, deadline=None)
settings.register_profile(
    "soak", max_examples=200_000, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

DAY_NS = 86400 * 10**9
LIMITS = Limits(max_env_bytes=16384, max_future_skew_ns=300 * 10**9, max_past_age_ns=30 * DAY_NS)
NOW = time.time_ns()
U64 = (1 << 64) - 1
KEY = SigningKey(bytes(range(32)))


def _flow(**overrides: object) -> FlowEvent:
    end_ms = NOW // 10**6 - 60_000
    fields: dict[str, object] = dict(
        src_ip="192.0.2.10", dst_ip="198.51.100.20", src_port=40000, dst_port=443, proto="TCP",
        bytes_tx=1000, bytes_rx=2000, packets_tx=3, packets_rx=4, start_time=end_ms - 1000,
        end_time=end_ms, ip_version=4, ip_proto=6, vlan=10, flags=0x1B,
    )  # fmt: skip
    fields.update(overrides)
    return FlowEvent(**fields)  # type: ignore[arg-type]


def _seal(flow: FlowEvent | None = None, counters: InterfaceCounters | None = None) -> Envelope:
    return Sealer("branch-1", KEY, clock_ns=lambda: NOW).seal(flow, counters)


def _check(env: Envelope) -> Reject | None:
    rejection = check_fields(env, env.ByteSize(), "branch-1", NOW, LIMITS)
    return None if rejection is None else rejection.kind


def test_a_normal_flow_and_counters_sample_pass() -> None:
    assert _check(_seal(_flow())) is None
    assert _check(_seal(_flow(src_ip="2001:db8::1", dst_ip="2001:db8::2", ip_version=6))) is None
    sample = InterfaceCounters(sample_ns=NOW, interfaces=[InterfaceStats(ifname="eth0")])
    assert _check(_seal(counters=sample)) is None


FLOW_U64 = ["bytes_tx", "bytes_rx", "packets_tx", "packets_rx", "start_ns", "end_ns"]


@pytest.mark.parametrize("field", FLOW_U64)
@pytest.mark.parametrize("value", [1 << 63, U64])
def test_a_poison_uint64_in_any_flow_counter_is_bad_counter(field: str, value: int) -> None:
    extra = {"end_ns": U64} if field == "start_ns" else {}  # keep start <= end
    assert _check(_seal(_flow(**{field: value, **extra}))) is Reject.BAD_COUNTER


@pytest.mark.parametrize("field", ["start_time", "end_time"])
def test_a_poison_flow_time_is_refused(field: str) -> None:
    assert _check(_seal(_flow(**{field: 1 << 63, "end_time": U64}))) in (
        Reject.BAD_COUNTER,
        Reject.BAD_TIME,
    )


STATS_U64 = [f.name for f in InterfaceStats.DESCRIPTOR.fields if f.type == f.TYPE_UINT64]


@pytest.mark.parametrize("field", STATS_U64)
def test_a_poison_uint64_in_any_interface_counter_is_bad_counter(field: str) -> None:
    stats = InterfaceStats(ifname="eth0", **{field: 1 << 63})
    sample = InterfaceCounters(sample_ns=NOW, interfaces=[stats])
    assert _check(_seal(counters=sample)) is Reject.BAD_COUNTER


def test_poison_envelope_numbers() -> None:
    env = _seal(_flow())
    env.seq = 1 << 63
    assert _check(env) is Reject.BAD_SEQ
    env.seq = 0
    assert _check(env) is Reject.BAD_SEQ
    env = _seal(_flow())
    env.ts_ns = U64
    assert _check(env) is Reject.FUTURE_TIMESTAMP
    env.ts_ns = 1
    assert _check(env) is Reject.PAST_TIMESTAMP
    counters = InterfaceCounters(sample_ns=NOW, capture_drops=1 << 63)
    assert _check(_seal(counters=counters)) is Reject.BAD_COUNTER
    assert _check(_seal(counters=InterfaceCounters(sample_ns=5))) is Reject.PAST_TIMESTAMP


@pytest.mark.parametrize(
    ("overrides", "kind"),
    [
        ({"src_port": 70000}, Reject.BAD_PORT),
        ({"dst_port": 65536}, Reject.BAD_PORT),
        ({"icmp_id": 1 << 20}, Reject.BAD_PORT),
        ({"vlan": 4096}, Reject.BAD_VLAN),
        ({"vlan": 99999}, Reject.BAD_VLAN),
        ({"src_ip": "not-an-ip"}, Reject.BAD_ADDRESS),
        ({"dst_ip": "999.1.1.1"}, Reject.BAD_ADDRESS),
        ({"dst_ip": ""}, Reject.BAD_ADDRESS),
        ({"src_ip": "fe80::1%eth0"}, Reject.BAD_ADDRESS),
        ({"dst_ip": "2001:db8::2"}, Reject.BAD_ADDRESS),  # families differ
        ({"ip_version": 6}, Reject.BAD_ADDRESS),
        ({"proto": "FOO"}, Reject.BAD_PROTO),
        ({"proto": "256"}, Reject.BAD_PROTO),
        ({"proto": "UDP"}, Reject.BAD_PROTO),  # ip_proto says 6
        ({"ip_proto": 300, "proto": "44"}, Reject.BAD_PROTO),
        ({"icmp_type": 256}, Reject.BAD_FIELD),
        ({"flags": 1 << 12}, Reject.BAD_FIELD),
        ({"end_reason": 99}, Reject.BAD_FIELD),
        ({"interface": "eth0\x1b[2J"}, Reject.BAD_FIELD),
        ({"interface": "x" * 65}, Reject.BAD_FIELD),
        ({"start_time": 0, "end_time": 0}, Reject.BAD_TIME),  # 1970
        ({"start_time": NOW // 10**6, "end_time": NOW // 10**6 - 5}, Reject.BAD_TIME),
        ({"end_time": NOW // 10**6 + 3600_000}, Reject.BAD_TIME),
    ],
)
def test_out_of_range_flow_values_are_refused_with_their_kind(
    overrides: dict[str, object], kind: Reject
) -> None:
    assert _check(_seal(_flow(**overrides))) is kind


def test_envelope_fields() -> None:
    env = _seal(_flow())
    env.idempotency_key = "k\x1b]0;pwned\x07"
    assert _check(env) is Reject.BAD_KEY
    env = _seal(_flow())
    env.prev_sig = b"\x00" * 10
    assert _check(env) is Reject.BAD_SIG_FIELD
    env = _seal(_flow())
    env.agent_id = "branch-2"
    assert _check(env) is Reject.AGENT_MISMATCH
    assert _check(_seal()) is Reject.NO_PAYLOAD
    oversized = check_fields(_seal(_flow()), 20000, "branch-1", NOW, LIMITS)
    assert oversized is not None and oversized.kind is Reject.OVERSIZED


# -- property: decode -> validate -> store never fails on what validation accepted ------------

u64 = st.one_of(
    st.integers(0, 2**16),
    st.sampled_from([0, 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, U64]),
    st.integers(0, U64),
)
u32 = st.one_of(
    st.integers(0, 2**16), st.sampled_from([2**31, 2**32 - 1]), st.integers(0, 2**32 - 1)
)
text = st.one_of(
    st.sampled_from(["192.0.2.1", "2001:db8::1", "::ffff:192.0.2.1", "TCP", "17", "eth0", ""]),
    st.text(max_size=40),
)
# Every field is plausible except at most one, which hypothesis may make wild: so the accepted
# path, and the store behind it, is exercised as often as each refusal.
v4 = st.sampled_from(["192.0.2.1", "198.51.100.255", "0.0.0.0", "255.255.255.255"])
v6 = st.sampled_from(["2001:db8::1", "::", "::ffff:192.0.2.1", "fe80::1", "2001:db8:0:0:1::1"])
ms_near_now = st.integers(NOW // 10**6 - 28 * 86400_000, NOW // 10**6)
near_now_ns = st.integers(NOW - 29 * DAY_NS, NOW + 290 * 10**9)
i32 = st.integers(-(2**31), 2**31 - 1)
FIELDS = [f.name for f in FlowEvent.DESCRIPTOR.fields] + ["ts_ns"]


@st.composite
def envelopes_in_parts(draw: st.DrawFn) -> tuple[FlowEvent, int]:
    wild_field = draw(st.sampled_from([None, *FIELDS]))

    def pick(name: str, plausible: st.SearchStrategy, wild: st.SearchStrategy = u64) -> object:
        return draw(wild if name == wild_field else plausible)

    family = v6 if draw(st.booleans()) else v4
    start = int(pick("start_time", ms_near_now))  # type: ignore[call-overload]
    end = int(pick("end_time", st.integers(start, min(start + 7200_000, U64))))  # type: ignore[call-overload]
    flow = FlowEvent(
        src_ip=pick("src_ip", family, text), dst_ip=pick("dst_ip", family, text),
        src_port=pick("src_port", st.integers(0, 65535), u32),
        dst_port=pick("dst_port", st.integers(0, 65535), u32),
        proto=pick("proto", st.sampled_from(["TCP", "udp", "47", "0", "255"]), text),
        bytes_tx=pick("bytes_tx", st.integers(0, 2**40)),
        bytes_rx=pick("bytes_rx", st.integers(0, 2**40)),
        packets_tx=pick("packets_tx", st.integers(0, 2**32)),
        packets_rx=pick("packets_rx", st.integers(0, 2**32)),
        duration_ms=draw(u32), start_time=start, end_time=end,
        flags=pick("flags", st.integers(0, 0xFF), u32),
        flags_tx=pick("flags_tx", st.integers(0, 0xFF), u32),
        flags_rx=pick("flags_rx", st.integers(0, 0xFF), u32),
        vlan=pick("vlan", st.integers(0, 4095), u32),
        ip_version=pick("ip_version", st.just(0), st.integers(0, 7)),
        ip_proto=pick("ip_proto", st.just(0), st.integers(0, 300)),
        icmp_type=pick("icmp_type", st.integers(0, 255), u32),
        icmp_code=pick("icmp_code", st.integers(0, 255), u32),
        icmp_id=pick("icmp_id", st.integers(0, 65535), u32),
        end_reason=pick("end_reason", st.integers(0, 6), i32),
        interface=pick("interface", st.sampled_from(["", "eth0", "m1"]), text),
        start_ns=pick("start_ns", st.just(min(start * 10**6, U64))),
        end_ns=pick("end_ns", st.just(min(end * 10**6, U64))),
    )  # fmt: skip
    return flow, int(pick("ts_ns", near_now_ns))  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlowStore]:
    s = FlowStore(Path(tmp_path_factory.mktemp("fuzz")) / "s.sqlite", sync="off")
    yield s
    s.close()


@given(parts=envelopes_in_parts())
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_whatever_validation_accepts_the_store_stores(
    store: FlowStore, parts: tuple[FlowEvent, int]
) -> None:
    flow, ts = parts
    sealer = Sealer("branch-1", KEY, clock_ns=lambda: ts)
    env = sealer.seal(flow)
    raw = env.SerializeToString()
    decoded = Envelope.FromString(raw)
    rejection = check_fields(decoded, len(raw), "branch-1", NOW, LIMITS)
    if rejection is not None:
        assert rejection.message and "\n" not in rejection.message
        event(f"refused: {rejection.kind.value}")
        return
    event("accepted")
    # every example starts a chain of its own (seq 1): a key id per example
    record = envelope_record(decoded, raw, NOW, f"k-{decoded.idempotency_key}")
    assert store.submit([record]).result(10).outcomes == [Outcome.STORED]


@given(st.binary(max_size=512))
def test_arbitrary_bytes_decode_or_fail_cleanly_and_never_pass_validation_unsigned(
    data: bytes,
) -> None:
    try:
        env = Envelope.FromString(data)
    except DecodeError:
        return
    rejection = check_fields(env, len(data), "branch-1", NOW, LIMITS)
    # random bytes almost never make a valid-looking envelope; if they do, the signature
    # check (not tested here) is what refuses them: validation must still not raise
    assert rejection is None or rejection.kind in Reject


def _health(**overrides: object) -> AgentHealth:
    fields: dict[str, object] = dict(
        sample_ns=NOW, version="0.1.0", slot="a", uptime_s=60, forwarder_state="connected",
        clock_offset_ms=-12, cert_not_after_s=NOW // 10**9 + 86400 * 300,
        capture=[CaptureHealth(ifname="eth1", packets=10, drops=0)],
    )  # fmt: skip
    fields.update(overrides)
    return AgentHealth(**fields)  # type: ignore[arg-type]


def test_a_health_record_passes_and_its_fields_are_checked() -> None:
    assert _check(_seal_health(_health())) is None
    for overrides, kind in [
        ({"sample_ns": 0}, Reject.NO_TIMESTAMP),
        ({"wal_backlog_records": 1 << 63}, Reject.BAD_COUNTER),
        ({"clock_offset_ms": -(1 << 62)}, Reject.BAD_TIME),
        ({"forwarder_state": "dancing"}, Reject.BAD_FIELD),
        ({"version": "1\x1b[2J"}, Reject.BAD_FIELD),
        ({"capture": [CaptureHealth(ifname="eth1", drops=1 << 63)]}, Reject.BAD_COUNTER),
        ({"capture": [CaptureHealth(ifname="e\nth1")]}, Reject.BAD_FIELD),
    ]:
        assert _check(_seal_health(_health(**overrides))) is kind, overrides


def _seal_health(health: AgentHealth) -> Envelope:
    env = _seal(_flow())
    env.ClearField("flow")
    env.health.CopyFrom(health)
    sign_envelope(env, KEY)
    return env
