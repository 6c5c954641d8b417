"""Calls that open and never deliver: the gate refuses or cancels them while agents are served.

A stalled call is a stream_unary call whose request iterator blocks on an Event: grpcio sends
the call's headers at once and no message until the iterator yields. Every one is bounded in
count and ends by itself (the bus cancels it, or the Event is set at the end of the test).
"""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from appliance.bus.server import BusServer
from appliance.pki.trustmap import add_trust_entry
from appliance.wire import PUBLISH_BATCH_METHOD, PublishAck, PublishBatchRequest

OK = PublishAck.OK


class Stalled:
    """n calls from one identity that send headers and never a message."""

    def __init__(self, pki: Path, port: int, agent: str, n: int, connections: int = 1) -> None:
        self.release = threading.Event()
        adir = pki / "agents" / agent
        creds = grpc.ssl_channel_credentials(
            root_certificates=(pki / "ca.crt").read_bytes(),
            private_key=(adir / "client.key").read_bytes(),
            certificate_chain=(adir / "client.crt").read_bytes(),
        )
        options = [
            ("grpc.ssl_target_name_override", "localhost"),
            ("grpc.use_local_subchannel_pool", 1),  # a connection of its own per channel
        ]
        self.channels = [
            grpc.secure_channel(f"127.0.0.1:{port}", creds, options=options)
            for _ in range(connections)
        ]
        self.calls = [
            self.channels[i % connections]
            .stream_unary(PUBLISH_BATCH_METHOD)
            .future(self._never(), timeout=120)
            for i in range(n)
        ]

    def _never(self) -> Iterator[bytes]:
        self.release.wait(120)
        return
        yield b""  # a generator that yields nothing

    def codes(self, timeout: float) -> list[grpc.StatusCode]:
        """How each call ended; a call still open after timeout fails the test."""
        out = []
        for call in self.calls:
            err = call.exception(timeout=timeout)
            assert err is not None, "a stalled call was answered as if it had a message"
            out.append(err.code())
        return out

    def close(self) -> None:
        self.release.set()
        for channel in self.channels:
            channel.close()


@pytest.fixture
def stalled() -> Iterator[Any]:
    made: list[Stalled] = []

    def make(*args: Any, **kwargs: Any) -> Stalled:
        made.append(Stalled(*args, **kwargs))
        return made[-1]

    yield make
    for s in made:
        s.close()


def _ready(bus: BusServer) -> int:
    url = f"http://127.0.0.1:{bus.health_port}/ready"
    with urllib.request.urlopen(url, timeout=10) as resp:
        return int(resp.status)


def _deliver(p: Any, batches: int, size: int) -> None:
    for b in range(batches):
        envs = [p.sealer.seal(p.flow(b * size + i)) for i in range(size)]
        resp = p.stub.PublishBatch(PublishBatchRequest(envelopes=envs), timeout=30)
        assert [a.status for a in resp.acks] == [OK] * size


def _metric(bus: BusServer, name: str, **labels: str) -> float | None:
    return bus.metrics.registry.get_sample_value(name, labels)


def _wait_for(condition: Any, what: str) -> None:
    for _ in range(3000):  # bounded: 30 s
        if condition():
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"never happened: {what}")


def test_500_stalled_streams_from_an_untrusted_name_do_not_starve_an_agent(
    pki: Path, bus_factory: Any, publisher: Any, stored: Any, stalled: Any, tmp_path: Path
) -> None:
    trust = tmp_path / "only-branch-1.yaml"
    add_trust_entry(trust, "branch-1", str(pki / "agents/branch-1/ed25519.pub"))
    bus: BusServer = bus_factory(trust_map=trust, message_deadline_s=5.0)
    flood = stalled(pki, bus.port, "branch-2", 500, connections=10)
    agent = publisher(pki, bus.port, "branch-1")
    _deliver(agent, batches=10, size=100)
    assert stored(bus) == 1000
    assert _ready(bus) == 200
    # Refused on their headers: none waits for the deadline, none holds a worker.
    assert flood.codes(timeout=30) == [grpc.StatusCode.PERMISSION_DENIED] * 500
    assert _metric(bus, "bus_rejected_total", reason="untrusted") == 500
    assert bus.gate.slots.open == 0


def test_stalled_streams_from_a_trusted_name_are_bounded_per_peer_and_cancelled(
    pki: Path, bus_factory: Any, publisher: Any, stored: Any, stalled: Any
) -> None:
    bus: BusServer = bus_factory(max_calls_per_peer=4, message_deadline_s=3.0)
    hog = stalled(pki, bus.port, "branch-2", 4)
    _wait_for(lambda: bus.gate.awaiting_message == 4, "four calls waiting for their message")
    extra = stalled(pki, bus.port, "branch-2", 16)
    for call in extra.calls:  # refused at once, with retry information
        err = call.exception(timeout=30)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        trailing = dict(err.trailing_metadata() or ())
        assert int(trailing["retry-after-ms"]) > 0
        assert int(trailing["grpc-retry-pushback-ms"]) > 0
    assert bus.gate.awaiting_message == 4  # the first four are still open, the agent is served
    assert _metric(bus, "bus_inflight_requests") == 4
    assert _metric(bus, "bus_calls_awaiting_message") == 4
    _deliver(publisher(pki, bus.port, "branch-1"), batches=3, size=50)
    assert stored(bus) == 150 and _ready(bus) == 200
    assert hog.codes(timeout=30) == [grpc.StatusCode.CANCELLED] * 4  # the deadline passed
    assert _metric(bus, "bus_rejected_total", reason="peer_limit") == 16
    # the client hears of the cancel before the bus's handler thread wakes up to count it
    _wait_for(lambda: bus.gate.slots.open == 0, "the cancelled calls' slots returned")
    assert _metric(bus, "bus_rejected_total", reason="deadline") == 4
    _deliver(publisher(pki, bus.port, "branch-2"), batches=1, size=10)  # the peer may call again


def test_a_call_that_sends_one_message_and_never_half_closes_is_cancelled(
    pki: Path, bus_factory: Any, publisher: Any, stored: Any
) -> None:
    bus: BusServer = bus_factory(message_deadline_s=1.0)
    p = publisher(pki, bus.port)
    release = threading.Event()
    batch = PublishBatchRequest(envelopes=[p.sealer.seal(p.flow())]).SerializeToString()

    def one_then_wait() -> Iterator[bytes]:
        yield batch
        release.wait(60)

    call = p.channel.stream_unary(PUBLISH_BATCH_METHOD).future(one_then_wait(), timeout=60)
    try:
        assert call.exception(timeout=30).code() == grpc.StatusCode.CANCELLED
    finally:
        release.set()
    assert stored(bus) == 0


def test_a_second_message_is_refused_and_nothing_is_stored(
    pki: Path, bus: BusServer, publisher: Any, stored: Any
) -> None:
    p = publisher(pki, bus.port)
    batch = PublishBatchRequest(envelopes=[p.sealer.seal(p.flow())]).SerializeToString()
    with pytest.raises(grpc.RpcError) as info:
        p.channel.stream_unary(PUBLISH_BATCH_METHOD)(iter([batch, batch]), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "exactly one message" in (info.value.details() or "")
    with pytest.raises(grpc.RpcError) as info:
        p.channel.stream_unary(PUBLISH_BATCH_METHOD)(iter([]), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert stored(bus) == 0


def test_a_message_over_the_receive_cap_is_refused_by_size(
    pki: Path, bus_factory: Any, publisher: Any, stored: Any
) -> None:
    bus: BusServer = bus_factory(max_batch=4, max_env_bytes=1024)
    p = publisher(pki, bus.port)
    cap = bus.settings.eventbus.receive_cap()
    with pytest.raises(grpc.RpcError) as info:
        p.channel.unary_unary(PUBLISH_BATCH_METHOD)(b"\x0a" * (cap + 1), timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    _deliver(p, batches=1, size=4)
    assert stored(bus) == 4


def test_past_the_global_open_call_limit_every_peer_is_told_to_retry_later(
    pki: Path, bus_factory: Any, publisher: Any, stored: Any, stalled: Any
) -> None:
    bus: BusServer = bus_factory(
        max_inflight=2, hard_max=4, max_open_calls=4, max_calls_per_peer=4, message_deadline_s=3.0
    )
    hog = stalled(pki, bus.port, "branch-2", 4)
    _wait_for(lambda: bus.gate.awaiting_message == 4, "four calls waiting for their message")
    p = publisher(pki, bus.port, "branch-1")
    with pytest.raises(grpc.RpcError) as info:
        p.stub.Publish(p.sealer.seal(p.flow()), timeout=10)
    err = info.value
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "4 open calls in all" in (err.details() or "")
    assert int(dict(err.trailing_metadata() or ())["retry-after-ms"]) > 0
    assert _metric(bus, "bus_rejected_total", reason="open_calls_limit") == 1
    assert hog.codes(timeout=30) == [grpc.StatusCode.CANCELLED] * 4
    _wait_for(lambda: bus.gate.slots.open == 0, "the cancelled calls' slots returned")
    _deliver(p, batches=1, size=10)  # the retry, once the stalled calls are gone
    assert stored(bus) == 10
