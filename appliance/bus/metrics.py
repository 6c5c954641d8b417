"""The bus's Prometheus metrics, defined once. The seed's names are kept exactly:
bus_publish_total{status}, bus_publish_latency_ms, bus_inflight_requests, bus_invalid_total,
bus_retry_total. Each server owns its registry (several buses can run in one test process).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from appliance.bus.chain import EventKind
from appliance.bus.export.metrics import ExportMetrics
from appliance.bus.validate import Reject


class BusMetrics:
    """Every metric the bus exports; `registry` is what the /metrics endpoint serves."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.publish_total = Counter(
            "bus_publish", "Envelopes answered, by status", ["status"], registry=r
        )
        self.publish_latency_ms = Histogram(
            "bus_publish_latency_ms",
            "Time to answer one publish call, milliseconds",
            buckets=(0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000),
            registry=r,
        )
        self.inflight = Gauge(
            "bus_inflight_requests",
            "Publish calls open past the gate (awaiting, receiving or processing a message)",
            registry=r,
        )
        self.invalid_total = Counter("bus_invalid", "Envelopes answered INVALID", registry=r)
        self.retry_total = Counter("bus_retry", "Envelopes answered RETRY", registry=r)
        self.rejected_total = Counter(
            "bus_rejected", "Envelopes or calls refused, by reason class", ["reason"], registry=r
        )
        self.refused_calls_total = Counter(
            "bus_refused_calls", "Calls refused at hard_max (RESOURCE_EXHAUSTED)", registry=r
        )
        self.duplicates_total = Counter(
            "bus_duplicates", "Envelopes already stored (answered OK, stored once)", registry=r
        )
        self.stored_total = Counter("bus_stored", "Envelopes newly stored", registry=r)
        self.store_bytes = Gauge("bus_store_bytes", "Store size on disk, WAL included", registry=r)
        self.store_commit_seconds = Histogram(
            "bus_store_commit_seconds",
            "Time from submission to durable commit of one request's rows",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=r,
        )
        self.trust_map_agents = Gauge("bus_trust_map_agents", "Agents in the trust map", registry=r)
        self.trust_map_reloads_total = Counter(
            "bus_trust_map_reloads", "Trust map reloads (SIGHUP), by result", ["result"], registry=r
        )
        self.chain_events_total = Counter(
            "bus_chain_events",
            "Agent chain events: start, rekey, restart (unclean stop), gap (settled hole)",
            ["kind"],
            registry=r,
        )
        self.store_up = Gauge(
            "bus_store_up",
            "1 while the store commits, 0 while it cannot (disk full, ...)",
            registry=r,
        )
        self.calls_awaiting_message = Gauge(
            "bus_calls_awaiting_message",
            "Open publish calls whose one message has not fully arrived yet",
            registry=r,
        )
        self.export = ExportMetrics(r)  # bus_export_*: appliance/bus/export/
        for status in ("OK", "RETRY", "INVALID"):
            self.publish_total.labels(status)
        for reason in Reject:  # every class visible at 0, so an alert can use rate()
            self.rejected_total.labels(reason.value)
        for kind in EventKind:
            self.chain_events_total.labels(kind.value)
