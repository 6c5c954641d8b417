"""Bounded, known traffic between the lab's hosts A and B (demo, agent system tests).

Each function runs real programs inside the namespaces (ping, or one of the Python peers below,
run as `python -m appliance.devkit.capture.labtraffic PEER ...`: real module code that ruff and
mypy check) and returns what it sent, so callers can compare metered flows with the truth.
Every exchange is bounded in count and time.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from appliance.devkit.capture.lab import MirrorLab

#: The peers below run as `python -m appliance.devkit.capture.labtraffic PEER ...` inside a
#: namespace, with this interpreter (so with this checkout's package, whatever the namespace).
PEER = (sys.executable, "-m", "appliance.devkit.capture.labtraffic")
SOL_PACKET = 263


def udp_server_peer(rounds: int, reply: int) -> None:
    """On B: answer `rounds` datagrams on port 5353 with `reply` bytes each."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 5353))
    s.settimeout(10)
    for _ in range(rounds):
        _, peer = s.recvfrom(4096)
        s.sendto(b"r" * reply, peer)


def udp_client_peer(rounds: int, size: int, dst: str, sport: int) -> None:
    """On A: send `rounds` datagrams of `size` bytes from sport to dst:5353, awaiting each
    answer."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", sport))
    s.settimeout(5)
    for _ in range(rounds):
        s.sendto(b"q" * size, (dst, 5353))
        s.recvfrom(4096)


def _drain(conn: socket.socket) -> int:
    got = 0
    while data := conn.recv(65536):
        got += len(data)
    return got


def tcp_server_peer(reply: int) -> None:
    """On B: accept one connection on port 8080, read it to its end, answer `reply` bytes,
    close; print how many bytes arrived."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 8080))
    s.listen(1)
    s.settimeout(10)
    conn, _ = s.accept()
    got = _drain(conn)
    conn.sendall(b"s" * reply)
    conn.close()
    print(got)


def tcp_client_peer(size: int, dst: str) -> None:
    """On A: connect to dst:8080, send `size` bytes, half-close, read the answer to its end;
    print how many bytes arrived."""
    conn = socket.create_connection((dst, 8080), timeout=10)
    conn.sendall(b"c" * size)
    conn.shutdown(socket.SHUT_WR)
    got = _drain(conn)
    conn.close()
    print(got)


def udp_spray_peer(first: int, count: int, size: int, dst: str) -> None:
    """On A: one datagram of `size` bytes from each port first.. first+count-1 to dst:9, with
    a short pause every 200 ports (the kernel's socket churn, not a rate limit)."""
    for port in range(first, first + count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", port))
        s.sendto(b"x" * size, (dst, 9))
        s.close()
        if port % 200 == 0:
            time.sleep(0.01)


def send_frames_peer(dev: str, hexes: str) -> None:
    """Transmit raw Ethernet frames (comma-separated hex) on dev (AF_PACKET)."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((dev, 0))
    for frame in hexes.split(","):
        s.send(bytes.fromhex(frame))


#: PACKET_AUXDATA (linux/if_packet.h): each frame's struct tpacket_auxdata, where the kernel
#: puts the 802.1Q tag it stripped off the frame (tp_vlan_tci, valid with TP_STATUS_VLAN_VALID).
PACKET_AUXDATA = 8
TP_STATUS_VLAN_VALID, TP_STATUS_VLAN_TPID_VALID = 0x10, 0x40
PACKET_OUTGOING = 4
AUXDATA = struct.Struct("IIIHHHH")


def tap_out_peer(dev: str) -> None:
    """In the tap namespace: every frame arriving on dev, with its 802.1Q tag put back where
    the kernel took it from, to stdout as a 4-byte big-endian length and the frame; a length of
    0 first, once the socket listens. Runs until killed (TapRelay stops it)."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))  # ETH_P_ALL
    s.bind((dev, 0))
    s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    index = socket.if_nametoindex(dev)
    s.setsockopt(SOL_PACKET, 1, struct.pack("iHH8s", index, 1, 0, b""))  # ADD_MEMBERSHIP PROMISC
    out = sys.stdout.buffer
    out.write(b"\0\0\0\0")
    out.flush()
    while True:
        frame, ancillary, _, addr = s.recvmsg(65536, socket.CMSG_SPACE(AUXDATA.size))
        if addr[2] == PACKET_OUTGOING:
            continue
        for level, kind, data in ancillary:
            if (level, kind) == (SOL_PACKET, PACKET_AUXDATA) and len(data) >= AUXDATA.size:
                status, _, _, _, _, tci, tpid = AUXDATA.unpack_from(data)
                if status & TP_STATUS_VLAN_VALID:
                    tpid = tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100
                    frame = frame[:12] + struct.pack("!HH", tpid, tci) + frame[12:]
        out.write(len(frame).to_bytes(4, "big") + frame)
        out.flush()


#: Peer name -> (function, argument converters), for main().
PEERS: dict[str, tuple[Callable[..., None], tuple[Callable[[str], object], ...]]] = {
    "udp-server": (udp_server_peer, (int, int)),
    "udp-client": (udp_client_peer, (int, int, str, int)),
    "tcp-server": (tcp_server_peer, (int,)),
    "tcp-client": (tcp_client_peer, (int, str)),
    "udp-spray": (udp_spray_peer, (int, int, int, str)),
    "send-frames": (send_frames_peer, (str, str)),
    "tap-out": (tap_out_peer, (str,)),
}


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m appliance.devkit.capture.labtraffic PEER ARG...`: run one peer."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in PEERS:
        print(f"usage: labtraffic {{{','.join(PEERS)}}} ARG...", file=sys.stderr)
        return 2
    func, kinds = PEERS[args[0]]
    if len(args) - 1 != len(kinds):
        print(f"labtraffic {args[0]}: expected {len(kinds)} arguments", file=sys.stderr)
        return 2
    func(*(kind(a) for kind, a in zip(kinds, args[1:], strict=True)))
    return 0


@dataclass(frozen=True)
class Sent:
    """One conversation as sent: the flow the meter should report."""

    proto: str
    src: str
    dst: str
    src_port: int
    dst_port: int
    packets_tx: int
    packets_rx: int
    bytes_tx: int  # IP total length, initiator -> responder; -1 when not exactly known (TCP)
    bytes_rx: int


def wait_listen(lab: MirrorLab, proto: str, port: int) -> None:
    """Wait (bounded) until B listens on proto ('u' or 't') port."""
    for _ in range(100):
        if lab.run("B", "ss", f"-Hln{proto}", f"sport = :{port}").strip():
            return
        time.sleep(0.05)
    raise RuntimeError(f"the {proto} server on port {port} did not start")


def ping(lab: MirrorLab, count: int = 3, v6: bool = False) -> Sent:
    """ping B from A: echo requests and replies of 56 data bytes."""
    argv = ["ping", "-c", str(count), "-i", "0.2", "-W", "2"]
    if v6:
        lab.run("A", *argv[:1], "-6", *argv[1:], lab.B6)
        ip_len = 40 + 8 + 56
        return Sent(
            "ICMPV6", lab.A6, lab.B6, 0, 128 << 8, count, count, count * ip_len, count * ip_len
        )
    lab.run("A", *argv, lab.B4)
    ip_len = 20 + 8 + 56
    return Sent("ICMP", lab.A4, lab.B4, 0, 8 << 8, count, count, count * ip_len, count * ip_len)


def udp_server(lab: MirrorLab, rounds: int, reply: int) -> subprocess.Popen[str]:
    """A UDP server on B:5353 answering `rounds` datagrams with `reply` bytes each, listening
    when this returns; the caller waits for it or kills it."""
    server = lab.popen("B", *PEER, "udp-server", str(rounds), str(reply))
    try:
        wait_listen(lab, "u", 5353)
    except BaseException:
        server.kill()
        server.wait()
        raise
    return server


def udp_exchange(lab: MirrorLab, rounds: int = 3, size: int = 100, reply: int = 200,
                 sport: int = 40001) -> Sent:  # fmt: skip
    """A sends `rounds` UDP datagrams to B:5353, B answers each."""
    server = udp_server(lab, rounds, reply)
    try:
        lab.run("A", *PEER, "udp-client", str(rounds), str(size), lab.B4, str(sport))
        server.wait(timeout=15)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    return Sent("UDP", lab.A4, lab.B4, sport, 5353, rounds, rounds,
                rounds * (28 + size), rounds * (28 + reply))  # fmt: skip


def tcp_exchange(lab: MirrorLab, size: int = 3000, reply: int = 5000) -> Sent:
    """A connects to B:8080, sends size bytes, B answers reply bytes; both close."""
    server = lab.popen("B", *PEER, "tcp-server", str(reply))
    try:
        wait_listen(lab, "t", 8080)
        got = lab.run("A", *PEER, "tcp-client", str(size), lab.B4).strip()
        out, _ = server.communicate(timeout=15)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    if got != str(reply) or out.strip() != str(size):
        raise RuntimeError(f"TCP exchange incomplete: sent {size}/{reply}, got {out}/{got}")
    # Segmentation and ACKs vary: packets and bytes are lower bounds (payload + headers).
    return Sent("TCP", lab.A4, lab.B4, -1, 8080, 3, 3, -1, -1)


def udp_spray(lab: MirrorLab, first_port: int, count: int, size: int = 20) -> list[Sent]:
    """count one-datagram UDP flows A:first_port.. -> B:9 (discard; B's ICMP answers aside)."""
    lab.run("A", *PEER, "udp-spray", str(first_port), str(count), str(size), lab.B4,
            timeout=120)  # fmt: skip
    return [Sent("UDP", lab.A4, lab.B4, p, 9, 1, 0, 28 + size, 0)
            for p in range(first_port, first_port + count)]  # fmt: skip


class TapRelay:
    """The lab's tap port as a SPAN cable: every frame arriving on m1 in the tap namespace
    (what tc mirrors of A's port, tags restored) is handed to send, e.g. an emulated board's
    mirror NIC (appliance.devkit.qemu.fixtures.MirrorPort.send). The tap-out peer runs in the
    namespace; it is stopped by its PID on exit, whatever happened."""

    def __init__(self, lab: MirrorLab, send: Callable[[bytes], None], dev: str = "m1") -> None:
        self.relayed = 0
        self._send = send
        self._proc = subprocess.Popen(
            ["ip", "netns", "exec", lab.ns["T"], *PEER, "tap-out", dev],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        self._thread = threading.Thread(target=self._pump, daemon=True)

    def __enter__(self) -> TapRelay:
        try:
            assert self._proc.stdout is not None
            if self._proc.stdout.read(4) != b"\0\0\0\0":
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise RuntimeError(f"the tap relay did not start: {err.strip()[-300:]}")
            self._thread.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pump(self) -> None:
        assert self._proc.stdout is not None
        while (head := self._proc.stdout.read(4)) and len(head) == 4:
            frame = self._proc.stdout.read(int.from_bytes(head, "big"))
            self._send(frame)
            self.relayed += 1

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._thread.is_alive():
            self._thread.join(10)
        for pipe in (self._proc.stdout, self._proc.stderr):
            if pipe is not None:
                pipe.close()


if __name__ == "__main__":
    sys.exit(main())
