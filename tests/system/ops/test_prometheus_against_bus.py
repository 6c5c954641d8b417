"""Prometheus against a real bus and two real agents: every dashboard query returns data, every
alert expression evaluates, and a box that stops fires its silent-box alert.

The boxes are `infraspectre agent run` processes capturing on a mirror lab (pings cross it every
second), sealing their health every second. Box branch-1's certificate expires in 20 days, so
its certificate alert is pending. A publisher holding branch-1's key sends forged copies of
records (one flipped signature bit), so the refusal panels and the integrity alert have something
to show; forged records are never stored, so the real agent's chain is untouched. Prometheus
scrapes the bus every second and evaluates the shipped rules every second; only
InfraSpectreBoxSilent is changed, in a copy, to a 4 s threshold with no `for:`, so the test sees
it fire (its real timing is promtool's to test: contrib/prometheus/infraspectre.rules.test.yml).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from testsupport.agentproc import AgentProc, agent_proc
from testsupport.ops import RULES, dashboard, panel_queries
from testsupport.prometheus import Prometheus, wait_for

from appliance.bus.server import BusServer
from appliance.devkit.capture.lab import MirrorLab
from appliance.devkit.capture.labtraffic import ping
from appliance.pki import init_pki, issue_agent
from appliance.wire import Envelope, PublishAck

BOXES = ("branch-1", "branch-2")
SILENT_TEST_S = 4  # the test copy's InfraSpectreBoxSilent threshold
FEED_PERIOD_S = 1.0
FEED_MAX = 600  # rounds at most: ten minutes, far beyond any wait below
WAIT_S = 120.0


class Feeder(threading.Thread):
    """Pings across the lab and one forged record (branch-1's key) every FEED_PERIOD_S until
    stopped or FEED_MAX rounds. Answers are counted, never asserted in the thread."""

    def __init__(self, lab: MirrorLab, forger: Any) -> None:
        super().__init__(daemon=True)
        self.lab, self.forger = lab, forger
        self.stop = threading.Event()
        self.answers: Counter[str] = Counter()

    def run(self) -> None:
        for i in range(FEED_MAX):
            if self.stop.wait(FEED_PERIOD_S):
                return
            try:
                ping(self.lab, count=1)
                env = self.forger.sealer.seal(self.forger.flow(i))
                bad = Envelope()
                bad.CopyFrom(env)
                bad.sig = bytes([env.sig[0] ^ 1]) + env.sig[1:]
                ack = self.forger.stub.Publish(bad, timeout=10)
                self.answers[f"forged {PublishAck.Status.Name(ack.status)}"] += 1
            except Exception as exc:  # reported by the test, not the thread
                self.answers[f"error {type(exc).__name__}"] += 1


@pytest.fixture
def lab() -> Iterator[MirrorLab]:
    with MirrorLab("op") as lab:
        yield lab


def _rules_for_test(tmp_path: Path) -> Path:
    """The shipped rule file with InfraSpectreBoxSilent at a test-sized threshold."""
    doc = yaml.safe_load(RULES.read_text())
    silent = next(
        r for g in doc["groups"] for r in g["rules"] if r.get("alert") == "InfraSpectreBoxSilent"
    )
    assert "> 300" in silent["expr"], silent["expr"]
    silent["expr"] = silent["expr"].replace("> 300", f"> {SILENT_TEST_S}")
    silent["for"] = "0s"
    path = tmp_path / "infraspectre.rules.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _alert_states(prom: Prometheus, name: str) -> dict[str, str]:
    """{agent or reason label: state} of the alerts called name."""
    res = prom.api("alerts")
    assert res["status"] == "success", res
    return {
        a["labels"].get("agent") or a["labels"].get("reason", ""): a["state"]
        for a in res["data"]["alerts"]
        if a["labels"]["alertname"] == name
    }


def test_dashboard_queries_and_alerts_against_a_real_prometheus(
    bus_factory: Callable[..., BusServer],
    publisher: Any,
    prometheus: Callable[[int, Path], Prometheus],
    lab: MirrorLab,
    tmp_path: Path,
) -> None:
    pki = tmp_path / "pki"
    init_pki(pki, [])
    issue_agent(pki, "branch-1", days=20)  # its certificate alert: pending
    issue_agent(pki, "branch-2")
    bus = bus_factory(pki_dir=pki)
    assert bus.metrics_port
    agents: dict[str, AgentProc] = {}
    feeder = Feeder(lab, publisher(pki, bus.port, "branch-1"))
    try:
        for name in BOXES:
            agents[name] = agent_proc(
                pki, lab, tmp_path / name, bus.port, config=tmp_path / f"{name}.yaml",
                agent_id=name, health_interval_s=1,
            ).start()  # fmt: skip
        feeder.start()
        prom = prometheus(bus.metrics_port, _rules_for_test(tmp_path))
        _check_everything(prom, agents, feeder)
    finally:
        feeder.stop.set()
        if feeder.is_alive():
            feeder.join(timeout=30)
        for agent in agents.values():
            agent.close()


def _check_everything(prom: Prometheus, agents: dict[str, AgentProc], feeder: Feeder) -> None:
    # enough scrapes for the 15 s rate windows, and the per-agent series of both boxes
    wait_for(
        "20 scrapes of the bus",
        lambda: (prom.value('count_over_time(up{job="infraspectre-bus"}[1m])') or 0) >= 20,
        WAIT_S,
        prom,
    )
    assert prom.value('up{job="infraspectre-bus"}') == 1
    # the dashboard's agent variable: label_values(bus_agent_last_seen_timestamp_seconds, agent)
    labels = prom.api("label/agent/values", **{"match[]": "bus_agent_last_seen_timestamp_seconds"})
    assert labels["status"] == "success" and set(labels["data"]) == set(BOXES), labels

    empty, failed = [], []
    for q in panel_queries(dashboard()):
        res = prom.query(q.promql("branch-1"))
        if res["status"] != "success":
            failed.append((q.panel, q.ref, res.get("error")))
        elif not res["data"]["result"]:
            empty.append((q.panel, q.ref, q.promql("branch-1")))
    assert not failed, failed
    assert not empty, empty

    rules = prom.api("rules", type="alert")
    assert rules["status"] == "success", rules
    evaluated = [r for g in rules["data"]["groups"] for r in g["rules"]]
    shipped = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert len(evaluated) == len(shipped)
    for rule in shipped:
        res = prom.query(rule["expr"])
        assert res["status"] == "success", (rule["alert"], res)
    wait_for(
        "every rule evaluated",
        lambda: all(
            r["health"] == "ok"
            for g in prom.api("rules", type="alert")["data"]["groups"]
            for r in g["rules"]
        ),
        WAIT_S,
        prom,
    )

    # what the boxes' records should raise: the forged copies, branch-1's certificate
    wait_for(
        "InfraSpectreIntegrityRejections firing for bad_signature",
        lambda: (
            _alert_states(prom, "InfraSpectreIntegrityRejections").get("bad_signature") == "firing"
        ),
        WAIT_S,
        prom,
    )
    cert = _alert_states(prom, "InfraSpectreCertificateExpiring")
    assert set(cert) == {"branch-1"}, cert  # pending: its `for:` is 10 minutes

    # branch-2 stops: its silent alert fires once it has been quiet SILENT_TEST_S
    assert agents["branch-2"].stop() == 0
    wait_for(
        "InfraSpectreBoxSilent firing for the stopped box",
        lambda: _alert_states(prom, "InfraSpectreBoxSilent").get("branch-2") == "firing",
        WAIT_S,
        prom,
    )
    assert _alert_states(prom, "InfraSpectreBoxSilent").get("branch-1") != "firing"
    assert not [k for k in feeder.answers if k.startswith("error")], feeder.answers
    assert feeder.answers["forged INVALID"] > 0
