"""The alert rules under contrib/prometheus pass promtool's check and its unit tests, and every
alert is tested firing and quiet, labelled, and linked to its section of docs/OPERATIONS.md."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import yaml
from testsupport.ops import OPERATIONS_MD, PROMETHEUS_DIR, RULE_TESTS, RULES, SCRAPE_CONFIG, tool


def _promtool(*args: str) -> str:
    out = subprocess.run(
        [tool("promtool"), *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, f"promtool {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def _alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_rule_file_passes_promtool_check() -> None:
    out = _promtool("check", "rules", RULES.name)
    assert f"SUCCESS: {len(_alerts())} rules found" in out


def test_scrape_config_and_the_rule_file_it_loads_pass_promtool_check() -> None:
    _promtool("check", "config", SCRAPE_CONFIG.name)


def test_rule_unit_tests_pass() -> None:
    assert "SUCCESS" in _promtool("test", "rules", RULE_TESTS.name)


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    cases = [c for t in tests for c in t.get("alert_rule_test", [])]
    for alert in _alerts():
        mine = [c for c in cases if c["alertname"] == alert["alert"]]
        assert any(c["exp_alerts"] for c in mine), f"{alert['alert']}: no firing case"
        assert any(not c["exp_alerts"] for c in mine), f"{alert['alert']}: no quiet case"


def test_every_alert_is_labelled_and_links_its_runbook_section() -> None:
    anchors = {
        _slug(line.lstrip("#")) for line in OPERATIONS_MD.read_text().splitlines()
        if line.startswith("#")
    }  # fmt: skip
    names = [a["alert"] for a in _alerts()]
    assert len(names) == len(set(names))
    for alert in _alerts():
        assert alert["labels"]["severity"] in ("critical", "warning"), alert["alert"]
        notes = alert["annotations"]
        assert {"summary", "description", "runbook_url"} <= set(notes), alert["alert"]
        page, _, anchor = notes["runbook_url"].partition("#")
        assert page == "docs/OPERATIONS.md" and anchor in anchors, notes["runbook_url"]
        if "bus_agent_" in alert["expr"] and alert["alert"] != "InfraSpectreChainGap":
            assert "$labels.agent" in notes["description"], f"{alert['alert']} names no agent"
