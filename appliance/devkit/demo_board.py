"""`infraspectre demo --board` (what `make demo-board` runs): the appliance itself, end to end,
on an emulated Raspberry Pi 3 B, as a technician and a network team meet it.

 1. checks first, each a one-line error: root (namespaces, AF_PACKET), qemu-system-aarch64 and
    socat on PATH, the card image (--image; else the kept card of the current sources, built
    when there is none: appliance.devkit.image.cards), the bus port (--bus-port) free;
 2. a throwaway PKI whose bus certificate also names the address the box dials (10.0.2.100);
 3. a host bus (`bus serve`: mTLS gRPC, SQLite store) on 127.0.0.1;
 4. a fresh copy of the card configured for that bus, booted on QEMU raspi3b as in production
    (no shell on the console): uplink restrict=on whose only way out is a guestfwd to the
    bus's loopback port, mirror NIC on a loopback UDP pair, console on a loopback TCP port;
 5. `infraspectre provision` over the box's console, as a technician does (appliance.devkit.
    qemu.box, the board tier's path: the keys are made on the box, no private key reaches the
    host), then the bus reloads its trust map (SIGHUP) and the box's agent delivers;
 6. real mixed traffic between two hosts in the namespace lab (ping over IPv4 and IPv6, a UDP
    exchange, a TCP exchange, VLAN-tagged UDP frames, a burst of short UDP flows); the lab's
    tap port is the SPAN cable: each mirrored frame goes to the board's mirror NIC;
 7. the flows as the bus stores them, one table line each, every record of the box (flows,
    counters, health) checked on the host as it arrives: its Ed25519 signature with the key
    provisioning put in the trust map, and its link to the record before it;
 8. the verdict: every conversation stored once with the packets and bytes sent, the whole
    chain intact, not one frame from the box on its mirror port.

Teardown on success, failure, --timeout and Ctrl-C (SIGTERM too): the board is powered off
(QEMU killed by its PID), the tap relay and the bus stopped by their PIDs, the namespaces
deleted, the workspace removed. Any failure is one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from appliance.devkit.demo import exact_flows, wait_for_flows
from appliance.devkit.localprocs import cli_process, loopback_bus_sections
from appliance.errors import CommandError

AGENT_ID = "demo-pi-1"
#: Boards the demo runs on: those whose QEMU models the two NICs (raspi4b has no network).
MACHINES = ("raspi3b", "virt")
#: Bounds on a loaded 2-core host (raspi3b under TCG is slow): boot to READY, first delivery
#: after provisioning, and the flows (UDP and ICMP flows leave the box's meter after its 60 s
#: idle timeout).
BOOT_S, DELIVER_S, FLOWS_S = 420.0, 420.0, 300.0
#: The VLAN-tagged conversation (the lab's kernel has no 802.1Q devices: sent as raw frames).
VLAN = 42
VLAN_A, VLAN_B = "198.51.100.1", "198.51.100.2"
VLAN_PORTS, VLAN_PAYLOAD = (7000, 7001), 50
#: Tools the board needs on the host: QEMU, and socat for each guestfwd connection.
TOOLS = ("qemu-system-aarch64", "socat")


def add_options(p: argparse.ArgumentParser) -> None:
    """The options of `demo --board`."""
    p.add_argument(
        "--board", action="store_true",
        help="run it on the card image booted in QEMU (raspi3b), provisioned over its console",
    )  # fmt: skip
    p.add_argument(
        "--image", type=Path, metavar="PATH",
        help="with --board: the card image to boot (default: the kept card of the current "
        "sources under ./cache/cards, built when there is none)",
    )  # fmt: skip
    p.add_argument("--machine", choices=MACHINES, help="with --board: the emulated board "
                   "(default raspi3b; virt boots in seconds)")  # fmt: skip
    p.add_argument(
        "--bus-port",
        type=int,
        metavar="PORT",
        help="with --board: the host bus's port on 127.0.0.1 (default: a free one)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="with --board: give up (and tear down) after this long (default 1800)",
    )


def check_options(args: argparse.Namespace) -> None:
    """Refuse board options without --board and bad values, before anything starts."""
    board_only = {"--image": args.image, "--machine": args.machine,
                  "--bus-port": args.bus_port, "--timeout": args.timeout}  # fmt: skip
    if not args.board:
        given = [flag for flag, value in board_only.items() if value is not None]
        if given:
            raise CommandError(f"{given[0]} goes with --board (infraspectre demo --board ...)")
        return
    if args.bus_port is not None and not 1 <= args.bus_port <= 65535:
        raise CommandError(f"--bus-port {args.bus_port}: a TCP port is 1-65535")
    if args.timeout is not None and args.timeout <= 0:
        raise CommandError(f"--timeout {args.timeout:g}: must be positive")
    if args.image is not None and not args.image.is_file():
        raise CommandError(f"no card image at {args.image} (build one: make image)")
    if args.burst < 0:
        raise CommandError(f"--burst {args.burst}: must be 0 or more")


def preflight(args: argparse.Namespace) -> int:
    """The host checks of step 1; returns the bus port."""
    if os.geteuid() != 0:
        raise CommandError("the board demo needs root (network namespaces, AF_PACKET, image "
                           "build): run it as root")  # fmt: skip
    for tool in TOOLS:
        if shutil.which(tool) is None:
            raise CommandError(f"{tool} is not on PATH: install it (make apt) and run again")
    if args.bus_port is None:
        return _bound_port(0)
    try:
        return _bound_port(args.bus_port)
    except OSError:
        raise CommandError(
            f"port {args.bus_port} on 127.0.0.1 is taken: choose another --bus-port, or leave "
            "it out for a free one"
        ) from None


def _bound_port(port: int) -> int:
    with socket.socket() as s:
        # as the bus binds: a port left in TIME_WAIT by an earlier run is free, a bound one not
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return int(s.getsockname()[1])


def _timed_out(seconds: float) -> Any:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise CommandError(f"the board demo did not finish within --timeout {seconds:g} s")

    return handler


def run(args: argparse.Namespace) -> int:
    """`demo --board`: see the module docstring."""
    check_options(args)
    port = preflight(args)
    timeout = args.timeout or 1800.0
    # SIGTERM unwinds like Ctrl-C and --timeout like a failure: every exit below tears down
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    previous = signal.signal(signal.SIGALRM, _timed_out(timeout))
    signal.setitimer(signal.ITIMER_REAL, timeout)
    began = time.monotonic()
    try:
        with contextlib.ExitStack() as stack:
            try:
                ok = _demo(args, port, stack)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)  # teardown is never cut short
            print("== tearing down: board off, relay and bus stopped, namespaces deleted")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    print(f"== workspace removed; the demo took {time.monotonic() - began:.0f} s")
    if not ok:
        raise CommandError("the board demo finished, but its checks failed (see above)")
    return 0


def _card(args: argparse.Namespace) -> Path:
    from appliance.devkit.image import cards
    from appliance.image import definition

    if args.image is not None:
        return Path(args.image).resolve()
    cache = Path(os.environ.get("INFRASPECTRE_CACHE", definition.SOURCE_DIR / "cache"))
    kept = cards.card_path(cache)
    if kept.is_file():
        print(f"== card: the kept build of these sources, {kept}")
        return kept
    print(f"== card: none kept for these sources: building it into {kept.parent} (3-15 min)")
    image, _ = cards.build_or_reuse(cache)
    return image


def _demo(args: argparse.Namespace, port: int, stack: contextlib.ExitStack) -> bool:
    import yaml

    from appliance.devkit.capture.lab import MirrorLab
    from appliance.devkit.capture.labtraffic import TapRelay
    from appliance.devkit.qemu import box
    from appliance.devkit.qemu.fixtures import MirrorPort
    from appliance.pki import init_pki
    from appliance.qemu import boards
    from appliance.qemu.machine import GUESTFWD_ADDR, Machine

    image = _card(args)
    root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="infraspectre-demo-")))
    print(f"== workspace {root}")
    pki = root / "pki"
    init_pki(pki, [GUESTFWD_ADDR])
    print(f"== throwaway PKI: org CA, bus certificate for 127.0.0.1 and {GUESTFWD_ADDR}")
    config = root / "bus.yaml"
    config.write_text(yaml.safe_dump(loopback_bus_sections(pki, root / "bus-data", port)))
    bus = stack.enter_context(cli_process(["bus", "serve", "--config", str(config)], "bus"))
    print(f"== host bus (pid {bus.pid}): mTLS gRPC on 127.0.0.1:{port}, SQLite store")
    card = root / "card.img"
    box.fresh_card(image, card, AGENT_ID)
    print(f"== card: a fresh copy of {image.name}, first-boot settings agent_id={AGENT_ID}, "
          f"bus={GUESTFWD_ADDR}:50051")  # fmt: skip

    mirror = MirrorPort()
    stack.callback(mirror.close)
    machine_name = args.machine or "raspi3b"
    machine = Machine(boards.load(machine_name), card, root / machine_name, uplink_port=port,
                      mirror=mirror.mirror, console_shell=False)  # fmt: skip
    stack.callback(machine.power_cut)
    print(
        f"== booting the card on QEMU {machine_name} (uplink restrict=on, guestfwd "
        f"{GUESTFWD_ADDR}:50051 -> 127.0.0.1:{port} only; mirror NIC on loopback UDP)"
    )
    ready_s = machine.boot(BOOT_S)
    print(f"== the box is up (READY in {ready_s:.0f} s); its console is the provisioning "
          "responder, not a shell")  # fmt: skip
    print(f"== technician: infraspectre provision --port socket://127.0.0.1:PORT --pki {pki.name} "
          f"--agent-id {AGENT_ID}")  # fmt: skip
    said = box.provision_over_console(machine, pki, AGENT_ID)
    for line in said.strip().splitlines():
        print(f"   | {line}")
    os.kill(bus.pid, signal.SIGHUP)  # `bus reload`: the trust map now holds the box's key
    key_path = pki / "agents" / AGENT_ID / "ed25519.pub"
    held = sorted(p.name for p in key_path.parent.iterdir())
    private = host_private_keys(key_path.parent)
    verdict = "no private key" if not private else "A PRIVATE KEY: " + ", ".join(private)
    print(f"== what the host holds of the box: {', '.join(held)}: {verdict}")
    if private:
        raise CommandError(f"a private key of the box reached the host: {', '.join(private)}")

    db = root / "bus-data" / "bus.sqlite"
    table = LiveTable(db, key_path)
    stack.callback(table.stop)
    print(
        "== flows as the bus stores them (every record of the box verified on the host: "
        "signature, chain link):"
    )
    table.start()
    if not table.wait_records(1, DELIVER_S):
        raise CommandError(f"the box's agent delivered nothing within {DELIVER_S:.0f} s of "
                           "provisioning")  # fmt: skip
    lab = stack.enter_context(MirrorLab("board"))
    relay = stack.enter_context(TapRelay(lab, mirror.send))
    sent = _traffic(lab, args.burst)
    print(
        f"== traffic done: {len(sent)} conversations between {lab.A4}/{lab.A6} and "
        f"{lab.B4}/{lab.B6} (one on VLAN {VLAN}); UDP and ICMP flows leave the box's meter "
        "after 60 s idle"
    )
    stored = wait_for_flows(db, sent, FLOWS_S)
    time.sleep(2)  # let the table print the last rows
    table.stop()
    print(f"== {relay.relayed} frames mirrored into the box's mirror port")
    return _verdict(db, key_path, sent, stored, table, mirror.received)


def _traffic(lab: Any, burst: int) -> list[Any]:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Dot1Q, Ether

    from appliance.devkit.capture.labtraffic import (
        Sent,
        ping,
        tcp_exchange,
        udp_exchange,
        udp_spray,
    )

    sent = [ping(lab), ping(lab, v6=True), udp_exchange(lab)]
    # single-segment TCP (the box's mirror NIC takes standard 1514-byte frames; the lab's
    # veth would hand a larger send to the mirror as one oversized GSO frame)
    sent.append(tcp_exchange(lab, size=1000, reply=1200))
    tagged = (
        Ether(src=lab.mac("A", "a0"), dst=lab.mac("B", "b0")) / Dot1Q(vlan=VLAN)
        / IP(src=VLAN_A, dst=VLAN_B) / UDP(sport=VLAN_PORTS[0], dport=VLAN_PORTS[1])
        / (b"v" * VLAN_PAYLOAD)
    )  # fmt: skip
    lab.send_frames("A", "a0", [tagged.build(), tagged.build()])
    ip_len = 20 + 8 + VLAN_PAYLOAD
    sent.append(Sent("UDP", VLAN_A, VLAN_B, *VLAN_PORTS, 2, 0, 2 * ip_len, 0))
    if burst:
        sent += udp_spray(lab, 30000, burst)
    return sent


def host_private_keys(folder: Path) -> list[str]:
    """Files in folder that hold a private key (PEM, OpenSSH, or a raw Ed25519 seed file)."""
    found = []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and (b"PRIVATE KEY" in path.read_bytes()
                               or path.suffix in (".key", ".seed", ".sk")):  # fmt: skip
            found.append(path.name)
    return found


class LiveTable:
    """Prints the box's flows as the bus stores them, and checks every record of the box (any
    kind) on arrival: its signature with the box's key, and its prev_sig against the record
    before it in sequence (a restart, after an unclean stop, starts a new chain)."""

    HEADER_EXTRA = f" {'seq':>6}  verified"

    def __init__(self, db: Path, key_path: Path) -> None:
        self.db = db
        self.key_path = key_path
        self.records = 0
        self.flows = 0
        self.bad: list[int] = []
        self._sigs: dict[int, bytes] = {}
        self._stop = threading.Event()
        self._seen = threading.Condition()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        from appliance.bus.cli import HEADER

        print(HEADER + self.HEADER_EXTRA, flush=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(15)

    def wait_records(self, n: int, timeout: float) -> bool:
        """Wait (bounded) until n records of the box have arrived."""
        with self._seen:
            return self._seen.wait_for(
                lambda: self.records >= n or self.error is not None, timeout
            ) and self.error is None  # fmt: skip

    def _follow(self) -> None:
        try:
            self._follow_rows()
        except BaseException as exc:  # reported by the verdict
            self.error = exc
            with self._seen:
                self._seen.notify_all()

    def _follow_rows(self) -> None:
        from appliance.bus.cli import format_row
        from appliance.bus.query import Query, follow, open_reader
        from appliance.crypto import load_verify_key, verify_envelope
        from appliance.wire import Envelope

        key = load_verify_key(self.key_path)
        while not self.db.exists() and not self._stop.wait(0.2):
            pass
        conn = open_reader(self.db)
        try:
            q = Query(agent=AGENT_ID, kind=None, limit=1000)
            for row in follow(conn, q, poll_s=0.3, stop=self._stop):
                env = Envelope.FromString(row["envelope"])
                signed = verify_envelope(env, key)
                self._sigs[env.seq] = env.sig
                before = self._sigs.get(env.seq - 1)
                link = ("chain start" if not env.prev_sig and env.seq == 1
                        else "restart" if not env.prev_sig else "chained" if before == env.prev_sig
                        else "BROKEN" if before is not None else "linked later")  # fmt: skip
                if not signed or link == "BROKEN":
                    self.bad.append(env.seq)
                if row["kind"] == "flow":
                    self.flows += 1
                    verdict = f"sig ok, {link}" if signed else "BAD SIGNATURE"
                    print(f"{format_row(row)} {env.seq:>6}  {verdict}", flush=True)
                with self._seen:
                    self.records += 1
                    self._seen.notify_all()
        finally:
            conn.close()


def _verdict(db: Path, key_path: Path, sent: list[Any], stored: dict[Any, Any],
             table: LiveTable, mirror_frames: int) -> bool:  # fmt: skip
    from appliance.bus.query import open_reader
    from appliance.crypto import load_verify_key, verify_chain
    from appliance.wire import Envelope

    exact = exact_flows(stored)
    vlan_ok = any(
        r["vlan"] == VLAN for s, rows in stored.items() if s.src == VLAN_A for r in rows
    )  # fmt: skip
    conn = open_reader(db)
    try:
        sql = "SELECT envelope FROM records WHERE agent_id = ? ORDER BY seq"
        envs = [Envelope.FromString(r[0]) for r in conn.execute(sql, (AGENT_ID,))]
    finally:
        conn.close()
    chain = verify_chain(envs, load_verify_key(key_path))
    print(f"== sent {len(sent)} conversations; the bus stored {len(stored)} of them, {exact} with "
          f"exactly the packets and bytes sent each way; VLAN {VLAN} "
          f"{'carried' if vlan_ok else 'MISSING'} ({table.flows} flow records in all, the lab's "
          "ND and ICMP noise included)")  # fmt: skip
    print(f"== {table.records} records of {AGENT_ID} checked as they arrived: "
          f"{'all signed by its key and chained' if not table.bad else f'BAD at seq {table.bad}'}"
          f"{f' (the live check stopped: {table.error})' if table.error else ''}")  # fmt: skip
    broken = chain.broken_links or chain.bad_signature
    print(
        f"== signature chain of all {chain.checked} records from {AGENT_ID}: "
        f"{'intact' if chain.ok else f'BROKEN at {broken}'}"
    )
    print(f"== frames the box sent on its mirror port: {mirror_frames} (a tap is silent there)")
    return bool(exact == len(sent) and vlan_ok and chain.ok and not table.bad
                and table.error is None and mirror_frames == 0)  # fmt: skip
