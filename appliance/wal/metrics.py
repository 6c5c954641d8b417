"""Prometheus view of the WAL: a collector reading Wal.stats() at scrape time.

Nothing is registered at import; the agent calls register_metrics(registry, wal) with its own
registry. Each scrape takes one consistent stats() snapshot.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

if TYPE_CHECKING:
    from appliance.wal.log import Wal

#: (metric name, stats field, help); counters get the _total suffix from the client.
COUNTERS = (
    ("wal_records_appended", "records_appended", "Records appended since start"),
    ("wal_payload_bytes", "payload_bytes", "Payload bytes appended since start"),
    ("wal_bytes_written", "bytes_written", "Bytes written to storage (data, cursor, compaction)"),
    ("wal_fsyncs", "fsyncs", "fdatasync calls"),
    ("wal_dropped_records", "dropped_records", "Records dropped by the full policy or errors"),
    ("wal_refused_records", "refused_records", "Appends refused when full (policy refuse)"),
    ("wal_corrupt_records", "corrupt_records", "Records skipped for a failed checksum"),
    ("wal_compaction_bytes", "compaction_bytes", "Bytes rewritten by compaction"),
    ("wal_cursor_writes", "cursor_writes", "Ack cursor writes"),
    ("wal_write_errors", "write_errors", "Failed writes or syncs (ENOSPC, EIO)"),
)
GAUGES = (
    ("wal_write_amplification", "write_amplification", "bytes_written / payload_bytes"),
    ("wal_backlog_records", "backlog_records", "Records not yet acked"),
    ("wal_backlog_bytes", "backlog_bytes", "Framed bytes of records not yet acked"),
    ("wal_oldest_age_seconds", "oldest_age_s", "Age of the oldest record not yet acked"),
    ("wal_disk_bytes", "disk_bytes", "Bytes of WAL files on disk (bounded by max_wal_bytes)"),
    ("wal_recovery_seconds", "recovery_s", "How long recovery took when the WAL was opened"),
)


class WalCollector(Collector):
    """Yields the WAL's counters and gauges from one stats() snapshot."""

    def __init__(self, wal: Wal) -> None:
        self._wal = wal

    def collect(self) -> Iterator[Metric]:
        stats = self._wal.stats()
        for name, field, doc in COUNTERS:
            yield CounterMetricFamily(name, doc, value=getattr(stats, field))
        for name, field, doc in GAUGES:
            yield GaugeMetricFamily(name, doc, value=getattr(stats, field))


def register_metrics(registry: CollectorRegistry, wal: Wal) -> WalCollector:
    """Register the WAL's metrics in registry (never the global default one implicitly)."""
    collector = WalCollector(wal)
    registry.register(collector)
    return collector
