"""The user docs and the code agree: every metric a doc names is exported under that name."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from testsupport.wal_helpers import small_config

from appliance.agent.metrics import AgentSnapshot, agent_registry
from appliance.wal import Wal
from appliance.wal.metrics import register_metrics

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
    text = generate_latest(registry).decode()
    return {re.split(r"[{ ]", line)[0] for line in text.splitlines() if not line.startswith("#")}


def _wal_stats(tmp_path: Path) -> dict[str, float]:
    wal = Wal.open(small_config(tmp_path), background=False)
    try:
        return {k: float(v) for k, v in vars(wal.stats()).items() if isinstance(v, int | float)}
    finally:
        wal.close()


def test_every_metric_agent_md_names_is_exported_by_the_agent(tmp_path: Path) -> None:
    registry = agent_registry(lambda: AgentSnapshot(wal=_wal_stats(tmp_path)))
    # agent_capture_* names come from the capture source's own counters, not checked here
    documented = {
        n for n in _named(_section("AGENT.md", "## Health and metrics"), "agent_")
        if not n.startswith("agent_capture_")
    }  # fmt: skip
    assert documented, "the table's names were not found"
    assert documented - _exported(registry) == set()


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
    agent = agent_registry(lambda: AgentSnapshot(wal=_wal_stats(tmp_path / "a")))
    assert {f"agent_{n}" for n in documented} - _exported(agent) == set()
