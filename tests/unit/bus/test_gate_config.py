"""The gate's configuration: a receive cap derived from the batch limits, strict limit checks."""

from __future__ import annotations

import pytest

from appliance.bus.config import RECEIVE_CEILING, load_bus_settings
from appliance.config import ConfigError
from appliance.wire import Envelope, PublishBatchRequest


def _env(**eventbus: object) -> dict[str, object]:
    return {"eventbus": eventbus}


def test_default_cap_holds_the_largest_legal_batch_and_stays_under_the_ceiling() -> None:
    cfg = load_bus_settings(None, env={}).eventbus
    env = Envelope(version="v1", idempotency_key="k")
    env.flow.interface = "x" * cfg.max_env_bytes
    env.flow.interface = "x" * (2 * cfg.max_env_bytes - env.ByteSize())  # framing is the same
    assert env.ByteSize() == cfg.max_env_bytes
    largest = PublishBatchRequest(envelopes=[env] * cfg.max_batch).ByteSize()
    assert largest == cfg.receive_cap() <= RECEIVE_CEILING


def test_a_legal_batch_over_the_ceiling_is_a_one_line_error_naming_the_keys(
    tmp_path: object,
) -> None:
    import pathlib

    config = pathlib.Path(str(tmp_path)) / "bus.yaml"
    config.write_text("eventbus:\n  max_env_bytes: 65536\n")  # the old default with max_batch 5000
    with pytest.raises(ConfigError) as info:
        load_bus_settings(config, env={})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("eventbus.max_batch: 5000 envelopes of max_env_bytes 65536")
    assert "64 MiB receive ceiling" in message


@pytest.mark.parametrize(
    ("yaml_body", "message"),
    [
        ("max_open_calls: 64", r"^eventbus\.max_open_calls: 64 is below hard_max 128"),
        ("max_calls_per_peer: 0", r"^eventbus\.max_calls_per_peer: 0 must be 1\.\.max_open_calls"),
        ("max_calls_per_peer: 129", r"^eventbus\.max_calls_per_peer: 129 must be 1\.\."),
        ("message_deadline_s: 0", r"^eventbus\.message_deadline_s: 0.0 must be more than 0"),
        ("handshake_timeout_s: -1", r"^eventbus\.handshake_timeout_s: -1.0 must be"),
        ("max_connection_idle_s: 7200", r"^eventbus\.max_connection_idle_s: 7200.0 must be"),
    ],
)
def test_gate_limits_are_checked_strictly(tmp_path: object, yaml_body: str, message: str) -> None:
    import pathlib

    config = pathlib.Path(str(tmp_path)) / "bus.yaml"
    config.write_text(f"eventbus:\n  {yaml_body}\n")
    with pytest.raises(ConfigError, match=message):
        load_bus_settings(config, env={})


def test_revocation_list_sits_next_to_the_trust_map_unless_absolute() -> None:
    cfg = load_bus_settings(None, env={"IS_TRUST_MAP": "/etc/is/maps/trust.yaml"}).eventbus
    assert str(cfg.revocation_list_path()) == "/etc/is/maps/revoked.yaml"
