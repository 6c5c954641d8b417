"""The `capture` configuration section: defaults, strictness, env overrides, validation."""

from __future__ import annotations

import pytest

from appliance.capture.config import CaptureConfig, load_capture_config
from appliance.config import ConfigError


def test_defaults_without_any_input() -> None:
    cfg = load_capture_config({})
    assert cfg == CaptureConfig()
    assert cfg.meter.max_flows == 200_000 and cfg.ring.block_size == 1 << 20


def test_unknown_key_names_its_full_path() -> None:
    with pytest.raises(ConfigError, match=r"capture\.ring\.blok_size: unknown key"):
        load_capture_config({"capture": {"ring": {"blok_size": 4096}}})


def test_environment_overrides_the_file() -> None:
    doc = {"capture": {"interface": "eth9", "meter": {"max_flows": 1000}}}
    cfg = load_capture_config(doc, {"IS_CAPTURE_INTERFACE": "eth1", "IS_MAX_FLOWS": "5000"})
    assert (cfg.interface, cfg.meter.max_flows) == ("eth1", 5000)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"filter": "tcp and"}, r"capture\.filter: unexpected end"),
        ({"ring": {"block_size": 5000}}, r"capture\.ring\.block_size: 5000 is not a multiple"),
        ({"meter": {"max_flows": 3}}, r"capture\.meter\.max_flows: 3 is below 16"),
        ({"meter": {"idle_timeout_s": 0}}, r"idle_timeout_s: 0.0 must be positive"),
    ],
)
def test_bad_values_are_refused_at_load_with_the_key_path(section: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_capture_config({"capture": section})


def test_several_mirror_ports_are_comma_separated_like_the_image_setting() -> None:
    cfg = load_capture_config({}, {"IS_CAPTURE_INTERFACE": "eth1, eth2"})
    assert cfg.interfaces == ["eth1", "eth2"]
    assert CaptureConfig().interfaces == ["eth1"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("eth1,eth1", "names a port twice"),
        ("eth1,", "'' is not an interface name"),
        ("averyveryverylongname0", "is not an interface name"),
        ("eth 1", "is not an interface name"),
    ],
)
def test_bad_mirror_port_lists_are_refused_with_the_key(value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"capture\.interface: .*{message}"):
        load_capture_config({"capture": {"interface": value}})
