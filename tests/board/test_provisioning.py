"""The product's main job on the real image, from a fresh card: the box boots with the
provisioning responder on its console (no shell), a technician's `infraspectre provision` gives
it its identity over that console, and then the flows of its mirror port reach the bus on the
host through its uplink, signed, with exact counts, and none but them. All along, the box
says nothing on its mirror port: not one frame reaches the host side of the mirror NIC.

The machine boots as a production card does (no `infraspectre.console=shell`), so nothing in
this module runs a command on the guest: every check is on the console's text or at the bus.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from testsupport.bus_rows import stored_rows

from appliance.bus.config import BusSettings, EventBusConfig, TlsConfig
from appliance.bus.server import BusServer
from appliance.config import StorageConfig
from appliance.crypto import load_verify_key
from appliance.devkit.qemu.fixtures import MirrorPort
from appliance.image import settings
from appliance.pki import init_pki
from appliance.qemu.machine import GUESTFWD_ADDR, Machine

pytestmark = pytest.mark.timeout(900)

AGENT_ID = "branch-007"
CLIENT, SERVER = ("192.0.2.10", 40000), ("198.51.100.20", 443)
CLIENT6, SERVER6 = ("2001:db8:7::10", 40600), ("2001:db8:7::20", 443)
#: How long the idle box is watched past READY for frames on its mirror port
QUIET_S = 60.0
BANNER = "InfraSpectre provisioning console (unprovisioned)"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The org PKI on the technician's machine; the bus certificate also names the address
    the guest dials."""
    d = tmp_path_factory.mktemp("pki")
    init_pki(d, [GUESTFWD_ADDR])
    return d


@pytest.fixture(scope="module")
def host_bus(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BusServer]:
    cfg = EventBusConfig(host="127.0.0.1", port=0, metrics_port=-1, health_port=-1)
    cfg.tls = TlsConfig(cert_dir=pki)
    cfg.validate()
    data = tmp_path_factory.mktemp("bus-data")
    with BusServer(BusSettings(eventbus=cfg, storage=StorageConfig(data_dir=data))) as bus:
        yield bus


@pytest.fixture(scope="module")
def box(  # type: ignore[no-untyped-def]
    boot_board_shared, rpi_image: Path, host_bus: BusServer,
    mirror_port_shared: MirrorPort, tmp_path_factory: pytest.TempPathFactory,
) -> Machine:  # fmt: skip
    """A fresh card configured for the bus, booted as in production."""
    card = tmp_path_factory.mktemp("box") / "card.img"
    shutil.copyfile(rpi_image, card)
    settings.configure(card, {"agent_id": AGENT_ID, "bus": f"{GUESTFWD_ADDR}:50051"}, [])
    return boot_board_shared(
        card, "raspi3b", uplink_port=host_bus.port, mirror=mirror_port_shared.mirror,
        console_shell=False,
    )  # fmt: skip


def test_console_is_the_responder_not_a_shell(box: Machine) -> None:
    console = box.console
    console.wait_for(BANNER, timeout=300)
    time.sleep(5.5)  # the banner is repeated at most every 5 s
    since = console.mark()
    console.send("id")
    console.wait_for(BANNER, timeout=30, since=since)
    assert "uid=" not in console.text(since)


def test_technician_provisions_the_box_over_its_console(
    box: Machine, pki: Path, host_bus: BusServer,
    provision_over_console: Callable[[Machine, Path, str], str],
) -> None:  # fmt: skip
    said = provision_over_console(box, pki, AGENT_ID)  # asserts exit 0 and "provisioned"
    # the emulated Pi starts at the image's build time: HELLO set its clock for TLS
    assert "box answered: unprovisioned" in said and "clock set" in said
    assert host_bus.reload_trust_map()  # what `kill -HUP` does to a running bus
    assert host_bus.trust.current.get(AGENT_ID) == load_verify_key(
        pki / "agents" / AGENT_ID / "ed25519.pub"
    )


def _tcp(src: tuple[str, int], dst: tuple[str, int], flags: str, payload: int = 0) -> bytes:
    """A TCP frame between two hosts that are not the box, as a SPAN port delivers it."""
    ip = IPv6(src=src[0], dst=dst[0]) if ":" in src[0] else IP(src=src[0], dst=dst[0])
    return bytes(
        Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:00:14")
        / ip
        / TCP(sport=src[1], dport=dst[1], flags=flags)
        / (b"d" * payload)
    )


#: a whole conversation, closed by FIN both ways so that it is exported within seconds
#: (close_linger_s) with the image's default timeouts
CONVERSATION = [
    (CLIENT, SERVER, "S", 0),
    (SERVER, CLIENT, "SA", 0),
    (CLIENT, SERVER, "A", 0),
    (CLIENT, SERVER, "PA", 200),
    (SERVER, CLIENT, "PA", 500),
    (CLIENT, SERVER, "FA", 0),
    (SERVER, CLIENT, "FA", 0),
    (CLIENT, SERVER, "A", 0),
]


def _stored(
    bus: BusServer, kind: str, timeout: float, more_than: int = 0
) -> list[dict[str, object]]:
    """The agent's stored rows of kind, once there are more than more_than (or at timeout)."""
    return stored_rows(bus, AGENT_ID, kind=kind, timeout=timeout, more_than=more_than)


def _converse(
    mirror: MirrorPort, client: tuple[str, int], server: tuple[str, int] = SERVER
) -> None:
    for src, dst, flags, payload in CONVERSATION:
        frame_src = client if src == CLIENT else server
        frame_dst = client if dst == CLIENT else server
        mirror.send(_tcp(frame_src, frame_dst, flags, payload))
        time.sleep(0.05)


def test_idle_box_sends_nothing_on_its_mirror_port(
    box: Machine, host_bus: BusServer, mirror_port_shared: MirrorPort
) -> None:
    """From power-on to a minute past READY, provisioning and the agent's start included,
    no frame leaves the mirror port: no IPv6 router solicitation, DAD or MLD report, no ARP."""
    assert _stored(host_bus, "counters", timeout=300), "no counters: the agent never delivered"
    quiet_until = box.ready_at + QUIET_S
    while time.monotonic() < quiet_until:  # most of the minute went by during provisioning
        time.sleep(1)
    assert mirror_port_shared.received == 0


def test_provisioned_box_delivers_exactly_its_mirror_ports_flows(
    box: Machine, host_bus: BusServer, mirror_port_shared: MirrorPort
) -> None:
    # the agent, woken by provisioning, reports its interface counters once it runs
    assert _stored(host_bus, "counters", timeout=300), "no counters: the agent never delivered"
    _converse(mirror_port_shared, CLIENT)
    _converse(mirror_port_shared, CLIENT6, SERVER6)
    rows = _stored(host_bus, "flow", timeout=120, more_than=1)
    assert len(rows) == 2, rows  # the capture's two flows, none of the box's own
    for client, server, ip_tcp in ((CLIENT, SERVER, 20 + 20), (CLIENT6, SERVER6, 40 + 20)):
        (flow,) = [r for r in rows if r["src_ip"] == client[0]]
        assert flow["src_port"] == client[1]
        assert (flow["dst_ip"], flow["dst_port"]) == server
        assert flow["proto"] == "TCP"
        # bytes are IP total lengths
        sent = [p for s, _, _, p in CONVERSATION if s == CLIENT]
        answered = [p for s, _, _, p in CONVERSATION if s == SERVER]
        assert (flow["packets_tx"], flow["packets_rx"]) == (len(sent), len(answered))
        assert flow["bytes_tx"] == len(sent) * ip_tcp + sum(sent)
        assert flow["bytes_rx"] == len(answered) * ip_tcp + sum(answered)
    assert mirror_port_shared.received == 0


def test_after_a_power_cut_the_box_comes_back_and_delivers_again(
    box: Machine, host_bus: BusServer, mirror_port_shared: MirrorPort
) -> None:
    """No orderly shutdown saved the clock: the floor provisioning saved keeps the box inside
    its certificate's validity, so TLS still works; the box then follows the bus's clock
    forward; the WAL and the chain carry on."""
    flows = len(_stored(host_bus, "flow", timeout=0))
    counters = len(_stored(host_bus, "counters", timeout=0))
    box.power_cut()
    box.boot()
    assert len(_stored(host_bus, "counters", timeout=300, more_than=counters)) > counters, (
        "the agent delivered nothing after the power cut"
    )
    again = (CLIENT[0], CLIENT[1] + 1)
    _converse(mirror_port_shared, again)
    rows = _stored(host_bus, "flow", timeout=120, more_than=flows)
    new = [r for r in rows if r["src_port"] == again[1]]
    assert len(new) == 1, rows
    assert (new[0]["packets_tx"], new[0]["packets_rx"]) == (5, 3)
    # the first records after the cut carry the lagging floor time; once the bus answered, the
    # box stepped its clock, so the conversation sealed afterwards is on time
    after_cut = _stored(host_bus, "counters", timeout=0)[counters:]
    lags = [(int(str(r["received_ns"])) - int(str(r["ts_ns"]))) / 1e9 for r in after_cut]
    assert max(lags) > 10, f"the clock did not lag after the cut ({lags}): nothing was tested"
    flow_lag = (int(str(new[0]["received_ns"])) - int(str(new[0]["ts_ns"]))) / 1e9
    assert abs(flow_lag) < 10, f"the box's clock is still {flow_lag:.0f} s off the bus's"
    records = _stored(host_bus, "flow", timeout=0) + _stored(host_bus, "counters", timeout=0)
    seqs = [int(str(r["seq"])) for r in records]
    assert len(set(seqs)) == len(seqs), "a sequence number was used twice across the restart"
    assert mirror_port_shared.received == 0  # the second boot was as silent as the first
    assert len(_stored(host_bus, "flow", timeout=0)) == flows + 1  # still none but the capture's
