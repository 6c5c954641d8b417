"""The operations kit under contrib/ as tests read it: rule files, the dashboard and its queries.

Grafana is not in Debian, so the dashboard is checked against Prometheus: every panel query,
with Grafana's variables replaced by the values below, must be valid PromQL (unit tier, by
`promtool check rules`) and return data from a Prometheus scraping a real bus (system tier).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "contrib" / "prometheus"
RULES = PROMETHEUS_DIR / "infraspectre.rules.yml"
RULE_TESTS = PROMETHEUS_DIR / "infraspectre.rules.test.yml"
SCRAPE_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
GRAFANA_DIR = ROOT / "contrib" / "grafana"
DASHBOARD = GRAFANA_DIR / "infraspectre-fleet.json"
GENERATOR = GRAFANA_DIR / "build_dashboard.py"
OPERATIONS_MD = ROOT / "docs" / "OPERATIONS.md"

# Grafana's interval variables, as the tests fix them (docs/OPERATIONS.md says why): the system
# test scrapes every second, and 15 s holds enough samples for rate() under a loaded machine.
GRAFANA_INTERVALS = {"$__rate_interval": "15s", "$__interval": "5s", "$__range": "1m"}


def tool(name: str) -> str:
    """The path of a Prometheus tool; a clear failure (never a skip) when it is missing."""
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        raise AssertionError(f"{name} not found: install Debian's prometheus package (make apt)")
    return path


def load_generator() -> ModuleType:
    """contrib/grafana/build_dashboard.py as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("build_dashboard", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


@dataclass(frozen=True)
class PanelQuery:
    """One target of one panel: where it is, and its PromQL as Grafana writes it."""

    panel: str
    ref: str
    expr: str

    def promql(self, agent: str) -> str:
        """The query with Grafana's variables replaced: what Grafana would send."""
        out = self.expr.replace("$agent", agent)
        for var, value in GRAFANA_INTERVALS.items():
            out = out.replace(var, value)
        left = re.findall(r"\$\w+", out)
        assert not left, f"{self.panel}/{self.ref}: unknown variables {left}"
        return out


def panel_queries(board: dict[str, Any]) -> list[PanelQuery]:
    """Every target of every panel (rows included, collapsed or not)."""
    out = []
    for panel in board["panels"]:
        for p in [panel, *panel.get("panels", [])]:
            for t in p.get("targets", []):
                out.append(PanelQuery(f"{p['id']} {p['title']}", t["refId"], t["expr"]))
    return out
