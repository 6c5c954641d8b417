"""docs/BUS.md names every metric the bus exports and every refusal label of the gate."""

from __future__ import annotations

from pathlib import Path

from appliance.bus.gate import Refusal
from appliance.bus.metrics import BusMetrics

BUS_MD = Path(__file__).parents[3] / "docs/BUS.md"


def _metrics_section() -> str:
    text = BUS_MD.read_text()
    return text[text.index("## Metrics") :].split("\n## ", 1)[0]


def test_every_exported_metric_is_in_the_metrics_table() -> None:
    section = _metrics_section()
    missing = []
    for family in BusMetrics().registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        if f"`{name}" not in section:
            missing.append(name)
    assert not missing, f"metrics missing from docs/BUS.md: {missing}"


def test_every_gate_refusal_label_is_documented() -> None:
    section = _metrics_section()
    assert [r.value for r in Refusal if r.value not in section] == []
