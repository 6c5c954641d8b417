"""Generates infraspectre-fleet.json, the Grafana dashboard of an InfraSpectre fleet.

Run `python contrib/grafana/build_dashboard.py` after editing this file and commit both;
`--check` exits 1 when the committed JSON differs from what this file generates
(tests/unit/ops/test_dashboard.py runs the same comparison).

The dashboard is provisioning-ready for Grafana 10 and later: it names its data source through
the variable `DS_PROMETHEUS` (a data-source variable of type prometheus: the default Prometheus
data source unless one is picked), and its `agent` variable lists the boxes the bus exports
(label_values(bus_agent_last_seen_timestamp_seconds, agent)). Its inputs are the bus's metrics
(docs/BUS.md, "Metrics"); the job name is the one of contrib/prometheus/prometheus.yml.

Three rows: the fleet at a glance, one box (the selected $agent), and the bus's ingest. Every
query is evaluated against a real Prometheus scraping a real bus by
tests/system/ops/test_prometheus_against_bus.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("infraspectre-fleet.json")
DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
JOB = "infraspectre-bus"
SILENT_S = 300  # the bus's silent_after_s default, and InfraSpectreBoxSilent's threshold
AGENT = 'agent="$agent"'
RATE = "$__rate_interval"

Json = dict[str, Any]


@dataclass
class Q:
    """One query of a panel: PromQL, its legend, and whether it is one value per series."""

    expr: str
    legend: str = ""
    instant: bool = False


@dataclass
class Panel:
    """One panel: what it shows, how wide and tall it is (Grafana's 24-column grid)."""

    kind: str  # stat, timeseries, bargauge, table, piechart
    title: str
    queries: list[Q]
    description: str
    unit: str = "short"
    w: int = 8
    h: int = 8
    thresholds: list[tuple[float | None, str]] = field(default_factory=lambda: [(None, "green")])
    mappings: list[Json] = field(default_factory=list)
    options: Json = field(default_factory=dict)
    transformations: list[Json] = field(default_factory=list)
    overrides: list[Json] = field(default_factory=list)


def _states(zero: str, one: str) -> list[Json]:
    return [
        {
            "type": "value",
            "options": {
                "0": {"text": zero, "color": "red", "index": 0},
                "1": {"text": one, "color": "green", "index": 1},
            },
        }
    ]


def fleet_row() -> list[Panel]:
    """The fleet at a glance: which box is silent, behind, dropping, outdated, expiring."""
    fleet_table = [
        Q("time() - bus_agent_last_seen_timestamp_seconds", instant=True),
        Q("bus_agent_info", instant=True),
        Q("bus_agent_wal_backlog_records", instant=True),
        Q("bus_agent_wal_oldest_age_seconds", instant=True),
        Q(f"rate(bus_agent_capture_drops_total[{RATE}])", instant=True),
        Q("bus_agent_clock_offset_seconds", instant=True),
        Q("(bus_agent_certificate_expiry_timestamp_seconds - time()) / 86400", instant=True),
        Q("bus_agent_forwarder_connected", instant=True),
    ]
    columns = [
        "silent for (s)", "info", "backlog (records)", "oldest undelivered (s)", "drops/s",
        "clock offset (s)", "certificate (days)", "forwarder connected",
    ]  # fmt: skip
    return [
        Panel(
            "stat",
            "Boxes reporting",
            [Q("count(bus_agent_last_seen_timestamp_seconds)")],
            "Boxes in the trust map that have stored at least one record.",
            w=4,
            h=4,
        ),
        Panel(
            "stat",
            f"Boxes silent > {SILENT_S // 60} min",
            [Q(f"count(time() - bus_agent_last_seen_timestamp_seconds > {SILENT_S}) or vector(0)")],
            "Boxes the bus has heard nothing from for silent_after_s (as `bus agents` shows).",
            w=4,
            h=4,
            thresholds=[(None, "green"), (1, "red")],
        ),
        Panel(
            "stat",
            "Boxes in the trust map",
            [Q("sum(bus_trust_map_agents)")],
            "Agents the bus trusts; the difference to 'Boxes reporting' never sent a record.",
            w=4,
            h=4,
        ),
        Panel(
            "stat",
            "Alerts firing",
            [Q('count(ALERTS{alertstate="firing", alertname=~"InfraSpectre.*"}) or vector(0)')],
            "InfraSpectre alerts firing now (contrib/prometheus/infraspectre.rules.yml).",
            w=4,
            h=4,
            thresholds=[(None, "green"), (1, "red")],
        ),
        Panel(
            "stat",
            "Store",
            [Q("min(bus_store_up)")],
            "1 while the bus's store commits.",
            w=4,
            h=4,
            mappings=_states("cannot commit", "committing"),
        ),
        Panel(
            "stat",
            "Bus scraped",
            [Q(f'min(up{{job="{JOB}"}})')],
            "Whether Prometheus reaches the bus's /metrics.",
            w=4,
            h=4,
            mappings=_states("down", "up"),
        ),
        Panel(
            "table",
            "Fleet",
            fleet_table,
            "One row per box, from its latest health record (docs/BUS.md, `bus agents`).",
            w=24,
            h=8,
            options={"showHeader": True, "sortBy": [{"displayName": columns[0], "desc": True}]},
            transformations=[
                {"id": "merge", "options": {}},
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {
                            "Time": True,
                            "__name__": True,
                            "job": True,
                            "instance": True,
                            "Value #B": True,
                        },
                        "renameByName": {
                            f"Value #{chr(ord('A') + i)}": name for i, name in enumerate(columns)
                        },
                    },
                },
            ],
        ),
        Panel(
            "bargauge",
            "Silent for",
            [Q("sort_desc(time() - bus_agent_last_seen_timestamp_seconds)", "{{agent}}", True)],
            "Time since each box's last stored record.",
            unit="s",
            thresholds=[(None, "green"), (60, "orange"), (SILENT_S, "red")],
        ),
        Panel(
            "piechart",
            "Versions",
            [Q("count by (version, slot) (bus_agent_info)", "{{version}} slot {{slot}}", True)],
            "Boxes by software version and root slot, from their health records.",
            options={"reduceOptions": {"calcs": ["lastNotNull"]}, "pieType": "donut"},
        ),
        Panel(
            "bargauge",
            "Certificate expires in",
            [Q("sort(bus_agent_certificate_expiry_timestamp_seconds - time())", "{{agent}}", True)],
            "Time left on each box's client certificate (alert under 30 days).",
            unit="s",
            thresholds=[(None, "red"), (7 * 86400, "orange"), (30 * 86400, "green")],
        ),
        Panel(
            "timeseries",
            "WAL backlog",
            [Q("bus_agent_wal_backlog_records", "{{agent}}")],
            "Records sealed on each box and not yet acknowledged by the bus.",
        ),
        Panel(
            "timeseries",
            "Oldest undelivered record",
            [Q("bus_agent_wal_oldest_age_seconds", "{{agent}}")],
            "Age of each box's oldest unacknowledged record (alert over 15 min).",
            unit="s",
        ),
        Panel(
            "timeseries",
            "Capture drops",
            [Q(f"rate(bus_agent_capture_drops_total[{RATE}])", "{{agent}}")],
            "Packets each box's kernel dropped on its mirror ports, per second.",
            unit="pps",
        ),
        Panel(
            "timeseries",
            "Clock offset",
            [Q("bus_agent_clock_offset_seconds", "{{agent}}")],
            "The bus's clock minus each box's (alert beyond 60 s).",
            unit="s",
        ),
        Panel(
            "timeseries",
            "Chain gaps",
            [Q(f"increase(bus_agent_chain_gaps_total[{RATE}])", "{{agent}}")],
            "Settled holes in each box's record chain: records that never arrived.",
            options={"drawStyle": "bars"},
        ),
        Panel(
            "timeseries",
            "Records stored",
            [Q(f"sum by (agent) (rate(bus_agent_records_total[{RATE}]))", "{{agent}}")],
            "Records of each box stored per second.",
            unit="ops",
        ),
    ]


def box_row() -> list[Panel]:
    """One box, the one selected in the `agent` variable."""
    return [
        Panel(
            "stat",
            "Last record",
            [Q(f"time() - bus_agent_last_seen_timestamp_seconds{{{AGENT}}}")],
            "Time since the bus stored this box's last record.",
            unit="s",
            w=4,
            h=4,
            thresholds=[(None, "green"), (60, "orange"), (SILENT_S, "red")],
        ),
        Panel(
            "stat",
            "Version",
            [Q(f"bus_agent_info{{{AGENT}}}", "{{version}} slot {{slot}}")],
            "Software version and root slot of the latest health record.",
            w=4,
            h=4,
            options={"textMode": "name"},
        ),
        Panel(
            "stat",
            "Uptime",
            [Q(f"bus_agent_uptime_seconds{{{AGENT}}}")],
            "The agent's uptime at its latest health record.",
            unit="s",
            w=4,
            h=4,
        ),
        Panel(
            "stat",
            "Forwarder",
            [Q(f"bus_agent_forwarder_connected{{{AGENT}}}")],
            "The forwarder's state at the latest health record.",
            w=4,
            h=4,
            mappings=_states("not connected", "connected"),
        ),
        Panel(
            "stat",
            "Certificate expires in",
            [Q(f"bus_agent_certificate_expiry_timestamp_seconds{{{AGENT}}} - time()")],
            "Time left on the box's client certificate.",
            unit="s",
            w=4,
            h=4,
            thresholds=[(None, "red"), (7 * 86400, "orange"), (30 * 86400, "green")],
        ),
        Panel(
            "stat",
            "Health record age",
            [Q(f"time() - bus_agent_health_timestamp_seconds{{{AGENT}}}")],
            "Age of the latest health record by the box's clock: large while the box delivers "
            "old backlog first, or when its clock is off.",
            unit="s",
            w=4,
            h=4,
        ),
        Panel(
            "timeseries",
            "Records stored",
            [
                Q(f"rate(bus_agent_records_total{{{AGENT}}}[{RATE}])", "records/s"),
                Q(f"bus_agent_last_seq{{{AGENT}}}", "last seq"),
            ],
            "Records of the box stored per second; its chain's highest sequence number.",
            unit="ops",
            overrides=[_right_axis("last seq", "short")],
        ),
        Panel(
            "timeseries",
            "Capture",
            [
                Q(f"rate(bus_agent_capture_packets_total{{{AGENT}}}[{RATE}])", "packets/s"),
                Q(f"rate(bus_agent_capture_drops_total{{{AGENT}}}[{RATE}])", "drops/s"),
                Q(f"rate(bus_agent_capture_own_frames_total{{{AGENT}}}[{RATE}])", "own frames/s"),
            ],
            "The box's mirror ports: packets seen, dropped by the kernel, sent by the box "
            "itself (anything but 0 means the port is not receive-only).",
            unit="pps",
        ),
        Panel(
            "timeseries",
            "WAL backlog",
            [
                Q(f"bus_agent_wal_backlog_records{{{AGENT}}}", "records"),
                Q(f"bus_agent_wal_backlog_bytes{{{AGENT}}}", "bytes"),
            ],
            "Records and bytes the box has sealed and the bus not yet acknowledged.",
            overrides=[_right_axis("bytes", "bytes")],
        ),
        Panel(
            "timeseries",
            "Oldest undelivered record",
            [Q(f"bus_agent_wal_oldest_age_seconds{{{AGENT}}}", "age")],
            "Age of the box's oldest unacknowledged record.",
            unit="s",
        ),
        Panel(
            "timeseries",
            "Clock offset",
            [Q(f"bus_agent_clock_offset_seconds{{{AGENT}}}", "offset")],
            "The bus's clock minus the box's (negative: the box runs ahead).",
            unit="s",
        ),
        Panel(
            "timeseries",
            "Chain and refusals",
            [
                Q(f"increase(bus_agent_chain_gaps_total{{{AGENT}}}[{RATE}])", "gaps"),
                Q(f"increase(bus_agent_chain_restarts_total{{{AGENT}}}[{RATE}])", "restarts"),
                Q(f"increase(bus_agent_quarantined_total{{{AGENT}}}[{RATE}])", "quarantined"),
            ],
            "Holes in the chain, restarts after unclean stops, and records the bus refused "
            "(as the box counts them).",
            options={"drawStyle": "bars"},
        ),
    ]


def bus_row() -> list[Panel]:
    """The bus's ingest: answers, refusals, latency, the store."""

    def quantiles(metric: str) -> list[Q]:
        return [
            Q(
                f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket[{RATE}])))",
                f"p{round(q * 100)}",
            )
            for q in (0.5, 0.9, 0.99)
        ]

    return [
        Panel(
            "timeseries",
            "Envelopes answered",
            [Q(f"sum by (status) (rate(bus_publish_total[{RATE}]))", "{{status}}")],
            "Envelopes answered per second, by status (OK, RETRY, INVALID).",
            unit="ops",
        ),
        Panel(
            "timeseries",
            "Refused by reason",
            [Q(f"sum by (reason) (rate(bus_rejected_total[{RATE}])) > 0", "{{reason}}")],
            "Envelopes and calls refused per second, by reason (docs/BUS.md: bad_signature, "
            "chain_broken and conflict are never an honest box's doing).",
            unit="ops",
        ),
        Panel(
            "timeseries",
            "RETRY share",
            [
                Q(
                    f"sum(rate(bus_retry_total[{RATE}])) / sum(rate(bus_publish_total[{RATE}]))",
                    "RETRY",
                )
            ],
            "Share of envelopes answered RETRY (alert over 10% for 15 min).",
            unit="percentunit",
        ),
        Panel(
            "timeseries",
            "Publish latency",
            quantiles("bus_publish_latency_ms"),
            "Time to answer one call, quantiles over all calls.",
            unit="ms",
        ),
        Panel(
            "timeseries",
            "Store commit",
            quantiles("bus_store_commit_seconds"),
            "Submission to durable commit in the store, quantiles.",
            unit="s",
        ),
        Panel(
            "timeseries",
            "Stored and duplicates",
            [
                Q(f"sum(rate(bus_stored_total[{RATE}]))", "stored"),
                Q(f"sum(rate(bus_duplicates_total[{RATE}]))", "duplicates"),
            ],
            "Envelopes newly stored and retransmissions already stored, per second.",
            unit="ops",
        ),
        Panel(
            "timeseries",
            "Store size",
            [Q("bus_store_bytes", "{{instance}}")],
            "The store on disk, its WAL file included (bounded by retention_max_bytes).",
            unit="bytes",
        ),
        Panel(
            "timeseries",
            "In-flight calls",
            [
                Q("sum(bus_inflight_requests)", "in flight"),
                Q(f"sum(rate(bus_refused_calls_total[{RATE}]))", "refused at hard_max /s"),
            ],
            "Publish calls in progress (RETRY from max_inflight, refused from hard_max).",
        ),
        Panel(
            "timeseries",
            "Chain events",
            [Q(f"sum by (kind) (increase(bus_chain_events_total[{RATE}]))", "{{kind}}")],
            "Chains started, re-keyed, restarted after unclean stops, and settled gaps.",
            options={"drawStyle": "bars"},
        ),
    ]


def _right_axis(series: str, unit: str) -> Json:
    return {
        "matcher": {"id": "byName", "options": series},
        "properties": [
            {"id": "custom.axisPlacement", "value": "right"},
            {"id": "unit", "value": unit},
        ],
    }


def _panel_json(p: Panel, pid: int, x: int, y: int) -> Json:
    targets = [
        {
            "datasource": DS,
            "refId": chr(ord("A") + i),
            "expr": q.expr,
            "legendFormat": q.legend or "__auto",
            "instant": q.instant or p.kind == "table",
            "range": not (q.instant or p.kind == "table"),
            "format": "table" if p.kind == "table" else "time_series",
        }
        for i, q in enumerate(p.queries)
    ]
    custom: Json = {}
    options: Json = {}
    if p.kind == "timeseries":
        custom = {"drawStyle": p.options.get("drawStyle", "line"), "fillOpacity": 10,
                  "showPoints": "never", "spanNulls": True}  # fmt: skip
        options = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                   "tooltip": {"mode": "multi", "sort": "desc"}}  # fmt: skip
    elif p.kind in ("stat", "bargauge"):
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                   "orientation": "horizontal"}  # fmt: skip
        options.update(p.options)
    else:
        options = dict(p.options)
    return {
        "id": pid,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": DS,
        "gridPos": {"h": p.h, "w": p.w, "x": x, "y": y},
        "fieldConfig": {
            "defaults": {
                "unit": p.unit,
                "custom": custom,
                "mappings": p.mappings,
                "thresholds": {
                    "mode": "absolute",
                    "steps": [{"value": v, "color": c} for v, c in p.thresholds],
                },
            },
            "overrides": p.overrides,
        },
        "options": options,
        "transformations": p.transformations,
        "targets": targets,
    }


def dashboard() -> Json:
    """The whole dashboard as Grafana's JSON model."""
    panels: list[Json] = []
    pid = 0
    y = 0
    rows = [
        ("Fleet overview", fleet_row()),
        ("Box $agent", box_row()),
        ("Bus ingest", bus_row()),
    ]
    for title, row in rows:
        pid += 1
        panels.append({
            "id": pid, "type": "row", "title": title, "collapsed": False, "panels": [],
            "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
        })  # fmt: skip
        y += 1
        x = 0
        line_h = 0
        for p in row:
            if x + p.w > 24:
                x, y, line_h = 0, y + line_h, 0
            pid += 1
            panels.append(_panel_json(p, pid, x, y))
            x += p.w
            line_h = max(line_h, p.h)
        y += line_h
    agent_query = "label_values(bus_agent_last_seen_timestamp_seconds, agent)"
    return {
        "uid": "infraspectre-fleet",
        "title": "InfraSpectre fleet",
        "description": "Boxes' health as the EventBus reports it, one box, and the bus's ingest.",
        "tags": ["infraspectre"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "",
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {
                    "name": "DS_PROMETHEUS",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                    "regex": "",
                    "options": [],
                },
                {
                    "name": "agent",
                    "label": "Box",
                    "type": "query",
                    "datasource": DS,
                    "definition": agent_query,
                    "query": {"query": agent_query, "refId": "InfraSpectreAgent"},
                    "current": {},
                    "hide": 0,
                    "refresh": 2,
                    "sort": 1,
                    "multi": False,
                    "includeAll": False,
                    "regex": "",
                    "options": [],
                },
            ]
        },
        "panels": panels,
    }


def render() -> str:
    """The dashboard's JSON text, exactly as committed."""
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the JSON is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
