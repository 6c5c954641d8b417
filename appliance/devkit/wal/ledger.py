"""The WAL's delivery promises as an oracle, for crash and fault tests (and the agent's).

A test tells the ledger what it appended, when a flush returned, what it acked and when a
cursor write completed; after a crash and reopen, check() compares what the WAL delivers with
what the promises allow:

- every record flushed before the crash and not acked is delivered exactly once;
- nothing is delivered that was never appended, nor twice, nor with bytes other than appended;
- no record acked before the last completed cursor write is delivered again.

Keys must be unique over the test (a key is never appended twice).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable


def payload_for(key: bytes, size: int | None = None) -> bytes:
    """Deterministic bytes for a key (size from the key's hash when not given: 40..439 B)."""
    digest = hashlib.blake2b(key, digest_size=32).digest()
    n = size if size is not None else 40 + int.from_bytes(digest[:2], "little") % 400
    return (digest * (n // 32 + 1))[:n]


class DeliveryLedger:
    """What a test knows about one WAL's records across crashes."""

    def __init__(self) -> None:
        self.ever_appended: set[bytes] = set()
        self._unflushed: set[bytes] = set()
        self.durable: set[bytes] = set()  # flushed (or seen after a reopen), not acked
        self._acked_unpersisted: set[bytes] = set()
        self.acked_persisted: set[bytes] = set()
        self.lives = 0

    def appended(self, keys: Iterable[bytes]) -> None:
        for key in keys:
            self.ever_appended.add(key)
            self._unflushed.add(key)

    def flushed(self) -> None:
        """A flush() returned: everything appended so far is durable."""
        self.durable |= self._unflushed
        self._unflushed.clear()

    def acked(self, keys: Iterable[bytes]) -> None:
        for key in keys:
            self._acked_unpersisted.add(key)
            self.durable.discard(key)
            self._unflushed.discard(key)

    def cursor_written(self) -> None:
        """A cursor write completed: every ack so far is persisted."""
        self.acked_persisted |= self._acked_unpersisted
        self._acked_unpersisted.clear()

    def check(self, delivered: Iterable[tuple[bytes, bytes]]) -> list[str]:
        """Problems with what a reopened WAL delivers (empty list: all promises kept).

        Then starts the next life: what was delivered is now durable and pending.
        """
        items = list(delivered)
        problems: list[str] = []
        counts = Counter(key for key, _ in items)
        for key, n in counts.items():
            if n > 1:
                problems.append(f"{key!r} delivered {n} times")
            if key not in self.ever_appended:
                problems.append(f"{key!r} delivered but never appended")
            if key in self.acked_persisted:
                problems.append(f"{key!r} delivered again after its ack was persisted")
        for key, data in items:
            if key in self.ever_appended and data != payload_for(key):
                problems.append(f"{key!r} delivered with other bytes than appended")
        lost = [key for key in self.durable if key not in counts]
        if lost:
            problems.append(f"{len(lost)} flushed records lost, e.g. {sorted(lost)[:3]!r}")
        self.durable = {key for key in counts if key not in self.acked_persisted}
        self._unflushed.clear()
        self._acked_unpersisted.clear()
        self.lives += 1
        return problems
