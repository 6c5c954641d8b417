"""The fleet as the bus sees it: each agent's summary and latest health, as a table for
`bus agents` and as per-agent Prometheus series.

Boxes sit behind branch NAT, so no Prometheus scrapes them: their health arrives as signed
records (AgentHealth, docs/AGENT.md), the store keeps a summary per agent (table `agents`,
appliance/bus/store.py), and this module turns both into what operators read.

Label cardinality is bounded: per-agent series exist only for agents that are in the trust map
in force and have stored at least one record, one series per metric and agent (capture counters
are summed over the box's interfaces); `eventbus.per_agent_metrics: false` turns them off.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from appliance.bus.store import AgentSummary
from appliance.wire import AgentHealth

NS = 1e9


@dataclass(frozen=True)
class AgentView:
    """One row of `bus agents`: an agent's state now, from its summary and latest health."""

    agent_id: str
    state: str  # "silent", "ok", or "never" (in the trust map, nothing stored yet)
    last_seen_ns: int
    silent_s: float | None
    records: int
    last_seq: int
    gaps: int
    restarts: int
    version: str = ""
    slot: str = ""
    uptime_s: int = 0
    forwarder_state: str = ""
    wal_backlog_records: int = 0
    wal_oldest_age_s: float = 0.0
    capture_drops: int = 0
    own_frames: int = 0
    clock_offset_ms: int = 0
    cert_days_left: float | None = None
    #: from the box's latest update report (appliance/bus/updates.py): the running system's
    #: release version, the updater's state, its last result and that result's one-line reason
    system_version: str = ""
    update_state: str = ""
    update_result: str = ""
    update_reason: str = ""

    def as_json(self) -> dict[str, object]:
        return dict(self.__dict__)


def health_of(summary: AgentSummary) -> AgentHealth | None:
    """The agent's latest health record, or None before its first."""
    if not summary.health:
        return None
    return AgentHealth.FromString(summary.health)


def fleet_view(
    summaries: Iterable[AgentSummary],
    trusted: Collection[str],
    now_ns: int,
    silent_after_s: float,
) -> list[AgentView]:
    """Every agent seen or trusted, silent and never-seen boxes first, then by agent id."""
    views: list[AgentView] = []
    seen = set()
    for s in summaries:
        seen.add(s.agent_id)
        quiet = max(0.0, (now_ns - s.last_seen_ns) / NS)
        h = health_of(s)
        extra: dict[str, object] = {}
        if h is not None:
            extra = dict(
                version=h.version, slot=h.slot, uptime_s=h.uptime_s,
                forwarder_state=h.forwarder_state, wal_backlog_records=h.wal_backlog_records,
                wal_oldest_age_s=h.wal_oldest_age_ms / 1000,
                capture_drops=sum(c.drops for c in h.capture),
                own_frames=sum(c.own_frames for c in h.capture),
                clock_offset_ms=h.clock_offset_ms,
                cert_days_left=(
                    (h.cert_not_after_s - now_ns / NS) / 86400 if h.cert_not_after_s else None
                ),
            )  # fmt: skip
        state = "silent" if quiet > silent_after_s else "ok"
        base = AgentView(
            s.agent_id, state, s.last_seen_ns, quiet, s.records, s.last_seq, s.gaps, s.restarts
        )
        views.append(dataclasses.replace(base, **extra))  # type: ignore[arg-type]
    views += [AgentView(a, "never", 0, None, 0, 0, 0, 0) for a in trusted if a not in seen]
    order = {"never": 0, "silent": 1, "ok": 2}
    return sorted(views, key=lambda v: (order[v.state], -(v.silent_s or 0), v.agent_id))


def with_update_reports(views: list[AgentView], reports: Mapping[str, Any]) -> list[AgentView]:
    """views with each agent's update report (appliance.bus.updates.Report) filled in; the slot
    comes from the report when the box's health did not carry one."""
    out = []
    for v in views:
        r = reports.get(v.agent_id)
        if r is not None:
            v = dataclasses.replace(
                v, system_version=r.version, update_state=r.state, update_result=r.last_result,
                update_reason=r.last_reason, slot=v.slot or r.slot,
            )  # fmt: skip
        out.append(v)
    return out


def load_summaries(conn: sqlite3.Connection) -> list[AgentSummary]:
    """The agents table of a store, read through a reader connection (appliance.bus.query)."""
    from dataclasses import fields

    names = [f.name for f in fields(AgentSummary)]
    try:
        rows = conn.execute(f"SELECT {', '.join(names)} FROM agents").fetchall()
    except sqlite3.OperationalError:  # a store from before the table existed
        return []
    return [AgentSummary(*tuple(row)) for row in rows]


class AgentCollector(Collector):
    """Per-agent series for /metrics, computed at scrape time from the store's summaries."""

    def __init__(
        self,
        summaries: Callable[[], list[AgentSummary]],
        trusted: Callable[[], Collection[str]],
        refused: Callable[[], dict[str, int]] = dict,
    ) -> None:
        self._summaries = summaries
        self._trusted = trusted
        self._refused = refused

    def describe(self) -> list[Metric]:
        return []  # computed at collect time; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        trusted = self._trusted()
        agents = [s for s in self._summaries() if s.agent_id in trusted]

        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=["agent"])

        def counter(name: str, doc: str) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=["agent"])

        info = GaugeMetricFamily(
            "bus_agent_info",
            "The agent's version and slot (value 1)",
            labels=["agent", "version", "slot"],
        )
        last_seen = gauge(
            "bus_agent_last_seen_timestamp_seconds",
            "When the bus last stored a record of the agent",
        )
        records = counter("bus_agent_records", "Records of the agent stored")
        last_seq = gauge("bus_agent_last_seq", "Highest sequence number stored for the agent's key")
        gaps = counter(
            "bus_agent_chain_gaps", "Holes in the agent's chain still open after gap_settle_s"
        )
        restarts = counter("bus_agent_chain_restarts", "Chain restarts (unclean agent stops)")
        health_ts = gauge(
            "bus_agent_health_timestamp_seconds", "Sample time of the agent's latest health record"
        )
        uptime = gauge("bus_agent_uptime_seconds", "Agent uptime at its latest health record")
        packets = counter("bus_agent_capture_packets", "Packets the box's capture saw (all ports)")
        drops = counter("bus_agent_capture_drops", "Packets the box's kernel dropped (all ports)")
        own = counter("bus_agent_capture_own_frames", "Frames the box sent on its mirror ports")
        backlog = gauge("bus_agent_wal_backlog_records", "Records waiting in the box's WAL")
        backlog_bytes = gauge("bus_agent_wal_backlog_bytes", "Bytes waiting in the box's WAL")
        oldest = gauge("bus_agent_wal_oldest_age_seconds", "Age of the box's oldest waiting record")
        connected = gauge(
            "bus_agent_forwarder_connected", "1 when the box's forwarder is connected"
        )
        offset = gauge("bus_agent_clock_offset_seconds", "The bus's clock minus the box's")
        cert = gauge(
            "bus_agent_certificate_expiry_timestamp_seconds", "When the box's certificate expires"
        )
        quarantined = counter("bus_agent_quarantined", "Records the bus refused, as the box counts")
        invalid = counter("bus_agent_invalid", "Envelopes of the agent the bus answered INVALID")
        refused = self._refused()
        for agent in sorted(a for a in refused if a in trusted):
            invalid.add_metric([agent], refused[agent])
        for s in agents:
            a = [s.agent_id]
            last_seen.add_metric(a, s.last_seen_ns / NS)
            records.add_metric(a, s.records)
            last_seq.add_metric(a, s.last_seq)
            gaps.add_metric(a, s.gaps)
            restarts.add_metric(a, s.restarts)
            h = health_of(s)
            if h is None:
                continue
            info.add_metric([s.agent_id, h.version, h.slot], 1)
            health_ts.add_metric(a, h.sample_ns / NS)
            uptime.add_metric(a, h.uptime_s)
            packets.add_metric(a, sum(c.packets for c in h.capture))
            drops.add_metric(a, sum(c.drops for c in h.capture))
            own.add_metric(a, sum(c.own_frames for c in h.capture))
            backlog.add_metric(a, h.wal_backlog_records)
            backlog_bytes.add_metric(a, h.wal_backlog_bytes)
            oldest.add_metric(a, h.wal_oldest_age_ms / 1000)
            connected.add_metric(a, 1.0 if h.forwarder_state == "connected" else 0.0)
            offset.add_metric(a, h.clock_offset_ms / 1000)
            if h.cert_not_after_s:
                cert.add_metric(a, h.cert_not_after_s)
            quarantined.add_metric(a, h.quarantined)
        yield from (
            info, last_seen, records, last_seq, gaps, restarts, health_ts, uptime, packets,
            drops, own, backlog, backlog_bytes, oldest, connected, offset, cert, quarantined,
            invalid,
        )  # fmt: skip
