"""A mirror-port lab in network namespaces, for the system tests and the live bench.

    with MirrorLab("t") as lab:     # namespaces isA-t-PID, isB-t-PID, isT-t-PID
        lab.run("A", "ping", "-c", "1", lab.B4)

Hosts A (192.0.2.1, 2001:db8::1 on a0) and B (192.0.2.2, 2001:db8::2 on b0) share a veth pair
(this kernel has no 802.1Q devices: `send_frames` injects tagged frames raw). Everything a0
sends and receives is mirrored with tc (u32 match-all: this kernel has no matchall) to m0,
whose peer m1 sits in the tap namespace T, where the capture runs. m0 and m1 come up
receive-only, as the image brings up a mirror port (docs/IMAGE.md, "Mirror ports"): IPv6
disabled before the link is up (no link-local address, DAD, router solicitation or MLD
report), ARP and multicast off, no address; so the tap adds no traffic of its own. Every
namespace is deleted on exit, whatever happened.
"""

from __future__ import annotations

import os
import subprocess
import sys
from types import TracebackType


class MirrorLab:
    """Namespaces A, B (talking) and T (the tap); see the module docstring."""

    A4, B4 = "192.0.2.1", "192.0.2.2"
    A6, B6 = "2001:db8::1", "2001:db8::2"

    def __init__(self, tag: str) -> None:
        suffix = f"{tag}-{os.getpid()}"
        self.ns = {"A": f"isA-{suffix}", "B": f"isB-{suffix}", "T": f"isT-{suffix}"}

    def __enter__(self) -> MirrorLab:
        try:
            self._build()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()

    def _build(self) -> None:
        a, b, t = self.ns["A"], self.ns["B"], self.ns["T"]
        for name in (a, b, t):
            _ip("netns", "add", name)
            _ip("-n", name, "link", "set", "lo", "up")
        _ip("link", "add", "a0", "netns", a, "type", "veth", "peer", "name", "b0", "netns", b)
        _ip("link", "add", "m0", "netns", a, "type", "veth", "peer", "name", "m1", "netns", t)
        # Jumbo MTU: replayed captures carry 1518-byte tagged frames.
        for ns, dev in ((a, "a0"), (b, "b0"), (a, "m0"), (t, "m1")):
            _ip("-n", ns, "link", "set", dev, "mtu", "9000")
        for ns, dev in ((a, "m0"), (t, "m1")):
            self.receive_only(ns, dev)
        _ip("-n", a, "addr", "add", f"{self.A4}/24", "dev", "a0")
        _ip("-n", a, "addr", "add", f"{self.A6}/64", "dev", "a0", "nodad")
        _ip("-n", b, "addr", "add", f"{self.B4}/24", "dev", "b0")
        _ip("-n", b, "addr", "add", f"{self.B6}/64", "dev", "b0", "nodad")
        _ip("-n", a, "link", "set", "a0", "up")
        _ip("-n", b, "link", "set", "b0", "up")
        _run(["tc", "-n", a, "qdisc", "add", "dev", "a0", "clsact"])
        for hook in ("ingress", "egress"):
            match_all = ["protocol", "all", "u32", "match", "u32", "0", "0"]
            mirror = ["action", "mirred", "egress", "mirror", "dev", "m0"]
            _run(["tc", "-n", a, "filter", "add", "dev", "a0", hook, *match_all, *mirror])

    def destroy(self) -> None:
        for name in self.ns.values():
            subprocess.run(["ip", "netns", "del", name], capture_output=True)

    def receive_only(self, ns: str, dev: str) -> None:
        """Bring dev up as a mirror port: it never transmits a frame of its own.

        IPv6 goes off before the link is up (once up, the kernel would already have sent
        DAD, router solicitation and MLD frames); ARP and multicast off; no address.
        """
        self.sysctl(ns, f"net.ipv6.conf.{dev}.disable_ipv6", "1")
        _ip("-n", ns, "link", "set", "dev", dev, "arp", "off", "multicast", "off")
        _ip("-n", ns, "link", "set", "dev", dev, "up")

    def tx_packets(self, host: str, dev: str) -> int:
        """Frames dev inside host has transmitted (the kernel's counter)."""
        return int(self.run(host, "cat", f"/sys/class/net/{dev}/statistics/tx_packets"))

    def sysctl(self, ns: str, key: str, value: str) -> None:
        """Set a sysctl inside ns (written to /proc/sys: no dependency on procps)."""
        path = "/proc/sys/" + key.replace(".", "/")
        _run(["ip", "netns", "exec", ns, "sh", "-c", f"echo {value} > {path}"])

    def run(self, host: str, *argv: str, timeout: float = 30, check: bool = True) -> str:
        """Run a command inside host's namespace ("A", "B" or "T"); returns its stdout."""
        proc = subprocess.run(
            ["ip", "netns", "exec", self.ns[host], *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"{argv[0]} in {host} failed: {proc.stderr.strip()[:300]}")
        return proc.stdout

    def send_frames(self, host: str, dev: str, frames: list[bytes]) -> None:
        """Transmit raw Ethernet frames on dev inside host (AF_PACKET, from a helper)."""
        hexes = ",".join(f.hex() for f in frames)
        # the peer lives in labtraffic (which imports this module): named, not imported
        peer = (sys.executable, "-m", "appliance.devkit.capture.labtraffic", "send-frames")
        self.run(host, *peer, dev, hexes)

    def mac(self, host: str, dev: str) -> str:
        """The MAC address of dev inside host."""
        return self.run(host, "cat", f"/sys/class/net/{dev}/address").strip()

    def popen(self, host: str, *argv: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["ip", "netns", "exec", self.ns[host], *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def _ip(*argv: str) -> None:
    _run(["ip", *argv])


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()[:300]}")
