"""The ack cursor: the `cursor` file, which of its two slots holds the newest state, and when
the acks held in memory are written to it.

Owns the cursor file handle, its generation, and the count and age of acks not yet persisted.
Layout and invariants of a slot are in appliance.wal.format (CursorState). A write goes in
place into slot gen % 2 followed by one fdatasync: no rename, no directory fsync; a torn write
fails its crc and the other slot, the previous state, wins on the next open. What it writes
(the low mark and the acked ranges above it) comes from the LogIndex.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Final

from appliance.wal.errors import WalUnavailable
from appliance.wal.format import (
    CURSOR_FILE_BYTES,
    CURSOR_SLOT,
    MAX_RANGES,
    CursorState,
    FormatError,
)
from appliance.wal.index import LogIndex
from appliance.wal.stats import Counters
from appliance.wal.storage import Storage, StorageFile

log = logging.getLogger(__name__)

CURSOR_NAME: Final = "cursor"


class AckCursor:
    """The persisted ack cursor and the bookkeeping of acks since its last write."""

    def __init__(
        self,
        storage: Storage,
        where: Path,
        counters: Counters,
        clock: Callable[[], float],
        wake: Callable[[], None],
    ) -> None:
        """where names the WAL directory in messages; wake() tells the flusher of a deadline."""
        self._storage = storage
        self._where = where
        self._c = counters
        self._clock = clock
        self._wake = wake
        self.file: StorageFile | None = None
        self.gen = 0
        self.unpersisted = 0  # acks since the last completed write
        self.dirty_since = 0.0  # when the first of them happened (the interval deadline)

    def open(self) -> CursorState:
        """Open (or create, zeroed) the cursor file; the newest valid slot, or gen 0."""
        if CURSOR_NAME in set(self._storage.names()):
            try:
                self.file = self._storage.open(CURSOR_NAME)
            except OSError as exc:
                raise WalUnavailable(
                    f"cannot open the WAL cursor in {self._where} ({exc.strerror}); "
                    "move the damaged cursor aside (everything pending is then delivered again)"
                ) from exc
        else:
            try:
                self.file = self._storage.create(CURSOR_NAME, CURSOR_FILE_BYTES)
            except OSError as exc:
                raise WalUnavailable(
                    f"cannot create the WAL cursor in {self._where} ({exc.strerror}); "
                    "free space on the data partition or set wal.path"
                ) from exc
            self._c.prealloc_bytes += CURSOR_FILE_BYTES
        best = CursorState(gen=0, ack_low=0)
        for slot in range(2):
            try:
                state = CursorState.decode(self.file.pread(CURSOR_SLOT, slot * CURSOR_SLOT))
            except FormatError:
                continue
            if state.gen > best.gen:
                best = state
        self.gen = best.gen
        return best

    def note_ack(self) -> None:
        """One more ack held only in memory (the first one starts the interval deadline)."""
        if not self.unpersisted:
            self.dirty_since = self._clock()
            self._wake()
        self.unpersisted += 1

    def write(self, index: LogIndex) -> None:
        """Persist index's low mark and acked ranges in the next slot (a failure is retried)."""
        ranges = index.acked.as_counts()
        if len(ranges) > MAX_RANGES:
            log.warning(
                "WAL cursor: %d ack ranges above the low mark, %d persisted; acks beyond "
                "may be delivered again after a crash",
                len(ranges),
                MAX_RANGES,
            )
            ranges = ranges[:MAX_RANGES]
        state = CursorState(gen=self.gen + 1, ack_low=index.low, ranges=ranges)
        assert self.file is not None
        try:
            self.file.pwrite(state.encode(), (state.gen % 2) * CURSOR_SLOT)
            self.file.sync()
        except OSError as exc:
            self._c.write_errors += 1
            log.warning("WAL cursor write failed (%s): will retry", exc.strerror)
            return
        self.gen = state.gen
        self.unpersisted = 0
        self._c.bytes_written += CURSOR_SLOT
        self._c.fsyncs += 1
        self._c.cursor_writes += 1

    def close(self) -> None:
        """Close the file (the owner has written what it wanted to)."""
        if self.file is not None:
            self.file.close()
            self.file = None
