"""System-tier fixtures: a real bus on loopback with real mTLS, a session PKI, signed publishers."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from testsupport.flows import recent_flow

from appliance.bus.config import BusSettings, EventBusConfig, TlsConfig
from appliance.bus.query import count, open_reader
from appliance.bus.server import BusServer
from appliance.config import StorageConfig
from appliance.crypto import Sealer, load_signing_key
from appliance.pki import init_pki, issue_agent
from appliance.wire import FlowEvent, pb_grpc
from appliance.wire.channel import eventbus_stub, mtls_channel


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    init_pki(d, [])
    for agent in ("branch-1", "branch-2"):
        issue_agent(d, agent)
    return d


@pytest.fixture(scope="session")
def rogue_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("rogue")
    init_pki(d, [])
    issue_agent(d, "branch-1")  # same CN, another CA
    return d


def bus_settings(pki: Path, data_dir: Path, **overrides: object) -> BusSettings:
    cfg = EventBusConfig(host="127.0.0.1", port=0, metrics_port=0, health_port=0)
    cfg.tls = TlsConfig(cert_dir=pki)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    cfg.validate()
    return BusSettings(eventbus=cfg, storage=StorageConfig(data_dir=data_dir))


@pytest.fixture
def bus_factory(pki: Path, tmp_path: Path) -> Iterator[object]:
    started: list[BusServer] = []

    def make(pki_dir: Path = pki, **overrides: object) -> BusServer:
        trust = tmp_path / "trust_map.yaml"
        if not trust.exists():
            shutil.copy(pki_dir / "trust_map.yaml", trust)
            # paths in the copied map are relative to the PKI folder: make them absolute
            trust.write_text(trust.read_text().replace("agents/", f"{pki_dir}/agents/"))
        overrides.setdefault("trust_map", trust)
        server = BusServer(bus_settings(pki_dir, tmp_path / "data", **overrides)).start()
        started.append(server)
        return server

    yield make
    for s in started:
        s.stop()


@pytest.fixture
def bus(bus_factory: object) -> BusServer:
    return bus_factory()  # type: ignore[operator, no-any-return]


@dataclass
class Publisher:
    """A signed publisher for one agent identity over one mTLS channel."""

    channel: grpc.Channel
    stub: pb_grpc.EventBusStub
    sealer: Sealer

    def flow(self, i: int = 0) -> FlowEvent:
        """A flow the bus accepts (ended a minute ago: inside its time window)."""
        return recent_flow(i)


def make_publisher(
    pki: Path, port: int, agent: str = "branch-1", cn_dir: Path | None = None
) -> Publisher:
    adir = (cn_dir or pki) / "agents" / agent
    channel = mtls_channel(
        f"127.0.0.1:{port}",
        ca=pki / "ca.crt",
        cert=adir / "client.crt",
        key=adir / "client.key",
        server_name="localhost",
    )
    key = load_signing_key(adir / "ed25519.key")
    return Publisher(channel, eventbus_stub(channel), Sealer(agent, key))


def count_stored(server: BusServer) -> int:
    return count(open_reader(server.store.path))


@pytest.fixture
def publisher() -> object:
    """publisher(pki, port, agent="branch-1", cn_dir=None) -> Publisher"""
    return make_publisher


@pytest.fixture
def stored() -> object:
    """stored(bus) -> number of records in the bus's store"""
    return count_stored
