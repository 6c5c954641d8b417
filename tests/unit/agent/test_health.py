"""The health sample: a pure function of what the agent's parts report, valid at the bus."""

from __future__ import annotations

import datetime
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.agent.config import AgentConfig
from appliance.agent.health import (
    FIRST_SAMPLE_DELAY_S,
    CaptureCounts,
    HealthFacts,
    HealthSchedule,
    build_health,
    read_boot_slot,
    read_cert_not_after,
)
from appliance.bus.validate import Limits, check_health
from appliance.config import ConfigError, build_section
from appliance.wire import AgentHealth

S = 1_000_000_000
NOW = 1_800_000_000 * S
LIMITS = Limits(max_env_bytes=65536, max_future_skew_ns=300 * S, max_past_age_ns=86400 * S)
FACTS = HealthFacts(version="1.2.3", slot="b", cert_not_after_s=1_900_000_000)


def _wal(records: int = 0, nbytes: int = 0, age_s: float = 0.0) -> SimpleNamespace:
    return SimpleNamespace(backlog_records=records, backlog_bytes=nbytes, oldest_age_s=age_s)


def _sample(**overrides: Any) -> AgentHealth:
    args: dict[str, Any] = dict(
        sample_ns=NOW, uptime_s=3600.7, capture=[], wal=_wal(), forwarder_state="connected",
        clock_offset_s=0.0, quarantined=0,
    )  # fmt: skip
    args.update(overrides)
    return build_health(FACTS, **args)


def test_every_field_comes_from_the_source_passed_in() -> None:
    h = build_health(
        FACTS,
        sample_ns=NOW,
        uptime_s=3600.7,
        capture=[
            CaptureCounts("mirror0", packets=1000, drops=7, own_frames=2),
            CaptureCounts("mirror1", packets=5, drops=0, own_frames=0),
        ],
        wal=_wal(records=42, nbytes=8192, age_s=12.3456),
        forwarder_state="backing_off",
        clock_offset_s=-1.2345,
        quarantined=3,
    )
    assert h.sample_ns == NOW
    assert (h.version, h.slot, h.cert_not_after_s) == ("1.2.3", "b", 1_900_000_000)
    assert h.uptime_s == 3600
    assert [(c.ifname, c.packets, c.drops, c.own_frames) for c in h.capture] == [
        ("mirror0", 1000, 7, 2),
        ("mirror1", 5, 0, 0),
    ]
    assert (h.wal_backlog_records, h.wal_backlog_bytes, h.wal_oldest_age_ms) == (42, 8192, 12345)
    assert h.forwarder_state == "backing_off"
    assert h.clock_offset_ms == -1234
    assert h.quarantined == 3
    assert check_health(h, NOW, LIMITS) is None


@pytest.mark.parametrize(
    "state", ["connecting", "connected", "throttled", "backing_off", "stopped"]
)
def test_every_forwarder_state_passes_the_bus_check(state: str) -> None:
    from appliance.agent.forwarder import State

    assert state in {s.value for s in State}
    assert check_health(_sample(forwarder_state=state), NOW, LIMITS) is None


def test_a_clock_decades_behind_is_reported_as_the_most_the_bus_accepts() -> None:
    fifty_years = 50 * 365 * 86400.0
    for offset in (fifty_years, -fifty_years):
        h = _sample(clock_offset_s=offset)
        assert check_health(h, NOW, LIMITS) is None
        assert abs(h.clock_offset_ms) == 10 * 365 * 86400 * 1000
    assert _sample(clock_offset_s=math.nan).clock_offset_ms == 0


def test_nonsense_numbers_become_zero_or_the_largest_value_the_bus_accepts() -> None:
    h = _sample(
        uptime_s=-5.0, wal=_wal(records=2**64, nbytes=-1, age_s=math.nan), quarantined=2**70
    )
    assert h.uptime_s == 0
    assert h.wal_backlog_records == 2**63 - 1
    assert (h.wal_backlog_bytes, h.wal_oldest_age_ms) == (0, 0)
    assert check_health(h, NOW, LIMITS) is None


def test_a_long_version_is_cut_to_what_the_bus_accepts() -> None:
    h = build_health(
        HealthFacts(version="9" * 100, slot="", cert_not_after_s=0),
        sample_ns=NOW, uptime_s=1, capture=[], wal=_wal(), forwarder_state="connecting",
        clock_offset_s=0.0, quarantined=0,
    )  # fmt: skip
    assert len(h.version) == 64
    assert check_health(h, NOW, LIMITS) is None


@pytest.mark.parametrize(
    ("cmdline", "slot"),
    [
        ("console=ttyAMA0 root=/dev/mmcblk0p2 appliance.slot=a rootwait\n", "a"),
        ("appliance.slot=b", "b"),
        ("appliance.slot=a quiet appliance.slot=b", "b"),  # the last one wins, as in the kernel
        ("console=ttyAMA0 root=/dev/vda2", ""),
        ("appliance.slot=c", ""),
        ("appliance.slot=", ""),
        ("xappliance.slot=a appliance.slotx=a", ""),
        ("", ""),
    ],
)
def test_the_boot_slot_comes_from_the_kernel_command_line(
    tmp_path: Path, cmdline: str, slot: str
) -> None:
    path = tmp_path / "cmdline"
    path.write_text(cmdline)
    assert read_boot_slot(path) == slot


def test_no_kernel_command_line_means_no_slot(tmp_path: Path) -> None:
    assert read_boot_slot(tmp_path / "absent") == ""


def test_the_certificate_expiry_is_its_not_after_in_unix_seconds() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "branch-1")])
    not_after = datetime.datetime(2031, 5, 17, 12, 30, 5, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    assert read_cert_not_after(pem) == int(not_after.timestamp())


def test_the_first_sample_comes_soon_after_start_then_one_per_interval() -> None:
    schedule = HealthSchedule(60.0, started=100.0)
    assert not schedule.due(100.0)
    assert not schedule.due(100.0 + FIRST_SAMPLE_DELAY_S - 0.01)
    assert schedule.due(100.0 + FIRST_SAMPLE_DELAY_S)
    assert not schedule.due(100.0 + FIRST_SAMPLE_DELAY_S + 59.9)
    assert schedule.due(100.0 + FIRST_SAMPLE_DELAY_S + 60.0)
    # a sample taken late does not bring a burst of catch-up samples
    assert schedule.due(1000.0)
    assert not schedule.due(1000.5)


def test_an_interval_shorter_than_the_first_delay_is_kept_from_the_start() -> None:
    schedule = HealthSchedule(1.0, started=0.0)
    assert [t for t in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0) if schedule.due(t)] == [1.0, 2.0, 3.0]


def test_interval_zero_never_samples() -> None:
    schedule = HealthSchedule(0.0, started=0.0)
    assert not any(schedule.due(t) for t in (0.0, 2.0, 1e9))


@pytest.mark.parametrize("value", [-1, 0.5, 86401, math.nan])
def test_a_bad_health_interval_is_refused_with_its_key_path(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^agent\.health_interval_s: "):
        build_section(
            AgentConfig,
            {"health_interval_s": value},
            "agent",
        )


def test_the_health_interval_defaults_to_a_minute_and_takes_the_environment() -> None:
    assert build_section(AgentConfig, None, "agent").health_interval_s == 60.0
    from appliance.agent.config import AGENT_ENV

    cfg = build_section(
        AgentConfig, None, "agent", env={"IS_HEALTH_INTERVAL_S": "0"}, env_names=AGENT_ENV
    )
    assert cfg.health_interval_s == 0.0
