"""The bus's configuration: the documented example equals the defaults; env names work."""

from pathlib import Path

import pytest

from appliance.bus.config import load_bus_settings
from appliance.config import ConfigError

EXAMPLE = Path(__file__).parents[3] / "docs/examples/infraspectre.yaml"


def test_documented_example_is_exactly_the_defaults() -> None:
    assert load_bus_settings(EXAMPLE, env={}) == load_bus_settings(None, env={})


def test_seed_environment_names_override() -> None:
    env = {"BUS_SERVER_PORT": "6000", "BUS_OVERLOAD": "true", "IS_CERT_DIR": "/etc/is"}
    s = load_bus_settings(None, env=env | {"IS_DATA_DIR": "/data"})
    assert s.eventbus.port == 6000 and s.eventbus.overload
    assert s.eventbus.tls.cert_dir == Path("/etc/is") and s.storage.data_dir == Path("/data")
    assert s.eventbus.trust_map_path() == Path("/etc/is/trust_map.yaml")


def test_inconsistent_limits_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"^eventbus\.hard_max: 4 is below max_inflight 32"):
        load_bus_settings(None, env={"BUS_HARD_MAX": "4"})
