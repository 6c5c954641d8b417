"""The forwarder against a real bus over real mTLS."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from testsupport.outbox import MemOutbox

from appliance.agent.forwarder import Forwarder, ForwarderConfig, State
from appliance.agent.transport import GrpcTransport, Identity


def _box(p: Any, n: int) -> MemOutbox:
    envs = [p.sealer.seal(p.flow(i)) for i in range(n)]
    return MemOutbox((e.idempotency_key.encode(), e.SerializeToString()) for e in envs)


def _identity(ca_dir: Path, agent_dir: Path) -> Identity:
    return Identity(
        ca=ca_dir / "ca.crt", cert=agent_dir / "client.crt", key=agent_dir / "client.key",
        server_name="localhost",
    )  # fmt: skip


def test_forwarder_delivers_everything_once(
    pki: Path, bus_factory: Any, publisher: Any, stored: Any, tmp_path: Path
) -> None:
    bus = bus_factory()
    p = publisher(pki, bus.port)
    box = _box(p, 1200)
    ident = _identity(pki, pki / "agents/branch-1")
    f = Forwarder(
        box, [lambda: GrpcTransport(f"127.0.0.1:{bus.port}", ident)],
        ForwarderConfig(batch_size=500, quarantine_path=tmp_path / "q"),
    )  # fmt: skip
    for _ in range(10):
        f.step()
        if not box.pending:
            break
    assert not box.pending and stored(bus) == 1200 and f.state is State.CONNECTED


def test_bus_with_unknown_ca_is_refused_and_explained(
    pki: Path, rogue_pki: Path, bus_factory: Any, publisher: Any, stored: Any,
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    bus = bus_factory(pki_dir=rogue_pki)  # a bus whose certificate comes from another CA
    p = publisher(pki, bus.port)
    box = _box(p, 3)
    ident = _identity(pki, pki / "agents/branch-1")  # we trust only our own CA
    f = Forwarder(
        box, [lambda: GrpcTransport(f"127.0.0.1:{bus.port}", ident)],
        ForwarderConfig(backoff_base_s=0.01, backoff_cap_s=0.02, quarantine_path=tmp_path / "q"),
    )  # fmt: skip
    with caplog.at_level(logging.WARNING):
        f.step()
    assert f.stats.failures == {"tls": 1} and len(box.pending) == 3
    assert "TLS handshake failed, refusing to send" in caplog.text
    assert stored(bus) == 0
