"""The exporters' metrics, one series per collector (label `collector`, e.g.
`tcp://198.51.100.7:4739`). Registered on the bus's own registry (appliance/bus/metrics.py), so
/metrics serves them and the docs test sees them; documented in docs/BUS.md's metrics table."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

#: attribute -> (metric name, help); counters get `_total` at /metrics.
COUNTERS = {
    "flows_total": ("bus_export_flows", "Flows sent to a collector (TCP: re-sends included)"),
    "data_records_total": (
        "bus_export_data_records",
        "IPFIX data records sent (a uniflow export sends up to two per flow; options included)",
    ),
    "messages_total": ("bus_export_messages", "IPFIX messages sent"),
    "bytes_total": ("bus_export_bytes", "IPFIX message bytes sent"),
    "delivered_total": (
        "bus_export_delivered_flows",
        "Flows past the durable position (TCP: acknowledged by the collector's TCP; UDP: sent)",
    ),
    "resent_total": (
        "bus_export_resent_flows",
        "TCP: flows sent again on a new connection because the old one never acknowledged them",
    ),
    "dropped_total": (
        "bus_export_dropped_flows",
        "UDP: flows in messages the socket refused twice (best effort: not sent again)",
    ),
    "send_errors_total": ("bus_export_send_errors", "Socket errors while connecting or sending"),
    "connects_total": (
        "bus_export_connects",
        "Transport sessions opened (TCP connections; a UDP socket once)",
    ),
}
GAUGES = {
    "connected": ("bus_export_connected", "1 while the exporter has a session to the collector"),
    "lag_records": (
        "bus_export_lag_records",
        "Store rows above the exporter's durable position (flows not yet delivered, and the "
        "counters and health rows among them)",
    ),
    "lag_seconds": (
        "bus_export_lag_seconds",
        "Age of the oldest stored flow not yet delivered (0 when caught up)",
    ),
}


class ExportMetrics:
    """Every export metric (attributes named as in COUNTERS and GAUGES); the exporters update
    them."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.metrics: dict[str, Counter | Gauge] = {}
        for attr, (name, doc) in COUNTERS.items():
            self.metrics[attr] = Counter(name, doc, ["collector"], registry=r)
        for attr, (name, doc) in GAUGES.items():
            self.metrics[attr] = Gauge(name, doc, ["collector"], registry=r)

    def counter(self, attr: str) -> Counter:
        metric = self.metrics[attr]
        assert isinstance(metric, Counter)
        return metric

    def gauge(self, attr: str) -> Gauge:
        metric = self.metrics[attr]
        assert isinstance(metric, Gauge)
        return metric
