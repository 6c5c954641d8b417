"""IPFIX export against real collectors on loopback: nfcapd (nfdump 1.7) over UDP, the
python-ipfix collector process over TCP. A real bus stores signed flows; its exporter sends
them; what the collector wrote is compared with what was stored."""

from __future__ import annotations

import collections
import datetime as dt
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from testsupport.ipfix_peers import (
    Nfcapd,
    TcpCollector,
    expected_nfdump,
    free_port,
    known_flows,
    wait_for,
)

from appliance.bus.export.config import CollectorConfig, ExportConfig, IpfixConfig
from appliance.bus.server import BusServer
from appliance.crypto import Sealer, load_signing_key
from appliance.wire import FlowEvent, PublishBatchRequest


def _export(*collectors: CollectorConfig, **kw: Any) -> ExportConfig:
    return ExportConfig(IpfixConfig(collectors=list(collectors), **kw))


def _publish(p: Any, flows: list[FlowEvent], chunk: int = 250) -> None:
    for i in range(0, len(flows), chunk):
        envs = [p.sealer.seal(f) for f in flows[i : i + chunk]]
        acks = p.stub.PublishBatch(PublishBatchRequest(envelopes=envs), timeout=30).acks
        assert [a.status for a in acks] == [a.OK for a in acks]


def _delivered(bus: BusServer) -> int:
    return sum(e.flows_delivered for e in bus.export.exporters)


@pytest.mark.parametrize("mode", ["biflow", "uniflow"])
def test_nfcapd_shows_every_stored_flow_once(
    mode: str, pki: Path, bus_factory: Any, publisher: Any, tmp_path: Path
) -> None:
    nfcapd = Nfcapd.start(tmp_path / "nf")
    try:
        collector = CollectorConfig(f"127.0.0.1:{nfcapd.port}", "udp", mode)
        bus: BusServer = bus_factory(export=_export(collector))
        p = publisher(pki, bus.port)
        flows = known_flows(600)
        _publish(p, flows)
        wait_for(lambda: _delivered(bus) == len(flows), "the exporter to send every flow")
        bus.stop()
    finally:
        nfcapd.stop()
    got = nfcapd.rows()
    want = expected_nfdump(flows, mode)
    assert len(got) == len(want)
    assert collections.Counter(got) == collections.Counter(want)


def test_templates_are_sent_again_so_a_late_collector_decodes(
    pki: Path, bus_factory: Any, publisher: Any, tmp_path: Path
) -> None:
    """UDP: the collector starts after the first messages (and their templates) were lost;
    the packet-based template refresh lets it decode what follows."""
    port = free_port()
    collector = CollectorConfig(f"127.0.0.1:{port}", "udp", "biflow")
    bus: BusServer = bus_factory(export=_export(collector, template_refresh_messages=2))
    p = publisher(pki, bus.port)
    lost = known_flows(40)
    _publish(p, lost)
    wait_for(lambda: _delivered(bus) == len(lost), "the first flows to be sent (to nobody)")
    nfcapd = Nfcapd.start(tmp_path / "nf", port)
    try:
        later = known_flows(200, end_ms=lost[-1].end_time - 10_000)
        _publish(p, later)
        wait_for(lambda: _delivered(bus) == len(lost) + len(later), "the later flows to be sent")
        bus.stop()
    finally:
        nfcapd.stop()
    got = collections.Counter(nfcapd.rows())
    want = collections.Counter(expected_nfdump(later, "biflow"))
    # At most the messages before the first refresh (2 per domain) are undecodable.
    assert not got - want, "nothing but the later flows, each at most once"
    assert sum((want - got).values()) <= 2 * 12


@pytest.fixture
def collectors() -> Iterator[list[TcpCollector]]:
    """Collector processes a test starts; any still running at the end is killed by PID."""
    started: list[TcpCollector] = []
    yield started
    for col in started:
        col.stop(signal.SIGKILL)


def _flows_of(lines: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (r["sourceIPv4Address"] if "sourceIPv4Address" in r else r["sourceIPv6Address"],
         r["sourceTransportPort"], r["octetDeltaCount"], r["flowStartMilliseconds"])
        for r in lines if "octetDeltaCount" in r
    ]  # fmt: skip


def _key(f: FlowEvent) -> tuple[Any, ...]:
    port = 0 if f.ip_proto in (1, 58) else f.src_port
    return (f.src_ip, port, f.bytes_tx, f.start_ns // 1_000_000)


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL])
def test_tcp_collector_down_and_back_gets_nothing_twice(
    stop_signal: int,
    pki: Path,
    bus_factory: Any,
    publisher: Any,
    tmp_path: Path,
    collectors: list[TcpCollector],
) -> None:
    """The collector stops mid-stream (gracefully per RFC 7011, or killed), flows keep being
    stored, it comes back on the same port, and later the bus itself restarts: every flow
    arrives once (SIGTERM), or at most once with the loss bounded by what its kernel had
    acknowledged unread (SIGKILL); sequence numbers never jump within a session."""
    out = tmp_path / "collected.jsonl"
    col = TcpCollector.start(out)
    collectors.append(col)
    collector = CollectorConfig(f"127.0.0.1:{col.port}", "tcp", "biflow")
    export = _export(collector, batch_flows=50, reconnect_max_s=1)
    bus: BusServer = bus_factory(export=export)
    p = publisher(pki, bus.port)
    flows = known_flows(3000)
    _publish(p, flows[:1000])
    wait_for(lambda: len(col.lines()) > 200, "the collector to receive some flows")
    col.stop(stop_signal)  # mid-stream: the exporter is still sending the first 1000
    _publish(p, flows[1000:2000])
    col = TcpCollector.start(out, col.port)
    collectors.append(col)
    wait_for(lambda: _delivered(bus) == 2000, "the exporter to deliver after reconnecting")
    bus.stop()  # the position is saved; a new bus on the same store resumes after it
    bus = bus_factory(export=export)
    sealer = p.sealer  # the same agent carries on its chain
    p = publisher(pki, bus.port)
    p.sealer = sealer
    _publish(p, flows[2000:])
    wait_for(lambda: _delivered(bus) == 1000, "the restarted bus to deliver the rest")
    bus.stop()
    col.stop()
    lines = col.lines()
    assert not [x for x in lines if "sequence_error" in x]
    keys = [_key(f) for f in flows]
    assert len(set(keys)) == len(flows), "the key names one flow"
    got = collections.Counter(_flows_of(lines))  # how many times each flow key arrived
    assert set(got) <= set(keys), "nothing but stored flows"
    assert max(got.values()) == 1, "no flow twice"
    missing = [k for k in keys if k not in got]
    if stop_signal == signal.SIGTERM:
        assert got == collections.Counter(keys), "every flow exactly once"
    else:  # acknowledged by the killed collector's kernel, never read: at most its buffer,
        # and only among the flows in flight when it was killed
        assert set(missing) <= set(keys[:1000]) and len(missing) < 1000
    names = {x["observationDomainName"] for x in lines if "observationDomainName" in x}
    assert names == {"branch-1"}


def _replay(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", "bus", "export", "ipfix", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_replay_command_sends_a_time_range(
    pki: Path, bus_factory: Any, publisher: Any, tmp_path: Path
) -> None:
    """Three groups of flows sealed 50, 30 and 10 minutes ago; `--since 40m --until` (UNIX
    seconds) 20 minutes ago sends the middle group and nothing else, once; ISO times too."""
    bus: BusServer = bus_factory()
    p = publisher(pki, bus.port)
    now_ns = time.time_ns()
    sealed_at = [now_ns]
    p.sealer = Sealer("branch-1", load_signing_key(pki / "agents/branch-1/ed25519.key"),
                      clock_ns=lambda: sealed_at[0])  # fmt: skip
    flows = known_flows(300, end_ms=now_ns // 1_000_000 - 3_600_000)
    groups = [flows[:100], flows[100:200], flows[200:]]
    for minutes, group in zip((50, 30, 10), groups, strict=True):
        sealed_at[0] = now_ns - minutes * 60 * 1_000_000_000
        _publish(p, group)
    bus.stop()
    db = str(bus.store.path)
    until = f"{(now_ns - 20 * 60 * 1_000_000_000) / 1e9:.3f}"
    iso = dt.datetime.fromtimestamp(now_ns / 1e9 - 40 * 60, dt.UTC).isoformat()
    for since in ("40m", iso):
        nfcapd = Nfcapd.start(tmp_path / f"nf-{len(since)}")
        try:
            done = _replay("--db", db, "--collector", f"127.0.0.1:{nfcapd.port}",
                           "--since", since, "--until", until)  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert "100 flows sent" in done.stderr
        finally:
            nfcapd.stop()
        assert collections.Counter(nfcapd.rows()) == collections.Counter(
            expected_nfdump(groups[1], "biflow")
        )
    # a TCP collector nobody listens on: a one-line reason, non-zero, nothing half-sent
    nobody = f"127.0.0.1:{free_port(socket.SOCK_STREAM)}"
    done = _replay("--db", db, "--tcp", "--collector", nobody, "--since", "1h")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        f"infraspectre: export to tcp://{nobody} failed: cannot reach the collector tcp://{nobody}"
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--collector", "127.0.0.1", "--since", "1h"], "--collector"),
        (["--collector", "127.0.0.1:70000", "--since", "1h"], "--collector"),
        (["--collector", "127.0.0.1:4739", "--since", "yesterday"], "cannot read time"),
        (["--collector", "127.0.0.1:4739", "--since", "1h", "--until", "2h"], "--until"),
        (["--collector", "127.0.0.1:4739", "--since", "1h", "--db", "MISSING"], "MISSING"),
    ],
)
def test_replay_command_refuses_bad_input_in_one_line(
    args: list[str], says: str, tmp_path: Path
) -> None:
    args = [str(tmp_path / "missing.sqlite") if a == "MISSING" else a for a in args]
    if "--db" not in args:
        args += ["--db", str(tmp_path / "missing.sqlite")]
    done = _replay(*args)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and says.replace("MISSING", "missing.sqlite") in lines[0], lines
