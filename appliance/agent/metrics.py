"""The agent's Prometheus metrics, read from the parts' own counters at scrape time.

Nothing is counted twice: the WAL, the forwarder and the capture source keep their counters;
this collector turns a snapshot of them into metrics when /metrics is scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from appliance.wal.metrics import METRICS as WAL_METRICS
from appliance.wal.metrics import family as wal_family


@dataclass
class AgentSnapshot:
    """Everything the agent exports, as plain numbers."""

    flows_sealed: int = 0
    counters_sealed: int = 0
    health_sealed: int = 0
    wal_refused: int = 0
    capture: dict[str, float] = field(default_factory=dict)
    wal: dict[str, float] = field(default_factory=dict)
    publish: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    state: str = ""
    backoff_s: float = 0.0
    last_success_unix: float = 0.0
    ready: bool = False
    clock_offset_s: float = 0.0
    clock_steps: int = 0
    clock_slews: int = 0


#: The capture source's counters (FlowSource.stats() keys), exported as agent_capture_<key>:
#: kind and help, defined once here. A key missing from this table is still exported (as a
#: counter, or a gauge if it ends in _active) with a generic help.
CAPTURE_METRICS: dict[str, tuple[str, str]] = {
    "kernel_packets": ("counter", "Packets the kernel's ring saw (PACKET_STATISTICS, accumulated)"),
    "kernel_drops": ("counter", "Packets the kernel dropped before the ring"),
    "packets_metered": ("counter", "Packets the flow meter counted"),
    "bytes_metered": ("counter", "IP bytes (total length) the flow meter counted"),
    "flows_started": ("counter", "Flows the meter opened"),
    "flows_evicted": ("counter", "Flows the meter ended (timeouts, FIN/RST, table bound)"),
    "flows_active": ("gauge", "Flows open in the meter now"),
    "own_frames": ("counter", "Frames the box itself sent on its mirror port (never metered)"),
}

#: Kinds of failed publish calls, exported as 0 until they happen (absent is not zero).
FAILURE_KINDS = ("unavailable", "tls", "denied", "exhausted", "rejected", "failed")
STATES = ("connecting", "connected", "throttled", "backing_off", "stopped")


class AgentCollector(Collector):
    """Yields the agent's metrics from snapshot() on every scrape."""

    def __init__(self, snapshot: Callable[[], AgentSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self._snapshot()
        yield CounterMetricFamily("agent_flows_sealed", "Flow records sealed", value=s.flows_sealed)
        yield CounterMetricFamily(
            "agent_counters_sealed", "Interface-counter records sealed", value=s.counters_sealed
        )
        yield CounterMetricFamily(
            "agent_health_sealed", "Health records sealed", value=s.health_sealed
        )
        yield CounterMetricFamily(
            "agent_wal_refused", "Records the full WAL refused (policy refuse)", value=s.wal_refused
        )
        for name, value in sorted(s.capture.items()):
            kind_name, doc = CAPTURE_METRICS.get(
                name, ("gauge" if name.endswith("_active") else "counter", name.replace("_", " "))
            )
            kind = GaugeMetricFamily if kind_name == "gauge" else CounterMetricFamily
            yield kind(f"agent_capture_{name}", f"Capture: {doc}", value=value)
        # the WAL's own metric definitions (appliance.wal.stats), prefixed agent_
        for metric in WAL_METRICS:
            if metric.field in s.wal:
                yield wal_family(metric, s.wal[metric.field], prefix="agent_", doc_prefix="WAL: ")
        publish = CounterMetricFamily(
            "agent_publish", "Envelopes answered by the bus, by status", labels=["status"]
        )
        for status in ("OK", "RETRY", "INVALID"):
            publish.add_metric([status], s.publish.get(status, 0))
        yield publish
        failures = CounterMetricFamily(
            "agent_publish_failures",
            "Publish calls that failed as a whole, by kind",
            labels=["kind"],
        )
        for kind_name, n in sorted({**dict.fromkeys(FAILURE_KINDS, 0), **s.failures}.items()):
            failures.add_metric([kind_name], n)
        yield failures
        state = GaugeMetricFamily(
            "agent_forwarder_state", "1 for the current state", labels=["state"]
        )
        for name in STATES:
            state.add_metric([name], 1.0 if name == s.state else 0.0)
        yield state
        yield GaugeMetricFamily(
            "agent_backoff_seconds", "Current pause before the next attempt", value=s.backoff_s
        )
        yield GaugeMetricFamily(
            "agent_last_delivery_timestamp_seconds",
            "When the bus last acknowledged a record (UNIX time, 0: never)",
            value=s.last_success_unix,
        )
        yield GaugeMetricFamily("agent_ready", "1 when the agent is ready", value=float(s.ready))
        yield GaugeMetricFamily(
            "agent_clock_offset_seconds",
            "The bus's clock minus ours at the last answer (> 0: ours is behind)",
            value=s.clock_offset_s,
        )
        yield CounterMetricFamily(
            "agent_clock_steps",
            "Times the clock was stepped forward to the bus's",
            value=s.clock_steps,
        )
        yield CounterMetricFamily(
            "agent_clock_slews",
            "Times the clock, found ahead of the bus's, was slewed back",
            value=s.clock_slews,
        )


def agent_registry(snapshot: Callable[[], AgentSnapshot]) -> CollectorRegistry:
    """A registry serving the agent's metrics."""
    registry = CollectorRegistry()
    registry.register(AgentCollector(snapshot))
    return registry
