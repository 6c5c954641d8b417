"""Bounded, known traffic between the lab's hosts A and B (demo, agent system tests).

Each function runs real programs inside the namespaces (ping, a Python UDP or TCP peer) and
returns what it sent, so callers can compare metered flows with the truth. Every exchange is
bounded in count and time.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass

from appliance.devkit.capture.lab import MirrorLab

PY = "/usr/bin/python3"

_UDP_SERVER = """
import socket, sys
n, size = int(sys.argv[1]), int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", 5353)); s.settimeout(10)
for _ in range(n):
    data, peer = s.recvfrom(4096); s.sendto(b"r" * size, peer)
"""
_UDP_CLIENT = """
import socket, sys
n, size, dst, sport = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", sport)); s.settimeout(5)
for _ in range(n):
    s.sendto(b"q" * size, (dst, 5353)); s.recvfrom(4096)
"""
_TCP_SERVER = """
import socket, sys
reply = int(sys.argv[1])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(1); s.settimeout(10)
c, _ = s.accept(); got = 0
while True:
    d = c.recv(65536)
    if not d: break
    got += len(d)
c.sendall(b"s" * reply); c.close(); print(got)
"""
_TCP_CLIENT = """
import socket, sys
size, dst = int(sys.argv[1]), sys.argv[2]
c = socket.create_connection((dst, 8080), timeout=10); c.sendall(b"c" * size)
c.shutdown(socket.SHUT_WR); got = 0
while True:
    d = c.recv(65536)
    if not d: break
    got += len(d)
c.close(); print(got)
"""
_UDP_SPRAY = """
import socket, sys, time
first, n, size, dst = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
for port in range(first, first + n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
    s.sendto(b"x" * size, (dst, 9)); s.close()
    if port % 200 == 0:
        time.sleep(0.01)
"""


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
    server = lab.popen("B", PY, "-c", _UDP_SERVER, str(rounds), str(reply))
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
        lab.run("A", PY, "-c", _UDP_CLIENT, str(rounds), str(size), lab.B4, str(sport))
        server.wait(timeout=15)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    return Sent("UDP", lab.A4, lab.B4, sport, 5353, rounds, rounds,
                rounds * (28 + size), rounds * (28 + reply))  # fmt: skip


def tcp_exchange(lab: MirrorLab, size: int = 3000, reply: int = 5000) -> Sent:
    """A connects to B:8080, sends size bytes, B answers reply bytes; both close."""
    server = lab.popen("B", PY, "-c", _TCP_SERVER, str(reply))
    try:
        wait_listen(lab, "t", 8080)
        got = lab.run("A", PY, "-c", _TCP_CLIENT, str(size), lab.B4).strip()
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
    lab.run("A", PY, "-c", _UDP_SPRAY, str(first_port), str(count), str(size), lab.B4,
            timeout=120)  # fmt: skip
    return [Sent("UDP", lab.A4, lab.B4, p, 9, 1, 0, 28 + size, 0)
            for p in range(first_port, first_port + count)]  # fmt: skip
