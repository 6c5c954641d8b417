"""Prometheus against a real bus and two boxes: every dashboard query returns data, every alert
expression evaluates, and a box that stops sending fires its silent-box alert.

The boxes are signed publishers that send a health record and then a flow every half second
(a real agent's periodic health records can replace them once the agent seals them). Box
branch-1 also sends a copy of each flow with a broken signature, so the refusal panels and the
integrity alert have something to show. Prometheus scrapes the bus every second and evaluates
the shipped rules every second; only InfraSpectreBoxSilent is changed, in a copy, to a 4 s
threshold with no `for:`, so the test sees it fire (its real timing is promtool's to test:
contrib/prometheus/infraspectre.rules.test.yml).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from testsupport.ops import RULES, dashboard, panel_queries
from testsupport.prometheus import Prometheus, wait_for

from appliance.bus.server import BusServer
from appliance.crypto import sign_envelope
from appliance.wire import AgentHealth, CaptureHealth, Envelope, PublishAck

BOXES = ("branch-1", "branch-2")
SILENT_TEST_S = 4  # the test copy's InfraSpectreBoxSilent threshold
FEED_PERIOD_S = 0.5
FEED_MAX = 1200  # flows per box at most: ten minutes, far beyond any wait below
WAIT_S = 90.0


def _health(p: Any, cert_days: float) -> Envelope:
    """A signed health record from publisher p, chained like everything it sends."""
    env: Envelope = p.sealer.seal(p.flow())
    env.ClearField("flow")
    env.health.CopyFrom(
        AgentHealth(
            sample_ns=time.time_ns(), version="0.1.0", slot="a", uptime_s=42,
            forwarder_state="connected", wal_backlog_records=3, wal_backlog_bytes=660,
            wal_oldest_age_ms=1500, clock_offset_ms=15,
            cert_not_after_s=int(time.time() + cert_days * 86400),
            capture=[CaptureHealth(ifname="eth1", packets=900, drops=2, own_frames=0)],
        )
    )  # fmt: skip
    sign_envelope(env, p.sealer._key)
    p.sealer.prev_sig = env.sig  # re-signed: the next record chains to this signature
    return env


class Feeder(threading.Thread):
    """One box sending a flow every FEED_PERIOD_S (and, if forging, a broken copy) until
    stopped or FEED_MAX flows are sent. Answers are counted, never asserted in the thread."""

    def __init__(self, p: Any, forge: bool) -> None:
        super().__init__(daemon=True)
        self.p, self.forge = p, forge
        self.stop = threading.Event()
        self.answers: Counter[str] = Counter()

    def run(self) -> None:
        for i in range(FEED_MAX):
            if self.stop.wait(FEED_PERIOD_S):
                return
            try:
                env = self.p.sealer.seal(self.p.flow(i))
                ack = self.p.stub.Publish(env, timeout=10)
                self.answers[PublishAck.Status.Name(ack.status)] += 1
                if self.forge:
                    bad = Envelope()
                    bad.CopyFrom(env)
                    bad.sig = bytes([env.sig[0] ^ 1]) + env.sig[1:]
                    ack = self.p.stub.Publish(bad, timeout=10)
                    self.answers[f"forged {PublishAck.Status.Name(ack.status)}"] += 1
            except Exception as exc:  # reported by the test, not the thread
                self.answers[f"error {type(exc).__name__}"] += 1


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
    pki: Path,
    bus_factory: Callable[..., BusServer],
    publisher: Any,
    prometheus: Callable[[int, Path], Prometheus],
    tmp_path: Path,
) -> None:
    bus = bus_factory()
    assert bus.metrics_port
    boxes = {name: publisher(pki, bus.port, name) for name in BOXES}
    for name, p in boxes.items():
        cert_days = 20 if name == "branch-1" else 300
        assert p.stub.Publish(_health(p, cert_days), timeout=10).status == PublishAck.OK
    feeders = {name: Feeder(p, forge=name == "branch-1") for name, p in boxes.items()}
    for f in feeders.values():
        f.start()
    try:
        prom = prometheus(bus.metrics_port, _rules_for_test(tmp_path))
        _check_everything(prom, feeders)
    finally:
        for f in feeders.values():
            f.stop.set()
        for f in feeders.values():
            f.join(timeout=30)


def _check_everything(prom: Prometheus, feeders: dict[str, Feeder]) -> None:
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
    feeders["branch-2"].stop.set()
    feeders["branch-2"].join(timeout=30)
    wait_for(
        "InfraSpectreBoxSilent firing for the stopped box",
        lambda: _alert_states(prom, "InfraSpectreBoxSilent").get("branch-2") == "firing",
        WAIT_S,
        prom,
    )
    for name, f in feeders.items():
        assert f.answers["OK"] > 0, (name, f.answers)
        assert not [k for k in f.answers if k.startswith("error")], (name, f.answers)
    assert feeders["branch-1"].answers["forged INVALID"] > 0
