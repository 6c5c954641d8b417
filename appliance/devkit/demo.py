"""`infraspectre demo` (what `make demo` runs): the main job, end to end, on embedded defaults.

A development PKI in a temporary folder; a real bus process with its SQLite store; two hosts in
network namespaces whose traffic a tc rule mirrors to a tap port; the real agent capturing on
that port (TPACKET_V3 ring), sealing every flow into its WAL and forwarding over mTLS; and
`bus tail` showing the flows as the bus stores them. Bounded real traffic (ping over IPv4 and
IPv6, a UDP exchange, a TCP transfer, a burst of short UDP flows) runs between the hosts. At the
end the stored flows are checked against what was sent and their signature chain verified;
then processes and namespaces are torn down, also on Ctrl-C. Needs root (namespaces, AF_PACKET).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from appliance.devkit.localprocs import CLI, cli_process, free_port, loopback_bus_sections
from appliance.errors import CommandError


def register(sub: Any) -> None:
    """Add `demo`."""
    from appliance.devkit import demo_board

    p = sub.add_parser("demo", help="run the main job end to end on embedded defaults (root)")
    p.add_argument("--burst", type=int, default=40, help="short UDP flows in the burst")
    demo_board.add_options(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import yaml

    from appliance.devkit import demo_board
    from appliance.devkit.capture.lab import MirrorLab
    from appliance.pki import init_pki, issue_agent

    demo_board.check_options(args)
    if args.board:
        return demo_board.run(args)
    if os.geteuid() != 0:
        raise CommandError("the demo needs root (network namespaces, AF_PACKET): run it as root")
    # SIGTERM unwinds like Ctrl-C, so every finally below tears down what it started.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="infraspectre-demo-") as tmp, MirrorLab("demo") as lab:
        root = Path(tmp)
        print(f"== workspace {root}")
        init_pki(root / "pki", [])
        ident = issue_agent(root / "pki", "demo-branch-1")
        print("== PKI: org CA, bus certificate, agent demo-branch-1 (client cert + Ed25519 key)")
        print(f"== hosts A {lab.A4} / {lab.A6} and B {lab.B4} / {lab.B6}; A's port mirrored "
              "(tc u32 -> mirred) to the tap port m1, up receive-only")  # fmt: skip
        port, agent_metrics = free_port(), free_port()
        config = root / "infraspectre.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    **loopback_bus_sections(
                        root / "pki", root / "data", port,
                        metrics_port=free_port(), health_port=free_port(),
                    ),
                    "agent": {
                        "bus": [f"127.0.0.1:{port}"], "server_name": "localhost",
                        "tls": {"cert_dir": str(ident.client_cert.parent),
                                "ca": str(root / "pki/ca.crt")},
                        "metrics_host": "127.0.0.1", "metrics_port": agent_metrics,
                    },
                    "capture": {
                        "interface": "m1", "netns": lab.ns["T"], "uplink_interface": "none",
                        "meter": {"idle_timeout_s": 2.0, "close_linger_s": 1.0},
                        "counters_interval_s": 5.0,
                    },
                    "wal": {"path": str(root / "data/wal")},
                }
            )
        )  # fmt: skip
        with cli_process(["bus", "serve", "--config", str(config)], "bus") as bus:
            print(f"== bus: mTLS gRPC on 127.0.0.1:{port}, SQLite store in {root / 'data'}")
            with cli_process(["agent", "run", "--config", str(config)], "agent") as agent:
                print(f"== agent capturing on m1, metrics on 127.0.0.1:{agent_metrics}/metrics")
                print("== bus tail (flows as the bus stores them):")
                tail = subprocess.Popen(
                    [*CLI, "bus", "tail", "--config", str(config), "--from-start"], text=True
                )
                try:
                    sent = _traffic(lab, args.burst)
                    stored = wait_for_flows(root / "data/bus.sqlite", sent)
                    tap_tx = lab.tx_packets("T", "m1")
                    time.sleep(0.6)  # let the tail print the last rows
                finally:
                    tail.terminate()
                    tail.wait(timeout=15)
                agent.send_signal(signal.SIGTERM)
                agent_rc = agent.wait(timeout=30)
            bus.send_signal(signal.SIGTERM)
            bus_rc = bus.wait(timeout=30)
        ok = _report(root, ident, sent, stored, agent_rc, bus_rc, tap_tx)
        print("== the fleet as the bus sees it (bus agents: each box's last record and health):")
        fleet = subprocess.run([*CLI, "bus", "agents", "--config", str(config)], timeout=60)
        ok = ok and fleet.returncode == 0
    print("== processes stopped, namespaces and workspace removed")
    return 0 if ok else 1


def _traffic(lab: Any, burst: int) -> list[Any]:
    from appliance.devkit.capture.labtraffic import ping, tcp_exchange, udp_exchange, udp_spray

    sent = [ping(lab), ping(lab, v6=True), udp_exchange(lab), tcp_exchange(lab)]
    sent += udp_spray(lab, 30000, burst)
    return sent


def matches(row: Any, s: Any) -> bool:
    """Whether a stored flow row is the sent conversation s (its source port, when known)."""
    if (row["proto"], row["src_ip"], row["dst_ip"], row["dst_port"]) != (
        s.proto, s.src, s.dst, s.dst_port,
    ):  # fmt: skip
        return False
    return bool(s.src_port == -1 or row["src_port"] == s.src_port)


def wait_for_flows(db: Path, sent: list[Any], timeout: float = 40) -> dict[Any, Any]:
    """Map each sent conversation to its stored flow row, waiting (bounded) for them all."""
    from appliance.bus.query import Query, open_reader, query

    deadline = time.monotonic() + timeout
    found: dict[Any, Any] = {}
    while time.monotonic() < deadline and len(found) < len(sent):
        if db.exists():
            rows = query(open_reader(db), Query(limit=None))
            for s in sent:
                hits = [r for r in rows if matches(r, s)]
                if hits:
                    found[s] = hits
        time.sleep(0.3)
    return found


def exact_flows(stored: dict[Any, Any]) -> int:
    """How many conversations were stored once, with exactly the packets and bytes sent each
    way (TCP's segmentation varies: there, stored once is enough)."""
    exact = 0
    for s, rows in stored.items():
        row = rows[0]
        if len(rows) == 1 and (s.bytes_tx == -1 or (
            (row["packets_tx"], row["packets_rx"], row["bytes_tx"], row["bytes_rx"])
            == (s.packets_tx, s.packets_rx, s.bytes_tx, s.bytes_rx)
        )):  # fmt: skip
            exact += 1
    return exact


def _report(root: Path, ident: Any, sent: list[Any], stored: dict[Any, Any],
            agent_rc: int, bus_rc: int, tap_tx: int) -> bool:  # fmt: skip
    from appliance.bus.query import open_reader
    from appliance.crypto import load_verify_key, verify_chain
    from appliance.wire import Envelope

    exact = exact_flows(stored)
    conn = open_reader(root / "data/bus.sqlite")
    envs = [
        Envelope.FromString(r[0]) for r in conn.execute("SELECT envelope FROM records ORDER BY seq")
    ]
    chain = verify_chain(envs, load_verify_key(ident.verify_key))
    flows = sum(1 for e in envs if e.HasField("flow"))
    print(
        f"== sent {len(sent)} conversations; the bus stored {len(stored)} of them, {exact} with "
        f"exactly the packets and bytes sent each way ({flows} flow records in all, ND/ICMP "
        "noise included)"
    )
    print(
        f"== signature chain of {chain.checked} records from demo-branch-1: "
        f"{'intact' if chain.ok else f'BROKEN at {chain.broken_links or chain.bad_signature}'}"
    )
    print(f"== the tap port m1 transmitted {tap_tx} frames (a tap is silent on its mirror port)")
    print(f"== agent exited {agent_rc}, bus exited {bus_rc} (0: clean, everything committed)")
    return bool(exact == len(sent) and chain.ok and agent_rc == 0 and bus_rc == 0 and tap_tx == 0)
