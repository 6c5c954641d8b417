"""Each agent's signature chain, checked at ingest: which sequence numbers are stored, and links.

An agent seals envelopes with `seq` = 1, 2, 3, ... and `prev_sig` = the previous envelope's `sig`
(appliance/crypto/seal.py). After a crash it restarts at its lease's end with an empty `prev_sig`
(appliance/agent/chain.py), so a non-empty `prev_sig` always names envelope `seq - 1`. Several
forwarder workers deliver batches concurrently, so envelopes arrive out of order; records lost in
the agent's flush window or quarantined leave holes for ever.

A chain is one (agent id, key id): the key id names the trust-map key the envelopes were
verified with, so re-keying a box by provisioning starts a new chain at seq 1 explicitly.

What the bus keeps per chain is the set of stored sequence numbers as maximal **runs** of
consecutive numbers, each with the `prev_sig` of its first envelope and the `sig` of its last.
That is all a link check needs:

- envelope `s` is inside a run: `s` is stored already (the store decides duplicate, idempotency
  conflict or reused seq);
- a run ends at `s - 1` and the envelope's `prev_sig` is non-empty and differs from that run's
  last `sig`: the envelope contradicts its stored predecessor (CHAIN_BROKEN);
- a run starts at `s + 1` with a non-empty `prev_sig` that differs from the envelope's `sig`: the
  stored successor contradicts it (CHAIN_BROKEN);
- otherwise the envelope is accepted and joins, extends or bridges runs.

The holes between runs are the chain's open gaps. Because batches arrive out of order, a hole
is usually filled a moment after it opens; one still open after a settle time (the store's
sweep, `settled_gaps`) is recorded once as a GAP event: the agent's loss window after a crash,
or an envelope it quarantined. A RESTART event marks an envelope after the first that carries an
empty `prev_sig` (an unclean agent stop; seq 1, the chain's own beginning, never is, whenever it
arrives), a START event the first envelope of a chain (REKEY
when the agent had another key). Runs are bounded per chain (`MAX_RUNS`): past it the lowest
run is forgotten, so an envelope that lands next to a forgotten run is not link-checked (its
seq is still unique: the store's index enforces that).

Pure: no I/O. The store loads and saves `Chain` objects inside its transactions.
"""

from __future__ import annotations

import bisect
import enum
import hashlib
from dataclasses import dataclass, field
from typing import SupportsBytes


def key_id(key: SupportsBytes) -> str:
    """The id of an agent key, naming its chain: 16 hex digits of BLAKE2b of the public key."""
    return hashlib.blake2b(bytes(key), digest_size=8).hexdigest()


#: Runs kept per chain; each hole left by a crash or a quarantine costs one.
MAX_RUNS = 1024


class Verdict(enum.Enum):
    """What the chain says of one envelope before it is stored."""

    FITS = "fits"
    INSIDE = "inside"  # seq already stored: duplicate, conflict or reuse (the store decides)
    BROKEN_PREV = "broken_prev"
    BROKEN_NEXT = "broken_next"


class EventKind(enum.Enum):
    """Chain events recorded for operators (table chain_events)."""

    START = "start"  # the first envelope of a chain (a new agent, or a new key)
    GAP = "gap"  # seq_lo..seq_hi still missing after the settle time
    RESTART = "restart"  # an empty prev_sig after the first envelope (an unclean agent stop)
    REKEY = "rekey"  # the first envelope under a new key of an agent seen with another key


@dataclass(frozen=True, slots=True)
class Run:
    """Stored sequence numbers lo..hi, the prev_sig of lo and the sig of hi."""

    lo: int
    lo_prev: bytes
    hi: int
    hi_sig: bytes


@dataclass(frozen=True, slots=True)
class Event:
    kind: EventKind
    seq_lo: int
    seq_hi: int


@dataclass
class Chain:
    """One agent key's runs, lowest first, disjoint and never adjacent (adjacent runs merge)."""

    runs: list[Run] = field(default_factory=list)
    #: hole -> when it was first seen (ns, the sweep's clock); holes already reported as events.
    opened: dict[tuple[int, int], int] = field(default_factory=dict)
    reported: list[tuple[int, int]] = field(default_factory=list)

    def copy(self) -> Chain:
        return Chain(list(self.runs), dict(self.opened), list(self.reported))

    @property
    def high(self) -> int:
        """The highest stored seq (0: none)."""
        return self.runs[-1].hi if self.runs else 0

    def _around(self, seq: int) -> tuple[int, Run | None, Run | None]:
        """(index of the first run with lo > seq, the run before it, that run)."""
        i = bisect.bisect_right(self.runs, seq, key=lambda r: r.lo)
        before = self.runs[i - 1] if i > 0 else None
        after = self.runs[i] if i < len(self.runs) else None
        return i, before, after

    def check(self, seq: int, prev_sig: bytes, sig: bytes) -> Verdict:
        """Whether an envelope (seq, prev_sig, sig) can join the chain."""
        runs = self.runs
        before: Run | None
        after: Run | None
        if runs and runs[-1].hi < seq:  # the common case: at or past the top, no search
            before, after = runs[-1], None
        else:
            _, before, after = self._around(seq)
            if before is not None and before.lo <= seq <= before.hi:
                return Verdict.INSIDE
        if prev_sig and before is not None and before.hi == seq - 1 and before.hi_sig != prev_sig:
            return Verdict.BROKEN_PREV
        if after is not None and after.lo == seq + 1 and after.lo_prev and after.lo_prev != sig:
            return Verdict.BROKEN_NEXT
        return Verdict.FITS

    def add(self, seq: int, prev_sig: bytes, sig: bytes) -> list[Event]:
        """Record a stored envelope that check() found FITS; the events it makes."""
        events: list[Event] = []
        runs = self.runs
        if not runs:
            events.append(Event(EventKind.START, seq, seq))
        elif not prev_sig and seq != 1:  # seq 1's empty prev_sig is the chain's beginning,
            # which may arrive after its successors (the agent's workers deliver out of order)
            events.append(Event(EventKind.RESTART, seq, seq))
        before: Run | None
        after: Run | None
        if runs and runs[-1].hi < seq:
            i, before, after = len(runs), runs[-1], None
        else:
            i, before, after = self._around(seq)
        joins_before = before is not None and before.hi == seq - 1
        joins_after = after is not None and after.lo == seq + 1
        if joins_before and joins_after:
            assert before is not None and after is not None
            runs[i - 1 : i + 1] = [Run(before.lo, before.lo_prev, after.hi, after.hi_sig)]
        elif joins_before:
            assert before is not None
            runs[i - 1] = Run(before.lo, before.lo_prev, seq, sig)
        elif joins_after:
            assert after is not None
            runs[i] = Run(seq, prev_sig, after.hi, after.hi_sig)
        else:
            runs.insert(i, Run(seq, prev_sig, seq, sig))
            if len(runs) > MAX_RUNS:
                del runs[0]
        return events

    def gaps(self) -> list[tuple[int, int]]:
        """The open holes between stored runs, as (first missing, last missing)."""
        return [(a.hi + 1, b.lo - 1) for a, b in zip(self.runs, self.runs[1:], strict=False)]

    def settled_gaps(self, now_ns: int, settle_ns: int) -> list[tuple[int, int]]:
        """Holes open for at least settle_ns and not reported yet; they are marked reported.

        A hole is known by its bounds: a hole that shrinks (a late envelope fills part of it)
        starts its settle time again, and a hole inside one already reported is never reported
        twice.
        """
        holes = self.gaps()
        self.opened = {h: self.opened.get(h, now_ns) for h in holes}
        due = [
            h
            for h, since in self.opened.items()
            if now_ns - since >= settle_ns
            and not any(lo <= h[0] and h[1] <= hi for lo, hi in self.reported)
        ]
        self.reported.extend(due)
        if len(self.reported) > MAX_RUNS:
            del self.reported[: len(self.reported) - MAX_RUNS]
        return due
