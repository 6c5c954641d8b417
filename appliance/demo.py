"""`infraspectre demo` (what `make demo` runs): the main job on embedded defaults.

Interim form (until the agent issue replaces the publisher with real capture): a fresh PKI in a
temporary folder, a real bus process with its SQLite store, a publisher with an `issue-agent`
identity streaming signed, chained flow envelopes over mTLS, and `bus tail` showing them as they
are stored. One tampered envelope is sent too, to show the bus refusing it. Everything is torn
down at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from appliance.errors import CommandError

CLI = [sys.executable, "-m", "appliance", "--log-level", "WARNING"]
HOSTS = ["192.0.2.10", "192.0.2.11", "192.0.2.12", "2001:db8::10"]
SERVERS = [("198.51.100.20", 443, "TCP"), ("198.51.100.53", 53, "UDP"),
           ("203.0.113.5", 22, "TCP"), ("2001:db8:1::80", 80, "TCP")]  # fmt: skip


def register(sub: Any) -> None:
    """Add `demo`."""
    p = sub.add_parser("demo", help="run the main job end to end on embedded defaults")
    p.add_argument("--flows", type=int, default=120, help="flow envelopes to publish")
    p.add_argument("--seconds", type=float, default=6.0, help="spread them over this long")
    p.set_defaults(func=_run)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _flows(n: int, seed: int = 7) -> Iterator[Any]:
    from appliance.wire import FlowEvent

    rng = random.Random(seed)
    now_ms = int(time.time() * 1000)
    for i in range(n):
        dst, port, proto = rng.choice(SERVERS)
        src = rng.choice([h for h in HOSTS if (":" in h) == (":" in dst)])
        pkts_tx, pkts_rx = rng.randint(1, 40), rng.randint(1, 60)
        start = now_ms - rng.randint(1000, 30000)
        yield FlowEvent(
            src_ip=src, dst_ip=dst, src_port=rng.randint(32768, 60999), dst_port=port,
            proto=proto, ip_version=6 if ":" in dst else 4,
            ip_proto=6 if proto == "TCP" else 17, packets_tx=pkts_tx, packets_rx=pkts_rx,
            bytes_tx=pkts_tx * rng.randint(60, 600), bytes_rx=pkts_rx * rng.randint(60, 1400),
            start_time=start, end_time=start + 900 + i, duration_ms=900 + i,
        )  # fmt: skip


@contextlib.contextmanager
def _process(args: list[str], **kw: Any) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(args, text=True, **kw)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _run(args: argparse.Namespace) -> int:
    import yaml

    from appliance.pki import init_pki, issue_agent

    # Ctrl-C reaches the whole process group; let the finally blocks do the teardown.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="infraspectre-demo-") as tmp:
        root = Path(tmp)
        print(f"== demo workspace {root}")
        init_pki(root / "pki", [])
        ident = issue_agent(root / "pki", "demo-branch-1")
        print("== PKI: org CA, bus certificate, agent demo-branch-1 (client cert + Ed25519 key)")
        port, metrics_port = _free_port(), _free_port()
        config = root / "infraspectre.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "eventbus": {
                        "host": "127.0.0.1", "port": port, "metrics_port": metrics_port,
                        "health_port": _free_port(), "tls": {"cert_dir": str(root / "pki")},
                    },
                    "storage": {"data_dir": str(root / "data")},
                }
            )
        )  # fmt: skip
        with _process(
            [*CLI, "bus", "serve", "--config", str(config)], stdout=subprocess.PIPE
        ) as bus:
            assert bus.stdout is not None
            if "bus ready" not in bus.stdout.readline():
                raise CommandError("demo: the bus did not start")
            print(f"== bus serving mTLS gRPC on 127.0.0.1:{port}, metrics on :{metrics_port}")
            print("== bus tail (flows as the bus stores them):")
            tail_cmd = [*CLI, "bus", "tail", "--config", str(config), "--from-start"]
            tail_cmd += ["--count", str(args.flows), "--timeout", str(args.seconds + 30)]
            with _process(tail_cmd) as tail:
                time.sleep(0.5)
                counts = _publish(args, root, port, ident)
                tail.wait(timeout=args.seconds + 40)
            bus.send_signal(signal.SIGTERM)
            bus.wait(timeout=30)
        stored = subprocess.run(
            [*CLI, "bus", "query", "--config", str(config), "--json", "--limit", "100000"],
            capture_output=True, text=True, check=True,
        ).stdout.count("\n")  # fmt: skip
    print(
        f"== published {counts['sent']} signed flows: {counts['ok']} OK; "
        f"tampered copy answered {counts['tampered']}; bus stored {stored}, each once"
    )
    print("== bus stopped cleanly; workspace removed")
    return 0 if stored == counts["ok"] == args.flows else 1


def _publish(args: argparse.Namespace, root: Path, port: int, ident: Any) -> dict[str, Any]:
    """Stream signed flows in batches, honouring RETRY hints; send one tampered copy."""
    from appliance.crypto import Sealer, load_signing_key
    from appliance.wire import PublishAck, PublishBatchRequest
    from appliance.wire.channel import eventbus_stub, mtls_channel

    channel = mtls_channel(
        f"127.0.0.1:{port}", ca=root / "pki/ca.crt", cert=ident.client_cert,
        key=ident.client_key, server_name="localhost",
    )  # fmt: skip
    stub = eventbus_stub(channel)
    sealer = Sealer(ident.agent_id, load_signing_key(ident.signing_key))
    flows = list(_flows(args.flows))
    batch_n = max(1, len(flows) // 12)
    counts: dict[str, Any] = {"sent": 0, "ok": 0, "tampered": "?"}
    for i in range(0, len(flows), batch_n):
        envs = [sealer.seal(f) for f in flows[i : i + batch_n]]
        pending = envs
        for _ in range(50):
            resp = stub.PublishBatch(PublishBatchRequest(envelopes=pending), timeout=30)
            counts["ok"] += sum(a.status == PublishAck.OK for a in resp.acks)
            pending = [
                e for e, a in zip(pending, resp.acks, strict=True) if a.status == PublishAck.RETRY
            ]
            if not pending:
                break
            time.sleep(max(a.backoff_hint_ms for a in resp.acks) / 1000)
        counts["sent"] += len(envs)
        if i == 0:
            forged = type(envs[0])()
            forged.CopyFrom(envs[0])
            forged.flow.bytes_tx += 1_000_000  # tampered in transit: the signature no longer holds
            ack = stub.Publish(forged, timeout=10)
            counts["tampered"] = f"{PublishAck.Status.Name(ack.status)} ({ack.reason})"
        time.sleep(args.seconds / 12)
    channel.close()
    return counts
