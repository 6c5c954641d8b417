"""First-boot settings: what `image configure` accepts and how the file reads."""

import pytest

from appliance.errors import CommandError
from appliance.image import settings


def test_render_then_parse_gives_the_same_settings() -> None:
    values = {"agent_id": "branch-042", "bus": "bus.example.net:50051", "mirror": "eth1,eth2"}
    assert settings.parse(settings.render(values)) == values


def test_render_writes_keys_in_a_fixed_order_after_the_header() -> None:
    text = settings.render({"uplink": "usb0", "agent_id": "a"})
    assert text.startswith("# ")
    assert text.splitlines()[-2:] == ["agent_id=a", "uplink=usb0"]


@pytest.mark.parametrize(
    "bus", ["bus.example.net:50051", "192.0.2.10:50051", "[2001:db8::1]:50051", "b:1"]
)
def test_bus_accepts_names_ipv4_and_bracketed_ipv6(bus: str) -> None:
    assert settings.validate("bus", bus) == bus


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("bus", "bus.example.net"),  # no port
        ("bus", "bus.example.net:70000"),  # port out of range
        ("bus", "2001:db8::1:50051"),  # IPv6 without brackets
        ("agent_id", "a b"),
        ("agent_id", "$(reboot)"),
        ("agent_id", "x;reboot"),
        ("uplink", "eth0 eth1"),
        ("mirror", "eth1,"),
        ("agent_id", "-leading-dash"),
    ],
)
def test_values_the_device_shell_could_misread_are_refused(key: str, value: str) -> None:
    with pytest.raises(CommandError, match=key):
        settings.validate(key, value)


def test_unknown_key_is_named() -> None:
    with pytest.raises(CommandError, match="unknown setting 'wifi'"):
        settings.parse("wifi=home\n")


def test_line_without_equals_is_refused_with_its_line_number() -> None:
    with pytest.raises(CommandError, match=r"infraspectre.txt:2"):
        settings.parse("# comment\nagent_id\n")


def test_an_image_without_an_mbr_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    card = tmp_path / "not-a-card.img"
    card.write_bytes(bytes(1024))
    with pytest.raises(CommandError, match="no MBR"):
        settings.boot_partition_offset(card)
