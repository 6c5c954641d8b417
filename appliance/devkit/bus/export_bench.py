"""`infraspectre bench export`: IPFIX export against the bus's ingest, in one run.

A real bus process (`bus serve`) with one IPFIX collector configured takes signed flows over
mTLS as fast as `--clients` concurrent batched publishers can send them, while its exporter
tails the store and sends them on: UDP to Debian's nfcapd (the default; its files are read
back with `nfdump` to count what arrived) or, with `--tcp`, to a TCP sink in this process that
reads every byte (the exporter counts a flow delivered only once the sink's TCP acknowledged
it). Both rates come from one clock started with the first publish:

- ingest: flows stored per second, until the last batch was acknowledged OK;
- export: flows delivered per second, until the last flow was delivered (read from the bus's
  `bus_export_delivered_flows_total`), so `ratio` = export / ingest is 1.0 when the exporter
  finishes with the ingest and drops as it trails behind;
- lag: `bus_export_lag_records` and `bus_export_lag_seconds` sampled every `--sample-s` while
  ingest runs (the bounded queue is the store: this is how far behind the exporter is; the bus
  refreshes these gauges once a second), their maximum, and the lag left when ingest ended and
  how long the exporter took to drain it; beside them `behind_flows`, the bench's own count at
  each sample of flows acknowledged to the publishers and not yet delivered (exact, no refresh
  period).

Signing happens before the clock starts (the agents did it on their devices). Bus, publishers
and the collector share this machine's cores, so this is the loaded case: on a 2-core machine
ingest and export compete for the same CPU.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
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

#: export / ingest at or above which the exporter kept up (it finished with the ingest).
TARGET_RATIO = 0.9


def register(sub: Any) -> None:
    """Add `bench export`."""
    p = sub.add_parser("export", help="IPFIX export rate against the bus's ingest rate, one run")
    p.add_argument("--flows", type=int, default=40000, help="flows published (default 40000)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--clients", type=int, default=4, help="concurrent publish calls")
    p.add_argument("--tcp", action="store_true", help="export over TCP to a sink in this process")
    p.add_argument(
        "--mode", choices=("biflow", "uniflow"), default="biflow", help="IPFIX records per flow"
    )
    p.add_argument("--sample-s", type=float, default=0.2, help="lag sampling period")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.flows < args.batch_size or args.batch_size < 1:
        raise CommandError("--flows must be at least --batch-size, and --batch-size positive")
    if not 0.01 <= args.sample_s <= 10:
        raise CommandError(f"--sample-s {args.sample_s}: must be 0.01..10")
    if not args.tcp:
        missing = [t for t in ("nfcapd", "nfdump") if not shutil.which(t)]
        if missing:
            raise CommandError(f"{' and '.join(missing)} missing (apt-get install nfdump)")
    report = _one_run(args)
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"ingest {report['ingest_flows_per_s']:.0f} flows/s, export "
            f"{report['export_flows_per_s']:.0f} flows/s: ratio {report['ratio']} (target >= "
            f"{TARGET_RATIO}); lag during ingest max {report['lag_records_max']} records / "
            f"{report['lag_seconds_max']} s (bench count: {report['behind_flows_max']:.0f} flows "
            f"behind), {report['lag_records_at_ingest_end']} left at its "
            f"end, drained in {report['drain_s']} s; collector got "
            f"{report['collector_records']} records"
        )
    return 0 if report["all_delivered_once"] else 1


def _one_run(args: argparse.Namespace) -> dict[str, Any]:
    from appliance.crypto import Sealer, load_signing_key
    from appliance.pki import init_pki, issue_agent
    from appliance.wire import PUBLISH_BATCH_METHOD, FlowEvent, PublishAck, PublishBatchResponse
    from appliance.wire.channel import mtls_channel
    from appliance.wire.framing import frame_batch

    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        root = Path(tmp)
        init_pki(root / "pki", [])
        ident = issue_agent(root / "pki", "bench-agent")
        port, metrics_port = free_port(), free_port()
        with _collector(args.tcp, root / "nfcapd") as (collector_port, received):
            transport = "tcp" if args.tcp else "udp"
            address = f"127.0.0.1:{collector_port}"
            sections = loopback_bus_sections(
                root / "pki", root / "data", port, metrics_port=metrics_port,
                max_inflight=64, hard_max=128,
            )  # fmt: skip
            sections["eventbus"]["export"] = {
                "ipfix": {"collectors": [{"address": address, "transport": transport,
                                          "mode": args.mode}]}
            }  # fmt: skip
            config = root / "bus.yaml"
            config.write_text(yaml.safe_dump(sections))
            with cli_process(["bus", "serve", "--config", str(config)], "bus") as bus:
                sealer = Sealer("bench-agent", load_signing_key(ident.signing_key))
                t0_ms = time.time_ns() // 1_000_000 - 3_600_000
                envs = [
                    sealer.seal(FlowEvent(
                        src_ip=f"192.0.2.{1 + i % 250}", dst_ip="198.51.100.7",
                        src_port=1024 + i % 60000, dst_port=443, proto="TCP", ip_proto=6,
                        ip_version=4, bytes_tx=1500 + i, bytes_rx=900, packets_tx=9,
                        packets_rx=7, start_time=t0_ms + i, end_time=t0_ms + 100 + i,
                        vlan=i % 3 * 30, interface="eth1",
                    )).SerializeToString()
                    for i in range(args.flows)
                ]  # fmt: skip
                chunks = [
                    envs[i : i + args.batch_size] for i in range(0, len(envs), args.batch_size)
                ]
                framed = {id(c): frame_batch(c) for c in chunks}
                channel = mtls_channel(
                    f"127.0.0.1:{port}", ca=root / "pki/ca.crt", cert=ident.client_cert,
                    key=ident.client_key, server_name="localhost",
                )  # fmt: skip
                batch = channel.unary_unary(PUBLISH_BATCH_METHOD, None, None)

                def send(chunk: list[bytes]) -> int:
                    pending, raw = chunk, framed[id(chunk)]
                    for _ in range(1000):
                        resp = PublishBatchResponse.FromString(batch(raw, timeout=120))
                        if any(a.status == PublishAck.INVALID for a in resp.acks):
                            raise CommandError("a bench envelope was answered INVALID")
                        pending = [
                            e for e, a in zip(pending, resp.acks, strict=True)
                            if a.status == PublishAck.RETRY
                        ]  # fmt: skip
                        if not pending:
                            with acked_lock:
                                acked[0] += len(chunk)
                            return len(chunk)
                        raw = frame_batch(pending)
                        time.sleep(max(a.backoff_hint_ms for a in resp.acks) / 1000)
                    raise CommandError("a bench batch was never accepted")

                metrics = _Metrics(f"http://127.0.0.1:{metrics_port}/metrics")
                metrics.read()  # the endpoint answers before the clock starts
                samples: list[tuple[float, float, float, float]] = []
                ingest_done = threading.Event()
                acked, acked_lock = [0], threading.Lock()

                def sample(t0: float) -> None:
                    while not ingest_done.wait(args.sample_s):
                        with acked_lock:
                            stored_now = acked[0]
                        m = metrics.read()
                        behind = max(0.0, stored_now - m.delivered)
                        samples.append((time.perf_counter() - t0, m.lag_records, m.lag_s, behind))

                cpu0 = process_cpu_seconds(bus.pid)
                t0 = time.perf_counter()
                sampler = threading.Thread(target=sample, args=(t0,), daemon=True)
                sampler.start()
                with cf.ThreadPoolExecutor(args.clients) as pool:
                    stored = sum(pool.map(send, chunks))
                ingest_s = time.perf_counter() - t0
                ingest_done.set()
                sampler.join()
                at_end = metrics.read()
                deadline = time.monotonic() + 600
                while (m := metrics.read()).delivered < stored:
                    if time.monotonic() > deadline:
                        raise CommandError(
                            f"export stalled: {m.delivered:.0f} of {stored} delivered in 600 s"
                        )
                    time.sleep(0.02)
                export_s = time.perf_counter() - t0
                bus_cpu = process_cpu_seconds(bus.pid) - cpu0
                channel.close()
                final = metrics.read()
                bus.send_signal(signal.SIGTERM)  # the exporter closes its session first
                bus.wait(timeout=60)
        got = received()
    want_records = stored if args.mode == "biflow" else 2 * stored
    return {
        "flows": stored,
        "transport": transport,
        "mode": args.mode,
        "ingest_s": round(ingest_s, 3),
        "ingest_flows_per_s": round(stored / ingest_s, 1),
        "export_s": round(export_s, 3),
        "export_flows_per_s": round(stored / export_s, 1),
        "ratio": round(ingest_s / export_s, 3),
        "target_ratio": TARGET_RATIO,
        "kept_up": ingest_s / export_s >= TARGET_RATIO,
        "lag_records_max": max((s[1] for s in samples), default=0),
        "lag_seconds_max": round(max((s[2] for s in samples), default=0), 3),
        "lag_records_at_ingest_end": at_end.lag_records,
        "lag_seconds_at_ingest_end": round(at_end.lag_s, 3),
        "drain_s": round(export_s - ingest_s, 3),
        "behind_flows_max": max((s[3] for s in samples), default=0),
        "lag_samples": [[round(t, 2), r, round(s, 3), b] for t, r, s, b in samples],
        "delivered": final.delivered,
        "resent": final.resent,
        "dropped": final.dropped,
        "collector_records": got,
        "all_delivered_once": final.delivered == stored and got == want_records,
        "bus_cpu_s_per_1k": round(bus_cpu / stored * 1000, 4),
        "batch_size": args.batch_size,
        "clients": args.clients,
        "cpus": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


class _Reading:
    def __init__(self, values: dict[str, float]) -> None:
        self.delivered = values.get("bus_export_delivered_flows_total", 0.0)
        self.resent = values.get("bus_export_resent_flows_total", 0.0)
        self.dropped = values.get("bus_export_dropped_flows_total", 0.0)
        self.lag_records = values.get("bus_export_lag_records", 0.0)
        self.lag_s = values.get("bus_export_lag_seconds", 0.0)


class _Metrics:
    """The bus's /metrics, the export series of its one collector."""

    _LINE = re.compile(r"^(bus_export_[a-z_]+)\{[^}]*\} ([0-9.e+-]+)$", re.M)

    def __init__(self, url: str) -> None:
        self.url = url

    def read(self) -> _Reading:
        with urllib.request.urlopen(self.url, timeout=30) as resp:
            text = resp.read().decode()
        return _Reading({m[1]: float(m[2]) for m in self._LINE.finditer(text)})


@contextlib.contextmanager
def _collector(tcp: bool, folder: Path) -> Iterator[tuple[int, Any]]:
    """(port, received()) of the collector; received() is the data records it stored (nfcapd)
    or the IPFIX messages' data records it read (TCP sink), called after the bus stopped."""
    if tcp:
        with _TcpSink() as sink:
            yield sink.port, sink.records
        return
    folder.mkdir()
    port = free_port()
    log = folder.parent / "nfcapd.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["nfcapd", "-b", "127.0.0.1", "-p", str(port), "-w", str(folder), "-t", "3600",
             "-B", "16777216"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    stopped = False

    def received() -> int:
        nonlocal stopped
        proc.send_signal(signal.SIGTERM)  # nfcapd writes its file on SIGTERM
        proc.wait(timeout=60)
        stopped = True
        out = subprocess.run(
            ["nfdump", "-R", str(folder), "-q", "-N", "-o", "fmt:%pr"],
            capture_output=True, text=True, timeout=300, check=True,
        ).stdout  # fmt: skip
        return sum(1 for line in out.splitlines() if line.strip())

    try:
        _wait_udp_bound(port, proc)
        yield port, received
    finally:
        if not stopped and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


def _wait_udp_bound(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise CommandError(f"nfcapd exited with {proc.returncode}")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return
        time.sleep(0.05)
    raise CommandError(f"nfcapd did not listen on UDP {port} within 30 s")


class _TcpSink:
    """A TCP IPFIX collector that reads every message and counts its data records (sets with
    id >= 256); one connection at a time, in a thread of this process."""

    def __init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port: int = self.listener.getsockname()[1]
        self._records = 0
        self._lengths: dict[tuple[int, int], int] = {}  # (domain, template) -> record length
        self._thread = threading.Thread(target=self._serve, name="bench-ipfix-sink", daemon=True)

    def __enter__(self) -> _TcpSink:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()

    def records(self) -> int:
        self._thread.join(timeout=60)
        return self._records

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            conn, _ = self.listener.accept()
            with conn, conn.makefile("rb") as stream:
                while len(head := stream.read(16)) == 16:
                    length, domain = int.from_bytes(head[2:4]), int.from_bytes(head[12:16])
                    self._message(domain, stream.read(length - 16))

    def _message(self, domain: int, body: bytes) -> None:
        """Count data records; learn fixed record lengths from (options) template sets."""
        at = 0
        while at + 4 <= len(body):
            set_id, set_len = (
                int.from_bytes(body[at : at + 2]),
                int.from_bytes(body[at + 2 : at + 4]),
            )
            content = body[at + 4 : at + set_len]
            if set_id in (2, 3):
                self._templates(domain, set_id, content)
            elif set_id >= 256:
                size = self._lengths.get((domain, set_id))
                if size:
                    self._records += len(content) // size
            at += set_len

    def _templates(self, domain: int, set_id: int, content: bytes) -> None:
        at = 0
        while at + 4 <= len(content):
            tid, count = (
                int.from_bytes(content[at : at + 2]),
                int.from_bytes(content[at + 2 : at + 4]),
            )
            at += 6 if set_id == 3 else 4  # options templates carry a scope field count
            size = 0
            for _ in range(count):
                ie, flen = (
                    int.from_bytes(content[at : at + 2]),
                    int.from_bytes(content[at + 2 : at + 4]),
                )
                at += 8 if ie & 0x8000 else 4  # enterprise IEs carry a PEN
                size += flen
            if set_id == 2:  # only flow records are counted, not options records
                self._lengths[(domain, tid)] = size
