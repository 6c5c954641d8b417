"""The strict configuration mechanism."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from appliance.config import ConfigError, build_section, load_document


@dataclass
class Tls:
    cert_dir: Path = Path("certs")


@dataclass
class Section:
    port: int = 50051
    overload: bool = False
    ratio: float = 0.5
    mode: Literal["drop_oldest", "refuse"] = "drop_oldest"
    tls: Tls = field(default_factory=Tls)
    peers: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port: {self.port} is not a TCP port")


ENV = {"BUS_SERVER_PORT": "port", "BUS_OVERLOAD": "overload", "IS_CERT_DIR": "tls.cert_dir"}


def test_defaults_without_any_input() -> None:
    assert build_section(Section, None, "eventbus") == Section()


def test_unknown_key_names_full_path() -> None:
    with pytest.raises(ConfigError, match=r"^eventbus\.tls\.kye: unknown key"):
        build_section(Section, {"tls": {"kye": 1}}, "eventbus")


def test_wrong_type_names_path_and_types() -> None:
    with pytest.raises(ConfigError, match=r"^eventbus\.port: expected an integer, found str"):
        build_section(Section, {"port": "x"}, "eventbus")
    with pytest.raises(ConfigError, match=r"eventbus\.overload: expected a boolean"):
        build_section(Section, {"overload": 1}, "eventbus")
    with pytest.raises(ConfigError, match=r"eventbus\.mode: 'x' is not one of"):
        build_section(Section, {"mode": "x"}, "eventbus")


def test_validate_hook_reports_key_path() -> None:
    with pytest.raises(ConfigError, match=r"^eventbus\.port: 70000 is not a TCP port"):
        build_section(Section, {"port": 70000}, "eventbus")


def test_environment_overrides_file_values() -> None:
    env = {"BUS_SERVER_PORT": "6000", "BUS_OVERLOAD": "1", "IS_CERT_DIR": "/etc/x"}
    cfg = build_section(Section, {"port": 5000}, "eventbus", env=env, env_names=ENV)
    assert cfg.port == 6000 and cfg.overload is True and cfg.tls.cert_dir == Path("/etc/x")


def test_bad_environment_value_names_variable() -> None:
    with pytest.raises(ConfigError, match="BUS_SERVER_PORT='abc' is not an integer"):
        build_section(Section, None, "eventbus", env={"BUS_SERVER_PORT": "abc"}, env_names=ENV)


def test_document_rejects_unknown_section_and_bad_yaml(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("eventbus: {port: 1}\nbogus: {}\n")
    with pytest.raises(ConfigError, match=r"^bogus: unknown section"):
        load_document(f)
    f.write_text("eventbus: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_document(f)
    f.write_text("- 1\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_document(f)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_document(tmp_path / "missing.yaml")
