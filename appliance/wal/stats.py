"""The WAL's counters and its stats snapshot, and the one definition of every WAL metric.

`Counters` is the mutable, typed set of event counts the parts of the log increment (each
event is counted in exactly one place). `WalStats` is the consistent snapshot `Wal.stats()`
returns; a field that is exported to Prometheus carries its metric name, kind and help in its
metadata, and both the WAL's collector (appliance.wal.metrics) and the agent's (prefixed
`agent_`) are generated from that metadata, so a WAL metric is defined here and nowhere else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

MetricKind = Literal["counter", "gauge"]


@dataclass(slots=True)
class Counters:
    """Cumulative event counts since open (the WAL's lock guards every update)."""

    records_appended: int = 0
    payload_bytes: int = 0
    bytes_written: int = 0
    fsyncs: int = 0
    dropped_records: int = 0
    refused_records: int = 0
    duplicate_appends: int = 0
    corrupt_records: int = 0
    compaction_bytes: int = 0
    compactions: int = 0
    cursor_writes: int = 0
    write_errors: int = 0
    prealloc_bytes: int = 0


def _metric(name: str, kind: MetricKind, doc: str) -> dict[str, str]:
    """Field metadata: exported as metric `name` (counters get `_total` from the client)."""
    return {"metric": name, "kind": kind, "help": doc}


@dataclass(frozen=True)
class WalStats:
    """A snapshot of the log's counters (cumulative since open) and gauges."""

    records_appended: int = field(
        metadata=_metric("wal_records_appended", "counter", "Records appended since start")
    )
    payload_bytes: int = field(
        metadata=_metric("wal_payload_bytes", "counter", "Payload bytes appended since start")
    )
    bytes_written: int = field(
        metadata=_metric(
            "wal_bytes_written", "counter", "Bytes written to storage (data, cursor, compaction)"
        )
    )
    fsyncs: int = field(metadata=_metric("wal_fsyncs", "counter", "fdatasync calls"))
    write_amplification: float = field(
        metadata=_metric("wal_write_amplification", "gauge", "bytes_written / payload_bytes")
    )
    backlog_records: int = field(
        metadata=_metric("wal_backlog_records", "gauge", "Records not yet acked")
    )
    backlog_bytes: int = field(
        metadata=_metric("wal_backlog_bytes", "gauge", "Framed bytes of records not yet acked")
    )
    oldest_age_s: float = field(
        metadata=_metric(
            "wal_oldest_age_seconds", "gauge", "Age of the oldest record not yet acked"
        )
    )
    dropped_records: int = field(
        metadata=_metric(
            "wal_dropped_records", "counter", "Records dropped by the full policy or errors"
        )
    )
    refused_records: int = field(
        metadata=_metric(
            "wal_refused_records", "counter", "Appends refused when full (policy refuse)"
        )
    )
    duplicate_appends: int
    corrupt_records: int = field(
        metadata=_metric("wal_corrupt_records", "counter", "Records skipped for a failed checksum")
    )
    compaction_bytes: int = field(
        metadata=_metric("wal_compaction_bytes", "counter", "Bytes rewritten by compaction")
    )
    compactions: int
    cursor_writes: int = field(
        metadata=_metric("wal_cursor_writes", "counter", "Ack cursor writes")
    )
    write_errors: int = field(
        metadata=_metric("wal_write_errors", "counter", "Failed writes or syncs (ENOSPC, EIO)")
    )
    segments_in_use: int
    segments_free: int
    disk_bytes: int = field(
        metadata=_metric(
            "wal_disk_bytes", "gauge", "Bytes of WAL files on disk (bounded by max_wal_bytes)"
        )
    )
    prealloc_bytes: int
    recovery_s: float = field(
        metadata=_metric(
            "wal_recovery_seconds", "gauge", "How long recovery took when the WAL was opened"
        )
    )


@dataclass(frozen=True)
class MetricDef:
    """One exported WAL metric: its name (without `_total`), kind, help and WalStats field."""

    name: str
    kind: MetricKind
    help: str
    field: str


#: Every exported WAL metric, in WalStats field order.
METRICS: tuple[MetricDef, ...] = tuple(
    MetricDef(f.metadata["metric"], f.metadata["kind"], f.metadata["help"], f.name)
    for f in dataclasses.fields(WalStats)
    if "metric" in f.metadata
)
