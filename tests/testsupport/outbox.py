"""An in-memory outbox with the WAL's read/ack contract, for forwarder tests."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass
class Rec:
    seq: int
    key: bytes
    payload: bytes


class MemOutbox:
    """Pending records by seq; read() peeks the oldest, ack() removes."""

    def __init__(self, records: Iterable[tuple[bytes, bytes]]) -> None:
        self.pending = {i: Rec(i, k, p) for i, (k, p) in enumerate(records, 1)}

    def read(self, limit: int) -> Sequence[Rec]:
        return [self.pending[s] for s in sorted(self.pending)[:limit]]

    def ack(self, seqs: Iterable[int]) -> int:
        return sum(self.pending.pop(s, None) is not None for s in seqs)
