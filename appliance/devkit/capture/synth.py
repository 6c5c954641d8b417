"""A seeded synthetic capture with its ground truth, for `infraspectre bench flows`.

The truth is computed from the generator's own plan (which flow each frame belongs to and the IP
length it was given), never by decoding the frames, so it checks the meter independently.

Traffic model: `flows` bidirectional conversations with unique keys, about 15% with an 802.1Q
tag in the bytes and 10% IPv6; 70% TCP (handshake, data both ways, FIN/FIN/ACK close), 22% UDP
request/response, 8% ICMP echo; frame sizes from 60 (padded) to 1514 bytes; packet gaps well
under every default timeout, so each planned flow is exactly one metered flow. 0.1% of the
frames are ARP (counted as non-IP, never metered). Addresses are 10.0.0.0/8 and fd00::/8.

`generate_concurrent` is the other shape: every flow open at once, from its first round to the
end of the file (the table's worst case; see its docstring).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from appliance.capture.pcap import write_pcap

T0_NS = 1_795_000_000_000_000_000  # 2026-11-17, an arbitrary fixed epoch
SPAN_S = 60.0


@dataclass
class Truth:
    """Ground truth of a synthetic capture."""

    frames: int
    ip_packets: int
    non_ip: int
    by_proto: dict[str, dict[str, int]]  # {"TCP": {"flows", "packets", "bytes"}, ...}

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @staticmethod
    def from_json(text: str) -> Truth:
        return Truth(**json.loads(text))


_ETH = struct.Struct("!6s6sH")
_TAG = struct.Struct("!HH")
_IP4 = struct.Struct("!BBHHHBBH4s4s")
_IP6 = struct.Struct("!IHBB16s16s")
_TCP = struct.Struct("!HHIIBBHHH")
_UDP = struct.Struct("!HHHH")
_ICMP = struct.Struct("!BBHHH")
_MAC_A = bytes.fromhex("020000000001")
_MAC_B = bytes.fromhex("020000000002")
_ARP = (
    bytes.fromhex("ffffffffffff")
    + _MAC_A
    + b"\x08\x06"
    + bytes.fromhex("0001080006040001")
    + _MAC_A
    + bytes(4)
    + bytes(6)
    + bytes(4)
    + bytes(18)
)


def generate(path: Path, seed: int, packets: int = 1_000_000, flows: int = 50_000) -> Truth:
    """Write the capture to path and return its truth."""
    rng = np.random.default_rng(seed)
    n_arp = packets // 1000
    n_ip = packets - n_arp
    kind = rng.choice(3, size=flows, p=[0.70, 0.22, 0.08])  # 0 TCP, 1 UDP, 2 ICMP
    v6 = rng.random(flows) < 0.10
    vlan = np.where(rng.random(flows) < 0.15, rng.integers(1, 4095, size=flows), 0)
    minimum = np.where(kind == 0, 6, 2)
    # Packets per flow: minimum + a geometric share of the rest, summing to n_ip exactly.
    extra = rng.exponential(1.0, size=flows)
    extra = np.floor(extra / extra.sum() * (n_ip - minimum.sum())).astype(np.int64)
    extra[: (n_ip - minimum.sum() - extra.sum())] += 1
    count = minimum + extra
    start = rng.uniform(0, SPAN_S, size=flows)
    gaps = rng.exponential(0.004, size=n_ip).clip(1e-6, 0.5)
    flow_of = np.repeat(np.arange(flows), count)
    first_of = np.concatenate(([0], np.cumsum(count)[:-1]))
    seq_in = np.arange(n_ip) - np.repeat(first_of, count)
    cum = np.cumsum(gaps)
    rel = cum - np.repeat(cum[first_of], count)
    ts = np.repeat(start, count) + rel
    size_pick = rng.random(n_ip)
    to_server = rng.random(n_ip) < 0.5
    order = np.argsort(ts, kind="stable")

    frames: list[tuple[int, bytes]] = []
    names = ("TCP", "UDP", "ICMP", "ICMPV6")
    by_proto = {name: {"flows": 0, "packets": 0, "bytes": 0} for name in names}
    for f in range(flows):
        name = ("TCP", "UDP", "ICMPV6" if v6[f] else "ICMP")[kind[f]]
        by_proto[name]["flows"] += 1
        by_proto[name]["packets"] += int(count[f])
    arp_at = set(rng.choice(n_ip + n_arp, size=n_arp, replace=False).tolist())
    ts_ns = T0_NS + (ts * 1e9).astype(np.int64)
    build = _Builder(kind, v6, vlan)
    out_i = 0
    for i in order.tolist():
        while out_i in arp_at:
            frames.append((int(ts_ns[i]), _ARP))
            out_i += 1
        f = int(flow_of[i])
        frame, ip_len, name = build.frame(
            f, int(seq_in[i]), int(count[f]), float(size_pick[i]), bool(to_server[i])
        )
        by_proto[name]["bytes"] += ip_len
        frames.append((int(ts_ns[i]), frame))
        out_i += 1
    while len(frames) < packets:
        frames.append((int(ts_ns[order[-1]]), _ARP))
    write_pcap(path, frames)
    by_proto = {k: v for k, v in by_proto.items() if v["flows"]}
    non_ip = len(frames) - n_ip
    return Truth(frames=len(frames), ip_packets=n_ip, non_ip=non_ip, by_proto=by_proto)


class _Builder:
    """Frame bytes for packet `seq` of flow f (the plan decides everything else)."""

    def __init__(self, kind: np.ndarray, v6: np.ndarray, vlan: np.ndarray) -> None:
        self.kind = kind.tolist()
        self.v6 = v6.tolist()
        self.vlan = vlan.tolist()

    def frame(
        self, f: int, seq: int, count: int, pick: float, to_server: bool
    ) -> tuple[bytes, int, str]:
        kind = self.kind[f]
        v6 = self.v6[f]
        if kind == 0:  # TCP: S, SA, A, data..., FA (c), FA (s), A (c)
            proto = 6
            if seq == 0:
                c2s, flags, payload = True, 0x02, 0
            elif seq == 1:
                c2s, flags, payload = False, 0x12, 0
            elif seq == 2:
                c2s, flags, payload = True, 0x10, 0
            elif seq == count - 3:
                c2s, flags, payload = True, 0x11, 0
            elif seq == count - 2:
                c2s, flags, payload = False, 0x11, 0
            elif seq == count - 1:
                c2s, flags, payload = True, 0x10, 0
            else:
                c2s, flags = to_server, 0x18
                payload = 1448 if pick < 0.35 else int(pick * 600)
            l4 = 20 + payload
        elif kind == 1:  # UDP: request, response, ...
            proto, c2s, flags = 17, seq % 2 == 0, 0
            payload = 40 + int(pick * 460)
            l4 = 8 + payload
        else:  # ICMP echo request / reply
            proto = 58 if v6 else 1
            c2s, flags, payload = seq % 2 == 0, 0, 56
            l4 = 8 + payload
        ip_len = l4 + (40 if v6 else 20)
        client_port = 1024 + (f % 60000)
        server_port = (443, 53, 0)[kind] if kind != 1 else 53
        sp, dp = (client_port, server_port) if c2s else (server_port, client_port)
        if v6:
            ca = b"\xfd" + f.to_bytes(15, "big")
            sa = b"\xfd" + (1 << 100 | f % 97).to_bytes(15, "big")
        else:
            ca = (0x0A000000 | (f + 1)).to_bytes(4, "big")
            sa = (0x0A800000 | (f % 251 + 1)).to_bytes(4, "big")
        src, dst = (ca, sa) if c2s else (sa, ca)
        if proto == 6:
            l4h = _TCP.pack(sp, dp, seq, 0, 0x50, flags, 65535, 0, 0)
        elif proto == 17:
            l4h = _UDP.pack(sp, dp, l4, 0)
        else:
            itype = (128 if c2s else 129) if v6 else (8 if c2s else 0)
            l4h = _ICMP.pack(itype, 0, 0, f & 0xFFFF, seq)
        frame = _ip_frame(v6, self.vlan[f], proto, src, dst, l4h, l4, seq)
        name = ("TCP", "UDP", "ICMPV6" if v6 else "ICMP")[kind]
        return frame, ip_len, name


def _ip_frame(
    v6: bool, vlan: int, proto: int, src: bytes, dst: bytes, l4h: bytes, l4: int, ident: int
) -> bytes:
    """An Ethernet frame (802.1Q-tagged when vlan) carrying an IP packet of proto from src to
    dst whose transport part is l4 bytes long, starting with header l4h (zeros after it)."""
    if v6:
        iph = _IP6.pack(0x60000000, l4, proto, 64, src, dst)
        et = 0x86DD
    else:
        iph = _IP4.pack(0x45, 0, l4 + 20, ident & 0xFFFF, 0x4000, 64, proto, 0, src, dst)
        et = 0x0800
    if vlan:
        eth = _ETH.pack(_MAC_B, _MAC_A, 0x8100) + _TAG.pack(vlan, et)
    else:
        eth = _ETH.pack(_MAC_B, _MAC_A, et)
    frame = eth + iph + l4h + bytes(l4 - len(l4h))
    if len(frame) < 60:
        frame += bytes(60 - len(frame))  # Ethernet padding: not part of the IP bytes
    return frame


#: generate_concurrent: a round lasts ROUND_S; its frames are spread over the first half of it.
ROUND_S = 1.0
CONCURRENT_MIX = {"tcp": 0.6, "ipv6": 0.2, "vlan": 0.15}


def generate_concurrent(path: Path, seed: int, flows: int, rounds: int) -> Truth:
    """`flows` conversations all open at once, each sending one frame in each of `rounds`
    rounds; write the capture to path and return its truth.

    Round r starts at T0_NS + r * ROUND_S; within a round every flow sends once, in a seeded
    order drawn anew each round, the frames evenly spread over the first half of the round.
    Mixed like `generate` where the shape allows: 60% TCP (SYN, SYN+ACK, ACK, then data,
    never a FIN or RST), 40% UDP; 20% IPv6, 15% with an 802.1Q tag; the direction alternates
    per round (round 0 client -> server); IP lengths 40-339 bytes. No gap reaches an idle
    timeout (rounds are 1 s apart) and rounds < 1800 keeps every flow inside the default
    active timeout, so no flow ends before the end of the file: a meter holds all `flows` at
    once at the end, then ends them all. No ICMP (softflowd keys it differently) and no ARP.
    """
    if flows < 1:
        raise ValueError(f"flows must be at least 1, not {flows}")
    if not 3 <= rounds < 1800:
        raise ValueError(
            f"rounds must be 3 to 1799 (a TCP handshake, the active timeout), not {rounds}"
        )
    rng = np.random.default_rng(seed)
    tcp = rng.random(flows) < CONCURRENT_MIX["tcp"]
    v6 = rng.random(flows) < CONCURRENT_MIX["ipv6"]
    vlan = np.where(
        rng.random(flows) < CONCURRENT_MIX["vlan"], rng.integers(1, 4095, size=flows), 0
    )
    spacing_ns = max(int(ROUND_S * 1e9) // 2 // flows, 1)
    by_proto = {name: {"flows": 0, "packets": 0, "bytes": 0} for name in ("TCP", "UDP")}
    for name, count in (("TCP", int(tcp.sum())), ("UDP", flows - int(tcp.sum()))):
        by_proto[name]["flows"] = count
        by_proto[name]["packets"] = count * rounds
    build = _ConcurrentBuilder(tcp, v6, vlan)

    def frames() -> Iterator[tuple[int, bytes]]:
        for r in range(rounds):
            order = rng.permutation(flows).tolist()
            payload = rng.integers(0, 260, size=flows).tolist()
            t0 = T0_NS + r * int(ROUND_S * 1e9)
            for pos, f in enumerate(order):
                frame, ip_len = build.frame(f, r, payload[pos])
                by_proto["TCP" if build.tcp[f] else "UDP"]["bytes"] += ip_len
                yield t0 + pos * spacing_ns, frame

    count = write_pcap(path, frames())
    by_proto = {k: v for k, v in by_proto.items() if v["flows"]}
    return Truth(frames=count, ip_packets=count, non_ip=0, by_proto=by_proto)


class _ConcurrentBuilder:
    """Frame bytes of flow f in round r (generate_concurrent's plan)."""

    def __init__(self, tcp: np.ndarray, v6: np.ndarray, vlan: np.ndarray) -> None:
        self.tcp = tcp.tolist()
        self.v6 = v6.tolist()
        self.vlan = vlan.tolist()

    def frame(self, f: int, r: int, pick: int) -> tuple[bytes, int]:
        tcp, v6, vlan = self.tcp[f], self.v6[f], self.vlan[f]
        client_port = 1024 + f % 60000
        server_port = 443 if tcp else 53
        c2s = r % 2 == 0
        sp, dp = (client_port, server_port) if c2s else (server_port, client_port)
        if tcp:
            proto, flags = 6, ((0x02, 0x12, 0x10)[r] if r < 3 else 0x18)
            l4 = 20 + (0 if r < 3 else pick)
            l4h = _TCP.pack(sp, dp, r, 0, 0x50, flags, 65535, 0, 0)
        else:
            proto, l4 = 17, 8 + 12 + pick
            l4h = _UDP.pack(sp, dp, l4, 0)
        if v6:
            ca = b"\xfd" + (f + 1).to_bytes(15, "big")
            sa = b"\xfd" + (1 << 100 | f % 97).to_bytes(15, "big")
        else:
            ca = (0x0A000000 | (f + 1)).to_bytes(4, "big")
            sa = (0x0A800000 | (f % 251 + 1)).to_bytes(4, "big")
        src, dst = (ca, sa) if c2s else (sa, ca)
        return _ip_frame(v6, vlan, proto, src, dst, l4h, l4, r), l4 + (40 if v6 else 20)


def cached_concurrent_capture(
    cache_dir: Path, seed: int, flows: int, rounds: int
) -> tuple[Path, Truth]:
    """generate_concurrent's capture for (seed, flows, rounds) under cache_dir, made on first
    use."""
    path = cache_dir / f"flows-concurrent-seed{seed}-{flows}x{rounds}.pcap"
    return _cached(path, lambda tmp: generate_concurrent(tmp, seed, flows, rounds))


def cached_capture(cache_dir: Path, seed: int, packets: int = 1_000_000) -> tuple[Path, Truth]:
    """The capture for (seed, packets) under cache_dir, generated on first use."""
    path = cache_dir / f"flows-seed{seed}-{packets}.pcap"
    return _cached(path, lambda tmp: generate(tmp, seed, packets, flows=max(packets // 20, 1)))


def _cached(path: Path, make: Callable[[Path], Truth]) -> tuple[Path, Truth]:
    """path and its truth (beside it, .truth.json), made by make(a temporary path) once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    truth_path = path.with_suffix(".truth.json")
    if path.exists() and truth_path.exists():
        return path, Truth.from_json(truth_path.read_text())
    tmp = path.with_suffix(".tmp")
    truth = make(tmp)
    tmp.replace(path)
    truth_path.write_text(truth.to_json())
    return path, truth
