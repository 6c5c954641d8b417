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
  per-frame Python decoder that returns a `DecodedPacket`. It also owns the fragment rule
  (below), the only state the decoder keeps.

Both paths read header fields through one table of named offsets (ETH_*, VLAN_*, IP4_*, IP6_*,
L4_*, ...); the vectorised path places them in its header window with WIN_IP and `_col`.

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
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

try:  # the compiled fast path (setup.py builds it); the numpy path without it
    from appliance.capture import _fastpath
except ImportError:  # pragma: no cover (a checkout without `make venv`)
    _fastpath = None  # type: ignore[assignment]

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
U32 = npt.NDArray[np.uint32]
U16 = npt.NDArray[np.uint16]
U8 = npt.NDArray[np.uint8]
Bools = npt.NDArray[np.bool_]

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101  # raw IPv4/IPv6, no link layer
LINKTYPE_LINUX_SLL = 113  # Linux "cooked" capture v1: what `tcpdump -i any` writes
LINKTYPE_LINUX_SLL2 = 276  # Linux cooked capture v2 (`tcpdump -i any -y LINUX_SLL2`)

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

# -- header layouts --------------------------------------------------------------------
# Byte offsets of the fields the decoder reads, each from the first byte of its own header
# (IEEE 802.3 and 802.1Q, RFC 791, RFC 8200, the transport RFCs). Both paths read through
# these names; nothing below spells a header offset as a bare number.

ETH_TYPE = 12  # EtherType, or the TPID of an 802.1Q / 802.1ad tag
ETH_LEN = 14
SLL_PROTOCOL = 14  # Linux cooked v1: packet type, ARPHRD, address length, address, protocol
SLL_LEN = 16
SLL2_PROTOCOL = 0  # Linux cooked v2: protocol first, then reserved, ifindex, ARPHRD, ...
SLL2_LEN = 20
VLAN_TCI = 0  # inside a tag: PCP, DEI, VLAN id (low 12 bits)
VLAN_TYPE = 2  # the EtherType after the tag
VLAN_LEN = 4
VLAN_ID_MASK = 0x0FFF

#: Link layers with an EtherType: where it is, and where the link header ends (an 802.1Q tag,
#: when the type says so, starts there). In cooked captures the protocol field is the
#: EtherType, and libpcap puts a VLAN tag the kernel stripped back behind the SLL header.
LINK_LAYERS = {
    LINKTYPE_ETHERNET: (ETH_TYPE, ETH_LEN),
    LINKTYPE_LINUX_SLL: (SLL_PROTOCOL, SLL_LEN),
    LINKTYPE_LINUX_SLL2: (SLL2_PROTOCOL, SLL2_LEN),
}

IP4_VER_IHL = 0  # version << 4 | header length in 32-bit words
IP4_TOTAL_LEN = 2
IP4_ID = 4
IP4_FRAG = 6  # flags (MF = 0x2000) and fragment offset (low 13 bits, 8-byte units)
IP4_PROTO = 9
IP4_SRC = 12
IP4_DST = 16
IP4_MIN_LEN = 20
IP4_MF = 0x2000
IP4_FRAG_OFFSET_MASK = 0x1FFF
IP4_NO_OPTIONS = 0x45  # version 4, header length 5 words

IP6_PAYLOAD_LEN = 4
IP6_NEXT = 6
IP6_SRC = 8
IP6_DST = 24
IP6_LEN = 40
EXT_NEXT = 0  # every IPv6 extension header: next header, then its length
EXT_LEN = 1
FRAG6_OFFSET = 2  # fragment header: offset << 3 | M
FRAG6_ID = 4
FRAG6_LEN = 8
IPV6_FRAGMENT, IPV6_AH = 44, 51

L4_SPORT = 0  # TCP, UDP, SCTP, DCCP, UDP-Lite: the ports come first
L4_DPORT = 2
TCP_FLAGS_AT = 13
ICMP_TYPE_AT = 0
ICMP_CODE_AT = 1
ICMP_ECHO_ID = 4  # echo request / reply identifier

#: The vectorised path's header window (see byte_windows): WINDOW bytes per frame with the IP
#: header at WIN_IP, so a tagged frame's TCI and an option-less TCP header both fit.
WINDOW = 64
WIN_IP = 8
#: Bytes beyond a frame's start that the vectorised path may read: its header window starts
#: at most SLL2_LEN + VLAN_LEN - WIN_IP (16) bytes in and is WINDOW bytes wide, rounded up.
MAX_REACH = 96

_PORT_PROTOS = (TCP, UDP, SCTP, DCCP, UDPLITE)
#: Transport header bytes the key needs, per protocol number.
_L4_NEED = np.zeros(256, dtype=np.int64)
_L4_NEED[[UDP, SCTP, DCCP, UDPLITE]] = L4_DPORT + 2
_L4_NEED[TCP] = TCP_FLAGS_AT + 1
_L4_NEED[[ICMP, ICMPV6]] = ICMP_ECHO_ID + 2
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

    def native_args(self) -> tuple[U8, I64, I64, I64, U16 | None, int]:
        """(data, offsets, caplen, ts_ns, vlan, linktype) as _fastpath's functions read them
        (C-contiguous, their dtypes)."""
        i64 = np.int64
        return (
            self.data,
            np.ascontiguousarray(self.offsets, dtype=i64),
            np.ascontiguousarray(self.caplen, dtype=i64),
            np.ascontiguousarray(self.ts_ns, dtype=i64),
            None if self.vlan is None else np.ascontiguousarray(self.vlan, dtype=np.uint16),
            self.linktype,
        )


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

    def take(self, idx: npt.NDArray[np.intp] | Bools | slice) -> PacketColumns:
        """The rows idx (indices or a mask: a copy; a slice: views of these columns)."""
        return PacketColumns(**{k: v[idx] for k, v in self.__dict__.items()})

    @staticmethod
    def concat(parts: list[PacketColumns]) -> PacketColumns:
        """Rows of parts, in order."""
        names = PacketColumns.__dataclass_fields__
        return PacketColumns(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in names})


class DecodedPacket(NamedTuple):
    """One IP packet as the per-frame decoder reads it (endpoints not yet ordered)."""

    vlan: int
    ipver: int
    proto: int
    src: bytes
    dst: bytes
    port_src: int  # key ports: transport ports, the ICMP rule, or 0 (module docstring)
    port_dst: int
    nbytes: int  # IP length
    tcp_flags: int
    icmp_type: int
    icmp_code: int


#: decode_frame's answer for a frame it cannot read (truncated or malformed headers).
MALFORMED = -1
#: What decode_frame returns: the packet, or an int: the EtherType of a non-IP frame (>= 0)
#: or MALFORMED.
FrameResult = DecodedPacket | int
#: A DecodedPacket as a plain tuple (same fields, same order), which is what the per-frame
#: path builds: constructing a NamedTuple costs ~0.4 us more per packet, ~8% of that path.
_Row = tuple[int, int, int, bytes, bytes, int, int, int, int, int, int]


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

    def __init__(self, vectorised: bool = True, native: bool = True) -> None:
        """vectorised=False sends every frame through decode_frame: the reference the tests
        hold the vectorised path to (same columns, much slower). native=False keeps the
        vectorised path in numpy even where the compiled one (_fastpath.decode: the same
        frames to the same rows, ~10x less CPU) is built; tests compare all three."""
        self.vectorised = vectorised
        self.native = native and _fastpath is not None
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
        if self.native:
            return self._decode_native(batch)
        data = batch.data
        off = batch.offsets
        caplen = batch.caplen
        raw = batch.linktype == LINKTYPE_RAW
        # Ethertype first (two byte gathers), then one header window per IP frame, starting
        # WIN_IP bytes before the IP header.
        if raw:
            safe = (off >= WIN_IP) & (off <= len(data) - MAX_REACH)
            o = np.where(safe, off, WIN_IP)
            ver = data[o + IP4_VER_IHL] >> 4
            et2 = np.where(ver == 4, ETH_IPV4, np.where(ver == 6, ETH_IPV6, 0))
            tagged = np.zeros(n, dtype=np.bool_)
            tagged_bad = tagged
            start = o - WIN_IP
            non_ip = tagged
        else:
            type_at, link_len = LINK_LAYERS[batch.linktype]
            safe = off <= len(data) - MAX_REACH
            o = np.where(safe, off, 0)
            et = _be16(data, o + type_at)
            tagged = et == ETH_VLAN
            et2 = et
            tagged_rows = np.flatnonzero(tagged)
            if len(tagged_rows):
                et2 = et.copy()
                et2[tagged_rows] = _be16(data, o[tagged_rows] + link_len + VLAN_TYPE)
            # QinQ or a second tag: the slow path walks it.
            tagged_bad = (et == ETH_QINQ) | (tagged & ((et2 == ETH_VLAN) | (et2 == ETH_QINQ)))
            start = o + (link_len - WIN_IP) + VLAN_LEN * tagged
        is_ip = (et2 == ETH_IPV4) | (et2 == ETH_IPV6)
        if not raw:
            non_ip = safe & ~tagged_bad & ~is_ip & (caplen >= link_len)
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
        b0 = win[:, WIN_IP + IP4_VER_IHL]
        # The vectorised IPv4 path takes option-less, unfragmented headers only.
        ok4 = (
            ~is6
            & (b0 == IP4_NO_OPTIONS)
            & ((w16[:, _col(WIN_IP + IP4_FRAG, 2)] & (IP4_MF | IP4_FRAG_OFFSET_MASK)) == 0)
            & (w16[:, _col(WIN_IP + IP4_TOTAL_LEN, 2)] >= IP4_MIN_LEN)
        )
        nh6 = win[:, WIN_IP + IP6_NEXT]
        plen6 = w16[:, _col(WIN_IP + IP6_PAYLOAD_LEN, 2)]
        ok6 = is6 & ((b0 >> 4) == 6) & ~_IPV6_EXT_LUT[nh6] & (plen6 > 0)
        proto = np.where(is6, nh6, win[:, WIN_IP + IP4_PROTO])
        ip_end = np.where(is6, IP6_LEN, IP4_MIN_LEN) + (0 if raw else link_len)
        need = ip_end + VLAN_LEN * tagged_c + _L4_NEED[proto]
        fast_c = (ok4 | ok6) & (need <= sub(caplen))
        meta = None if batch.vlan is None else sub(batch.vlan)
        if tagged_c.any():
            tci = w16[:, _col(WIN_IP - VLAN_LEN + VLAN_TCI, 2)]
            vlan = np.where(tagged_c, tci & VLAN_ID_MASK, 0 if meta is None else meta)
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

    def _decode_native(self, batch: FrameBatch) -> PacketColumns:
        """decode() through _fastpath.decode: the common frames in C, the rest as the numpy
        path sends them (per-frame decoder, non-IP count)."""
        assert _fastpath is not None
        n = len(batch)
        out = {k: np.empty(n, dtype=t) for k, t in _COLUMN_DTYPES.items()}
        fast_rows = np.empty(n, dtype=np.intp)
        slow_rows = np.empty(n, dtype=np.intp)
        non_ip = np.empty(n, dtype=np.int32)
        n_fast, n_slow, n_non_ip = _fastpath.decode(
            *batch.native_args(),
            tuple(out.values()),
            fast_rows,
            slow_rows,
            non_ip,
        )
        counted = self.stats.non_ip
        for t in non_ip[:n_non_ip].tolist():  # a handful per batch
            counted[t] = counted.get(t, 0) + 1
        cols = PacketColumns(**{k: v[:n_fast] for k, v in out.items()})
        if n_slow:
            self.stats.slow_path += n_slow
            cols = self._merge_slow(batch, cols, fast_rows[:n_fast], slow_rows[:n_slow])
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
        packets: list[_Row] = []
        where: list[int] = []
        for i in slow_rows.tolist():
            start = int(batch.offsets[i])
            frame = batch.data[start : start + int(batch.caplen[i])].tobytes()
            meta_vlan = 0 if batch.vlan is None else int(batch.vlan[i])
            res = self._frame_row(frame, meta_vlan, int(batch.ts_ns[i]), batch.linktype)
            if isinstance(res, int):
                if res >= 0:
                    self.stats.non_ip[res] = self.stats.non_ip.get(res, 0) + 1
                else:
                    self.stats.malformed += 1
                continue
            packets.append(res)
            where.append(i)
        if not packets:
            return cols
        # One tuple per DecodedPacket field (the rows' positions), by name.
        c = dict(zip(DecodedPacket._fields, zip(*packets, strict=True), strict=True))
        s_hi, s_lo = zip(*map(_addr_words, c["src"]), strict=True)
        d_hi, d_lo = zip(*map(_addr_words, c["dst"]), strict=True)
        rows = np.array(where, dtype=np.intp)
        u64 = np.uint64
        slow = _canonical(
            ts_ns=batch.ts_ns[rows],
            vlan=np.array(c["vlan"], dtype=np.uint16),
            ipver=np.array(c["ipver"], dtype=np.uint8),
            proto=np.array(c["proto"], dtype=np.uint8),
            s_hi=np.array(s_hi, dtype=u64),
            s_lo=np.array(s_lo, dtype=u64),
            d_hi=np.array(d_hi, dtype=u64),
            d_lo=np.array(d_lo, dtype=u64),
            ksrc=np.array(c["port_src"], dtype=np.uint32),
            kdst=np.array(c["port_dst"], dtype=np.uint32),
            nbytes=np.array(c["nbytes"], dtype=np.int64),
            tcp_flags=np.array(c["tcp_flags"], dtype=np.uint8),
            icmp_type=np.array(c["icmp_type"], dtype=np.uint8),
            icmp_code=np.array(c["icmp_code"], dtype=np.uint8),
        )
        fast_idx = np.arange(len(cols)) if fast_rows is None else fast_rows
        arrival = np.concatenate((fast_idx, rows))
        return PacketColumns.concat([cols, slow]).take(np.argsort(arrival, kind="stable"))

    # -- the per-frame path -------------------------------------------------------------

    def decode_frame(
        self, frame: bytes, meta_vlan: int, ts_ns: int, linktype: int = LINKTYPE_ETHERNET
    ) -> FrameResult:
        """Decode one frame the slow, general way: a DecodedPacket, or an int for a frame
        that is not metered (the EtherType of a non-IP frame, or MALFORMED)."""
        row = self._frame_row(frame, meta_vlan, ts_ns, linktype)
        return row if isinstance(row, int) else DecodedPacket._make(row)

    def _frame_row(
        self, frame: bytes, meta_vlan: int, ts_ns: int, linktype: int = LINKTYPE_ETHERNET
    ) -> _Row | int:
        """decode_frame, with the packet as a plain _Row."""
        vlan = meta_vlan
        pos = 0
        if linktype == LINKTYPE_RAW:
            if not frame:
                return MALFORMED
            et = {4: ETH_IPV4, 6: ETH_IPV6}.get(frame[IP4_VER_IHL] >> 4, MALFORMED)
        else:
            type_at, link_len = LINK_LAYERS[linktype]
            if len(frame) < link_len:
                return MALFORMED
            et = int.from_bytes(frame[type_at : type_at + 2], "big")
            pos = link_len
            while et in (ETH_VLAN, ETH_QINQ):
                if len(frame) < pos + VLAN_LEN:
                    return MALFORMED
                # The innermost tag names the VLAN the flow belongs to.
                tci, et = struct.unpack_from(">HH", frame, pos + VLAN_TCI)
                vlan = tci & VLAN_ID_MASK
                pos += VLAN_LEN
        if et == ETH_IPV4:
            return self._ipv4(frame, pos, vlan, ts_ns)
        if et == ETH_IPV6:
            return self._ipv6(frame, pos, vlan, ts_ns)
        return et if et >= 0 else MALFORMED

    def _ipv4(self, frame: bytes, pos: int, vlan: int, ts_ns: int) -> _Row | int:
        if len(frame) < pos + IP4_MIN_LEN or frame[pos + IP4_VER_IHL] >> 4 != 4:
            return MALFORMED
        ihl = (frame[pos + IP4_VER_IHL] & 0x0F) * 4
        total, ident, fragf = struct.unpack_from(">HHH", frame, pos + IP4_TOTAL_LEN)
        proto = frame[pos + IP4_PROTO]
        if ihl < IP4_MIN_LEN or total < ihl:
            return MALFORMED
        src = frame[pos + IP4_SRC : pos + IP4_SRC + 4]
        dst = frame[pos + IP4_DST : pos + IP4_DST + 4]
        frag_off = fragf & IP4_FRAG_OFFSET_MASK
        more = bool(fragf & IP4_MF)
        return self._transport(
            frame, pos + ihl, vlan, 4, proto, src, dst, total, ts_ns, frag_off, more, ident
        )

    def _ipv6(self, frame: bytes, pos: int, vlan: int, ts_ns: int) -> _Row | int:
        if len(frame) < pos + IP6_LEN or frame[pos] >> 4 != 6:
            return MALFORMED
        plen = int.from_bytes(frame[pos + IP6_PAYLOAD_LEN : pos + IP6_PAYLOAD_LEN + 2], "big")
        if plen == 0:
            return MALFORMED  # jumbogram: out of scope, counted as malformed
        nh = frame[pos + IP6_NEXT]
        src = frame[pos + IP6_SRC : pos + IP6_SRC + 16]
        dst = frame[pos + IP6_DST : pos + IP6_DST + 16]
        p = pos + IP6_LEN
        frag_off, more, ident = 0, False, -1
        while nh in IPV6_EXT:
            if len(frame) < p + 8:
                return MALFORMED
            if nh == IPV6_FRAGMENT:  # fixed size
                fo, ident = struct.unpack_from(">HI", frame, p + FRAG6_OFFSET)
                frag_off, more = fo >> 3, bool(fo & 1)
                nh, p = frame[p + EXT_NEXT], p + FRAG6_LEN
                if frag_off:
                    break  # no transport header in a non-first fragment
            elif nh == IPV6_AH:  # length in 4-octet units, minus 2
                nh, p = frame[p + EXT_NEXT], p + (frame[p + EXT_LEN] + 2) * 4
            else:  # length in 8-octet units, not counting the first 8
                nh, p = frame[p + EXT_NEXT], p + (frame[p + EXT_LEN] + 1) * 8
        return self._transport(
            frame, p, vlan, 6, nh, src, dst, plen + IP6_LEN, ts_ns, frag_off, more, ident
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
    ) -> _Row:
        is_frag = frag_off != 0 or more
        fkey = (ipver, src, dst, proto, ident)
        if is_frag:
            self.stats.fragments += 1
        if frag_off:
            ports = 0, 0
            remembered = self._frags.get(fkey)
            if remembered is not None and ts_ns - remembered[2] <= FRAG_MEMORY_S * 1e9:
                ports = remembered[0], remembered[1]
            return (vlan, ipver, proto, src, dst, *ports, nbytes, 0, 0, 0)
        ksrc = kdst = flags = itype = icode = 0
        icmp = (proto == ICMP and ipver == 4) or (proto == ICMPV6 and ipver == 6)
        need = int(_L4_NEED[proto])
        if len(frame) >= p + need:
            if proto in _PORT_PROTOS:
                ksrc, kdst = struct.unpack_from(">HH", frame, p + L4_SPORT)
                if proto == TCP:
                    flags = frame[p + TCP_FLAGS_AT]
            elif icmp:
                itype, icode = frame[p + ICMP_TYPE_AT], frame[p + ICMP_CODE_AT]
                echo = itype in ((8, 0) if ipver == 4 else (128, 129))
                if echo:
                    (ksrc,) = struct.unpack_from(">H", frame, p + ICMP_ECHO_ID)
                    kdst = ksrc
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
    """Key columns from header windows (layout: IP header at byte WIN_IP of each window).

    Everything is first read as IPv4 (column views of the window matrix), then the IPv6 rows,
    a minority, are overwritten.
    """
    w16 = win.view(">u2")
    w32 = win.view(">u4")
    n = len(win)
    l4 = WIN_IP + IP4_MIN_LEN
    s_lo = w32[:, _col(WIN_IP + IP4_SRC, 4)].astype(np.uint64)
    d_lo = w32[:, _col(WIN_IP + IP4_DST, 4)].astype(np.uint64)
    s_hi = np.zeros(n, dtype=np.uint64)
    d_hi = np.zeros(n, dtype=np.uint64)
    ports = w32[:, _col(l4 + L4_SPORT, 4)].astype(np.uint32)  # sport << 16 | dport
    flags_b = win[:, l4 + TCP_FLAGS_AT].copy()
    echo_id = w16[:, _col(l4 + ICMP_ECHO_ID, 2)].astype(np.uint32)
    nbytes = w16[:, _col(WIN_IP + IP4_TOTAL_LEN, 2)].astype(np.int64)
    ipver = np.full(n, 4, dtype=np.uint8)
    v6 = np.flatnonzero(is6)
    if len(v6):
        w6 = win[v6]
        w64_6 = w6.view(">u8")
        l4 = WIN_IP + IP6_LEN
        s_hi[v6], s_lo[v6] = (
            w64_6[:, _col(WIN_IP + IP6_SRC, 8)],
            w64_6[:, _col(WIN_IP + IP6_SRC + 8, 8)],
        )
        d_hi[v6], d_lo[v6] = (
            w64_6[:, _col(WIN_IP + IP6_DST, 8)],
            w64_6[:, _col(WIN_IP + IP6_DST + 8, 8)],
        )
        ports[v6] = w6.view(">u4")[:, _col(l4 + L4_SPORT, 4)]
        flags_b[v6] = w6[:, l4 + TCP_FLAGS_AT]
        echo_id[v6] = w6.view(">u2")[:, _col(l4 + ICMP_ECHO_ID, 2)]
        plen = w6.view(">u2")[:, _col(WIN_IP + IP6_PAYLOAD_LEN, 2)]
        nbytes[v6] = plen.astype(np.int64) + IP6_LEN
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


def _col(offset: int, width: int) -> int:
    """The column of a field at byte offset of a header window viewed as width-byte words."""
    assert offset % width == 0, "the field is not aligned to the view"
    return offset // width


def _be16(data: U8, at: I64) -> U16:
    """The big-endian 16-bit words at offsets `at` of data."""
    return (data[at].astype(np.uint16) << np.uint16(8)) | data[at + 1]


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


#: PacketColumns' fields and dtypes, in field order (what _fastpath.decode fills).
_COLUMN_DTYPES: dict[str, np.dtype[Any]] = {
    k: v.dtype for k, v in _empty_columns().__dict__.items()
}
