"""A revoked certificate is refused before any message is read, from the reload on (SIGHUP)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest
from testsupport.pki_helpers import fresh_pki

from appliance.bus.server import BusServer
from appliance.cli import main
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
