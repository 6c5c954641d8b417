"""The agent end to end: real traffic in namespaces, a tc mirror, our ring, the WAL, mTLS, the
bus's store. Failures are the subject: bus down, bus overloaded, agent killed, tampering."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from appliance.bus.query import Query, open_reader, query
from appliance.devkit.capture.labtraffic import ping, tcp_exchange, udp_exchange, udp_spray
from appliance.wire import Envelope


def _flows(bus: Any, **filters: Any) -> list[Any]:
    return query(open_reader(bus.store.path), Query(limit=None, **filters))


def _wait_stored(bus: Any, n: int, timeout: float = 40, **filters: Any) -> list[Any]:
    deadline = time.monotonic() + timeout
    rows: list[Any] = []
    while time.monotonic() < deadline:
        rows = _flows(bus, **filters)
        if len(rows) >= n:
            return rows
        time.sleep(0.2)
    raise AssertionError(f"{len(rows)} flows stored, expected {n}: {[dict(r) for r in rows]}")


SHOW = (
    "proto",
    "src_ip",
    "dst_ip",
    "src_port",
    "dst_port",
    "packets_tx",
    "packets_rx",
    "bytes_tx",
    "bytes_rx",
)


def _one(bus: Any, timeout: float = 30, **want: Any) -> Any:
    """The one stored flow matching want, waiting for it to arrive (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = _flows(bus)
        hits = [r for r in rows if all(r[k] == v for k, v in want.items())]
        if hits or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(hits) == 1, (want, [{k: r[k] for k in SHOW} for r in rows])
    return hits[0]


def test_real_traffic_reaches_the_bus_with_exact_counts(
    bus_factory: Any, agent_factory: Any, lab: Any
) -> None:
    bus = bus_factory()
    agent = agent_factory(bus.port).start()
    sent = [ping(lab), ping(lab, v6=True), udp_exchange(lab)]
    tcp = tcp_exchange(lab)
    for s in sent:
        row = _one(bus, proto=s.proto, src_ip=s.src, dst_ip=s.dst, dst_port=s.dst_port)
        assert (row["packets_tx"], row["packets_rx"]) == (s.packets_tx, s.packets_rx)
        assert (row["bytes_tx"], row["bytes_rx"]) == (s.bytes_tx, s.bytes_rx)
    row = _one(bus, proto="TCP", dst_port=tcp.dst_port)
    assert row["src_ip"] == lab.A4 and row["packets_tx"] >= 3 and row["packets_rx"] >= 3
    assert row["bytes_tx"] >= 3000 + 3 * 40 and row["bytes_rx"] >= 5000 + 3 * 40
    counters = _wait_stored(bus, 1, kind="counters")
    assert counters
    assert agent.stop() == 0


def test_bus_down_for_a_while_then_everything_arrives_once(
    bus_factory: Any, agent_factory: Any, lab: Any
) -> None:
    bus = bus_factory()
    port = bus.port
    agent = agent_factory(port).start()
    bus.stop()
    sent = udp_spray(lab, 21000, 300)
    agent.wait_metric("agent_flows_sealed_total", 300)
    time.sleep(1.5)  # the forwarder keeps failing and backing off; the WAL holds everything
    assert agent.metrics().get('agent_publish_failures_total{kind="unavailable"}', 0) >= 1
    bus2 = bus_factory(port=port)  # the same store, the same port
    rows = _wait_stored(bus2, len(sent), proto="UDP", port=9)
    assert sorted(r["src_port"] for r in rows) == [s.src_port for s in sent]
    assert all(r["bytes_tx"] == 48 and r["packets_tx"] == 1 for r in rows)
    assert agent.stop() == 0


def test_overloaded_bus_makes_the_agent_back_off_and_loses_nothing(
    bus_factory: Any, agent_factory: Any, lab: Any
) -> None:
    bus = bus_factory(overload=True, backoff_hint_ms=300)
    agent = agent_factory(bus.port, max_in_flight=1).start()  # one worker: calls are countable
    sent = udp_spray(lab, 22000, 200)
    agent.wait_metric('agent_publish_total{status="RETRY"}', 1)
    n0 = _calls(bus)
    time.sleep(3.0)
    n1 = _calls(bus)
    # hint 300 ms, forced overload answers 4x = 1.2 s, the agent waits hint + U(0, hint):
    # at most 3 calls fit in 3 s; a client ignoring the hint would make hundreds.
    assert n1 - n0 <= 4, (n0, n1)
    assert _flows(bus) == []
    bus.service.admission.overload = False
    rows = _wait_stored(bus, len(sent), proto="UDP", port=9)
    assert sorted(r["src_port"] for r in rows) == [s.src_port for s in sent]
    assert agent.stop() == 0


def _calls(bus: Any) -> float:
    for metric in bus.metrics.publish_latency_ms.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                return float(sample.value)
    return 0.0


def test_sigkill_mid_stream_loses_nothing_flushed_and_stores_nothing_twice(
    bus_factory: Any, agent_factory: Any, lab: Any
) -> None:
    bus = bus_factory()
    # the forwarder must still be sending when the last flow is sealed: at 100 records/s the
    # 1,500 take 15 s, longer than the spray plus the meter's expiry (at 600/s, the agent's
    # one-a-second expiry let the forwarder catch up, and the kill came after the last record)
    agent = agent_factory(bus.port, send_rate=100.0, batch_size=50)
    agent.start()
    sent = udp_spray(lab, 23000, 1500)
    agent.wait_metric("agent_flows_sealed_total", 1500)
    time.sleep(0.5)  # past the WAL's 200 ms flush window: every sealed flow is durable
    delivered = agent.wait_metric('agent_publish_total{status="OK"}', 200)
    assert delivered < 1500, "the kill must land mid-stream"
    assert agent.stop("KILL") != 0
    restarted = agent_factory(bus.port).start()
    rows = _wait_stored(bus, len(sent), proto="UDP", port=9)
    ports = [r["src_port"] for r in rows]
    assert sorted(ports) == [s.src_port for s in sent]  # every flow, each exactly once
    assert restarted.stop() == 0
    # the chain restarted after the crash (no clean finish), and resumed past the lease
    seqs = [r[0] for r in open_reader(bus.store.path).execute("SELECT seq FROM records")]
    assert len(seqs) == len(set(seqs))


def _is_spray(env: Any) -> bool:
    """One of udp_spray's flows (not ND, MLD or B's ICMP port-unreachable answers)."""
    return bool(env.HasField("flow") and env.flow.proto == "UDP" and env.flow.dst_port == 9)


def test_tampered_wal_records_are_never_delivered(
    bus_factory: Any, agent_factory: Any, lab: Any, tmp_path: Path
) -> None:
    from appliance.wal import Wal, WalConfig

    bus = bus_factory(overload=True)  # hold everything in the WAL
    agent = agent_factory(bus.port).start()
    udp_spray(lab, 24000, 20)
    agent.wait_metric("agent_flows_sealed_total", 20)
    assert agent.stop() == 0
    wal_dir = tmp_path / "wal"
    # An attacker with the card edits one record and fixes its checksum: only the signature
    # can tell. The WAL's own API rewrites it with a valid frame.
    with Wal.open(WalConfig(path=wal_dir, flush_interval_ms=200)) as wal:
        records = [r for r in wal.read(100) if _is_spray(Envelope.FromString(r.payload))]
        victim = records[0]
        forged = bytearray(victim.payload)
        forged[-1] ^= 0x01
        wal.ack([victim.seq])
        wal.append(b"forged-" + victim.key, bytes(forged))
    # And flips one bit inside another record on disk without fixing anything (in every copy
    # the segment files hold: a compaction may have left a stale one in a free segment).
    pattern = records[1].payload[-20:]
    flipped = 0
    for seg in sorted(p for p in wal_dir.iterdir() if p.name.startswith("seg")):
        data = bytearray(seg.read_bytes())
        idx = data.find(pattern)
        while idx >= 0:
            data[idx] ^= 0x40
            flipped += 1
            idx = data.find(pattern, idx + 1)
        seg.write_bytes(bytes(data))
    assert flipped >= 1
    bus.service.admission.overload = False
    agent2 = agent_factory(bus.port).start()
    rows = _wait_stored(bus, 18, proto="UDP", port=9)
    time.sleep(1.0)
    stored_ports = sorted(r["src_port"] for r in _flows(bus, proto="UDP", port=9))
    m = agent2.metrics()
    assert len(stored_ports) == 18 and len(set(stored_ports)) == 18, stored_ports
    assert m.get('agent_publish_total{status="INVALID"}', 0) == 1  # the forged one, quarantined
    assert m.get("agent_wal_corrupt_records_total", 0) == 1  # the flipped one, skipped
    assert (tmp_path / "data/agent/quarantine.jsonl").exists()
    assert agent2.stop() == 0
    assert rows
