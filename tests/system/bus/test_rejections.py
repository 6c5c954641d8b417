"""Every way the bus refuses input: the status returned, and that nothing was stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from appliance.bus.server import BusServer
from appliance.crypto import sign_envelope
from appliance.pki.trustmap import add_trust_entry
from appliance.wire import PUBLISH_BATCH_METHOD, PUBLISH_METHOD, PublishAck, PublishBatchRequest
from appliance.wire.channel import eventbus_stub

OK, RETRY, INVALID = PublishAck.OK, PublishAck.RETRY, PublishAck.INVALID


def _grpc_error(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    return info.value


def test_accepts_a_valid_envelope(publisher: Any, stored: Any, pki: Path, bus: BusServer) -> None:
    p = publisher(pki, bus.port)
    ack = p.stub.Publish(p.sealer.seal(p.flow()), timeout=10)
    assert ack.status == OK
    assert stored(bus) == 1


def test_no_client_certificate_is_refused_at_handshake(
    publisher: Any, stored: Any, pki: Path, bus: BusServer
) -> None:
    creds = grpc.ssl_channel_credentials(root_certificates=(pki / "ca.crt").read_bytes())
    channel = grpc.secure_channel(
        f"127.0.0.1:{bus.port}", creds, options=[("grpc.ssl_target_name_override", "localhost")]
    )
    p = publisher(pki, bus.port)
    err = _grpc_error(lambda: eventbus_stub(channel).Publish(p.sealer.seal(p.flow()), timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert stored(bus) == 0


def test_plaintext_is_refused(publisher: Any, stored: Any, pki: Path, bus: BusServer) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{bus.port}")
    p = publisher(pki, bus.port)
    err = _grpc_error(lambda: eventbus_stub(channel).Publish(p.sealer.seal(p.flow()), timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert stored(bus) == 0


def test_certificate_from_another_ca_is_refused(
    publisher: Any, stored: Any, pki: Path, rogue_pki: Path, bus: BusServer
) -> None:
    # The rogue client trusts our server CA but presents a certificate from its own CA.
    p = publisher(pki, bus.port, cn_dir=rogue_pki)
    err = _grpc_error(lambda: p.stub.Publish(p.sealer.seal(p.flow()), timeout=5))
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert stored(bus) == 0


def test_cn_not_in_trust_map_is_permission_denied(
    publisher: Any, stored: Any, pki: Path, bus_factory: object, tmp_path: Path
) -> None:
    trust = tmp_path / "only-branch-2.yaml"
    add_trust_entry(trust, "branch-2", str(pki / "agents/branch-2/ed25519.pub"))
    bus = bus_factory(trust_map=trust)  # type: ignore[operator]
    p = publisher(pki, bus.port, "branch-1")
    err = _grpc_error(lambda: p.stub.Publish(p.sealer.seal(p.flow()), timeout=5))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "not in the trust map" in (err.details() or "")
    err = _grpc_error(
        lambda: p.stub.PublishBatch(PublishBatchRequest(envelopes=[p.sealer.seal(p.flow())]))
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert stored(bus) == 0


def _invalid(p: Any, bus: BusServer, env: object, reason: str, stored: Any) -> None:
    ack = p.stub.Publish(env, timeout=10)
    assert ack.status == INVALID and reason in ack.reason, ack
    batch = p.stub.PublishBatch(PublishBatchRequest(envelopes=[env]), timeout=10)
    assert batch.acks[0].status == INVALID and reason in batch.acks[0].reason
    assert stored(bus) == 0


def _set_agent(env: Any) -> None:
    env.agent_id = "branch-2"  # correctly signed, but not by the connection's identity


def _drop_key(env: Any) -> None:
    env.idempotency_key = ""


def _bad_version(env: Any) -> None:
    env.version = "v9"


def _future(env: Any) -> None:
    env.ts_ns += 3600 * 10**9


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (_set_agent, "does not match the certificate CN"),
        (_drop_key, "missing idempotency key"),
        (_bad_version, "unknown envelope version"),
        (_future, "in the future"),
    ],
    ids=["agent_id_not_cn", "no_idempotency_key", "unknown_version", "future_timestamp"],
)
def test_correctly_signed_but_unacceptable_envelope_is_invalid(
    publisher: Any, stored: Any, pki: Path, bus: BusServer, mutate: Any, reason: str
) -> None:
    p = publisher(pki, bus.port)
    env = p.sealer.seal(p.flow())
    mutate(env)
    sign_envelope(env, p.sealer._key)  # the sender signed it: only the check can refuse it
    _invalid(p, bus, env, reason, stored)


def test_signature_by_another_key_is_invalid(
    publisher: Any, stored: Any, pki: Path, bus: BusServer
) -> None:
    p = publisher(pki, bus.port, "branch-1")
    other = publisher(pki, bus.port, "branch-2")
    env = p.sealer.seal(p.flow())
    sign_envelope(env, other.sealer._key)
    _invalid(p, bus, env, "bad signature", stored)


def test_one_flipped_payload_byte_is_invalid(
    publisher: Any, stored: Any, pki: Path, bus: BusServer
) -> None:
    p = publisher(pki, bus.port)
    env = p.sealer.seal(p.flow())
    env.flow.bytes_tx ^= 0x01
    _invalid(p, bus, env, "bad signature", stored)


def test_altered_prev_sig_is_invalid(
    publisher: Any, stored: Any, pki: Path, bus: BusServer
) -> None:
    p = publisher(pki, bus.port)
    p.sealer.seal(p.flow())
    env = p.sealer.seal(p.flow(1))
    env.prev_sig = bytes(64)
    _invalid(p, bus, env, "bad signature", stored)


def test_oversized_envelope_is_invalid(
    publisher: Any, stored: Any, pki: Path, bus_factory: object
) -> None:
    bus = bus_factory(max_env_bytes=1024)  # type: ignore[operator]
    p = publisher(pki, bus.port)
    flow = p.flow()
    flow.interface = "x" * 2000
    _invalid(p, bus, p.sealer.seal(flow), "exceeds max_env_bytes", stored)


def test_garbage_bytes_are_answered_and_never_stored(
    publisher: Any, stored: Any, pki: Path, bus: BusServer
) -> None:
    p = publisher(pki, bus.port)
    garbage = b"\xff\xff\xff\xff\x0f not a protobuf"
    unary = p.channel.unary_unary(PUBLISH_METHOD)
    ack = PublishAck.FromString(unary(garbage, timeout=5))
    assert ack.status == INVALID and "undecodable" in ack.reason
    batch = p.channel.unary_unary(PUBLISH_BATCH_METHOD)
    err = _grpc_error(lambda: batch(garbage, timeout=5))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert stored(bus) == 0


def test_duplicate_is_ok_and_stored_once(
    publisher: Any, stored: Any, pki: Path, bus: BusServer
) -> None:
    p = publisher(pki, bus.port)
    env = p.sealer.seal(p.flow())
    assert p.stub.Publish(env, timeout=5).status == OK
    assert p.stub.Publish(env, timeout=5).status == OK
    resp = p.stub.PublishBatch(PublishBatchRequest(envelopes=[env, env]), timeout=5)
    assert [a.status for a in resp.acks] == [OK, OK]
    assert stored(bus) == 1


def test_batch_answers_each_envelope_in_order(
    publisher: Any, stored: Any, pki: Path, bus: BusServer
) -> None:
    p = publisher(pki, bus.port)
    good = [p.sealer.seal(p.flow(i)) for i in range(3)]
    bad = p.sealer.seal(p.flow(9))
    bad.flow.dst_port = 1
    resp = p.stub.PublishBatch(PublishBatchRequest(envelopes=[good[0], bad, *good[1:]]))
    assert [a.status for a in resp.acks] == [OK, INVALID, OK, OK]
    assert stored(bus) == 3


def test_large_batch_names_exactly_the_forged_envelopes_in_every_slice(
    publisher: Any, stored: Any, pki: Path, bus: BusServer
) -> None:
    """A batch large enough to be verified in parallel slices by the batch equation: one
    forged envelope fails its slice, which is then checked envelope by envelope."""
    p = publisher(pki, bus.port)
    envs = [p.sealer.seal(p.flow(i)) for i in range(600)]
    forged = {5, 299, 300, 598}  # both slices, their edges included
    for i in forged:
        envs[i].flow.bytes_tx += 1
    envs[450].sig = envs[450].sig[:10]  # not even 64 bytes
    resp = p.stub.PublishBatch(PublishBatchRequest(envelopes=envs), timeout=30)
    bad = {i for i, a in enumerate(resp.acks) if a.status == INVALID}
    assert bad == forged | {450}
    assert {resp.acks[i].reason for i in forged} == {"bad signature"}
    assert "sig must be 64 bytes" in resp.acks[450].reason
    assert all(a.status == OK for i, a in enumerate(resp.acks) if i not in bad)
    assert stored(bus) == 600 - len(bad)


def test_forced_overload_answers_retry_with_hint_and_loses_nothing(
    publisher: Any, stored: Any, pki: Path, bus_factory: object
) -> None:
    bus = bus_factory(overload=True)  # type: ignore[operator]
    p = publisher(pki, bus.port)
    envs = [p.sealer.seal(p.flow(i)) for i in range(50)]
    resp = p.stub.PublishBatch(PublishBatchRequest(envelopes=envs), timeout=10)
    assert {a.status for a in resp.acks} == {RETRY}
    assert all(a.backoff_hint_ms > 0 for a in resp.acks)
    assert stored(bus) == 0
    bus.service.admission.overload = False  # the overload passes; the client retries
    resp = p.stub.PublishBatch(PublishBatchRequest(envelopes=envs), timeout=10)
    assert {a.status for a in resp.acks} == {OK}
    assert stored(bus) == 50


def test_concurrent_load_past_soft_limit_retries_and_loses_nothing(
    publisher: Any, stored: Any, pki: Path, bus_factory: object
) -> None:
    import concurrent.futures as cf

    bus = bus_factory(max_inflight=1, hard_max=64)  # type: ignore[operator]
    pubs = [publisher(pki, bus.port, "branch-1") for _ in range(4)]
    # one agent, one chain: every batch is sealed by the same sealer, sent on four channels
    sealer = pubs[0].sealer
    batches = [[sealer.seal(p.flow(i)) for i in range(200)] for p in pubs for _ in range(3)]
    owners = [p for p in pubs for _ in range(3)]
    retries = 0

    def send(p: Any, envs: list[object]) -> int:
        seen_retry = 0
        pending = list(envs)
        for _ in range(200):  # bounded: a bus that never admits fails the test
            resp = p.stub.PublishBatch(PublishBatchRequest(envelopes=pending), timeout=30)
            again = [e for e, a in zip(pending, resp.acks, strict=True) if a.status == RETRY]
            assert all(a.status in (OK, RETRY) for a in resp.acks)
            seen_retry += len(again)
            if not again:
                return seen_retry
            hint = max(a.backoff_hint_ms for a in resp.acks if a.status == RETRY)
            assert hint > 0
            import time

            time.sleep(hint / 1000 / 10)
            pending = again
        raise AssertionError("never admitted")

    with cf.ThreadPoolExecutor(len(batches)) as pool:
        for n in pool.map(send, owners, batches):
            retries += n
    assert stored(bus) == 4 * 3 * 200  # nothing lost, nothing twice
    assert retries > 0, "the soft limit of 1 call was never reached"


def test_past_hard_max_the_call_is_refused_with_retry_info(
    publisher: Any, stored: Any, pki: Path, bus_factory: Any
) -> None:
    import threading

    bus = bus_factory(max_inflight=1, hard_max=1)
    gate = threading.Event()
    real_submit = bus.store.submit

    def held_submit(rows: Any) -> Any:  # hold the first call inside the bus
        gate.wait(30)
        return real_submit(rows)

    bus.store.submit = held_submit
    p = publisher(pki, bus.port)
    first = p.sealer.seal(p.flow(1))
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(p.stub.Publish(first, timeout=30)))
    t.start()
    for _ in range(300):  # bounded wait until the first call holds the only slot
        if bus.service.admission.inflight == 1:
            break
        threading.Event().wait(0.01)
    assert bus.service.admission.inflight == 1
    second = p.sealer.seal(p.flow(2))
    with pytest.raises(grpc.RpcError) as info:
        p.stub.Publish(second, timeout=10)
    err = info.value
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailing = dict(err.trailing_metadata() or ())  # type: ignore[attr-defined]
    assert int(trailing["retry-after-ms"]) > 0
    assert int(trailing["grpc-retry-pushback-ms"]) > 0
    gate.set()
    t.join(30)
    assert result[0].status == OK
    assert p.stub.Publish(second, timeout=10).status == OK  # the client retries: nothing lost
    assert stored(bus) == 2
