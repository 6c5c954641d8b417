"""agent.update: strict like every section; the updater's paths under device_root."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.agent.cli import load_agent_settings
from appliance.agent.updates import device_paths
from appliance.config import ConfigError


def _load(tmp_path: Path, update: object) -> object:
    cfg = tmp_path / "c.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump({"agent": {"update": update}}))
    return load_agent_settings(cfg, env={})["agent"]


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"intervall_s": 5}, "agent.update.intervall_s: unknown key"),
        ({"interval_s": 1}, "update.interval_s: 1"),
        ({"rate_bytes_s": 10}, "update.rate_bytes_s: 10"),
        ({"device_root": "rel"}, "must be an absolute path"),
        ({"group": ""}, "update.group"),
    ],
)
def test_a_bad_update_setting_is_refused_naming_its_key(
    tmp_path: Path, update: object, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, update)


def test_defaults_poll_every_15_minutes_at_1_mib_per_second(tmp_path: Path) -> None:
    cfg = _load(tmp_path, {})
    assert (cfg.update.interval_s, cfg.update.rate_bytes_s) == (900.0, 1 << 20)  # type: ignore[attr-defined]


def test_device_root_reroots_every_path_of_the_updater(tmp_path: Path) -> None:
    paths = device_paths(tmp_path)
    assert paths.state_dir == tmp_path / "data/update"
    assert paths.cmdline == tmp_path / "proc/cmdline"
    assert paths.boot_dir == tmp_path / "boot/firmware"
    assert device_paths(Path("/")).state_dir == Path("/data/update")
