"""The flow meter: decoded packets in, ended flows out. Pure: no sockets, no clock of its own.

Contract (`infraspectre flows --pcap` and the benches drive it, and the live agent where the
compiled module is not built; `flows --json` on the files _fastpath.meter_json reads and the
live agent's source.CompiledMeter apply these rules in C, per packet as `_step` does,
docs/FLOWS.md "The native meter"):

    meter = FlowMeter(MeterConfig(...))
    ended = meter.add(columns)     # PacketColumns from Decoder.decode, arrival order
    ended = meter.expire(now_ns)   # the caller's clock; call it regularly (every second or so)
    ended = meter.flush()          # at shutdown / end of file: every open flow

Each call returns a FlowBatch of the flows it ended. `now_ns` passed to expire must not be later
than the timestamp of packets not yet added (offline: the last packet's time; live: the wall
clock minus the ring's retire timeout, see source.LiveMeter), otherwise a flow could be ended
that a pending packet would have extended.

Flow membership rules (exact, independent of how packets are batched):
- time is monotonic: a packet stamped earlier than the latest packet already seen counts at the
  latest time (capture timestamps go backwards on multi-queue NICs);
- every open flow has three deadlines: idle (last packet + idle_timeout), close (the packet
  that closed it, an RST or the second direction's FIN, + close_linger) and active (first
  packet + active_timeout - 1 ns). A packet of the flow's key that comes after the earliest
  deadline ends the flow first and starts a new one; the end reason is the earliest deadline's
  (IDLE_TIMEOUT, TCP_RST / TCP_FIN, ACTIVE_TIMEOUT; ties in that order);
- expire(now) ends the flows whose earliest deadline is before `now`, with the same reason, so
  when expire runs changes only when a record is emitted, never what it holds; flush() first
  does the same at the latest packet time, then ends the rest as SHUTDOWN (flows closed by
  FIN/RST but still in their linger keep TCP_FIN / TCP_RST);
- the initiator (tx side) is the sender of the flow's first packet, except a TCP SYN+ACK as
  first packet, whose receiver is the initiator;
- the table holds at most max_flows flows. A batch that needs more slots first ends the flows
  already past a deadline at its first packet (with that reason), then evicts the least
  recently active flows not touched by that batch (EVICTED, counted in stats.evicted).

How it is fast: a batch is grouped by a 64-bit key hash (two stable 16-bit radix passes over
its top half, a full sort when two keys share that half); a second, independent 64-bit hash is
checked to catch collisions: colliding keys take the per-packet path and, in the table, the
resident flow is ended as EVICTED and counted in stats.hash_collisions. The table is found by
binary search in a sorted index of the hashes.
Groups whose packets cannot pass a deadline inside the batch (no gap over idle_timeout, no
active_timeout crossing, no packet later than close_linger after a FIN/RST) are aggregated with
numpy reductions; the rare others replay their packets one by one (`_step`), which is the
reference implementation of the rules above (a test meters one capture in batches of 1, 3, 64
and 4096 packets and compares every record).

Memory: the table is preallocated columns, SLOT_BYTES per slot times max_flows, plus the sorted
hash index; nothing grows with traffic.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from appliance.capture.config import MeterConfig
from appliance.capture.decode import (
    I64,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    U8,
    U16,
    U32,
    U64,
    Bools,
    PacketColumns,
)
from appliance.capture.flows import FLOW_COLUMNS, EndReason, FlowBatch

NONE_NS = np.iinfo(np.int64).max
#: Flows whose deadlines are computed at a time (expire, flush): bounds their temporaries.
DUE_CHUNK = 16384
_RST, _FIN, _SHUTDOWN = (
    np.uint8(r) for r in (EndReason.TCP_RST, EndReason.TCP_FIN, EndReason.SHUTDOWN)
)

_C1 = np.uint64(0xFF51AFD7ED558CCD)
_C2 = np.uint64(0xC4CEB9FE1A85EC53)
_S33 = np.uint64(33)
_SEED1 = np.uint64(0x9E3779B97F4A7C15)
_SEED2 = np.uint64(0xD6E8FEB86659FD93)


def _fmix(x: U64) -> U64:
    """MurmurHash3's 64-bit finaliser, in place: a bijection that mixes every bit."""
    x ^= x >> _S33
    x *= _C1
    x ^= x >> _S33
    x *= _C2
    x ^= x >> _S33
    return x


def key_hashes(pk: PacketColumns) -> tuple[U64, U64]:
    """Two independent 64-bit hashes of every packet's flow key."""
    k1 = (
        pk.port_a.astype(np.uint64)
        | (pk.port_b.astype(np.uint64) << np.uint64(17))
        | (pk.vlan.astype(np.uint64) << np.uint64(34))
        | (pk.proto.astype(np.uint64) << np.uint64(46))
        | ((pk.ipver == 6).astype(np.uint64) << np.uint64(54))
    )
    # IPv4: both addresses fit one word exactly; IPv6: fold the four words.
    k0 = (pk.a_lo << np.uint64(32)) | pk.b_lo
    v6 = np.flatnonzero(pk.ipver == 6)
    if len(v6):
        x = _fmix(pk.a_hi[v6] ^ _SEED2)
        x = _fmix(x ^ pk.a_lo[v6])
        x = _fmix(x ^ pk.b_hi[v6])
        k0[v6] = x ^ pk.b_lo[v6]
    h1 = _fmix(k0 ^ (k1 * _C2) ^ _SEED1)
    h2 = _fmix(k0 ^ _SEED2) + k1 * _C1
    return h1, h2


@dataclass(slots=True)
class FlowTable:
    """The flow table: one preallocated column per field, indexed by slot.

    The first block is what an ended flow exports (FlowBatch's columns, FLOW_COLUMNS, less the
    end reason); the second is meter state. Times are ns; "ab" is endpoint A -> B.
    """

    # The key, set when the flow starts.
    vlan: U16
    ipver: U8
    proto: U8
    a_hi: U64
    a_lo: U64
    b_hi: U64
    b_lo: U64
    port_a: U32
    port_b: U32
    init_b: Bools  # B initiated the flow
    icmp_type: U8
    icmp_code: U8
    # Counters and times.
    pkts_ab: I64
    pkts_ba: I64
    bytes_ab: I64
    bytes_ba: I64
    flags_ab: U8  # TCP flags seen, ORed
    flags_ba: U8
    start_ns: I64
    end_ns: I64  # the latest packet
    # Meter state.
    h2: U64  # the key's second hash (the index holds the first; h2 catches its collisions)
    fin_ab: I64  # first FIN each way, first RST; NONE_NS until seen
    fin_ba: I64
    rst: I64

    @staticmethod
    def allocate(capacity: int) -> FlowTable:
        """A zeroed table of capacity slots."""
        return FlowTable(**{name: np.zeros(capacity, dtype=t) for name, t in _TABLE_DTYPES.items()})

    def export(self, slots: I64, reason: U8) -> FlowBatch:
        """The flows in slots as ended flows, with their end reasons."""
        cols = {name: getattr(self, name)[slots] for name in _EXPORTED}
        cols["reason"] = reason
        return FlowBatch(cols)


#: The table's columns and dtypes: FlowBatch's (less the end reason), then the meter state.
_EXPORTED = tuple(name for name in FLOW_COLUMNS if name != "reason")
_TABLE_DTYPES: dict[str, type[np.generic]] = {
    **{name: FLOW_COLUMNS[name] for name in _EXPORTED},
    "h2": np.uint64,
    "fin_ab": np.int64,
    "fin_ba": np.int64,
    "rst": np.int64,
}
assert [f.name for f in fields(FlowTable)] == list(_TABLE_DTYPES), "FlowTable != FLOW_COLUMNS"


@dataclass
class MeterStats:
    """Cumulative counters of one meter."""

    packets: int = 0
    bytes: int = 0
    flows_started: int = 0
    flows_ended: dict[str, int] = field(default_factory=dict)
    evicted: int = 0
    hash_collisions: int = 0
    slow_groups: int = 0
    peak_flows: int = 0


@dataclass(slots=True)
class _Groups:
    """A batch grouped by key hash h1: packets in key order, arrival order within a key.

    Per-packet arrays (ts, flags) are in that grouped order; per-group arrays have one entry
    per key. collided marks groups whose packets do not all share h2 (two keys, one h1).
    """

    order: npt.NDArray[np.intp]  # packet index at each grouped position
    starts: I64  # each group's first grouped position
    ends: I64  # one past its last
    first: npt.NDArray[np.intp]  # packet index of each group's first packet
    h1: U64
    h2: U64  # of each group's first packet
    ts: I64
    flags: U8
    t_first: I64
    t_last: I64
    collided: Bools

    def __len__(self) -> int:
        return len(self.starts)

    @staticmethod
    def of(pk: PacketColumns, ts: I64, h1: U64, h2: U64) -> _Groups:
        """Group a batch (ts: its monotonic packet times)."""
        n = len(h1)
        # Two stable 16-bit radix passes over the hash's top 32 bits keep the arrival order
        # within a key (several times faster than sorting 64-bit words). Two keys sharing
        # those 32 bits (rare) fall back to a full stable sort of the hash.
        h32 = h1 >> np.uint64(32)
        by_low = np.argsort((h32 & np.uint64(0xFFFF)).astype(np.uint16), kind="stable")
        by_high = np.argsort((h32[by_low] >> np.uint64(16)).astype(np.uint16), kind="stable")
        order = by_low[by_high]
        sh1 = h1[order]
        change = sh1[1:] != sh1[:-1]
        if (change & ((sh1[1:] ^ sh1[:-1]) < np.uint64(1 << 32))).any():
            order = np.argsort(h1, kind="stable")
            sh1 = h1[order]
            change = sh1[1:] != sh1[:-1]
        brk = np.flatnonzero(change) + 1
        starts = np.concatenate((np.zeros(1, dtype=np.int64), brk))
        ends = np.append(brk, n)
        first = order[starts]
        sts = ts[order]
        # Groups whose packets do not all share h2: keys collide on h1.
        sh2 = h2[order]
        inner = np.ones(max(n - 1, 0), dtype=np.bool_)
        inner[brk - 1] = False
        odd = np.flatnonzero((sh2[1:] != sh2[:-1]) & inner)
        collided = np.zeros(len(starts), dtype=np.bool_)
        if len(odd):
            collided[np.searchsorted(starts, odd, side="right") - 1] = True
        return _Groups(
            order=order,
            starts=starts,
            ends=ends,
            first=first,
            h1=sh1[starts],
            h2=h2[first],
            ts=sts,
            flags=pk.tcp_flags[order],
            t_first=sts[starts],
            t_last=sts[ends - 1],
            collided=collided,
        )

    def group_of(self, pos: I64) -> I64:
        """The group of each grouped position in pos."""
        return np.searchsorted(self.starts, pos, side="right") - 1


class _Resident(NamedTuple):
    """Per group: the flow already in the table under its key (if found), at the batch's start."""

    split: Bools  # it ends before the group's first packet (that packet starts a new flow)
    reason: U8  # why it would end (its earliest deadline)
    start_ns: I64
    close_ns: I64  # when FIN/RST closed it, NONE_NS if open


class FlowMeter:
    """Bidirectional flow table with idle/active/FIN-RST expiry (module docstring)."""

    #: Bytes per table slot (columns + hash index entry), for the memory bound.
    SLOT_BYTES = (
        sum(np.dtype(t).itemsize for t in _TABLE_DTYPES.values()) + 8 + 8 + 8 + 1
    )  # index hash, index slot, free stack entry, used flag

    def __init__(self, config: MeterConfig | None = None) -> None:
        self.config = config or MeterConfig()
        cap = self.config.max_flows
        self.capacity = cap
        self._idle = int(self.config.idle_timeout_s * 1e9)
        self._active = int(self.config.active_timeout_s * 1e9)
        self._linger = int(self.config.close_linger_s * 1e9)
        self.t = FlowTable.allocate(cap)
        self._used = np.zeros(cap, dtype=np.bool_)
        # Free slots: a stack, _free[:_n_free], that starts as cap-1 ... 1, 0 (taken from the
        # top: 0 first). Its first _n_untouched entries are that initial value, never
        # written (np.empty: pages the kernel maps only when used): _take_free makes them up.
        self._free = np.empty(cap, dtype=np.int64)
        self._n_free = cap
        self._n_untouched = cap
        self._idx_h1: U64 = np.zeros(0, dtype=np.uint64)  # sorted
        self._idx_slot: I64 = np.zeros(0, dtype=np.int64)
        self._clock = np.iinfo(np.int64).min
        self._pending: list[FlowBatch] = []
        self.stats = MeterStats()

    # -- public API -----------------------------------------------------------------------

    @property
    def clock_ns(self) -> int:
        """The latest packet time seen (the offline clock); 0 before the first packet."""
        return max(self._clock, 0)

    @property
    def oldest_open_ns(self) -> int | None:
        """The earliest last-packet time of the open flows (None when none is open): no flow
        the meter ends from now on has a last packet before it (flows_in_end_order uses it)."""
        if not len(self._idx_slot):
            return None
        return int(self.t.end_ns[self._idx_slot].min())

    @property
    def active_flows(self) -> int:
        """Open flows in the table (never more than max_flows)."""
        return len(self._idx_h1)

    def add(self, pk: PacketColumns) -> FlowBatch:
        """Meter a batch of packets (arrival order); returns the flows it ended."""
        n = len(pk)
        if n == 0:
            return FlowBatch.empty()
        # A batch touches at most n slots; keeping n <= capacity guarantees eviction always
        # finds enough untouched flows.
        step = max(self.capacity // 2, 1)
        if n > step:
            for s in range(0, n, step):
                self._add(pk.take(np.arange(s, min(s + step, n))))
        else:
            self._add(pk)
        return self._take_pending()

    def expire(self, now_ns: int) -> FlowBatch:
        """End every flow whose idle, close-linger or active time has passed at now_ns."""
        self._expire_into_pending(now_ns, self._used)
        return self._take_pending()

    def rebase(self, before_ns: int, delta_ns: int) -> None:
        """The clock stepped forward by delta_ns at before_ns: the open flows' times below
        before_ns (read on the old clock) move forward with it, so their deadlines stay as far
        ahead as they were and a packet stamped on the new clock continues the same flow."""
        if delta_ns <= 0:
            raise ValueError(f"a clock step must be forward, not {delta_ns} ns")
        slots = np.flatnonzero(self._used)
        t = self.t
        for name in ("start_ns", "end_ns", "fin_ab", "fin_ba", "rst"):
            col = getattr(t, name)
            v = col[slots]
            col[slots] = np.where((v != NONE_NS) & (v < before_ns), v + delta_ns, v)
        if 0 < self._clock < before_ns:
            self._clock += delta_ns

    def _expire_into_pending(self, now_ns: int, candidates: Bools) -> None:
        slots = np.flatnonzero(candidates)
        if len(slots):
            due, reason = self._due(slots, now_ns)
            if due.any():
                self._end(slots[due], reason[due])

    def _due(self, slots: I64, now_ns: int) -> tuple[Bools, U8]:
        """Which flows in slots are past a deadline at now_ns, and each one's reason.

        In pieces of DUE_CHUNK slots: the deadlines of a whole 100k-flow table at once were
        a peak of the process's memory (eight temporary columns, ~6 MB)."""
        due = np.zeros(len(slots), dtype=np.bool_)
        reason = np.zeros(len(slots), dtype=np.uint8)
        for at in range(0, len(slots), DUE_CHUNK):
            deadline, reason[at : at + DUE_CHUNK] = self._deadlines(slots[at : at + DUE_CHUNK])
            due[at : at + DUE_CHUNK] = deadline < now_ns
        return due, reason

    def flush(self) -> FlowBatch:
        """End every open flow: at end of file or when the agent stops.

        Flows already past a deadline at the latest packet time end for that reason; the
        others end as SHUTDOWN, except flows closed by FIN or RST (still inside their
        linger), which keep TCP_FIN / TCP_RST.
        """
        slots, reason = self._flush_plan()
        if len(slots):
            self._end(slots, reason)
        return self._take_pending()

    def flush_in_end_order(self, chunk: int = 16384) -> Iterator[FlowBatch]:
        """flush() in pieces of at most `chunk` flows, in the order of their last packet,
        then first packet (ties in flush()'s order): the same flows with the same reasons.

        For a caller that writes flows in end order anyway (`flows --pcap`): flush()'s one
        batch of every open flow, then ordering it, was the process's memory peak at 100k
        open flows; this exports one piece at a time. The table is empty once the last piece
        has been taken, exactly as after flush().
        """
        pending = self._take_pending()
        if len(pending):
            yield pending
        slots, reason = self._flush_plan()
        if not len(slots):
            return
        order = np.lexsort((self.t.start_ns[slots], self.t.end_ns[slots]))
        for at in range(0, len(order), chunk):
            piece = order[at : at + chunk]
            self._export(slots[piece], reason[piece])
            yield self._take_pending()
        del order
        self._release(slots)

    def _flush_plan(self) -> tuple[I64, U8]:
        """The open flows in the order flush() ends them, and their reasons: first those
        already past a deadline at the last packet's time (whenever expire() last ran),
        then the rest (SHUTDOWN, or TCP_FIN / TCP_RST when closed), each in slot order.
        Computed DUE_CHUNK slots at a time, like _due."""
        slots = np.flatnonzero(self._used)
        due = np.zeros(len(slots), dtype=np.bool_)
        reason = np.zeros(len(slots), dtype=np.uint8)
        t = self.t
        for at in range(0, len(slots), DUE_CHUNK):
            part = slots[at : at + DUE_CHUNK]
            deadline, why = self._deadlines(part)
            if self._clock > 0:
                due[at : at + DUE_CHUNK] = deadline < self._clock
            rst = t.rst[part]
            closed = _close_ns(rst, t.fin_ab[part], t.fin_ba[part]) != NONE_NS
            at_end = np.where(closed, np.where(rst != NONE_NS, _RST, _FIN), _SHUTDOWN)
            reason[at : at + DUE_CHUNK] = np.where(due[at : at + DUE_CHUNK], why, at_end)
        if not due.any():
            return slots, reason
        return np.concatenate([slots[due], slots[~due]]), np.concatenate(
            [reason[due], reason[~due]]
        )

    # -- the batch path -------------------------------------------------------------------

    def _add(self, pk: PacketColumns) -> None:
        """Meter one batch: group it by key, then per group either aggregate it with numpy
        (no rule can fire inside it) or replay it packet by packet."""
        ts = self._advance_clock(pk)
        h1, h2 = key_hashes(pk)
        g = _Groups.of(pk, ts, h1, h2)
        found, slot = self._lookup(g.h1)
        slow = g.collided
        slow[found] |= self.t.h2[slot[found]] != g.h2[found]
        resident = self._resident(g, found, slot)
        closers = np.flatnonzero((g.flags & (TCP_FIN | TCP_RST)) != 0)
        slow |= self._may_end_inside(g, found, resident, closers)
        split = resident.split & ~slow
        if split.any():
            self._export(slot[split], resident.reason[split])
        self._take_slots(g.h1, found, slot, int(ts[0]))
        fresh = ~found | split
        if fresh.any():
            self._reset(slot[fresh], pk, g.first[fresh], g.h2[fresh], g.t_first[fresh])
        if not slow.all():
            self._accumulate(g, pk, slot, ~slow, closers)
        if slow.any():
            self._replay(g, pk, slot, slow, ts, h2)

    def _advance_clock(self, pk: PacketColumns) -> I64:
        """The batch's packet times made monotonic (rule 1), and the clock moved to the last."""
        ts = np.maximum.accumulate(pk.ts_ns)
        if ts[0] < self._clock:
            ts = np.maximum(ts, self._clock)
        self._clock = int(ts[-1])
        self.stats.packets += len(pk)
        self.stats.bytes += int(pk.nbytes.sum())
        return ts

    def _lookup(self, gh1: U64) -> tuple[Bools, I64]:
        """Per group: is its key in the table, and in which slot (-1: not found)."""
        if not len(self._idx_h1):
            return np.zeros(len(gh1), dtype=np.bool_), np.full(len(gh1), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(self._idx_h1, gh1), len(self._idx_h1) - 1)
        found = self._idx_h1[pos] == gh1
        return found, np.where(found, self._idx_slot[pos], -1)

    def _resident(self, g: _Groups, found: Bools, slot: I64) -> _Resident:
        """The found flows' start, close and earliest deadline; split if it is before the
        group's first packet (rules 1-3)."""
        n = len(g)
        fs = slot[found]
        start = np.zeros(n, dtype=np.int64)
        close = np.full(n, NONE_NS, dtype=np.int64)
        deadline = np.full(n, NONE_NS, dtype=np.int64)
        reason = np.zeros(n, dtype=np.uint8)
        t = self.t
        # Each column gathered once: these are random reads all over the table.
        f_start, f_rst = t.start_ns[fs], t.rst[fs]
        f_close = _close_ns(f_rst, t.fin_ab[fs], t.fin_ba[fs])
        start[found] = f_start
        close[found] = f_close
        deadline[found], reason[found] = self._earliest(t.end_ns[fs], f_start, f_rst, f_close)
        return _Resident(found & (deadline < g.t_first), reason, start, close)

    def _may_end_inside(self, g: _Groups, found: Bools, resident: _Resident, closers: I64) -> Bools:
        """Groups in which a rule could fire between two of their packets: an idle gap, the
        active timeout, or a packet later than close_linger after a FIN/RST."""
        gap = np.zeros(len(g.ts), dtype=np.int64)
        gap[1:] = g.ts[1:] - g.ts[:-1]
        gap[g.starts] = 0
        crosses = np.maximum.reduceat(gap, g.starts) > self._idle
        continued = found & ~resident.split
        start = np.where(continued, resident.start_ns, g.t_first)
        crosses |= (g.t_last - start) >= self._active
        closing = continued & (resident.close_ns != NONE_NS)
        after_close = g.t_last - np.minimum(resident.close_ns, g.t_last)
        crosses |= closing & (after_close > self._linger)
        if len(closers):
            first_close = np.full(len(g), NONE_NS, dtype=np.int64)
            np.minimum.at(first_close, g.group_of(closers), g.ts[closers])
            after = g.t_last - np.minimum(first_close, g.t_last)
            crosses |= (first_close != NONE_NS) & (after > self._linger)
        return crosses

    def _take_slots(self, gh1: U64, found: Bools, slot: I64, first_ns: int) -> None:
        """Give the new keys (not found) slots, in place in slot, and enter them in the index.

        A full table first ends what is already due at the batch's first packet (so the
        reason stays right), then evicts the least recently active flows the batch does not
        touch.
        """
        new = ~found
        n_new = int(new.sum())
        if not n_new:
            return
        if n_new > self._n_free:
            untouched = self._used.copy()
            untouched[slot[found]] = False
            self._expire_into_pending(first_ns, untouched)
        if n_new > self._n_free:
            self._evict(n_new - self._n_free, slot[found])
        new_slots = self._take_free(n_new)
        slot[new] = new_slots
        self._used[new_slots] = True
        ins = np.searchsorted(self._idx_h1, gh1[new])
        self._idx_h1 = np.insert(self._idx_h1, ins, gh1[new])
        self._idx_slot = np.insert(self._idx_slot, ins, new_slots)
        self.stats.peak_flows = max(self.stats.peak_flows, len(self._idx_h1))

    def _accumulate(
        self, g: _Groups, pk: PacketColumns, slot: I64, fast: Bools, closers: I64
    ) -> None:
        """Add the fast groups' packets to their flows with numpy reductions."""
        t = self.t
        rev = pk.rev[g.order]
        nbytes = pk.nbytes[g.order]
        flags = g.flags
        cnt = g.ends - g.starts
        p_ba = rev.astype(np.int64)
        b_all, b_ba = nbytes, np.where(rev, nbytes, 0)
        f_ab, f_ba = np.where(rev, 0, flags), np.where(rev, flags, 0)
        if len(g) < len(rev):  # some key has several packets: sum them (with many open
            # flows most batches hold each key once, and the packets are the sums)
            p_ba = np.add.reduceat(p_ba, g.starts)
            b_all = np.add.reduceat(b_all, g.starts)
            b_ba = np.add.reduceat(b_ba, g.starts)
            f_ab = np.bitwise_or.reduceat(f_ab, g.starts)
            f_ba = np.bitwise_or.reduceat(f_ba, g.starts)
        sel: Bools | slice = slice(None) if fast.all() else fast  # no copies when all are
        fsl = slot[sel]
        t.pkts_ab[fsl] += (cnt - p_ba)[sel]
        t.pkts_ba[fsl] += p_ba[sel]
        t.bytes_ab[fsl] += (b_all - b_ba)[sel]
        t.bytes_ba[fsl] += b_ba[sel]
        t.flags_ab[fsl] |= f_ab[sel].astype(np.uint8)
        t.flags_ba[fsl] |= f_ba[sel].astype(np.uint8)
        t.end_ns[fsl] = g.t_last[sel]
        if len(closers):
            groups = g.group_of(closers)
            keep = fast[groups]
            pos, cslot = closers[keep], slot[groups[keep]]
            cts, cf, cr = g.ts[pos], flags[pos], rev[pos]
            rst = (cf & TCP_RST) != 0
            fin = (cf & TCP_FIN) != 0
            np.minimum.at(t.rst, cslot[rst], cts[rst])
            np.minimum.at(t.fin_ab, cslot[fin & ~cr], cts[fin & ~cr])
            np.minimum.at(t.fin_ba, cslot[fin & cr], cts[fin & cr])

    def _replay(
        self, g: _Groups, pk: PacketColumns, slot: I64, slow: Bools, ts: I64, h2: U64
    ) -> None:
        """The per-packet path for the slow groups, in arrival order within each."""
        slow_groups = np.flatnonzero(slow)
        self.stats.slow_groups += len(slow_groups)
        for grp in slow_groups.tolist():
            for i in g.order[g.starts[grp] : g.ends[grp]].tolist():
                self._step(int(slot[grp]), pk, i, int(ts[i]), int(h2[i]))

    # -- the per-packet reference path ----------------------------------------------------

    def _step(self, s: int, pk: PacketColumns, i: int, ts: int, h2: int) -> None:
        """Add packet i (time ts) to the flow in slot s, ending that flow first if a rule says."""
        t = self.t
        one = np.array([s], dtype=np.int64)
        idx = np.array([i], dtype=np.int64)
        if int(t.h2[s]) != h2:
            self.stats.hash_collisions += 1
            self._export(one, np.array([EndReason.EVICTED], dtype=np.uint8))
            self.stats.evicted += 1
            self._reset(one, pk, idx, np.array([h2], dtype=np.uint64), np.array([ts]))
        elif int(t.pkts_ab[s]) + int(t.pkts_ba[s]) > 0:
            reason = self._split_reason(s, ts)
            if reason is not None:
                self._export(one, np.array([reason], dtype=np.uint8))
                self._reset(one, pk, idx, np.array([h2], dtype=np.uint64), np.array([ts]))
        flags = int(pk.tcp_flags[i])
        if pk.rev[i]:
            pkts, nbytes, seen, fin = t.pkts_ba, t.bytes_ba, t.flags_ba, t.fin_ba
        else:
            pkts, nbytes, seen, fin = t.pkts_ab, t.bytes_ab, t.flags_ab, t.fin_ab
        pkts[s] += 1
        nbytes[s] += int(pk.nbytes[i])
        seen[s] |= flags
        t.end_ns[s] = ts
        if flags & TCP_RST and int(t.rst[s]) == NONE_NS:
            t.rst[s] = ts
        if flags & TCP_FIN and int(fin[s]) == NONE_NS:
            fin[s] = ts

    def _split_reason(self, s: int, ts: int) -> EndReason | None:
        """The reason flow s ends before a packet at ts, or None (scalar `_deadlines`)."""
        t = self.t
        rst = int(t.rst[s])
        close = min(rst, max(int(t.fin_ab[s]), int(t.fin_ba[s])))
        candidates = [
            (int(t.end_ns[s]) + self._idle, 0, EndReason.IDLE_TIMEOUT),
            (
                close + self._linger if close != NONE_NS else NONE_NS,
                1,
                EndReason.TCP_RST if rst != NONE_NS else EndReason.TCP_FIN,
            ),
            (int(t.start_ns[s]) + self._active - 1, 2, EndReason.ACTIVE_TIMEOUT),
        ]
        deadline, _, reason = min(candidates)
        return reason if deadline < ts else None

    def _deadlines(self, slots: I64) -> tuple[I64, U8]:
        """When each flow in slots ends unless... and why: the earliest of its three deadlines.

        A flow ends at time T > deadline. Idle: last + idle_timeout; close: closing packet +
        close_linger; active: first + active_timeout - 1 (the active rule is ">=").
        Taking the earliest makes the reason independent of when it is evaluated. Ties go to
        idle, then close, then active.
        """
        t = self.t
        rst = t.rst[slots]
        close = _close_ns(rst, t.fin_ab[slots], t.fin_ba[slots])
        return self._earliest(t.end_ns[slots], t.start_ns[slots], rst, close)

    def _earliest(self, end: I64, start: I64, rst: I64, close: I64) -> tuple[I64, U8]:
        """_deadlines from the flows' columns already gathered (close: _close_ns)."""
        d_idle = end + self._idle
        d_close = np.where(close != NONE_NS, close + self._linger, NONE_NS)
        d_active = start + (self._active - 1)
        close_reason = np.where(rst != NONE_NS, EndReason.TCP_RST, EndReason.TCP_FIN)
        deadline = np.minimum(np.minimum(d_idle, d_close), d_active)
        reason = np.where(
            d_idle == deadline,
            EndReason.IDLE_TIMEOUT,
            np.where(d_close == deadline, close_reason, EndReason.ACTIVE_TIMEOUT),
        ).astype(np.uint8)
        return deadline, reason

    # -- slots ----------------------------------------------------------------------------

    def _reset(
        self,
        slots: I64,
        pk: PacketColumns,
        first: npt.NDArray[np.intp] | I64,
        h2: U64,
        start_ns: I64,
    ) -> None:
        """Start a new, empty flow in slots, keyed like packets `first`."""
        t = self.t
        t.vlan[slots] = pk.vlan[first]
        t.ipver[slots] = pk.ipver[first]
        t.proto[slots] = pk.proto[first]
        t.a_hi[slots] = pk.a_hi[first]
        t.a_lo[slots] = pk.a_lo[first]
        t.b_hi[slots] = pk.b_hi[first]
        t.b_lo[slots] = pk.b_lo[first]
        t.port_a[slots] = pk.port_a[first]
        t.port_b[slots] = pk.port_b[first]
        t.icmp_type[slots] = pk.icmp_type[first]
        t.icmp_code[slots] = pk.icmp_code[first]
        fl = pk.tcp_flags[first]
        synack = (fl & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK)
        t.init_b[slots] = pk.rev[first] ^ synack
        t.h2[slots] = h2
        for counter in (t.pkts_ab, t.pkts_ba, t.bytes_ab, t.bytes_ba, t.flags_ab, t.flags_ba):
            counter[slots] = 0
        t.start_ns[slots] = start_ns
        t.end_ns[slots] = start_ns
        for when in (t.fin_ab, t.fin_ba, t.rst):
            when[slots] = NONE_NS
        self.stats.flows_started += len(slots)

    def _export(self, slots: I64, reason: U8) -> None:
        """Snapshot slots as ended flows (the slots stay in use: callers reset or free them)."""
        self._pending.append(self.t.export(slots, reason))
        for r, c in zip(*np.unique(reason, return_counts=True), strict=True):
            name = EndReason(int(r)).name
            self.stats.flows_ended[name] = self.stats.flows_ended.get(name, 0) + int(c)

    def _end(self, slots: I64, reason: U8) -> None:
        """Export slots and free them."""
        self._export(slots, reason)
        self._release(slots)

    def _release(self, slots: I64) -> None:
        """Free slots (their flows were exported) and take them out of the index."""
        self._used[slots] = False
        self._free[self._n_free : self._n_free + len(slots)] = slots
        self._n_free += len(slots)
        if len(slots) == len(self._idx_h1):  # every open flow (a flush)
            self._idx_h1 = self._idx_h1[:0].copy()
            self._idx_slot = self._idx_slot[:0].copy()
            return
        keep = self._used[self._idx_slot]  # the index holds exactly the slots in use
        self._idx_h1 = self._idx_h1[keep]
        self._idx_slot = self._idx_slot[keep]

    def _take_free(self, n: int) -> I64:
        """Pop n slots off the free stack (in stack order, as _free[_n_free - n : _n_free])."""
        lo, hi = self._n_free - n, self._n_free
        out = np.empty(n, dtype=np.int64)
        made = max(min(hi, self._n_untouched) - lo, 0)  # entries still at their initial value
        out[:made] = (self.capacity - 1) - np.arange(lo, lo + made)
        out[made:] = self._free[lo + made : hi]
        self._n_free = lo
        self._n_untouched = min(self._n_untouched, lo)
        return out

    def _evict(self, count: int, touched: I64) -> None:
        """Free `count` slots: the least recently active flows not in `touched`."""
        cand_mask = self._used.copy()
        cand_mask[touched] = False
        cand = np.flatnonzero(cand_mask)
        last = self.t.end_ns[cand]
        pick = cand[np.argpartition(last, count - 1)[:count]] if count < len(cand) else cand
        self.stats.evicted += len(pick)
        self._end(pick, np.full(len(pick), EndReason.EVICTED, dtype=np.uint8))

    def _take_pending(self) -> FlowBatch:
        out = FlowBatch.concat(self._pending)
        self._pending = []
        return out


def _close_ns(rst: I64, fin_ab: I64, fin_ba: I64) -> I64:
    """When a flow closed: its first RST, or its second direction's first FIN; NONE_NS if open."""
    return np.minimum(rst, np.maximum(fin_ab, fin_ba))
