"""The live capture source: an AF_PACKET TPACKET_V3 receive ring (Linux, needs CAP_NET_RAW).

Lifecycle (the agent owns one PacketRing per mirror port):

    ring = PacketRing(RingOptions(interface="eth1", ...))   # socket, filter, ring, promisc
    for batch in ring.batches(timeout_s=0.5):   # FrameBatches, one per filled block
        columns = decoder.decode(batch)         # must finish before the next batch is asked
        ...
    ring.stats()                                 # accumulated kernel packets / drops
    ring.close()

The kernel fills fixed-size blocks of frames and hands a block over when it is full or when
retire_timeout_ms has passed; `batches` yields each handed-over block as one FrameBatch that
points into the shared memory, and gives the block back to the kernel when the consumer asks
for the next batch (so the decoder reads frames in place, without copying them).

Facts this relies on (docs/FIELD-NOTES): mirrored frames arrive as PACKET_OTHERHOST, so the
socket joins PACKET_MR_PROMISC; the kernel strips 802.1Q tags on this path and reports them in
tp_vlan_tci (TP_STATUS_VLAN_VALID), which becomes FrameBatch.vlan; PACKET_STATISTICS resets
on every read, so `stats()` accumulates. The classic BPF program (appliance.capture.bpf) is
attached before the ring exists, so no unfiltered frame is ever queued.

The box's own frames: a packet socket also gets every frame the host transmits on the port
(sll_pkttype PACKET_OUTGOING, in the sockaddr_ll after each frame header). A tap must never
meter those as the monitored network's traffic, and must not hide them either: a tap that
talks on its mirror port is misconfigured (docs/IMAGE.md, "Mirror ports"). So they are counted
(RingStats.own_frames, the agent's agent_capture_own_frames_total) and left out of every
FrameBatch. Why not PACKET_IGNORE_OUTGOING (Linux 4.20+) or a BPF drop: both make the frames
invisible, so nothing could count them; the capture program instead accepts them first, cut
to 64 bytes (bpf.OWN_FRAME_SNAPLEN), so that a user filter cannot hide them either.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import select
import socket
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from appliance.capture.bpf import Insn, capture_program, pack_program
from appliance.capture.config import CaptureConfig, RingConfig
from appliance.capture.decode import LINKTYPE_ETHERNET, FrameBatch, byte_windows
from appliance.errors import CommandError

SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_FANOUT = 18
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_FLAG_DEFRAG = 0x8000
TPACKET_V3 = 2
SO_ATTACH_FILTER = 26
ETH_P_ALL = 0x0003
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 1 << 4
PACKET_OUTGOING = 4  # sll_pkttype of a frame this host transmitted
CLONE_NEWNET = 0x40000000
FRAME_SIZE = 2048  # tpacket_req3.frame_size: only a sanity unit for TPACKET_V3

# tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1 at 8.
_BLOCK_STATUS = 8
_BLOCK_NUM_PKTS = 12
_BLOCK_FIRST = 16
# tpacket3_hdr is 48 bytes (TPACKET_ALIGN'd); the sockaddr_ll follows it, sll_pkttype at +10.
_SLL_PKTTYPE = 48 + 10
_HDR_WINDOW = 64


@dataclass
class RingStats:
    """Accumulated PACKET_STATISTICS: frames the kernel queued (own frames included) and frames
    it dropped; and frames the host itself sent on the port, counted and never metered."""

    packets: int = 0
    drops: int = 0
    freeze_count: int = 0
    blocks: int = 0
    own_frames: int = 0


@dataclass
class RingOptions:
    """What to open: interface, geometry, filter program, promiscuous mode, fanout, netns."""

    interface: str
    ring: RingConfig = field(default_factory=RingConfig)
    program: Sequence[Insn] | None = None
    promiscuous: bool = True
    fanout_group: int = 0
    netns: str | None = None  # open the socket inside this named network namespace


@contextlib.contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the body with this thread in network namespace `name` (/run/netns/NAME).

    Sockets created inside stay in that namespace after the thread switches back.
    """
    if not name:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        try:
            target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        except FileNotFoundError:
            raise CommandError(f"network namespace {name!r} does not exist") from None
        try:
            if libc.setns(target, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise CommandError(f"setns({name}): {os.strerror(err)} (needs root)")
        finally:
            os.close(target)
        try:
            yield
        finally:
            libc.setns(home, CLONE_NEWNET)
    finally:
        os.close(home)


class PacketRing:
    """One TPACKET_V3 ring on one interface (module docstring for the lifecycle)."""

    def __init__(self, options: RingOptions) -> None:
        self.options = options
        geo = options.ring
        self._stats = RingStats()
        with in_netns(options.netns):
            try:
                self.ifindex = socket.if_nametoindex(options.interface)
            except OSError:
                raise CommandError(f"capture interface {options.interface!r} not found") from None
            try:
                sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            except PermissionError:
                raise CommandError("AF_PACKET capture needs root (CAP_NET_RAW)") from None
        self.sock = sock
        try:
            if options.program is not None:
                self._attach_filter(options.program)
            sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            frame_nr = geo.block_size * geo.block_count // FRAME_SIZE
            req = struct.pack(
                "7I",
                geo.block_size,
                geo.block_count,
                FRAME_SIZE,
                frame_nr,
                geo.retire_timeout_ms,
                0,
                0,
            )
            sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            self._size = geo.block_size * geo.block_count
            self._map = mmap.mmap(
                sock.fileno(), self._size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
            )
            sock.bind((options.interface, ETH_P_ALL))
            if options.promiscuous:
                mreq = struct.pack("iHH8s", self.ifindex, PACKET_MR_PROMISC, 0, b"")
                sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
            if options.fanout_group:
                arg = options.fanout_group | (PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_DEFRAG) << 16
                # An unsigned 32-bit value (the defrag flag is the top bit): pass it as bytes.
                sock.setsockopt(SOL_PACKET, PACKET_FANOUT, struct.pack("I", arg))
        except OSError as exc:
            sock.close()
            raise CommandError(f"cannot set up the capture ring: {exc}") from exc
        self.data = np.frombuffer(self._map, dtype=np.uint8)
        self._block_size = geo.block_size
        self._blocks = geo.block_count
        self._current = 0
        self._held: int | None = None
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN | select.POLLERR)

    def _attach_filter(self, program: Sequence[Insn]) -> None:
        code = pack_program(program)
        buf = ctypes.create_string_buffer(code, len(code))
        fprog = struct.pack("HL", len(program), ctypes.addressof(buf))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)

    def fileno(self) -> int:
        return self.sock.fileno()

    def batches(self, timeout_s: float = 0.5) -> Iterator[FrameBatch]:
        """FrameBatches of every block the kernel has handed over; waits up to timeout_s for
        the first one and returns when none is ready. Each block is given back when the next
        batch is requested (or the iterator is closed)."""
        try:
            if not self._ready(self._current):
                self._poll.poll(int(timeout_s * 1000))
            while self._ready(self._current):
                batch = self._read_block(self._current)
                self._held = self._current
                self._current = (self._current + 1) % self._blocks
                if batch is not None:
                    yield batch
                self._release()
        finally:
            self._release()

    def _ready(self, block: int) -> bool:
        base = block * self._block_size
        (status,) = struct.unpack_from("I", self._map, base + _BLOCK_STATUS)
        return bool(status & TP_STATUS_USER)

    def _release(self) -> None:
        if self._held is not None:
            base = self._held * self._block_size
            struct.pack_into("I", self._map, base + _BLOCK_STATUS, TP_STATUS_KERNEL)
            self._held = None

    def _read_block(self, block: int) -> FrameBatch | None:
        base = block * self._block_size
        num, first = struct.unpack_from("II", self._map, base + _BLOCK_NUM_PKTS)
        self._stats.blocks += 1
        if num == 0:
            return None
        unpack = struct.Struct("I").unpack_from
        mm = self._map
        offs = []
        pos = base + first
        for _ in range(num):
            offs.append(pos)
            pos += unpack(mm, pos)[0]
        hdr_at = np.array(offs, dtype=np.int64)
        # a frame's header, sockaddr_ll and MAC header follow each other: 64 bytes are inside
        hdr = byte_windows(self.data, hdr_at, _HDR_WINDOW)
        own = hdr[:, _SLL_PKTTYPE] == PACKET_OUTGOING
        if own.any():
            self._stats.own_frames += int(own.sum())
            hdr, hdr_at = hdr[~own], hdr_at[~own]
            if len(hdr_at) == 0:
                return None
        w32 = hdr.view("<u4")  # native: x86-64 and arm64 are little-endian
        sec = w32[:, 1].astype(np.int64)
        nsec = w32[:, 2].astype(np.int64)
        snaplen = w32[:, 3].astype(np.int64)
        status = w32[:, 5]
        mac = hdr[:, 24:26].view("<u2")[:, 0].astype(np.int64)
        tci = w32[:, 8]
        vlan = np.where(status & TP_STATUS_VLAN_VALID, tci & 0x0FFF, 0).astype(np.uint16)
        return FrameBatch(
            data=self.data,
            offsets=hdr_at + mac,
            caplen=snaplen,
            ts_ns=sec * 1_000_000_000 + nsec,
            vlan=vlan,
            linktype=LINKTYPE_ETHERNET,
        )

    def stats(self) -> RingStats:
        """Kernel counters, accumulated (PACKET_STATISTICS resets on every read)."""
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
        packets, drops, freeze = struct.unpack("III", raw)
        self._stats.packets += packets
        self._stats.drops += drops
        self._stats.freeze_count += freeze
        return RingStats(**self._stats.__dict__)

    @property
    def own_frames(self) -> int:
        """Frames the host sent on the port, seen so far (no kernel call: any thread)."""
        return self._stats.own_frames

    def counts(self) -> tuple[int, int]:
        """(packets, drops) accumulated: what CountersPoller's capture_stats wants."""
        st = self.stats()
        return st.packets, st.drops

    def close(self) -> None:
        """Unmap the ring and close the socket (batches handed out become invalid)."""
        self.data = np.zeros(0, dtype=np.uint8)
        with contextlib.suppress(BufferError):
            self._map.close()
        self.sock.close()

    def __enter__(self) -> PacketRing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def interface_addresses(ifname: str, netns: str | None = None) -> list[str]:
    """The IPv4 and IPv6 addresses on ifname ([] when it does not exist)."""
    from pyroute2 import IPRoute

    with in_netns(netns), IPRoute() as ipr:
        links = ipr.link_lookup(ifname=ifname)
        if not links:
            return []
        return [str(m.get_attr("IFA_ADDRESS")) for m in ipr.get_addr(index=links[0])]


def open_capture(
    config: CaptureConfig, netns: str | None = None, interface: str | None = None
) -> PacketRing:
    """The ring the `capture` section describes on one mirror port (interface, default: the
    first configured): default filter (minus the uplink's own addresses) AND the user filter,
    promiscuous, fanout if configured."""
    own = interface_addresses(config.uplink_interface, netns)
    program = capture_program(
        config.filter, own, accept_non_ip=config.accept_non_ip, snaplen=config.ring.snaplen
    )
    return PacketRing(
        RingOptions(
            interface=interface or config.interfaces[0],
            ring=config.ring,
            program=program,
            promiscuous=config.promiscuous,
            fanout_group=config.fanout_group,
            netns=netns,
        )
    )
