"""An in-memory outbox with the WAL's read/ack contract, for forwarder tests."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace


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


class MemWal(MemOutbox):
    """MemOutbox plus the rest of the WAL surface the agent uses (no durability)."""

    def __init__(self) -> None:
        super().__init__(())
        self.next_seq = 1
        self.closed = False

    def append(self, key: bytes | str, payload: bytes) -> bool:
        k = key.encode() if isinstance(key, str) else key
        self.pending[self.next_seq] = Rec(self.next_seq, k, payload)
        self.next_seq += 1
        return True

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def stats(self) -> object:
        """The backlog part of appliance.wal.WalStats (what /metrics and health read)."""
        return SimpleNamespace(
            backlog_records=len(self.pending),
            backlog_bytes=sum(len(r.payload) for r in list(self.pending.values())),
            oldest_age_s=0.0,
        )
