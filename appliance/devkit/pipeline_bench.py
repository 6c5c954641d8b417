"""`infraspectre bench pipeline`: sealed flows from the WAL to the bus's store, end to end.

The bench fills a real WAL (on this machine's disk) with N sealed flow envelopes, then starts a
forwarder process on it and a real bus process, and times from the forwarder's start until the
bus has stored every envelope: WAL reads, mTLS gRPC batches, the bus's verification and its
durable SQLite commit. The forwarder process reports its own CPU time and peak RSS, from which
the agent's cost per 1,000 flows per second is derived. Sealing (signing) is timed apart.

Like demo.py it joins two components (the agent's forwarder, the bus's store), so it lives at
the package's top level, not inside either.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from appliance.devkit.localprocs import (
    cli_process,
    free_port,
    loopback_bus_sections,
    process_cpu_seconds,
)
from appliance.errors import CommandError


def register(sub: Any) -> None:
    """Add `bench pipeline`."""
    p = sub.add_parser("pipeline", help="WAL -> forwarder -> bus store, end to end over mTLS")
    p.add_argument("--flows", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--in-flight", type=int, default=2, help="batches in flight (workers)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_run)


def _forward(
    wal_dir: str, pki: str, port: int, batch: int, workers: int, total: int, out: Any
) -> None:
    """Child process: drain the WAL to the bus, then report CPU and peak RSS."""
    from appliance.agent.forwarder import ForwarderConfig, ForwarderPool
    from appliance.agent.transport import GrpcTransport, Identity
    from appliance.wal import Wal, WalConfig

    root = Path(pki)
    ident = Identity(
        ca=root / "ca.crt",
        cert=root / "agents/bench-agent/client.crt",
        key=root / "agents/bench-agent/client.key",
        server_name="localhost",
    )
    wal = Wal.open(WalConfig(path=Path(wal_dir), max_wal_bytes=512 * 1024 * 1024))
    pool = ForwarderPool(
        wal,
        [lambda: GrpcTransport(f"127.0.0.1:{port}", ident)],
        ForwarderConfig(batch_size=batch, quarantine_path=Path(wal_dir) / "quarantine"),
        workers=workers,
    )
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    deadline = t0 + 600
    pool.start()
    while time.perf_counter() < deadline:
        done = pool.stats.ok + pool.stats.invalid
        if done >= total:
            break
        time.sleep(0.005)
    elapsed = time.perf_counter() - t0
    pool.stop(30)
    fwd = pool
    cpu = time.process_time() - cpu0
    wal.close()
    out.send(
        {
            "seconds": elapsed,
            "cpu_s": cpu,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "ok": fwd.stats.ok,
            "invalid": fwd.stats.invalid,
            "batches": fwd.stats.batches,
        }
    )


def _run(args: argparse.Namespace) -> int:
    from appliance.bus.query import count, open_reader
    from appliance.crypto import Sealer, load_signing_key
    from appliance.pki import init_pki, issue_agent
    from appliance.wal import Wal, WalConfig
    from appliance.wire import FlowEvent

    # /var/tmp: on disk (the WAL's and the store's fsyncs are part of what is measured) even
    # where /tmp is a tmpfs, and outside the checkout if a killed run leaves it behind
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-", dir="/var/tmp") as tmp:
        root = Path(tmp)
        init_pki(root / "pki", [])
        ident = issue_agent(root / "pki", "bench-agent")
        sealer = Sealer("bench-agent", load_signing_key(ident.signing_key))
        wal_cfg = WalConfig(path=root / "wal", max_wal_bytes=512 * 1024 * 1024)
        t0 = time.perf_counter()
        t0_ms = time.time_ns() // 1_000_000 - 3_600_000  # an hour ago: inside the bus's window
        with Wal.open(wal_cfg) as wal:
            for i in range(args.flows):
                env = sealer.seal(
                    FlowEvent(
                        src_ip="192.0.2.10", dst_ip="198.51.100.20", src_port=1024 + i % 60000,
                        dst_port=443, proto="TCP", ip_proto=6, bytes_tx=40 * i, bytes_rx=1500,
                        packets_tx=12, packets_rx=9, start_time=t0_ms + i,
                        end_time=t0_ms + 500 + i, duration_ms=500,
                    )
                )  # fmt: skip
                wal.append(env.idempotency_key, env.SerializeToString())
            wal.flush()
        seal_per_s = args.flows / (time.perf_counter() - t0)
        port = free_port()
        config = root / "bus.yaml"
        sections = loopback_bus_sections(
            root / "pki", root / "data", port, max_batch=max(5000, args.batch_size)
        )
        config.write_text(yaml.safe_dump(sections))
        with cli_process(["bus", "serve", "--config", str(config)], "bus") as bus:
            bus_cpu0 = process_cpu_seconds(bus.pid)
            recv, send = mp.get_context("fork").Pipe(duplex=False)
            child = mp.get_context("fork").Process(
                target=_forward,
                args=(
                    str(root / "wal"),
                    str(root / "pki"),
                    port,
                    args.batch_size,
                    args.in_flight,
                    args.flows,
                    send,
                ),
            )
            child.start()
            while not recv.poll(1.0):  # never wait forever on a child that died
                if not child.is_alive():
                    raise CommandError(f"bench: the forwarder process died ({child.exitcode})")
            result = recv.recv()
            bus_cpu = process_cpu_seconds(bus.pid) - bus_cpu0
            child.join(60)
        stored = count(open_reader(root / "data" / "bus.sqlite"))
    flows_per_s = result["ok"] / result["seconds"]
    report = {
        "flows_per_s": round(flows_per_s, 1),
        "agent_rss_mb": round(result["rss_mb"], 1),
        "agent_cpu_s_per_1k_flows": round(result["cpu_s"] / result["ok"] * 1000, 4),
        "bus_cpu_s_per_1k_flows": round(bus_cpu / result["ok"] * 1000, 4),
        "flows": args.flows,
        "stored": stored,
        "all_stored_once": stored == args.flows,
        "seconds": round(result["seconds"], 3),
        "batches": result["batches"],
        "batch_size": args.batch_size,
        "in_flight": args.in_flight,
        "seal_per_s": round(seal_per_s),
        "target_flows_per_s": 20000,
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"{report['flows_per_s']:.0f} flows/s WAL -> bus store; agent RSS "
            f"{report['agent_rss_mb']} MB, CPU {report['agent_cpu_s_per_1k_flows']} s per 1000 "
            f"flows; stored {stored}/{args.flows} once each"
        )
    return 0 if report["all_stored_once"] else 1
