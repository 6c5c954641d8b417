"""The seam between the bus's publish path and where accepted envelopes go.

The server (appliance/bus/server.py) verifies envelopes and hands the accepted ones to a sink;
it answers OK only for records whose outcome is STORED or DUPLICATE. Two sinks exist:

- `FlowStore` (appliance/bus/store.py): the embedded SQLite store, `eventbus.sink: sqlite`.
- `JetStreamSink` (appliance/bus/jetstream/sink.py): publishes to a replicated NATS JetStream
  stream, `eventbus.sink: jetstream`; `infraspectre bus consume` writes the stream into a
  FlowStore (docs/SCALE.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from typing import Protocol

from appliance.bus.store import AgentSummary, CommitResult, Record


class SinkBusy(RuntimeError):
    """The sink cannot take records now (a full stream, no quorum): answer RETRY with this
    reason and backoff hint; nothing of the submission was acknowledged as stored."""

    def __init__(self, reason: str, backoff_hint_ms: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.backoff_hint_ms = backoff_hint_ms


class Sink(Protocol):
    """Where accepted envelopes go. Thread-safe; owned by the BusServer, which closes it last.

    `submit` returns a Future that completes once the records are durable (committed, or
    acknowledged by the stream's quorum) with one outcome per record, or fails (SinkBusy or any
    other exception: the bus answers RETRY). `close()` finishes what was submitted first.
    """

    def submit(self, records: Sequence[Record]) -> Future[CommitResult]: ...

    @property
    def pending_rows(self) -> int: ...

    def healthy(self) -> bool: ...

    @property
    def failure(self) -> str | None: ...

    def agents(self) -> list[AgentSummary]: ...

    def size_bytes(self) -> int: ...

    def close(self) -> None: ...
