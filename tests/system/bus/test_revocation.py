"""A revoked certificate is refused before any message is read, from the reload on (SIGHUP)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from testsupport.pki_helpers import fresh_pki

from appliance.bus.server import BusServer
from appliance.cli import main
from appliance.devkit.localprocs import cli_process, free_port, loopback_bus_sections
from appliance.pki import issue_agent
from appliance.wire import PublishAck

OK = PublishAck.OK


@pytest.fixture
def own_pki(tmp_path: Path) -> Path:
    """A PKI of this test's own: revoking must not touch the session's."""
    return fresh_pki(tmp_path / "pki")


def _publish(p: Any) -> Any:
    return p.stub.Publish(p.sealer.seal(p.flow()), timeout=10).status


def _refusal(p: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        p.stub.Publish(p.sealer.seal(p.flow()), timeout=10)
    return info.value


def test_revoked_agent_is_refused_after_reload_while_another_keeps_delivering(
    own_pki: Path, bus_factory: Any, publisher: Any, stored: Any
) -> None:
    bus: BusServer = bus_factory(own_pki, trust_map=own_pki / "trust_map.yaml")
    stolen = publisher(own_pki, bus.port, "branch-1")
    other = publisher(own_pki, bus.port, "branch-2")
    assert _publish(stolen) == OK and _publish(other) == OK
    assert main(["pki", "revoke", str(own_pki), "branch-1"]) == 0
    assert _publish(stolen) == OK  # nothing changes before the reload (SIGHUP)
    assert bus.reload_trust_map()
    err = _refusal(stolen)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "revoked" in (err.details() or "")
    assert _publish(other) == OK  # on the connection it had before the reload
    assert bus.metrics.registry.get_sample_value("bus_rejected_total", {"reason": "revoked"}) == 1
    assert stored(bus) == 4


def test_re_issued_certificate_is_accepted_while_the_old_one_stays_refused(
    own_pki: Path, bus_factory: Any, publisher: Any, stored: Any
) -> None:
    bus: BusServer = bus_factory(own_pki, trust_map=own_pki / "trust_map.yaml")
    stolen = publisher(own_pki, bus.port, "branch-1")
    assert _publish(stolen) == OK
    assert main(["pki", "revoke", str(own_pki), "branch-1"]) == 0
    issue_agent(own_pki, "branch-1", force=True)  # re-provisioned: new certificate, new key
    assert bus.reload_trust_map()
    renewed = publisher(own_pki, bus.port, "branch-1")
    assert _publish(renewed) == OK
    err = _refusal(stolen)  # same CN, trusted again, but this certificate is revoked
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "revoked" in (err.details() or "")
    assert stored(bus) == 2


def test_a_broken_revocation_list_keeps_the_previous_lists_on_reload(
    own_pki: Path, bus_factory: Any, publisher: Any
) -> None:
    bus: BusServer = bus_factory(own_pki, trust_map=own_pki / "trust_map.yaml")
    assert main(["pki", "revoke", str(own_pki), "branch-1"]) == 0
    assert bus.reload_trust_map()
    (own_pki / "revoked.yaml").write_text("revoked: {not: a list}\n")
    assert not bus.reload_trust_map()
    assert _refusal(publisher(own_pki, bus.port, "branch-1")).code() == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert _publish(publisher(own_pki, bus.port, "branch-2")) == OK


def test_revocation_takes_effect_on_sighup_in_a_running_bus(
    own_pki: Path, tmp_path: Path, publisher: Any
) -> None:
    port = free_port()
    config = tmp_path / "bus.yaml"
    config.write_text(yaml.safe_dump(loopback_bus_sections(own_pki, tmp_path / "data", port)))
    with cli_process(["bus", "serve", "--config", str(config)], "bus") as bus:
        stolen = publisher(own_pki, port, "branch-1")
        other = publisher(own_pki, port, "branch-2")
        assert _publish(stolen) == OK and _publish(other) == OK
        assert main(["pki", "revoke", str(own_pki), "branch-1"]) == 0
        os.kill(bus.pid, signal.SIGHUP)
        for _ in range(100):  # bounded: the reload runs in a thread right after the signal
            try:
                _publish(stolen)
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.PERMISSION_DENIED
                break
            threading.Event().wait(0.1)
        else:
            raise AssertionError("the revocation never took effect")
        assert _publish(other) == OK
