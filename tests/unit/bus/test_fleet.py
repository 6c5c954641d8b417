"""The fleet view: per-agent summaries kept by the store, `bus agents`, per-agent series, and
retention that keeps the store inside its bounds."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from appliance.bus.fleet import AgentCollector, fleet_view, load_summaries
from appliance.bus.query import count, open_reader
from appliance.bus.store import FlowStore, Record, Retention
from appliance.cli import main
from appliance.wire import AgentHealth, CaptureHealth

NOW = time.time_ns()


def _rec(agent: str, seq: int, *, ts: int = 0, health: AgentHealth | None = None) -> Record:
    ts = ts or time.time_ns()  # received now, whenever the test runs
    sig = seq.to_bytes(8, "big") * 8
    prev = (seq - 1).to_bytes(8, "big") * 8 if seq > 1 else b""
    kind = "health" if health else "flow"
    row = (agent, f"{agent}-{seq}", seq, ts, ts, kind, "192.0.2.1", "198.51.100.1", 1, 2, "TCP",
           10, 20, 1, 2, 0, 0, 0, b"x" * 200, "k1")  # fmt: skip
    if health is None:
        return Record(row, prev, sig)
    return Record(row, prev, sig, health.SerializeToString(), health.sample_ns)


HEALTH = AgentHealth(
    sample_ns=NOW, version="0.1.0", slot="b", uptime_s=3600, forwarder_state="connected",
    wal_backlog_records=12, wal_oldest_age_ms=4500, clock_offset_ms=-250,
    cert_not_after_s=NOW // 10**9 + 20 * 86400, quarantined=2,
    capture=[CaptureHealth(ifname="eth1", packets=100, drops=3, own_frames=1),
             CaptureHealth(ifname="eth2", packets=50, drops=4)],
)  # fmt: skip


@pytest.fixture
def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = FlowStore(tmp_path / "bus.sqlite", sync="normal")
    yield s
    s.close()


def test_the_store_keeps_a_summary_per_agent_with_its_latest_health(store: FlowStore) -> None:
    store.submit([_rec("a", 1), _rec("a", 2, health=HEALTH), _rec("b", 1)]).result(10)
    store.submit([_rec("a", 3)]).result(10)
    by_id = {s.agent_id: s for s in store.agents()}
    assert (by_id["a"].records, by_id["a"].last_seq) == (3, 3)
    assert AgentHealth.FromString(by_id["a"].health or b"").slot == "b"
    assert by_id["b"].health is None
    persisted = {s.agent_id: s for s in load_summaries(open_reader(store.path))}
    assert persisted["a"] == by_id["a"]


def test_fleet_view_lists_silent_and_never_seen_boxes_first(store: FlowStore) -> None:
    old = NOW - 3600 * 10**9
    store.submit([_rec("quiet", 1, ts=old), _rec("busy", 1, health=HEALTH)]).result(10)
    summaries = store.agents()
    for s in summaries:  # the summary's last_seen is the receive time: age "quiet" by hand
        if s.agent_id == "quiet":
            s.last_seen_ns = old
    views = fleet_view(summaries, ["busy", "quiet", "spare"], NOW, silent_after_s=300)
    assert [(v.agent_id, v.state) for v in views] == [
        ("spare", "never"),
        ("quiet", "silent"),
        ("busy", "ok"),
    ]
    busy = views[2]
    assert (busy.capture_drops, busy.own_frames, busy.wal_backlog_records) == (7, 1, 12)
    assert busy.cert_days_left is not None and 19.9 < busy.cert_days_left < 20.1


def test_per_agent_series_only_for_trusted_agents(store: FlowStore) -> None:
    store.submit([_rec("a", 1, health=HEALTH), _rec("gone", 1)]).result(10)
    registry = CollectorRegistry()
    registry.register(AgentCollector(store.agents, lambda: {"a"}))
    text = generate_latest(registry).decode()
    assert 'bus_agent_info{agent="a",slot="b",version="0.1.0"} 1.0' in text
    assert 'bus_agent_capture_drops_total{agent="a"} 7.0' in text
    assert 'bus_agent_clock_offset_seconds{agent="a"} -0.25' in text
    assert 'bus_agent_records_total{agent="a"} 1.0' in text
    assert "gone" not in text


def test_bus_agents_prints_the_fleet(store: FlowStore, capsys: pytest.CaptureFixture[str]) -> None:
    store.submit([_rec("a\x1b[2J", 1, health=HEALTH)]).result(10)
    store.close()
    assert main(["bus", "agents", "--db", str(store.path)]) == 0
    out = capsys.readouterr()
    assert "\x1b" not in out.out and "a\\x1b[2J" in out.out and "0.1.0" in out.out
    assert "1 agents" in out.err
    assert main(["bus", "agents", "--db", str(store.path), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["agent_id"] == "a\x1b[2J" and row["state"] == "ok" and row["slot"] == "b"


def test_retention_by_age_deletes_old_records_in_batches(tmp_path: Path) -> None:
    retention = Retention(max_age_s=3600, max_bytes=1 << 40, batch_rows=100)
    store = FlowStore(tmp_path / "bus.sqlite", sync="off", retention=retention)
    try:
        old = NOW - 2 * 3600 * 10**9
        store.submit([_rec("a", i, ts=old) for i in range(1, 351)]).result(10)
        store.submit([_rec("a", i) for i in range(351, 361)]).result(10)  # young
        for _ in range(10):
            store.submit([]).result(10)  # each commit lets the writer prune one batch
    finally:
        store.close()
    assert count(open_reader(tmp_path / "bus.sqlite")) == 10
    assert store.pruned_total == 350


def test_retention_by_size_keeps_the_used_pages_under_the_bound(tmp_path: Path) -> None:
    bound = 1 << 20
    retention = Retention(max_age_s=10**9, max_bytes=bound, batch_rows=500)
    store = FlowStore(tmp_path / "bus.sqlite", sync="off", retention=retention)
    try:
        for batch in range(40):  # ~ 8,000 records of ~300 bytes: 2.4 MB without retention
            store.submit([_rec("a", batch * 200 + i) for i in range(1, 201)]).result(10)
    finally:
        store.close()
    conn = sqlite3.connect(tmp_path / "bus.sqlite")
    pages, free, size = (
        conn.execute(f"PRAGMA {p}").fetchone()[0]
        for p in ("page_count", "freelist_count", "page_size")
    )
    # bounded by the limit plus what one batch can add before the next prune
    assert (pages - free) * size < bound + 200 * 400
    assert count(open_reader(tmp_path / "bus.sqlite")) < 8000
