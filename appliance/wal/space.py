"""Space: the segment files under the size bound, what happens when it is reached, compaction.

Owns the slots (segment files: free ones, and the names of all of them), the bound in slots
(max_wal_bytes, lowered to what exists when the filesystem itself is full), the full policy
(`drop_oldest` or `refuse`), whole-segment reclamation, and wear-aware compaction.

Policy when a new segment is needed, in order: a free slot; a new file under the bound;
compaction if a merge pays (see maybe_compact); then the full policy. With three or more
slots, one is held back as compaction's target, as a log-structured filesystem keeps free
segments for its cleaner: without it, a log full of partly acked segments could only drop.
Slots are recycled, never erased or unlinked in steady state (the crc seed makes residue of a
previous life invisible); a file is removed only when the configured bound shrank below what
is on disk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from appliance.wal.config import WalConfig
from appliance.wal.errors import WalFull
from appliance.wal.format import (
    KIND_COMPACTED,
    PAGE,
    RECORD_HEADER,
    SegmentHeader,
    align_up,
    frame_into,
)
from appliance.wal.index import LogIndex, Segment, Slot, Tail
from appliance.wal.reader import Reader
from appliance.wal.stats import Counters
from appliance.wal.storage import Storage

log = logging.getLogger(__name__)

_MAX_MERGE = 16  # longest run of segments one compaction merges


def slot_name(n: int) -> str:
    """The file name of slot n (a slot number, not a position in the log)."""
    return f"seg-{n:04d}.wal"


class Space:
    """The slots of one WAL directory under its bound. Caller holds the WAL's lock."""

    def __init__(
        self,
        config: WalConfig,
        storage: Storage,
        index: LogIndex,
        tail: Tail,
        reader: Reader,
        counters: Counters,
        clock: Callable[[], float],
    ) -> None:
        self._config = config
        self._storage = storage
        self._index = index
        self._tail = tail
        self._reader = reader
        self._c = counters
        self._clock = clock
        self.free: list[Slot] = []  # slots holding no segment, the next one to use last
        self.names: set[str] = set()  # every slot file (free or in use)
        self.max_slots = config.max_segments
        self._fs_full_logged = False

    # -- slots

    def take_slot(self) -> Slot:
        """A slot for a new segment: free, new, freed by compaction, or (policy) the oldest.

        Raises WalFull under policy `refuse` (or when no sealed segment is left to drop).
        """
        reserve = 1 if self.max_slots >= 3 else 0
        if self._spare() <= reserve:
            self._maybe_compact()
        if self._spare() > reserve or reserve == 0:
            if self.free:
                return self.free.pop()
            if len(self.names) < self.max_slots and self.create_slot():
                return self.free.pop()
        victims = [s for s in self._index.segs if s is not self._tail.seg]
        if self._config.full_policy == "refuse" or not victims:
            self._c.refused_records += 1
            raise WalFull(
                f"WAL at its bound ({len(self.names)} segments of "
                f"{self._config.segment_bytes} B): record refused"
            )
        victim = victims[0]
        dropped = victim.live
        self._c.dropped_records += dropped
        log.warning(
            "WAL full: dropped the oldest segment %s with %d unacked records (policy drop_oldest)",
            victim.slot.name,
            dropped,
        )
        self.release(victim)
        self._index.fix_low()
        return self.free.pop()

    def _spare(self) -> int:
        """Slots free now or still creatable under the bound."""
        return len(self.free) + max(0, self.max_slots - len(self.names))

    def create_slot(self) -> bool:
        """Create one zeroed slot file into the free list; False (bound lowered) if it fails."""
        n = 0
        while slot_name(n) in self.names:
            n += 1
        name = slot_name(n)
        size = self._config.segment_bytes
        try:
            f = self._storage.create(name, size)
        except OSError as exc:
            self._c.write_errors += 1
            self.max_slots = len(self.names)
            if not self._fs_full_logged:
                self._fs_full_logged = True
                log.warning(
                    "WAL cannot create segment %s (%s): bound lowered to %d segments",
                    name,
                    exc.strerror,
                    self.max_slots,
                )
            return False
        self._c.prealloc_bytes += size
        self.names.add(name)
        self.free.append(Slot(name, f, size))
        return True

    def preallocate(self) -> None:
        """Create slot files up to the bound now (reserves the space on the partition)."""
        while len(self.names) < self.max_slots and self.create_slot():
            pass

    def trim_to_bound(self) -> None:
        """Remove free slot files over a bound that was lowered since they were created."""
        while len(self.names) > self.max_slots and self.free:
            self._drop_slot_file(self.free.pop())

    def release(self, seg: Segment, *, reuse_last: bool = False) -> None:
        """Take a segment out of the log and give its slot back (kept, never erased).

        Its unacked records are gone (the caller counted them as dropped); a slot whose write
        just failed is queued last so that another slot is tried first.
        """
        self._index.remove(seg)
        self._give_back(seg.slot, reuse_last=reuse_last)

    def release_acked(self) -> None:
        """Release every sealed segment whose records are all acked (costs no write)."""
        for seg in [s for s in self._index.segs if s.live == 0 and s is not self._tail.seg]:
            self.release(seg)

    def _give_back(self, slot: Slot, *, reuse_last: bool = False) -> None:
        if len(self.names) > self.max_slots:
            self._drop_slot_file(slot)
        elif reuse_last:
            self.free.insert(0, slot)
        else:
            self.free.append(slot)

    def _drop_slot_file(self, slot: Slot) -> None:
        slot.file.close()
        try:
            self._storage.remove(slot.name)
        except OSError as exc:
            log.warning("WAL cannot remove %s (%s)", slot.name, exc.strerror)
        self.names.discard(slot.name)

    def all_slots(self) -> list[Slot]:
        """Every open slot, in use first."""
        return [seg.slot for seg in self._index.segs] + self.free

    # -- compaction

    def _maybe_compact(self) -> None:
        """Merge the run of partly acked segments whose rewrite pays best, if one pays at all.

        The bound counts whole segments, so rewriting pays only when the live records of k
        consecutive sealed segments fit in one: that frees k - 1 segments (the benefit) for the
        live bytes written again (the cost). The run with the best benefit/cost is merged if
        that ratio reaches compaction_min_gain; a mostly live log is left alone rather than
        wear the card. Runs are consecutive so the merged segment takes their place in the log
        and append order is kept.
        """
        if not self.free and (len(self.names) >= self.max_slots or not self.create_slot()):
            return  # no slot to write the merged segment into
        size = self.free[-1].size
        room = size - PAGE - RECORD_HEADER * (size // PAGE)  # worst-case page-tail padding
        sealed = [seg for seg in self._index.segs if seg is not self._tail.seg]
        best: tuple[int, int] | None = None
        best_ratio = self._config.compaction_min_gain
        for i in range(len(sealed)):
            live = 0
            for j in range(i, min(len(sealed), i + _MAX_MERGE)):
                live += sealed[j].live_bytes
                if live > room:
                    break
                ratio = (j - i) * size / max(1, live)
                if j > i and ratio >= best_ratio:
                    best, best_ratio = (i, j), ratio
        if best is not None:
            self._merge(sealed[best[0] : best[1] + 1])

    def _merge(self, victims: list[Segment]) -> None:
        """Write the live records of consecutive victims into one compacted segment.

        Records first, header last: a valid compacted header means a complete merge, so a
        power cut leaves either the old segments or the merge (format: replaces_to).
        """
        index = self._index
        slot = self.free.pop()
        live_records = [r for victim in victims for r in self._reader.read_live(victim)]
        header = SegmentHeader(
            number=index.next_number,
            order_key=victims[0].order_key,
            first_seq=live_records[0].seq if live_records else victims[0].first_seq,
            created_ns=victims[0].created_ns,
            kind=KIND_COMPACTED,
            replaces_to=victims[-1].order_key,
        )
        target = Segment(slot, header)
        out = bytearray(header.encode())
        out += bytes(PAGE - len(out))
        now = self._clock()
        for seq, key, payload in live_records:
            pos = len(out)
            if PAGE - pos % PAGE < RECORD_HEADER:
                out += bytes(align_up(pos) - pos)
                pos = len(out)
            n = frame_into(out, target.number, seq - target.first_seq, key, payload)
            target.add(seq, key, pos, n, now, False)
        if len(out) % PAGE:
            out += bytes(PAGE - len(out) % PAGE)
        try:
            slot.file.pwrite(memoryview(out)[PAGE:], PAGE)
            slot.file.sync()
            slot.file.pwrite(memoryview(out)[:PAGE], 0)
            slot.file.sync()
        except OSError as exc:
            self._c.write_errors += 1
            self.free.append(slot)
            log.warning("WAL compaction into %s failed (%s)", slot.name, exc.strerror)
            return
        # records keep their append times, so the oldest-age gauge stays true
        ages = {}
        for victim in victims:
            for i in range(len(victim.seqs)):
                if not victim.acked[i]:
                    ages[victim.seqs[i]] = victim.times[i]
        for i, seq in enumerate(target.seqs):
            target.times[i] = ages.get(seq, now)
        index.next_number += 1
        target.head = len(out)
        self._c.bytes_written += len(out)
        self._c.compaction_bytes += len(out)
        self._c.compactions += 1
        self._c.fsyncs += 2
        at = index.segs.index(victims[0])
        index.segs[at : at + len(victims)] = [target]
        for victim in victims:
            for i in range(len(victim.acked)):
                victim.acked[i] = 1
            victim.live = victim.live_bytes = 0
            index.forget(victim)
            self._give_back(victim.slot)
        log.info(
            "WAL compacted %d segments (%s...) into %s: %d live records moved, %d bytes written",
            len(victims),
            victims[0].slot.name,
            slot.name,
            len(target.seqs),
            len(out),
        )
