"""The seed's queue interface (store / drain / mark_sent) on top of the WAL.

The agent may use either this or the Wal itself. The WAL stores opaque bytes; anything with an
`idempotency_key` and `SerializeToString()` (a protobuf Envelope, for one) can be stored, and
`decode` turns the stored bytes back into the caller's type on drain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Generic, Protocol, TypeVar

from appliance.wal.log import Wal, WalFull

T = TypeVar("T")


class Storable(Protocol):
    """What store() accepts: a keyed object that serializes itself to bytes."""

    @property
    def idempotency_key(self) -> str | bytes: ...

    def SerializeToString(self) -> bytes: ...


class EnvelopeQueue(Generic[T]):
    """store(envelope) -> bool, drain(limit), mark_sent(keys), as the seed's SQLite WAL had.

    store() returns True when the WAL holds the envelope (stored now, or already pending under
    the same key) and False when the WAL refused it (full under policy `refuse`): the caller
    keeps it and applies backpressure. drain() does not consume: the same envelopes come back
    until mark_sent() acks them.
    """

    def __init__(self, wal: Wal, decode: Callable[[bytes], T]) -> None:
        self.wal = wal
        self._decode = decode

    def store(self, envelope: Storable) -> bool:
        try:
            self.wal.append(envelope.idempotency_key, envelope.SerializeToString())
        except WalFull:
            return False
        return True

    def drain(self, limit: int) -> list[T]:
        return [self._decode(rec.payload) for rec in self.wal.read(limit)]

    def mark_sent(self, keys: Iterable[str | bytes]) -> int:
        return self.wal.ack_keys(keys)
