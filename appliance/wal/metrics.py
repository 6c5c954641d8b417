"""Prometheus view of the WAL: a collector reading Wal.stats() at scrape time.

Nothing is registered at import; the agent calls register_metrics(registry, wal) with its own
registry. Each scrape takes one consistent stats() snapshot. The metrics themselves (name,
kind, help) are defined once, on the fields of appliance.wal.stats.WalStats.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from appliance.wal.stats import METRICS, MetricDef

if TYPE_CHECKING:
    from appliance.wal.log import Wal

__all__ = ["METRICS", "WalCollector", "family", "register_metrics"]


def family(metric: MetricDef, value: float, *, prefix: str = "", doc_prefix: str = "") -> Metric:
    """metric as a Prometheus family holding value (prefix: the agent's `agent_`)."""
    kind = CounterMetricFamily if metric.kind == "counter" else GaugeMetricFamily
    return kind(prefix + metric.name, doc_prefix + metric.help, value=value)


class WalCollector(Collector):
    """Yields the WAL's counters and gauges from one stats() snapshot."""

    def __init__(self, wal: Wal) -> None:
        self._wal = wal

    def collect(self) -> Iterator[Metric]:
        stats = self._wal.stats()
        for metric in METRICS:
            yield family(metric, getattr(stats, metric.field))


def register_metrics(registry: CollectorRegistry, wal: Wal) -> WalCollector:
    """Register the WAL's metrics in registry (never the global default one implicitly)."""
    collector = WalCollector(wal)
    registry.register(collector)
    return collector
