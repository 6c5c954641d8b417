"""docs/BUS.md names every metric the bus exports and every rejection kind (label)."""

from __future__ import annotations

from pathlib import Path

from appliance.bus.metrics import BusMetrics
from appliance.bus.validate import Reject

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


def test_every_rejection_kind_is_documented() -> None:
    text = BUS_MD.read_text()
    assert [r.value for r in Reject if r.value not in text] == []
