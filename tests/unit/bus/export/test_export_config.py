"""`eventbus.export.ipfix` is strict like every section: errors name the key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.bus.config import load_bus_settings
from appliance.config import ConfigError


def _load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "bus.yaml"
    path.write_text(text)
    return load_bus_settings(path, env={})


def test_collectors_are_read_with_their_transport_and_mode(tmp_path: Path) -> None:
    settings = _load(
        tmp_path,
        "eventbus:\n  export:\n    ipfix:\n      collectors:\n"
        "        - {address: '198.51.100.7:4739', transport: tcp, mode: uniflow}\n"
        "        - {address: '[2001:db8::9]:4739'}\n"
        "      domains: {branch-0042: 42}\n",
    )
    ipfix = settings.eventbus.export.ipfix  # type: ignore[attr-defined]
    assert [c.name for c in ipfix.collectors] == [
        "tcp://198.51.100.7:4739",
        "udp://[2001:db8::9]:4739",
    ]
    assert ipfix.collectors[1].host_port() == ("2001:db8::9", 4739)
    assert ipfix.domains == {"branch-0042": 42}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "collectors: [{adress: 'a:1'}]",
            "eventbus.export.ipfix.collectors[0].adress: unknown key",
        ),
        ("collectors: [{address: 'nohost'}]", "eventbus.export.ipfix.collectors[0].address:"),
        ("collectors: [{address: 'a:1', transport: sctp}]", "collectors[0].transport: 'sctp'"),
        ("collectors: [{address: 'a:1'}, {address: 'a:1'}]", "listed twice"),
        ("max_message_bytes: 100", "eventbus.export.ipfix.max_message_bytes: 100"),
        ("domains: {a: 0}", "eventbus.export.ipfix.domains.a: 0"),
        ("colectors: []", "eventbus.export.ipfix.colectors: unknown key"),
    ],
)
def test_bad_values_name_their_key_path(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        _load(tmp_path, "eventbus:\n  export:\n    ipfix: {" + text.strip() + "}\n")
    assert message in str(err.value)
