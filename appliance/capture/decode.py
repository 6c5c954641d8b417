"""Frames in, flow-key columns out: the packet decoder, a whole batch at a time.

A `FrameBatch` is what every capture source produces (a chunk of a pcap file, one TPACKET_V3
block): one buffer, the offset, captured length and timestamp of each frame in it, and, for
the ring, the VLAN id the kernel stripped from the frame. `Decoder.decode` turns it into
`PacketColumns`: one row per metered IP packet, in arrival order, with the canonical flow key
already computed. Nothing here keeps flows; that is appliance.capture.meter.

Two paths, same results:
- the vectorised path (the ethertype, then one 64-byte header window per frame gathered as a
  matrix row, fields read as columns) handles Ethernet, one 802.1Q tag in the bytes, IPv4
  without options or fragmentation, IPv6 without extension headers, and TCP, UDP, SCTP,
  DCCP, UDP-Lite, ICMP, ICMPv6 and portless protocols;
- every other frame (IPv4 options, IPv6 extension headers, fragments, QinQ, truncated or
  malformed headers, frames at the very end of a buffer) goes through `decode_frame`, a
  per-frame Python decoder. It also owns the fragment rule (below), the only state the
  decoder keeps.

Flow key rules (docs/FLOWS.md):
- key = (VLAN id, IP version, protocol, endpoint A, endpoint B), endpoints (address, key port)
  ordered so that A <= B: both directions of a conversation share one key; `rev` says whether
  the packet went B -> A.
- TCP, UDP, SCTP, DCCP, UDP-Lite: key ports are the transport ports.
- ICMP / ICMPv6 echo request and reply (types 8/0, 128/129): both key ports are the echo
  identifier, so a ping and its replies are one flow and two pings with different ids are two.
- other ICMP messages: both key ports are 0x10000 | type << 8 | code (one flow per type/code
  between two hosts, both directions).
- any other protocol: key ports 0.
- fragments: the first fragment carries the transport header and is keyed normally; the decoder
  remembers (src, dst, protocol, IP id) -> key ports for FRAG_MEMORY_S, and later fragments of
  the same datagram join that flow. A non-first fragment whose first fragment was not seen
  (lost, or arrived later) is keyed with ports 0. Every fragment counts its own IP length.
- bytes are the IP total length (IPv4 total length, IPv6 payload length + 40): IPFIX
  octetDeltaCount. Link-layer headers, VLAN tags and Ethernet padding are not counted; a
  truncated capture (snaplen) still counts the length the IP header states.
- non-IP frames (ARP, LLDP, ...) are counted per ethertype in `DecodeStats`, never metered.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
U32 = npt.NDArray[np.uint32]
U16 = npt.NDArray[np.uint16]
U8 = npt.NDArray[np.uint8]
Bools = npt.NDArray[np.bool_]

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101  # raw IPv4/IPv6, no link layer

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_VLAN = 0x8100
ETH_QINQ = 0x88A8

TCP, UDP, ICMP, ICMPV6, SCTP, DCCP, UDPLITE = 6, 17, 1, 58, 132, 33, 136
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10
ICMP_KEY_BIT = 0x10000

#: IPv6 extension headers walked by the slow path (44 = fragment, 51 = AH).
IPV6_EXT = frozenset({0, 43, 44, 51, 60, 135, 139, 140, 253, 254})
#: How long the fragment rule remembers a first fragment's key ports, and how many it keeps.
FRAG_MEMORY_S = 30.0
FRAG_MEMORY_MAX = 4096

#: Bytes beyond a frame's start that the vectorised path may read: its header window starts
#: at most 10 bytes in and is WINDOW (64) bytes wide (see byte_windows), rounded up.
MAX_REACH = 96

_PORT_PROTOS = (TCP, UDP, SCTP, DCCP, UDPLITE)
#: Transport header bytes the key needs, per protocol number.
_L4_NEED = np.zeros(256, dtype=np.int64)
_L4_NEED[[UDP, SCTP, DCCP, UDPLITE]] = 4
_L4_NEED[TCP] = 14
_L4_NEED[[ICMP, ICMPV6]] = 6
_HAS_PORTS = np.zeros(256, dtype=np.bool_)
_HAS_PORTS[list(_PORT_PROTOS)] = True
_IPV6_EXT_LUT = np.zeros(256, dtype=np.bool_)
_IPV6_EXT_LUT[list(IPV6_EXT)] = True


@dataclass
class FrameBatch:
    """Frames of one chunk in arrival order (all arrays have one entry per frame).

    data is the buffer the frames live in (it may be a read-only view of a file map or of the
    ring; the decoder copies what it keeps). vlan is the VLAN id from capture metadata (the
    ring's tp_vlan_tci; 0 = none) or None when tags are still in the frame bytes (files).
    """

    data: U8
    offsets: I64
    caplen: I64
    ts_ns: I64
    vlan: U16 | None = None
    linktype: int = LINKTYPE_ETHERNET

    def __len__(self) -> int:
        return len(self.offsets)


@dataclass
class PacketColumns:
    """One row per metered packet, arrival order; the key is canonical (A <= B)."""

    ts_ns: I64
    vlan: U16
    ipver: U8
    proto: U8
    a_hi: U64
    a_lo: U64
    b_hi: U64
    b_lo: U64
    port_a: U32
    port_b: U32
    rev: Bools  # True: the packet went B -> A
    nbytes: I64
    tcp_flags: U8
    icmp_type: U8
    icmp_code: U8

    def __len__(self) -> int:
        return len(self.ts_ns)

    def take(self, idx: npt.NDArray[np.intp] | Bools) -> PacketColumns:
        """The rows idx (indices or a mask), as a new PacketColumns."""
        return PacketColumns(**{k: v[idx] for k, v in self.__dict__.items()})

    @staticmethod
    def concat(parts: list[PacketColumns]) -> PacketColumns:
        """Rows of parts, in order."""
        names = PacketColumns.__dataclass_fields__
        return PacketColumns(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in names})


@dataclass
class DecodeStats:
    """What the decoder saw, cumulative; frames = metered + non_ip + malformed."""

    frames: int = 0
    metered: int = 0
    slow_path: int = 0
    fragments: int = 0
    malformed: int = 0
    non_ip: dict[int, int] = field(default_factory=dict)  # ethertype -> frames

    @property
    def non_ip_total(self) -> int:
        return sum(self.non_ip.values())


class Decoder:
    """Decodes FrameBatches; keeps only the fragment memory (see the module docstring)."""

    def __init__(self, vectorised: bool = True) -> None:
        """vectorised=False sends every frame through decode_frame: the reference the tests
        hold the vectorised path to (same columns, much slower)."""
        self.vectorised = vectorised
        self.stats = DecodeStats()
        # (ipver, src, dst, proto, ip id) -> (port_src, port_dst, first-seen ns)
        self._frags: OrderedDict[tuple[int, bytes, bytes, int, int], tuple[int, int, int]] = (
            OrderedDict()
        )

    def decode(self, batch: FrameBatch) -> PacketColumns:
        """Decode every frame of batch; rows for metered packets only, in arrival order."""
        n = len(batch)
        self.stats.frames += n
        if n == 0:
            return _empty_columns()
        if not self.vectorised:
            every = np.arange(n, dtype=np.intp)
            self.stats.slow_path += n
            cols = self._merge_slow(batch, _empty_columns(), every[:0], every)
            self.stats.metered += len(cols)
            return cols
        data = batch.data
        off = batch.offsets
        caplen = batch.caplen
        raw = batch.linktype == LINKTYPE_RAW
        # Ethertype first (two byte gathers), then one 64-byte header window per IP frame,
        # starting 8 bytes before the IP header: untagged Ethernet at frame + 6, tagged at
        # frame + 10, raw IP at frame - 8.
        if raw:
            safe = (off >= 8) & (off <= len(data) - MAX_REACH)
            o = np.where(safe, off, 8)
            ver = data[o] >> 4
            et2 = np.where(ver == 4, ETH_IPV4, np.where(ver == 6, ETH_IPV6, 0))
            tagged = np.zeros(n, dtype=np.bool_)
            tagged_bad = tagged
            start = o - 8
            non_ip = tagged
        else:
            safe = off <= len(data) - MAX_REACH
            o = np.where(safe, off, 0)
            et = (data[o + 12].astype(np.uint16) << 8) | data[o + 13]
            tagged = et == ETH_VLAN
            et2 = et
            tagged_rows = np.flatnonzero(tagged)
            if len(tagged_rows):
                et2 = et.copy()
                to = o[tagged_rows]
                et2[tagged_rows] = (data[to + 16].astype(np.uint16) << 8) | data[to + 17]
            # QinQ or a second tag: the slow path walks it.
            tagged_bad = (et == ETH_QINQ) | (tagged & ((et2 == ETH_VLAN) | (et2 == ETH_QINQ)))
            start = o + 6 + 4 * tagged
        is_ip = (et2 == ETH_IPV4) | (et2 == ETH_IPV6)
        if not raw:
            non_ip = safe & ~tagged_bad & ~is_ip & (caplen >= 14)
            if non_ip.any():
                counted = self.stats.non_ip
                for t in et2[non_ip].tolist():  # a handful per batch: cheaper than np.unique
                    counted[t] = counted.get(t, 0) + 1
        cand_mask = safe & ~tagged_bad & is_ip
        rows = None if cand_mask.all() else np.flatnonzero(cand_mask)

        def sub(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
            return a if rows is None else a[rows]

        win = byte_windows(data, sub(start))
        w16 = win.view(">u2")
        is6 = sub(et2) == ETH_IPV6
        tagged_c = sub(tagged)
        b0 = win[:, 8]
        # The vectorised IPv4 path takes option-less, unfragmented headers only.
        ok4 = ~is6 & (b0 == 0x45) & ((w16[:, 7] & 0x3FFF) == 0) & (w16[:, 5] >= 20)
        nh6 = win[:, 14]
        ok6 = is6 & ((b0 >> 4) == 6) & ~_IPV6_EXT_LUT[nh6] & (w16[:, 6] > 0)
        proto = np.where(is6, nh6, win[:, 17])
        need = np.where(is6, 54, 34) + 4 * tagged_c + _L4_NEED[proto] - (14 if raw else 0)
        fast_c = (ok4 | ok6) & (need <= sub(caplen))
        meta = None if batch.vlan is None else sub(batch.vlan)
        if tagged_c.any():
            vlan = np.where(tagged_c, w16[:, 2] & 0x0FFF, 0 if meta is None else meta)
            vlan = vlan.astype(np.uint16)
        else:
            vlan = np.zeros(len(win), dtype=np.uint16) if meta is None else meta.astype(np.uint16)
        fast_rows: npt.NDArray[np.intp] | None = rows
        if not fast_c.all():
            fast_rows = np.flatnonzero(fast_c) if rows is None else rows[fast_c]
            win, vlan, is6, proto = win[fast_c], vlan[fast_c], is6[fast_c], proto[fast_c]
        cols = _fast_columns(win, vlan, is6, proto, batch.ts_ns, fast_rows)
        fast = np.ones(n, dtype=np.bool_)
        if fast_rows is not None:
            fast[:] = False
            fast[fast_rows] = True
        slow_rows = np.flatnonzero(~fast & ~non_ip)
        if len(slow_rows):
            self.stats.slow_path += len(slow_rows)
            cols = self._merge_slow(batch, cols, fast_rows, slow_rows)
        self.stats.metered += len(cols)
        return cols

    def _merge_slow(
        self,
        batch: FrameBatch,
        cols: PacketColumns,
        fast_rows: npt.NDArray[np.intp] | None,
        slow_rows: npt.NDArray[np.intp],
    ) -> PacketColumns:
        """Decode slow_rows one by one and merge them with the fast rows in arrival order."""
        rows: list[tuple[int, ...]] = []
        where: list[int] = []
        for i in slow_rows.tolist():
            start = int(batch.offsets[i])
            frame = batch.data[start : start + int(batch.caplen[i])].tobytes()
            meta_vlan = 0 if batch.vlan is None else int(batch.vlan[i])
            res = self.decode_frame(frame, meta_vlan, int(batch.ts_ns[i]), batch.linktype)
            if isinstance(res, int):
                if res >= 0:
                    self.stats.non_ip[res] = self.stats.non_ip.get(res, 0) + 1
                else:
                    self.stats.malformed += 1
                continue
            vlan_i, ipver_i, proto_i, src, dst, ksrc_i, kdst_i, nb, fl, itype, icode = res
            key = (*_addr_words(src), *_addr_words(dst), ksrc_i, kdst_i)
            rows.append((int(batch.ts_ns[i]), vlan_i, ipver_i, proto_i, *key, nb, fl, itype, icode))
            where.append(i)
        if not rows:
            return cols
        c = list(zip(*rows, strict=True))
        u64 = np.uint64
        slow = _canonical(
            ts_ns=np.array(c[0], dtype=np.int64),
            vlan=np.array(c[1], dtype=np.uint16),
            ipver=np.array(c[2], dtype=np.uint8),
            proto=np.array(c[3], dtype=np.uint8),
            s_hi=np.array(c[4], dtype=u64),
            s_lo=np.array(c[5], dtype=u64),
            d_hi=np.array(c[6], dtype=u64),
            d_lo=np.array(c[7], dtype=u64),
            ksrc=np.array(c[8], dtype=np.uint32),
            kdst=np.array(c[9], dtype=np.uint32),
            nbytes=np.array(c[10], dtype=np.int64),
            tcp_flags=np.array(c[11], dtype=np.uint8),
            icmp_type=np.array(c[12], dtype=np.uint8),
            icmp_code=np.array(c[13], dtype=np.uint8),
        )
        fast_idx = np.arange(len(cols)) if fast_rows is None else fast_rows
        arrival = np.concatenate((fast_idx, np.array(where, dtype=np.intp)))
        return PacketColumns.concat([cols, slow]).take(np.argsort(arrival, kind="stable"))

    # -- the per-frame path -------------------------------------------------------------

    def decode_frame(
        self, frame: bytes, meta_vlan: int, ts_ns: int, linktype: int = LINKTYPE_ETHERNET
    ) -> tuple[int, int, int, bytes, bytes, int, int, int, int, int, int] | int:
        """Decode one frame the slow, general way.

        Returns (vlan, ipver, proto, src, dst, key port src, key port dst, IP bytes, TCP
        flags, ICMP type, ICMP code), or an int: the ethertype of a non-IP frame (>= 0), or -1
        for a malformed or truncated one.
        """
        vlan = meta_vlan
        pos = 0
        if linktype == LINKTYPE_RAW:
            if not frame:
                return -1
            et = {4: ETH_IPV4, 6: ETH_IPV6}.get(frame[0] >> 4, -1)
        else:
            if len(frame) < 14:
                return -1
            et = int.from_bytes(frame[12:14], "big")
            pos = 14
            while et in (ETH_VLAN, ETH_QINQ):
                if len(frame) < pos + 4:
                    return -1
                # The innermost tag names the VLAN the flow belongs to.
                vlan = int.from_bytes(frame[pos : pos + 2], "big") & 0x0FFF
                et = int.from_bytes(frame[pos + 2 : pos + 4], "big")
                pos += 4
        if et == ETH_IPV4:
            return self._ipv4(frame, pos, vlan, ts_ns)
        if et == ETH_IPV6:
            return self._ipv6(frame, pos, vlan, ts_ns)
        return et if et >= 0 else -1

    def _ipv4(
        self, frame: bytes, pos: int, vlan: int, ts_ns: int
    ) -> tuple[int, int, int, bytes, bytes, int, int, int, int, int, int] | int:
        if len(frame) < pos + 20 or frame[pos] >> 4 != 4:
            return -1
        ihl = (frame[pos] & 0x0F) * 4
        total, ident, fragf = struct.unpack_from(">HHH", frame, pos + 2)
        proto = frame[pos + 9]
        if ihl < 20 or total < ihl:
            return -1
        src = frame[pos + 12 : pos + 16]
        dst = frame[pos + 16 : pos + 20]
        frag_off = fragf & 0x1FFF
        more = bool(fragf & 0x2000)
        return self._transport(
            frame, pos + ihl, vlan, 4, proto, src, dst, total, ts_ns, frag_off, more, ident
        )

    def _ipv6(
        self, frame: bytes, pos: int, vlan: int, ts_ns: int
    ) -> tuple[int, int, int, bytes, bytes, int, int, int, int, int, int] | int:
        if len(frame) < pos + 40 or frame[pos] >> 4 != 6:
            return -1
        plen = int.from_bytes(frame[pos + 4 : pos + 6], "big")
        if plen == 0:
            return -1  # jumbogram: out of scope, counted as malformed
        nh = frame[pos + 6]
        src = frame[pos + 8 : pos + 24]
        dst = frame[pos + 24 : pos + 40]
        p = pos + 40
        frag_off, more, ident = 0, False, -1
        while nh in IPV6_EXT:
            if len(frame) < p + 8:
                return -1
            if nh == 44:  # fragment header: fixed 8 bytes
                fo = int.from_bytes(frame[p + 2 : p + 4], "big")
                frag_off, more = fo >> 3, bool(fo & 1)
                ident = int.from_bytes(frame[p + 4 : p + 8], "big")
                nh, p = frame[p], p + 8
                if frag_off:
                    break  # no transport header in a non-first fragment
            elif nh == 51:  # AH: length in 4-octet units, minus 2
                nh, p = frame[p], p + (frame[p + 1] + 2) * 4
            else:
                nh, p = frame[p], p + (frame[p + 1] + 1) * 8
        return self._transport(
            frame, p, vlan, 6, nh, src, dst, plen + 40, ts_ns, frag_off, more, ident
        )

    def _transport(
        self,
        frame: bytes,
        p: int,
        vlan: int,
        ipver: int,
        proto: int,
        src: bytes,
        dst: bytes,
        nbytes: int,
        ts_ns: int,
        frag_off: int,
        more: bool,
        ident: int,
    ) -> tuple[int, int, int, bytes, bytes, int, int, int, int, int, int]:
        is_frag = frag_off != 0 or more
        fkey = (ipver, src, dst, proto, ident)
        if is_frag:
            self.stats.fragments += 1
        if frag_off:
            remembered = self._frags.get(fkey)
            if remembered is not None and ts_ns - remembered[2] <= FRAG_MEMORY_S * 1e9:
                ports = remembered[0], remembered[1]
                return (vlan, ipver, proto, src, dst, *ports, nbytes, 0, 0, 0)
            return (vlan, ipver, proto, src, dst, 0, 0, nbytes, 0, 0, 0)
        ksrc = kdst = flags = itype = icode = 0
        icmp = (proto == ICMP and ipver == 4) or (proto == ICMPV6 and ipver == 6)
        need = int(_L4_NEED[proto])
        if len(frame) >= p + need:
            if proto in _PORT_PROTOS:
                ksrc, kdst = struct.unpack_from(">HH", frame, p)
                if proto == TCP:
                    flags = frame[p + 13]
            elif icmp:
                itype, icode = frame[p], frame[p + 1]
                echo = itype in ((8, 0) if ipver == 4 else (128, 129))
                if echo:
                    ksrc = kdst = int.from_bytes(frame[p + 4 : p + 6], "big")
                else:
                    ksrc = kdst = ICMP_KEY_BIT | itype << 8 | icode
        if more and not frag_off:
            self._remember_fragment(fkey, ksrc, kdst, ts_ns)
        return (vlan, ipver, proto, src, dst, ksrc, kdst, nbytes, flags, itype, icode)

    def _remember_fragment(
        self, fkey: tuple[int, bytes, bytes, int, int], ksrc: int, kdst: int, ts_ns: int
    ) -> None:
        self._frags[fkey] = (ksrc, kdst, ts_ns)
        self._frags.move_to_end(fkey)
        while len(self._frags) > FRAG_MEMORY_MAX:
            self._frags.popitem(last=False)


WINDOW = 64


def byte_windows(data: U8, start: I64, width: int = WINDOW) -> U8:
    """For every start offset, data[start:start + width] as one row of a (n, width) matrix.

    One gather of whole rows through a sliding-window view instead of a gather per header
    field: this is what makes the decoder fast (fields are then column views of the matrix).
    Every start + width must lie inside data.
    """
    view = np.lib.stride_tricks.sliding_window_view(data, width)
    return view[start]


def _fast_columns(
    win: U8,
    vlan: U16,
    is6: Bools,
    proto: U8,
    ts_all: I64,
    rows: npt.NDArray[np.intp] | None,
) -> PacketColumns:
    """Key columns from header windows (layout: IP header at byte 8 of each window).

    Everything is first read as IPv4 (column views of the window matrix), then the IPv6 rows,
    a minority, are overwritten.
    """
    w16 = win.view(">u2")
    w32 = win.view(">u4")
    n = len(win)
    s_lo = w32[:, 5].astype(np.uint64)
    d_lo = w32[:, 6].astype(np.uint64)
    s_hi = np.zeros(n, dtype=np.uint64)
    d_hi = np.zeros(n, dtype=np.uint64)
    ports = w32[:, 7].astype(np.uint32)
    flags_b = win[:, 41].copy()
    echo_id = w16[:, 16].astype(np.uint32)
    nbytes = w16[:, 5].astype(np.int64)
    ipver = np.full(n, 4, dtype=np.uint8)
    v6 = np.flatnonzero(is6)
    if len(v6):
        w6 = win[v6]
        w64_6 = w6.view(">u8")
        s_hi[v6], s_lo[v6] = w64_6[:, 2], w64_6[:, 3]
        d_hi[v6], d_lo[v6] = w64_6[:, 4], w64_6[:, 5]
        ports[v6] = w6.view(">u4")[:, 12]
        flags_b[v6] = w6[:, 61]
        echo_id[v6] = w6.view(">u2")[:, 26]
        nbytes[v6] = w6.view(">u2")[:, 6].astype(np.int64) + 40
        ipver[v6] = 6
    sport = ports >> np.uint32(16)
    dport = ports & np.uint32(0xFFFF)
    has_ports = _HAS_PORTS[proto]
    ksrc = np.where(has_ports, sport, np.uint32(0))
    kdst = np.where(has_ports, dport, np.uint32(0))
    icmp_type = np.zeros(n, dtype=np.uint8)
    icmp_code = np.zeros(n, dtype=np.uint8)
    icmp = np.flatnonzero(np.where(is6, proto == ICMPV6, proto == ICMP))
    if len(icmp):  # a minority: the ICMP key rule on the subset only
        i6 = is6[icmp]
        itype = (sport[icmp] >> np.uint32(8)).astype(np.uint8)
        icmp_type[icmp] = itype
        icmp_code[icmp] = sport[icmp] & np.uint32(0xFF)
        echo = np.where(i6, (itype == 128) | (itype == 129), (itype == 8) | (itype == 0))
        key = np.where(echo, echo_id[icmp], ICMP_KEY_BIT | sport[icmp]).astype(np.uint32)
        ksrc[icmp] = key
        kdst[icmp] = key
    return _canonical(
        ts_ns=ts_all if rows is None else ts_all[rows],
        vlan=vlan,
        ipver=ipver,
        proto=proto.astype(np.uint8),
        s_hi=s_hi,
        s_lo=s_lo,
        d_hi=d_hi,
        d_lo=d_lo,
        ksrc=ksrc,
        kdst=kdst,
        nbytes=nbytes,
        tcp_flags=np.where(proto == TCP, flags_b, 0).astype(np.uint8),
        icmp_type=icmp_type,
        icmp_code=icmp_code,
    )


def _canonical(
    *,
    ts_ns: I64,
    vlan: U16,
    ipver: U8,
    proto: U8,
    s_hi: U64,
    s_lo: U64,
    d_hi: U64,
    d_lo: U64,
    ksrc: U32,
    kdst: U32,
    nbytes: I64,
    tcp_flags: U8,
    icmp_type: U8,
    icmp_code: U8,
) -> PacketColumns:
    """PacketColumns with endpoint A = the lower (address, key port), B the other.

    The high address words are zero for IPv4, so they are compared only on IPv6 rows.
    """
    less = (s_lo < d_lo) | ((s_lo == d_lo) & (ksrc <= kdst))
    a_hi = np.zeros(len(ts_ns), dtype=np.uint64)
    b_hi = np.zeros(len(ts_ns), dtype=np.uint64)
    v6 = np.flatnonzero(ipver == 6)
    if len(v6):
        sh, dh = s_hi[v6], d_hi[v6]
        less6 = (sh < dh) | ((sh == dh) & less[v6])
        less[v6] = less6
        a_hi[v6] = np.where(less6, sh, dh)
        b_hi[v6] = np.where(less6, dh, sh)
    return PacketColumns(
        ts_ns=ts_ns,
        vlan=vlan,
        ipver=ipver,
        proto=proto,
        a_hi=a_hi,
        a_lo=np.where(less, s_lo, d_lo),
        b_hi=b_hi,
        b_lo=np.where(less, d_lo, s_lo),
        port_a=np.where(less, ksrc, kdst),
        port_b=np.where(less, kdst, ksrc),
        rev=~less,
        nbytes=nbytes,
        tcp_flags=tcp_flags,
        icmp_type=icmp_type,
        icmp_code=icmp_code,
    )


def _addr_words(addr: bytes) -> tuple[int, int]:
    """(hi, lo) 64-bit words of an address as the key stores it (IPv4: hi = 0)."""
    if len(addr) == 4:
        return 0, int.from_bytes(addr, "big")
    v = int.from_bytes(addr, "big")
    return v >> 64, v & 0xFFFF_FFFF_FFFF_FFFF


def _empty_columns() -> PacketColumns:
    u64 = np.zeros(0, dtype=np.uint64)
    u32 = np.zeros(0, dtype=np.uint32)
    u8 = np.zeros(0, dtype=np.uint8)
    return PacketColumns(
        ts_ns=np.zeros(0, dtype=np.int64),
        vlan=np.zeros(0, dtype=np.uint16),
        ipver=u8,
        proto=u8,
        a_hi=u64,
        a_lo=u64,
        b_hi=u64,
        b_lo=u64,
        port_a=u32,
        port_b=u32,
        rev=np.zeros(0, dtype=np.bool_),
        nbytes=np.zeros(0, dtype=np.int64),
        tcp_flags=u8,
        icmp_type=u8,
        icmp_code=u8,
    )
