"""A set of integers kept as sorted disjoint half-open ranges (the acked seqs above the cursor)."""

from __future__ import annotations

import bisect


class RangeSet:
    """Sorted disjoint [start, end) ranges; adding the next integer of a run is O(1)."""

    def __init__(self, ranges: tuple[tuple[int, int], ...] = ()) -> None:
        self._starts = [s for s, count in ranges if count > 0]
        self._ends = [s + count for s, count in ranges if count > 0]
        self._normalise()

    def _normalise(self) -> None:
        pairs = sorted(zip(self._starts, self._ends, strict=True))
        starts: list[int] = []
        ends: list[int] = []
        for s, e in pairs:
            if starts and s <= ends[-1]:
                ends[-1] = max(ends[-1], e)
            else:
                starts.append(s)
                ends.append(e)
        self._starts, self._ends = starts, ends

    def add(self, value: int) -> None:
        """Insert one integer, merging with its neighbours."""
        starts, ends = self._starts, self._ends
        if starts and ends[-1] == value:  # the common case: acks in order
            ends[-1] = value + 1
            return
        i = bisect.bisect_right(starts, value) - 1
        if i >= 0 and value < ends[i]:
            return
        joins_left = i >= 0 and ends[i] == value
        joins_right = i + 1 < len(starts) and starts[i + 1] == value + 1
        if joins_left and joins_right:
            ends[i] = ends[i + 1]
            del starts[i + 1], ends[i + 1]
        elif joins_left:
            ends[i] = value + 1
        elif joins_right:
            starts[i + 1] = value
        else:
            starts.insert(i + 1, value)
            ends.insert(i + 1, value + 1)

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, int):
            return False
        i = bisect.bisect_right(self._starts, value) - 1
        return i >= 0 and value < self._ends[i]

    def trim_below(self, low: int) -> None:
        """Forget every integer below low."""
        i = bisect.bisect_right(self._ends, low)
        del self._starts[:i], self._ends[:i]
        if self._starts and self._starts[0] < low:
            self._starts[0] = low

    def as_counts(self) -> tuple[tuple[int, int], ...]:
        """The ranges as (start, count) pairs, lowest first."""
        return tuple((s, e - s) for s, e in zip(self._starts, self._ends, strict=True))

    def __len__(self) -> int:
        """Number of ranges (not of integers)."""
        return len(self._starts)
