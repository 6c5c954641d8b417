"""The Grafana dashboard: generated (the committed JSON is the generator's output),
provisioning-ready for Grafana 10+, and every panel query valid PromQL (by promtool)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml
from testsupport.ops import DASHBOARD, dashboard, load_generator, panel_queries, tool

DS = "${DS_PROMETHEUS}"


def test_committed_json_is_what_the_generator_writes() -> None:
    assert DASHBOARD.read_text() == load_generator().render(), (
        "contrib/grafana/infraspectre-fleet.json is stale: run contrib/grafana/build_dashboard.py"
    )


def test_dashboard_is_provisioning_ready_for_grafana_10() -> None:
    board = dashboard()
    assert board["uid"] == "infraspectre-fleet" and board["schemaVersion"] >= 38
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    agent = variables["agent"]
    assert agent["definition"] == "label_values(bus_agent_last_seen_timestamp_seconds, agent)"
    assert agent["datasource"]["uid"] == DS
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for p in board["panels"]:
        assert p["gridPos"]["x"] >= 0 and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == DS, p["title"]
        assert p["targets"] and all(t["datasource"]["uid"] == DS for t in p["targets"])


def test_rows_cover_the_fleet_one_box_and_the_bus() -> None:
    board = dashboard()
    rows = [p for p in board["panels"] if p["type"] == "row"]
    assert [r["title"] for r in rows] == ["Fleet overview", "Box $agent", "Bus ingest"]
    box_y, bus_y = rows[1]["gridPos"]["y"], rows[2]["gridPos"]["y"]
    box = [p for p in board["panels"] if p["type"] != "row" and box_y < p["gridPos"]["y"] < bus_y]
    assert box and all('agent="$agent"' in t["expr"] for p in box for t in p["targets"])
    exprs = " ".join(q.expr for q in panel_queries(board))
    for metric in (
        "bus_publish_total", "bus_rejected_total", "bus_publish_latency_ms_bucket",
        "bus_store_commit_seconds_bucket", "bus_store_bytes", "bus_inflight_requests",
        "bus_agent_info", "bus_agent_wal_backlog_records", "bus_agent_capture_drops_total",
        "bus_agent_certificate_expiry_timestamp_seconds",
    ):  # fmt: skip
        assert metric in exprs, metric


def test_every_panel_query_is_valid_promql(tmp_path: Path) -> None:
    queries = panel_queries(dashboard())
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": q.promql("branch-1")}
                    for i, q in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    out = subprocess.run(
        [tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
