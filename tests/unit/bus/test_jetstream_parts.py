"""The JetStream sink's pure parts: its configuration, NATS names, chain entries."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.bus.chain import Chain
from appliance.bus.config import load_bus_settings
from appliance.bus.jetstream import chainkv, naming
from appliance.cli import main
from appliance.config import ConfigError


def test_sink_defaults_to_sqlite_and_takes_jetstream_from_the_environment() -> None:
    assert load_bus_settings(None, env={}).eventbus.sink == "sqlite"
    env = {
        "BUS_SINK": "jetstream",
        "BUS_NATS_SERVERS": "nats://192.0.2.1:4222,nats://[2001:db8::1]:4222",
    }
    cfg = load_bus_settings(None, env=env).eventbus
    assert cfg.sink == "jetstream"
    assert cfg.jetstream.servers == ["nats://192.0.2.1:4222", "nats://[2001:db8::1]:4222"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BUS_SINK": "kafka"}, r"^eventbus\.sink: 'kafka' is not one of 'sqlite', 'jetstream'"),
        (
            {"BUS_NATS_SERVERS": "192.0.2.1"},
            r"^eventbus\.jetstream\.servers\[0\]: '192.0.2.1' is not nats://HOST:PORT",
        ),
    ],
)
def test_bad_sink_settings_name_their_key(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_bus_settings(None, env=env)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("replicas: 2", r"^eventbus\.jetstream\.replicas: 2 must be 1, 3 or 5"),
        ("max_bytes: 10", r"^eventbus\.jetstream\.max_bytes: 10 must be at least"),
        ("duplicate_window_s: 0", r"^eventbus\.jetstream\.duplicate_window_s: 0.0 must be"),
        ("stream: a.b", r"^eventbus\.jetstream\.stream: 'a.b' must be"),
        ("retention: forever", r"^eventbus\.jetstream\.retention: unknown key"),
    ],
)
def test_bad_jetstream_values_are_refused(tmp_path: Path, section: str, message: str) -> None:
    path = tmp_path / "bus.yaml"
    path.write_text(f"eventbus:\n  sink: jetstream\n  jetstream:\n    {section}\n")
    with pytest.raises(ConfigError, match=message):
        load_bus_settings(path, env={})


def test_export_beside_a_jetstream_sink_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "bus.yaml"
    path.write_text(
        "eventbus:\n  sink: jetstream\n  export:\n    ipfix:\n"
        "      collectors: [{address: '198.51.100.7:4739'}]\n"
    )
    with pytest.raises(ConfigError, match="bus export ipfix"):
        load_bus_settings(path, env={})


def test_consume_without_a_jetstream_sink_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["bus", "consume"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "eventbus.sink: jetstream" in err


def test_subjects_are_safe_and_distinct() -> None:
    agents = ["branch-1", "branch.1", "branch 1", "x62", "b", "*", ">", "ü"]
    subjects = [naming.subject("p", a) for a in agents]
    assert len(set(subjects)) == len(agents)
    for s in subjects:
        token = s.removeprefix("p.")
        assert token and all(c.isalnum() or c in "_-" for c in token) and token.isascii()


def test_message_ids_carry_the_agent_and_key_pair_unambiguously() -> None:
    assert naming.msg_id("ab", "c") != naming.msg_id("a", "bc")
    assert naming.msg_id("a", "k") == naming.msg_id("a", "k")
    assert len(naming.msg_id("a", "k" * 128)) == 32
    assert naming.chain_key("a", "00ff") != naming.chain_key("b", "00ff")


def test_chain_entries_round_trip() -> None:
    chain = Chain()
    sig = [bytes([i]) * 64 for i in range(8)]
    chain.add(1, b"", sig[1])
    chain.add(2, sig[1], sig[2])
    chain.add(5, sig[4], sig[5])
    back = chainkv.decode(chainkv.encode(chain))
    assert back.runs == chain.runs
    assert chainkv.decode(chainkv.encode(Chain())).runs == []


@pytest.mark.parametrize("value", [b"", b"\x02", b"\x01\x00", b"\x01" + bytes(16) + b"\x40"])
def test_a_value_not_written_by_us_is_refused(value: bytes) -> None:
    with pytest.raises(ValueError, match="chain entry"):
        chainkv.decode(value)
