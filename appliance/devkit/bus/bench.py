"""`infraspectre bench bus`: envelopes per second accepted by a real bus over mTLS on loopback,
for the seed's unary Publish and for the batched path, measured in the same run.

What is timed: publishing pre-signed envelopes until every one is acknowledged OK, i.e. TLS,
gRPC, decoding, every check including Ed25519 verification, and the durable SQLite group commit
at the bus. Signing happens before the clock starts and is reported apart (`client_sign_per_s`),
because on the device it is spread over the sealing of each flow. The bus runs as its own process
(`bus serve`), as in production; both sides share this machine's cores.

With `--hostile` the command measures something else: legitimate batched throughput while a
hostile mix runs, against the same without it (appliance.devkit.bus.hostile_bench).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from appliance.devkit.bus import hostile_bench
from appliance.devkit.localprocs import (
    cli_process,
    free_port,
    loopback_bus_sections,
    process_cpu_seconds,
)

#: Flows of the bench ended an hour ago: inside the bus's accepted time window.
T0_MS = time.time_ns() // 1_000_000 - 3_600_000


def register(sub: Any) -> None:
    """Add `bench bus`."""
    p = sub.add_parser("bus", help="bus ingest: unary vs batched publish over mTLS")
    p.add_argument("--unary", type=int, default=5000, help="envelopes sent one per call")
    p.add_argument(
        "--batched",
        type=int,
        default=60000,
        help="envelopes sent in batches (per phase with --hostile)",
    )
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument(
        "--clients",
        type=int,
        default=4,
        help="concurrent calls in flight (with --hostile: trusted agents, one call each)",
    )
    p.add_argument(
        "--verify-threads", type=int, default=0, help="bus verify threads (0: one per CPU)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--retention",
        action="store_true",
        help="batched ingest with retention pruning on against off, alternating runs",
    )
    p.add_argument(
        "--retention-mib",
        type=int,
        default=16,
        help="with --retention: the store's size bound while pruning (MiB, default 16)",
    )
    p.add_argument(
        "--sink",
        choices=("sqlite", "jetstream"),
        default="sqlite",
        help="jetstream: batched ingest into SQLite beside JetStream with 1 and 2 bus replicas, "
        "on a local 3-node NATS cluster, in one run (docs/SCALE.md)",
    )
    hostile_bench.add_arguments(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.sink == "jetstream":
        from appliance.devkit.bus import scale_bench

        return scale_bench.run(args)
    if args.hostile:
        return hostile_bench.run(args)
    if args.retention:
        return _run_retention(args)
    report = _one_run(args, {})
    if args.json:
        print(json.dumps(report))
    else:
        for name in ("unary", "batched"):
            r = report[name]
            print(
                f"{name:8} {r['envelopes_per_s']:>9.0f} envelopes/s  "
                f"bus CPU {r['bus_cpu_s_per_1k']:.3f} s per 1000"
            )
        print(
            f"batched/unary {report['ratio']}x; stored {report['stored']}/{report['sent']} "
            "once each"
        )
    return 0 if report["all_stored_once"] else 1


def _run_retention(args: argparse.Namespace) -> int:
    """Batched ingest with the store pruning all along (a size bound below what the run
    writes) against no retention, in alternating runs (off, on, off, on): the machine's noise
    falls on both sides."""
    bound = args.retention_mib << 20
    sides: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for side in ("off", "on", "off", "on"):
        overrides = {"retention_max_bytes": 0 if side == "off" else bound}
        sides[side].append(_one_run(args, overrides))
    rate = {k: sum(r["batched"]["envelopes_per_s"] for r in v) / len(v) for k, v in sides.items()}
    report = {
        "batched_per_s_retention_off": round(rate["off"], 1),
        "batched_per_s_retention_on": round(rate["on"], 1),
        "ratio": round(rate["on"] / rate["off"], 3),
        "target_ratio": 0.9,
        "retention_max_bytes": bound,
        "runs": sides,
        "pruned_records_on": [r["sent"] - r["stored"] for r in sides["on"]],
        "store_used_bytes_on": [r["store_used_bytes"] for r in sides["on"]],
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"retention off {rate['off']:.0f}/s, on {rate['on']:.0f}/s: "
            f"ratio {report['ratio']} (target >= 0.9); pruned {report['pruned_records_on']}, "
            f"store used bytes {report['store_used_bytes_on']} (bound {bound})"
        )
    return 0


def _one_run(args: argparse.Namespace, overrides: dict[str, Any]) -> dict[str, Any]:
    """One bus process, unary then batched ingest; the report of that run."""
    from appliance.crypto import Sealer, load_signing_key
    from appliance.pki import init_pki, issue_agent
    from appliance.wire import (
        PUBLISH_BATCH_METHOD,
        PUBLISH_METHOD,
        PublishAck,
        PublishBatchResponse,
    )
    from appliance.wire.channel import mtls_channel
    from appliance.wire.framing import frame_batch

    with tempfile.TemporaryDirectory(prefix="bench-bus-") as tmp:
        root = Path(tmp)
        init_pki(root / "pki", [])
        ident = issue_agent(root / "pki", "bench-agent")
        port = free_port()
        config = root / "bus.yaml"
        sections = loopback_bus_sections(
            root / "pki", root / "data", port,
            max_inflight=64, hard_max=128, verify_threads=args.verify_threads,
        )  # fmt: skip
        sections["eventbus"].update(overrides)
        config.write_text(yaml.safe_dump(sections))
        with cli_process(["bus", "serve", "--config", str(config)], "bus") as bus:
            sealer = Sealer("bench-agent", load_signing_key(ident.signing_key))
            total = args.unary + args.batched
            t0 = time.perf_counter()
            envs = [
                sealer.seal(bench_flow(i))
                for i in range(total)
            ]  # fmt: skip
            sign_per_s = total / (time.perf_counter() - t0)
            channel = mtls_channel(
                f"127.0.0.1:{port}", ca=root / "pki/ca.crt", cert=ident.client_cert,
                key=ident.client_key, server_name="localhost",
            )  # fmt: skip
            unary = channel.unary_unary(PUBLISH_METHOD, None, None)
            batch = channel.unary_unary(PUBLISH_BATCH_METHOD, None, None)

            def send_unary(raw: bytes) -> int:
                for _ in range(1000):
                    ack = PublishAck.FromString(unary(raw, timeout=60))
                    if ack.status == PublishAck.OK:
                        return 1
                    time.sleep(ack.backoff_hint_ms / 1000)
                raise RuntimeError("unary envelope never accepted")

            def send_batch(chunk: list[bytes]) -> int:
                pending = chunk
                raw = framed[id(chunk)]  # framed before the clock started, as the agent does
                for _ in range(1000):
                    resp = PublishBatchResponse.FromString(batch(raw, timeout=120))
                    retry = [
                        e for e, a in zip(pending, resp.acks, strict=True)
                        if a.status == PublishAck.RETRY
                    ]  # fmt: skip
                    if any(a.status == PublishAck.INVALID for a in resp.acks):
                        raise RuntimeError("bench envelope answered INVALID")
                    if not retry:
                        return len(chunk)
                    pending = retry
                    raw = frame_batch(pending)
                    time.sleep(max(a.backoff_hint_ms for a in resp.acks) / 1000)
                raise RuntimeError("batch never accepted")

            framed: dict[int, bytes] = {}

            # Warm up the connection (handshake) outside the timed windows.
            send_unary(envs[0].SerializeToString())
            results: dict[str, Any] = {}
            with cf.ThreadPoolExecutor(args.clients) as pool:
                raws = [e.SerializeToString() for e in envs[1 : args.unary]]
                cpu0, t0 = process_cpu_seconds(bus.pid), time.perf_counter()
                done = sum(pool.map(send_unary, raws)) + 1
                elapsed = time.perf_counter() - t0
                results["unary"] = _phase(done, elapsed, process_cpu_seconds(bus.pid) - cpu0)
                rest = [e.SerializeToString() for e in envs[args.unary :]]
                chunks = [
                    rest[i : i + args.batch_size] for i in range(0, len(rest), args.batch_size)
                ]
                framed = {id(c): frame_batch(c) for c in chunks}
                cpu0, t0 = process_cpu_seconds(bus.pid), time.perf_counter()
                done = sum(pool.map(send_batch, chunks))
                elapsed = time.perf_counter() - t0
                results["batched"] = _phase(done, elapsed, process_cpu_seconds(bus.pid) - cpu0)
            channel.close()
        from appliance.bus.query import count, open_reader

        reader = open_reader(root / "data" / "bus.sqlite")
        stored = count(reader)
        pages, free, page = (
            int(reader.execute(f"PRAGMA {p}").fetchone()[0])
            for p in ("page_count", "freelist_count", "page_size")
        )
    return {
        **results,
        "ratio": round(
            results["batched"]["envelopes_per_s"] / results["unary"]["envelopes_per_s"], 2
        ),
        "sent": total,
        "stored": stored,
        "all_stored_once": stored == total,
        "store_used_bytes": (pages - free) * page,
        "batch_size": args.batch_size,
        "clients": args.clients,
        "verify_threads": args.verify_threads,
        "client_sign_per_s": round(sign_per_s),
        "target_batched_per_s": 20000,
        "cpus": os.cpu_count(),
    }


def bench_flow(i: int) -> Any:
    """Flow number i of a bench: a TCP flow between documentation addresses, ended an hour ago."""
    from appliance.wire import FlowEvent

    return FlowEvent(
        src_ip="192.0.2.1", dst_ip="198.51.100.7", src_port=1024 + i % 60000, dst_port=443,
        proto="TCP", bytes_tx=1500 * i, bytes_rx=900, packets_tx=9, packets_rx=7,
        start_time=T0_MS + i, end_time=T0_MS + 100 + i,
    )  # fmt: skip


def _phase(n: int, elapsed: float, bus_cpu: float) -> dict[str, float]:
    return {
        "envelopes": n,
        "seconds": round(elapsed, 3),
        "envelopes_per_s": round(n / elapsed, 1),
        "bus_cpu_s_per_1k": round(bus_cpu / n * 1000, 4),
    }
