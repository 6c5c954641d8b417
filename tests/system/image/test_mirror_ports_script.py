"""The image's mirror-ports script, run on the host against a veth in a namespace: the port it
brings up is receive-only, where a plain `ip link set up` is not."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "overlays/base/usr/lib/appliance/mirror-ports"
IFF_UP, IFF_NOARP, IFF_PROMISC, IFF_MULTICAST = 0x1, 0x80, 0x100, 0x1000


def _ns(ns: str, *argv: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=30, check=True
    ).stdout


@pytest.fixture
def port_ns() -> Iterator[str]:
    """A namespace holding veth t0 (the mirror port) and its peer p0, both down."""
    ns = f"isMP-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
    try:
        _ns(ns, "ip", "link", "add", "t0", "type", "veth", "peer", "name", "p0")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], timeout=30)


def _state(ns: str, dev: str) -> tuple[int, str, list[object]]:
    flags = int(_ns(ns, "cat", f"/sys/class/net/{dev}/flags"), 16)
    ipv6_off = _ns(ns, "cat", f"/proc/sys/net/ipv6/conf/{dev}/disable_ipv6").strip()
    (link,) = json.loads(_ns(ns, "ip", "-j", "addr", "show", "dev", dev))
    return flags, ipv6_off, list(link.get("addr_info", []))


def test_script_brings_the_port_up_receive_only(port_ns: str) -> None:
    _ns(port_ns, "sh", str(SCRIPT), "up", "t0")
    _ns(port_ns, "ip", "link", "set", "p0", "up")  # carrier: the kernel would now configure t0
    flags, ipv6_off, addresses = _state(port_ns, "t0")
    assert flags & (IFF_UP | IFF_NOARP | IFF_PROMISC) == IFF_UP | IFF_NOARP | IFF_PROMISC
    assert not flags & IFF_MULTICAST
    assert (ipv6_off, addresses) == ("1", [])
    # the contrast: the peer, brought up plainly, got a link-local address at once
    assert any(a["family"] == "inet6" for a in _state(port_ns, "p0")[2])  # type: ignore[index]


def test_script_refuses_an_unknown_command() -> None:
    run = subprocess.run(["sh", str(SCRIPT), "frob"], capture_output=True, text=True, timeout=10)
    assert run.returncode == 2 and "usage" in run.stderr
