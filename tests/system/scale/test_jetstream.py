"""The bus on a three-node NATS JetStream cluster (docs/SCALE.md): bus replicas as real
processes, the store consumer as `infraspectre bus consume`, signed agents failing over between
the replicas. Every envelope acknowledged OK is in the store exactly once, whatever dies."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from testsupport.flows import recent_flow
from testsupport.outbox import MemOutbox
from testsupport.scale import (
    AGENTS,
    CLI,
    FailoverAgent,
    Replica,
    consumer_config,
    publish_raw,
    write_config,
)

from appliance.agent.forwarder import Forwarder, ForwarderConfig
from appliance.agent.transport import GrpcTransport, Identity
from appliance.bus.config import load_bus_settings
from appliance.bus.jetstream.consumer import StoreConsumer
from appliance.crypto import Sealer, load_signing_key
from appliance.devkit.bus.natscluster import LocalCluster
from appliance.devkit.localprocs import free_port
from appliance.wire import Envelope, PublishAck, PublishBatchRequest


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 240.0) -> None:
    """Liveness only (a generous bound on a loaded machine), never a timing assertion."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no progress: {what}")
        time.sleep(0.2)


def _stored(config: Path) -> list[tuple[str, str, bytes]]:
    db = config.parent / "data" / "bus.sqlite"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [
            (a, k, bytes(e))
            for a, k, e in conn.execute("SELECT agent_id, idem_key, envelope FROM records")
        ]
    finally:
        conn.close()


def _drain(config: Path) -> str:
    out = subprocess.run(
        [*CLI, "bus", "consume", "--config", str(config), "--until-idle"],
        capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    return out.stdout


def _consume(config: Path) -> None:
    """`bus consume --until-idle`, in this process (the CLI itself runs in the test above)."""
    StoreConsumer(load_bus_settings(config, env={})).run(until_idle=True)


def test_node_and_replica_death_lose_nothing_and_store_nothing_twice(
    scale_pki: Path, nats_cluster: LocalCluster, replicas: list[Replica], tmp_path: Path
) -> None:
    ports = [r.port for r in replicas]
    agents = [FailoverAgent(scale_pki, a, ports, batches=60) for a in AGENTS]
    # agents start on different replicas
    agents[1].current = 1
    threads = [threading.Thread(target=a.run, name=a.agent) for a in agents]
    config = consumer_config(scale_pki, tmp_path, nats_cluster)
    consumer = subprocess.Popen(
        [*CLI, "bus", "consume", "--config", str(config), "--log-level", "info"],
        stdout=(tmp_path / "consumer.out").open("w"),
        stderr=(tmp_path / "consumer.log").open("w"),
    )

    def acked() -> int:
        return sum(len(a.ok) for a in agents)

    try:
        for t in threads:
            t.start()
        _wait_for(lambda: acked() >= 300, "first envelopes acknowledged")
        nats_cluster.kill(0)  # kill -9 one NATS node under load
        mark = acked()
        _wait_for(lambda: acked() >= mark + 300, "delivery with one NATS node dead")

        replicas[0].kill()  # kill -9 one bus replica under load
        mark = acked()
        before = {a.agent: a.ok_by_port.get(ports[1], 0) for a in agents}
        _wait_for(lambda: acked() >= mark + 300, "delivery with one bus replica dead")
        # every agent kept delivering, through the replica still alive
        _wait_for(
            lambda: all(
                a.ok_by_port.get(ports[1], 0) > before[a.agent] or not t.is_alive()
                for a, t in zip(agents, threads, strict=True)
            ),
            "every agent delivering through the other replica",
        )

        # a retransmission after the replica's death, landing on the other replica: OK, once
        first = agents[0]
        again = list(first.ok.values())[:50]
        assert publish_raw(scale_pki, first.agent, ports[1], again) == [PublishAck.OK] * 50

        nats_cluster.start(0)
        replicas[0].start()
        nats_cluster.wait_ready(timeout_s=180)
        mark = acked()
        _wait_for(
            lambda: acked() >= mark + 300 or all(not t.is_alive() for t in threads),
            "delivery after both came back",
        )
        for t in threads:
            t.join(timeout=600)
        assert [a.error for a in agents] == ["", "", ""]

        # past the stream's duplicate window (3 s here) only the store can deduplicate
        time.sleep(4.0)
        late = list(first.ok.values())[50:100]
        assert publish_raw(scale_pki, first.agent, ports[0], late) == [PublishAck.OK] * 50
        assert consumer.poll() is None, (tmp_path / "consumer.log").read_text()[-2000:]
    finally:
        for a in agents:  # a failed test stops them; a passing one has let them finish
            a.stop.set()
        for t in threads:
            t.join(timeout=600)
        consumer.terminate()
        consumer.wait(timeout=60)
    summary = _drain(config)

    stored = _stored(config)
    keys = [(a, k) for a, k, _ in stored]
    assert len(keys) == len(set(keys)), "an envelope is stored twice"
    by_key = {(a, k): e for a, k, e in stored}
    for a in agents:
        assert len(a.ok) == a.batches * a.batch_size
        for key, raw in a.ok.items():
            assert by_key.get((a.agent, key)) == raw, f"{a.agent} {key} acknowledged, not stored"
    # nothing stored that no agent sent
    sent = {(a.agent, k) for a in agents for k in a.sent}
    assert set(keys) <= sent
    # the late retransmission reached the stream again and only the store's index caught it
    summaries = (tmp_path / "consumer.out").read_text() + summary
    duplicates = sum(int(n) for n in re.findall(r"duplicates (\d+)", summaries))
    assert duplicates >= 50, summaries


def test_a_full_stream_answers_retry_and_loses_nothing_acknowledged(
    scale_pki: Path, nats_cluster: LocalCluster, tmp_path: Path
) -> None:
    folder = tmp_path / "replica"
    folder.mkdir()
    config = write_config(
        folder / "bus.yaml", scale_pki, folder / "data", free_port(), nats_cluster,
        max_bytes=1 << 20, full_backoff_hint_ms=300,
    )  # fmt: skip
    port = int(yaml.safe_load(config.read_text())["eventbus"]["port"])
    replica = Replica(config, port)
    replica.start()
    agent = FailoverAgent(scale_pki, "branch-1", [port], batches=0)
    ok: dict[str, bytes] = {}
    refused: list[bytes] = []
    answers: set[tuple[str, int]] = set()
    store = consumer_config(scale_pki, tmp_path, nats_cluster)
    try:
        # no consumer reads yet: the stream (1 MiB) fills and then refuses
        for b in range(100):
            batch = [agent.sealer.seal(recent_flow(b * 200 + i)) for i in range(200)]
            raws = [e.SerializeToString() for e in batch]
            acks = agent.stubs[0].PublishBatch(PublishBatchRequest(envelopes=batch), timeout=60)
            for env, raw, ack in zip(batch, raws, acks.acks, strict=True):
                if ack.status == PublishAck.OK:
                    ok[env.idempotency_key] = raw
                else:
                    assert ack.status == PublishAck.RETRY, ack.reason
                    answers.add((ack.reason, ack.backoff_hint_ms))
                    refused.append(raw)
            if ("stream full", 300) in answers:
                break
        assert ("stream full", 300) in answers, f"the stream never filled: {answers}"
        assert ok, "nothing was accepted before the stream filled"
        # the store consumer catches up; acknowledged messages leave the stream (interest)
        _consume(store)
        # the agent's retransmission of what was refused now goes through
        assert publish_raw(scale_pki, "branch-1", port, refused) == [PublishAck.OK] * len(refused)
    finally:
        replica.stop()
    for raw in refused:
        ok[Envelope.FromString(raw).idempotency_key] = raw
    _consume(store)
    stored = _stored(store)
    assert len(stored) == len({(a, k) for a, k, _ in stored}) == len(ok)
    assert {k: e for _, k, e in stored} == ok
    # the operators' view of that store: `bus query` with the same configuration
    query = subprocess.run(
        [*CLI, "bus", "query", "--config", str(store), "--json", "--limit", "100000"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    assert len(query.stdout.splitlines()) == len(ok)


def test_replicas_share_chains_and_the_agents_forwarder_fails_over_between_them(
    scale_pki: Path, nats_cluster: LocalCluster, replicas: list[Replica], tmp_path: Path
) -> None:
    """Two replicas act as one bus: a chain link accepted by one binds the other; the agent's
    own forwarder (appliance/agent/forwarder.py) with both as its bus addresses loses nothing
    when the first dies mid-stream, and everything is stored once."""
    key2 = load_signing_key(scale_pki / "agents/branch-2/ed25519.key")
    sealer2 = Sealer("branch-2", key2)
    first = sealer2.seal(recent_flow(1)).SerializeToString()
    a, b = (r.port for r in replicas)
    assert publish_raw(scale_pki, "branch-2", a, [first]) == [PublishAck.OK]
    # a validly signed seq 2 naming another predecessor, sent to the other replica
    forged = Sealer("branch-2", key2, seq=1, prev_sig=b"\x01" * 64).seal(recent_flow(2))
    assert publish_raw(scale_pki, "branch-2", b, [forged.SerializeToString()]) == [
        PublishAck.INVALID
    ]
    # the true seq 2 goes through the other replica
    second = sealer2.seal(recent_flow(2)).SerializeToString()
    assert publish_raw(scale_pki, "branch-2", b, [second]) == [PublishAck.OK]

    key = load_signing_key(scale_pki / "agents/branch-3/ed25519.key")
    sealer = Sealer("branch-3", key)
    envs = [sealer.seal(recent_flow(i)).SerializeToString() for i in range(2000)]
    box = MemOutbox((Envelope.FromString(e).idempotency_key.encode(), e) for e in envs)
    ident = Identity(
        ca=scale_pki / "ca.crt", cert=scale_pki / "agents/branch-3/client.crt",
        key=scale_pki / "agents/branch-3/client.key", server_name="localhost",
    )  # fmt: skip
    forwarder = Forwarder(
        box,
        [lambda port=r.port: GrpcTransport(f"127.0.0.1:{port}", ident) for r in replicas],
        ForwarderConfig(
            batch_size=200, timeout_s=20, backoff_base_s=0.1, backoff_cap_s=1.0,
            quarantine_path=tmp_path / "quarantine.jsonl",
        ),
    )  # fmt: skip
    for _ in range(200):  # bounded: each step sends one batch or waits out one backoff
        forwarder.step()
        if len(box.pending) <= 1000:
            break
    assert len(box.pending) <= 1000, "the first half was not delivered"
    replicas[0].kill()
    for _ in range(500):
        forwarder.step()
        if not box.pending:
            break
    assert not box.pending, f"{len(box.pending)} envelopes never acknowledged"
    assert not (tmp_path / "quarantine.jsonl").exists()
    config = consumer_config(scale_pki, tmp_path, nats_cluster)
    _drain(config)
    stored = {k: e for a, k, e in _stored(config) if a == "branch-3"}
    assert len(_stored(config)) == len(stored) + 2 == 2002
    assert stored == {Envelope.FromString(e).idempotency_key: e for e in envs}


def test_unreachable_nats_stops_serve_and_consume_with_one_line(
    scale_pki: Path, tmp_path: Path
) -> None:
    config = tmp_path / "bus.yaml"
    doc = {
        "eventbus": {
            "host": "127.0.0.1", "port": free_port(), "metrics_port": -1, "health_port": -1,
            "tls": {"cert_dir": str(scale_pki)}, "sink": "jetstream",
            "jetstream": {"servers": [f"nats://127.0.0.1:{free_port()}"], "connect_timeout_s": 1},
        },
        "storage": {"data_dir": str(tmp_path / "data")},
    }  # fmt: skip
    config.write_text(yaml.safe_dump(doc))
    for action in ("serve", "consume"):
        run = subprocess.run(
            [*CLI, "bus", action, "--config", str(config), "--log-level", "error"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert run.returncode != 0
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot reach NATS at nats://127.0.0.1:" in lines[0], lines
