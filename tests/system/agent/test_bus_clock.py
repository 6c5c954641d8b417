"""The bus stamps every answer with its clock, and the agent's transport hears it."""

from __future__ import annotations

import time
from pathlib import Path

from testsupport.flows import recent_flow

from appliance.agent.transport import GrpcTransport, Identity
from appliance.bus.server import BusServer
from appliance.crypto import Sealer, load_signing_key
from appliance.wire import PublishAck


def test_each_answer_carries_the_bus_clock_to_the_transport(pki: Path, bus: BusServer) -> None:
    agent = pki / "agents" / "branch-1"
    heard: list[tuple[int, int, int]] = []
    transport = GrpcTransport(
        f"127.0.0.1:{bus.port}",
        Identity(ca=pki / "ca.crt", cert=agent / "client.crt", key=agent / "client.key",
                 server_name="localhost"),
        on_time=lambda *stamp: heard.append(stamp),
    )  # fmt: skip
    sealer = Sealer("branch-1", load_signing_key(agent / "ed25519.key"))
    try:
        for i in range(3):
            env = sealer.seal(recent_flow(i))
            acks = transport.publish([env.SerializeToString()], timeout=10)
            assert [a.status for a in acks] == [PublishAck.OK]
    finally:
        transport.close()
    assert len(heard) == 3
    for bus_ns, sent, received in heard:
        assert sent <= bus_ns <= received  # one machine, one clock: the stamp is inside the call
    assert abs(heard[-1][0] - time.time_ns()) < 60 * 10**9
