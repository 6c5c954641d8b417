"""The user docs and the code agree, both ways: every metric a doc names is exported under that
name, and every metric the agent, the WAL and the bus export is named in their doc."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from testsupport.wal_helpers import small_config

from appliance.agent.metrics import CAPTURE_METRICS, AgentSnapshot, agent_registry
from appliance.bus.fleet import AgentCollector as FleetCollector
from appliance.bus.metrics import BusMetrics
from appliance.bus.store import AgentSummary
from appliance.bus.updates import Report, UpdateCollector, UpdateMetrics
from appliance.wal import Wal
from appliance.wal.metrics import register_metrics
from appliance.wire import AgentHealth, CaptureHealth

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _section(doc: str, heading: str) -> str:
    text = (DOCS / doc).read_text()
    start = text.index(heading)
    end = text.find("\n## ", start + len(heading))
    return text[start : end if end > 0 else None]


def _named(text: str, prefix: str) -> set[str]:
    """Metric names written in backquotes (label sets dropped; `x_*`/`..._y` patterns skipped)."""
    names = {m.split("{")[0] for m in re.findall(r"`([a-z_]+(?:\{[a-z_]+\})?)`", text)}
    return {n for n in names if n.startswith(prefix) and not n.endswith("_")}


def _exported(registry: CollectorRegistry) -> set[str]:
    """Every name a scrape shows: sample names and metric names (a histogram's own name)."""
    text = generate_latest(registry).decode()
    samples = {re.split(r"[{ ]", line)[0] for line in text.splitlines() if not line.startswith("#")}
    return samples | _metrics(registry)


def _metrics(registry: CollectorRegistry) -> set[str]:
    """The metrics a registry exports, as users query them (a counter with its _total)."""
    return {m.name + ("_total" if m.type == "counter" else "") for m in registry.collect()}


def _wal_stats(tmp_path: Path) -> dict[str, float]:
    wal = Wal.open(small_config(tmp_path), background=False)
    try:
        return {k: float(v) for k, v in vars(wal.stats()).items() if isinstance(v, int | float)}
    finally:
        wal.close()


def _agent(tmp_path: Path) -> CollectorRegistry:
    """The agent's registry with every source of metrics present (WAL, capture counters)."""
    capture = dict.fromkeys(CAPTURE_METRICS, 0.0)
    return agent_registry(lambda: AgentSnapshot(wal=_wal_stats(tmp_path), capture=capture))


def test_every_metric_agent_md_names_is_exported_by_the_agent(tmp_path: Path) -> None:
    documented = _named(_section("AGENT.md", "## Health and metrics"), "agent_")
    assert documented, "the table's names were not found"
    assert documented - _exported(_agent(tmp_path)) == set()


def test_every_metric_wal_md_names_is_exported_by_the_wal_and_by_the_agent(
    tmp_path: Path,
) -> None:
    documented = _named((DOCS / "WAL.md").read_text(), "wal_")
    assert "wal_oldest_age_seconds" in documented
    wal = Wal.open(small_config(tmp_path / "w"), background=False)
    registry = CollectorRegistry()
    register_metrics(registry, wal)
    assert documented - _exported(registry) == set()
    wal.close()
    agent = _agent(tmp_path / "a")
    assert {f"agent_{n}" for n in documented} - _exported(agent) == set()


def test_every_metric_the_agent_exports_is_documented(tmp_path: Path) -> None:
    in_agent_md = _named(_section("AGENT.md", "## Health and metrics"), "agent_")
    in_wal_md = _named((DOCS / "WAL.md").read_text(), "wal_")
    # the agent serves every WAL metric with the prefix agent_, documented once in WAL.md
    undocumented = {
        n
        for n in _metrics(_agent(tmp_path))
        if n not in in_agent_md and n.removeprefix("agent_") not in in_wal_md
    }
    assert undocumented == set()


def test_every_metric_the_wal_exports_is_documented(tmp_path: Path) -> None:
    wal = Wal.open(small_config(tmp_path), background=False)
    registry = CollectorRegistry()
    register_metrics(registry, wal)
    exported = _metrics(registry)
    wal.close()
    assert exported, "the WAL exported nothing"
    assert exported - _named((DOCS / "WAL.md").read_text(), "wal_") == set()


def _bus_registry() -> CollectorRegistry:
    """The bus's registry with its per-agent series present: one agent with a health record."""
    health = AgentHealth(sample_ns=1, cert_not_after_s=1, capture=[CaptureHealth(ifname="e")])
    agent = AgentSummary("a", "k", 1, 1, 1, 1, health.SerializeToString(), 1)
    registry = BusMetrics().registry
    registry.register(FleetCollector(lambda: [agent], lambda: {"a"}, lambda: {"a": 1}))
    UpdateMetrics(registry)
    report = Report("a", "0.2.0", 1, "rpi", "b", "committed", "committed", "ok", "0.2.0", 1)
    registry.register(UpdateCollector(lambda: [report], lambda: ["a"]))
    return registry


def test_bus_md_and_the_bus_metrics_agree_both_ways() -> None:
    documented = _named((DOCS / "BUS.md").read_text(), "bus_")
    registry = _bus_registry()
    assert documented, "BUS.md names no metric"
    assert documented - _exported(registry) == set()
    assert _metrics(registry) - documented == set()
