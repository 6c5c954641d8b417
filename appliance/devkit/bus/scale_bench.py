"""`infraspectre bench bus --sink jetstream`: batched ingest into the SQLite sink beside the
JetStream sink with one and with two bus replicas, in one run, on one machine.

Setup: a three-node NATS cluster on loopback (appliance/devkit/bus/natscluster.py, streams
with 3 replicas), `--clients` agents (one identity each, so the chain bucket sees one key per
agent as in a fleet), each sending pre-signed batches of `--batch-size` to its replica
(client i to replica i mod n). Timed: from the first batch to the last envelope acknowledged OK.
Reported per phase: envelopes/s, bus CPU seconds per 1,000 envelopes (every replica process),
NATS CPU seconds per 1,000 (every nats-server process, JetStream phases). After each JetStream
phase the store consumer drains the stream into a SQLite store and the phase checks that every
envelope is there exactly once (`all_stored_once`).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from appliance.devkit.bus.natscluster import LocalCluster
from appliance.devkit.localprocs import (
    cli_process,
    free_port,
    loopback_bus_sections,
    process_cpu_seconds,
)


def run(args: argparse.Namespace) -> int:
    """The three phases side by side; one JSON object with --json."""
    from appliance.pki import init_pki, issue_agent

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        root = Path(tmp)
        init_pki(root / "pki", [])
        agents = [issue_agent(root / "pki", f"bench-{i}") for i in range(args.clients)]
        report: dict[str, Any] = {}
        with LocalCluster(root / "nats", 3) as cluster:
            report["sqlite"] = _phase(args, root, agents, "sqlite", 1, cluster)
            report["jetstream_1"] = _phase(args, root, agents, "jetstream", 1, cluster)
            report["jetstream_2"] = _phase(args, root, agents, "jetstream", 2, cluster)
    report.update(
        {
            "envelopes": args.batched,
            "batch_size": args.batch_size,
            "clients": args.clients,
            "nats_nodes": 3,
            "stream_replicas": 3,
            "jetstream_1_vs_sqlite": _ratio(report["jetstream_1"], report["sqlite"]),
            "jetstream_2_vs_1": _ratio(report["jetstream_2"], report["jetstream_1"]),
            "cpus": os.cpu_count(),
        }
    )
    ok = all(report[k]["all_stored_once"] for k in ("sqlite", "jetstream_1", "jetstream_2"))
    if args.json:
        print(json.dumps(report))
    else:
        for name in ("sqlite", "jetstream_1", "jetstream_2"):
            r = report[name]
            print(
                f"{name:12} {r['envelopes_per_s']:>8.0f} envelopes/s  bus CPU "
                f"{r['bus_cpu_s_per_1k']:.3f} s/1000  NATS CPU {r['nats_cpu_s_per_1k']:.3f} s/1000"
                f"  stored once: {r['all_stored_once']}"
            )
    return 0 if ok else 1


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> float:
    return round(float(a["envelopes_per_s"]) / float(b["envelopes_per_s"]), 3)


def _phase(
    args: argparse.Namespace,
    root: Path,
    agents: list[Any],
    sink: str,
    n_replicas: int,
    cluster: LocalCluster,
) -> dict[str, Any]:
    from appliance.crypto import Sealer, load_signing_key
    from appliance.devkit.bus.bench import bench_flow
    from appliance.wire.framing import frame_batch

    name = f"{sink}-{n_replicas}"
    folder = root / name
    per_client = args.batched // len(agents)
    work: list[tuple[int, bytes, int]] = []  # (client, framed batch, envelopes)
    for c, ident in enumerate(agents):
        sealer = Sealer(ident.agent_id, load_signing_key(ident.signing_key))
        envs = [sealer.seal(bench_flow(i)).SerializeToString() for i in range(per_client)]
        for lo in range(0, per_client, args.batch_size):
            chunk = envs[lo : lo + args.batch_size]
            work.append((c, frame_batch(chunk), len(chunk)))
    js = {
        "servers": cluster.urls, "replicas": 3, "stream": f"BENCH{n_replicas}",
        "subject_prefix": f"bench{n_replicas}", "chain_bucket": f"bench-chains-{n_replicas}",
        "max_bytes": 1 << 30,
    }  # fmt: skip
    with contextlib.ExitStack() as stack:
        ports = []
        buses = []
        for r in range(n_replicas):
            port = free_port()
            sections = loopback_bus_sections(
                root / "pki", folder / f"replica{r}", port, max_inflight=64, hard_max=128,
                sink=sink, jetstream=js,
            )  # fmt: skip
            config = folder / f"replica{r}.yaml"
            folder.mkdir(parents=True, exist_ok=True)
            config.write_text(yaml.safe_dump(sections))
            buses.append(
                stack.enter_context(cli_process(["bus", "serve", "--config", str(config)], "bus"))
            )
            ports.append(port)
        send = _sender(root, agents, ports)
        nats_pids = [n.proc.pid for n in cluster.nodes if n.proc is not None]
        for client in range(len(agents)):  # handshakes outside the timed window
            send(client, b"", 0)
        pids = [b.pid for b in buses]
        cpu0 = [process_cpu_seconds(p) for p in pids + nats_pids]
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(args.clients) as pool:
            done = sum(pool.map(lambda w: send(*w), work))
        elapsed = time.perf_counter() - t0
        cpu = [process_cpu_seconds(p) - c for p, c in zip(pids + nats_pids, cpu0, strict=True)]
    bus_cpu, nats_cpu = sum(cpu[: len(pids)]), sum(cpu[len(pids) :]) if sink != "sqlite" else 0.0
    stored = _stored(root, folder, sink, js)
    return {
        "envelopes": done,
        "seconds": round(elapsed, 3),
        "envelopes_per_s": round(done / elapsed, 1),
        "bus_cpu_s_per_1k": round(bus_cpu / done * 1000, 4),
        "nats_cpu_s_per_1k": round(nats_cpu / done * 1000, 4),
        "replicas": n_replicas,
        "stored": stored,
        "all_stored_once": stored == done,
    }


def _sender(root: Path, agents: list[Any], ports: list[int]) -> Any:
    """send(client, framed batch, n): publish until every envelope is OK (honouring RETRY)."""
    from appliance.wire import PUBLISH_BATCH_METHOD, PublishAck, PublishBatchResponse
    from appliance.wire.channel import mtls_channel
    from appliance.wire.framing import frame_batch

    calls = []
    for c, ident in enumerate(agents):
        channel = mtls_channel(
            f"127.0.0.1:{ports[c % len(ports)]}", ca=root / "pki/ca.crt",
            cert=ident.client_cert, key=ident.client_key, server_name="localhost",
        )  # fmt: skip
        calls.append(channel.unary_unary(PUBLISH_BATCH_METHOD, None, None))

    def send(client: int, raw: bytes, n: int) -> int:
        pending_raw = raw
        for _ in range(1000):
            resp = PublishBatchResponse.FromString(calls[client](pending_raw, timeout=120))
            if any(a.status == PublishAck.INVALID for a in resp.acks):
                raise RuntimeError(f"bench envelope answered INVALID: {resp.acks[0].reason}")
            retry = [i for i, a in enumerate(resp.acks) if a.status == PublishAck.RETRY]
            if not retry:
                return n
            envs = _split(pending_raw)
            pending_raw = frame_batch([envs[i] for i in retry])
            time.sleep(max(a.backoff_hint_ms for a in resp.acks) / 1000)
        raise RuntimeError("batch never accepted")

    return send


def _split(raw: bytes) -> list[bytes]:
    from appliance.wire import PublishBatchRequest

    return [e.SerializeToString() for e in PublishBatchRequest.FromString(raw).envelopes]


def _stored(root: Path, folder: Path, sink: str, js: dict[str, Any]) -> int:
    """Records in the phase's store (JetStream: after the consumer drained the stream)."""
    from appliance.bus.query import count, open_reader

    if sink == "sqlite":
        return count(open_reader(folder / "replica0" / "bus.sqlite"))
    from appliance.bus.config import load_bus_settings
    from appliance.bus.jetstream.consumer import StoreConsumer

    config = folder / "consumer.yaml"
    config.write_text(
        yaml.safe_dump(
            loopback_bus_sections(root / "pki", folder / "store", 1, sink=sink, jetstream=js)
        )
    )
    StoreConsumer(load_bus_settings(config, env={})).run(until_idle=True)
    return count(open_reader(folder / "store" / "bus.sqlite"))
