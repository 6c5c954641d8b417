"""A buggy, old or stolen box against the bus: validly signed envelopes with values the store
cannot hold, idempotency conflicts, chains that contradict themselves, a store that cannot
commit. Each case checks the answer, that nothing was stored that should not be, that a canary
is stored right after, and that /ready tells the truth."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from appliance.bus.query import open_reader
from appliance.bus.server import BusServer
from appliance.bus.validate import INT64_LIMIT
from appliance.crypto import Sealer, sign_envelope
from appliance.pki.trustmap import add_trust_entry
from appliance.wire import Envelope, InterfaceCounters, InterfaceStats, PublishAck
from appliance.wire import PublishBatchRequest as Batch

OK, RETRY, INVALID = PublishAck.OK, PublishAck.RETRY, PublishAck.INVALID
FLOW_U64 = ["bytes_tx", "bytes_rx", "packets_tx", "packets_rx", "start_time", "end_time"]
STATS_U64 = [f.name for f in InterfaceStats.DESCRIPTOR.fields if f.type == f.TYPE_UINT64]


def _ready(bus: BusServer) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{bus.health_port}/ready", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def _canary(p: Any, bus: BusServer, stored: Any, before: int) -> None:
    ack = p.stub.Publish(p.sealer.seal(p.flow(999)), timeout=10)
    assert ack.status == OK, ack
    assert stored(bus) == before + 1
    assert _ready(bus) == 200


def _resign(p: Any, env: Envelope) -> Envelope:
    sign_envelope(env, p.sealer._key)
    return env


def test_a_poison_value_in_every_numeric_field_is_invalid_and_the_store_lives_on(
    publisher: Any, stored: Any, pki: Path, bus: BusServer
) -> None:
    p = publisher(pki, bus.port)
    poisons: list[tuple[str, Envelope]] = []
    for field in FLOW_U64:
        flow = p.flow(len(poisons))
        setattr(flow, field, INT64_LIMIT)
        if field == "start_time":
            flow.end_time = (1 << 64) - 1
        poisons.append((field, p.sealer.seal(flow)))
    for field in STATS_U64:
        sample = InterfaceCounters(
            sample_ns=time.time_ns(), interfaces=[InterfaceStats(ifname="eth0", **{field: 1 << 63})]
        )
        poisons.append((field, p.sealer.seal(counters=sample)))
    for field in ("seq", "ts_ns"):
        env = p.sealer.seal(p.flow(len(poisons)))
        setattr(env, field, (1 << 64) - 1)
        poisons.append((field, _resign(p, env)))
    resp = p.stub.PublishBatch(Batch(envelopes=[env for _, env in poisons]), timeout=30)
    for (field, _), ack in zip(poisons, resp.acks, strict=True):
        assert ack.status == INVALID, (field, ack)
    unary = p.stub.Publish(poisons[0][1], timeout=10)
    assert unary.status == INVALID and "bytes_tx" in unary.reason
    assert stored(bus) == 0
    _canary(p, bus, stored, 0)
    text = _metrics(bus)
    assert 'bus_rejected_total{reason="bad_counter"}' in text
    assert "undecodable" in text  # every class is exported, at 0 until seen


def _metrics(bus: BusServer) -> str:
    url = f"http://127.0.0.1:{bus.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as r:
        return str(r.read().decode())


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("src_port", 70000, "above 65535"),
        ("vlan", 99999, "vlan"),
        ("src_ip", "not-an-ip", "not an IP address"),
        ("start_time", 0, "starts before"),
        ("proto", "\x1b[31mTCP", "proto"),
    ],
)
def test_values_out_of_their_range_are_invalid_with_the_reason(
    publisher: Any, stored: Any, pki: Path, bus: BusServer, field: str, value: object, reason: str
) -> None:
    p = publisher(pki, bus.port)
    flow = p.flow()
    setattr(flow, field, value)
    ack = p.stub.Publish(p.sealer.seal(flow), timeout=10)
    assert ack.status == INVALID and reason in ack.reason, ack
    assert stored(bus) == 0
    _canary(p, bus, stored, 0)


def test_an_envelope_sealed_in_1970_is_invalid(
    publisher: Any, stored: Any, pki: Path, bus: BusServer
) -> None:
    p = publisher(pki, bus.port)
    env = p.sealer.seal(p.flow())
    env.ts_ns = 10**9
    ack = p.stub.Publish(_resign(p, env), timeout=10)
    assert ack.status == INVALID and "in the past" in ack.reason
    assert stored(bus) == 0
    _canary(p, bus, stored, 0)


def test_same_idempotency_key_with_other_content_is_a_conflict_and_the_first_is_kept(
    publisher: Any, stored: Any, pki: Path, bus: BusServer
) -> None:
    p = publisher(pki, bus.port)
    first = p.sealer.seal(p.flow(1))
    assert p.stub.Publish(first, timeout=10).status == OK
    other = p.sealer.seal(p.flow(2))
    other.idempotency_key = first.idempotency_key
    ack = p.stub.Publish(_resign(p, other), timeout=10)
    assert ack.status == INVALID and ack.reason.startswith("conflict")
    assert p.stub.Publish(first, timeout=10).status == OK  # the byte-identical resend
    rows = open_reader(bus.store.path).execute("SELECT envelope FROM records").fetchall()
    assert [bytes(r[0]) for r in rows] == [first.SerializeToString()]
    _canary(p, bus, stored, 1)


def test_chain_contradictions_are_invalid_and_gaps_are_recorded(
    publisher: Any, stored: Any, pki: Path, bus_factory: Any
) -> None:
    bus = bus_factory(gap_settle_s=1.0)
    p = publisher(pki, bus.port)
    envs = [p.sealer.seal(p.flow(i)) for i in range(6)]  # seq 1..6
    resp = p.stub.PublishBatch(Batch(envelopes=[envs[3], envs[4], envs[0]]), timeout=10)
    assert [a.status for a in resp.acks] == [OK, OK, OK]  # out of order is fine
    spliced = Envelope()
    spliced.CopyFrom(envs[1])
    spliced.prev_sig = envs[3].sig  # seq 2 claiming seq 4 as its predecessor
    ack = p.stub.Publish(_resign(p, spliced), timeout=10)
    assert ack.status == INVALID and "chain broken" in ack.reason
    reused = p.sealer.seal(p.flow(7))
    reused.seq = envs[4].seq  # a stored seq, other content
    ack = p.stub.Publish(_resign(p, reused), timeout=10)
    assert ack.status == INVALID and "seq already used" in ack.reason
    assert stored(bus) == 3
    deadline = time.monotonic() + 20  # the writer sweeps about once a second
    gaps: list[tuple[int, int]] = []
    while time.monotonic() < deadline and not gaps:
        time.sleep(0.5)
        gaps = (
            open_reader(bus.store.path)
            .execute("SELECT seq_lo, seq_hi FROM chain_events WHERE kind = 'gap'")
            .fetchall()
        )
    assert [tuple(g) for g in gaps] == [(2, 3)]
    assert 'bus_chain_events_total{kind="gap"} 1.0' in _metrics(bus)
    resp = p.stub.PublishBatch(Batch(envelopes=[envs[1], envs[2], envs[5]]), timeout=10)
    assert [a.status for a in resp.acks] == [OK, OK, OK]  # the late ones still fit
    _canary(p, bus, stored, 6)


def test_a_rekeyed_agent_starts_a_new_chain(
    publisher: Any, stored: Any, pki: Path, bus_factory: Any, tmp_path: Path
) -> None:
    bus = bus_factory()
    p = publisher(pki, bus.port)
    assert p.stub.Publish(p.sealer.seal(p.flow(1)), timeout=10).status == OK
    new_key = SigningKey.generate()
    add_trust_entry(tmp_path / "trust_map.yaml", "branch-1", bytes(new_key.verify_key).hex())
    assert bus.reload_trust_map()
    p.sealer = Sealer("branch-1", new_key)  # re-provisioned: a new key, seq from 1 again
    assert p.stub.Publish(p.sealer.seal(p.flow(1)), timeout=10).status == OK
    kinds = [
        r[0]
        for r in open_reader(bus.store.path).execute("SELECT kind FROM chain_events ORDER BY id")
    ]
    assert kinds == ["start", "rekey"]
    _canary(p, bus, stored, 2)


@pytest.fixture
def small_data_dir(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs as the bus's data folder: a disk that can be filled."""
    data = tmp_path / "data"
    data.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(data)], check=True)
    try:
        yield data
    finally:
        subprocess.run(["umount", "-l", str(data)], check=False)


def test_a_full_disk_answers_retry_and_not_ready_then_recovers(
    publisher: Any, stored: Any, pki: Path, bus_factory: Any, small_data_dir: Path
) -> None:
    bus = bus_factory()  # its data_dir is tmp_path/data: the small tmpfs
    p = publisher(pki, bus.port)
    assert p.stub.Publish(p.sealer.seal(p.flow(0)), timeout=10).status == OK
    filler = small_data_dir / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:  # fill the disk to the last byte
        while os.write(fd, b"\0" * 65536):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    batch = [p.sealer.seal(p.flow(i)) for i in range(1, 400)]
    resp = p.stub.PublishBatch(Batch(envelopes=batch), timeout=40)
    assert {a.status for a in resp.acks} == {RETRY}
    assert _ready(bus) == 503
    filler.unlink()
    deadline = time.monotonic() + 15  # the writer probes once a second
    while _ready(bus) != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _ready(bus) == 200
    resp = p.stub.PublishBatch(Batch(envelopes=batch), timeout=40)
    assert {a.status for a in resp.acks} == {OK}
    _canary(p, bus, stored, 400)
