"""A known capture, end to end into one nfcapd, two ways:

- ours: the pcap metered (appliance.capture), the flows handed to a real agent (sealed, chained,
  written to its WAL, forwarded over mTLS) and stored by a real bus, whose IPFIX exporter sends
  them to nfcapd;
- the peer's: the same pcap through Debian's `softflowd -v 10` into the same nfcapd.

`nfdump -o csv` must show every flow of the capture exactly once from the bus, as the capture's
hand-written truth has it; and the two exporters must agree flow by flow wherever their
definitions match, with each difference being the documented one (docs/EXPORT.md, "Beside
softflowd").
"""

from __future__ import annotations

import collections
import csv
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from testsupport.export_capture import Conversation, KnownCapture, build_known_capture
from testsupport.ipfix_peers import Nfcapd, wait_for
from testsupport.peers import require_peers
from testsupport.sources import PcapFlows

from appliance.agent.config import AgentConfig, AgentTls
from appliance.agent.runtime import Agent, load_identity
from appliance.bus.config import BusSettings, EventBusConfig, TlsConfig
from appliance.bus.export.config import CollectorConfig, ExportConfig, IpfixConfig
from appliance.bus.query import open_reader
from appliance.bus.server import BusServer
from appliance.config import StorageConfig
from appliance.wal import Wal
from appliance.wal.config import WalConfig

AGENT = "branch-1"
IFINDEX = 7  # the bus's ingressInterface for the agent's eth1; softflowd exports 0


@dataclass(frozen=True)
class Row:
    """One nfdump `-o csv` record, times in ms."""

    ts: int
    te: int
    sa: str
    da: str
    sp: str
    dp: str
    pr: str
    ipkt: int
    ibyt: int
    opkt: int
    obyt: int
    vlan: int


@dataclass
class Exports:
    capture: KnownCapture
    ours: list[Row]  # from the bus
    peer: list[Row]  # from softflowd
    stored_flows: int
    ours_csv: list[tuple[str, ...]]  # from the bus, `-o csv`


def _ms(text: str) -> int:
    import datetime as dt

    when = dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=dt.UTC)
    return round(when.timestamp() * 1000)


#: The nfdump csv columns compared: times, endpoints, protocol, packets and bytes each way, VLAN.
CSV_FIELDS = ("ts", "te", "td", "sa", "da", "sp", "dp", "pr")
CSV_FIELDS += ("ipkt", "ibyt", "opkt", "obyt", "svln")


def _csv_rows(folder: Path, ifindex: int) -> list[tuple[str, ...]]:
    """`nfdump -r FILE -o csv` of every file nfcapd wrote, the records whose ingress interface
    is ifindex, as CSV_FIELDS (nfdump's csv has times to the second and the duration in ms)."""
    rows = []
    for path in sorted(folder.glob("nfcapd.2*")):
        out = subprocess.run(
            ["nfdump", "-r", str(path), "-N", "-o", "csv"], check=True, capture_output=True,
            text=True, timeout=120, env={**os.environ, "TZ": "UTC"},
        ).stdout  # fmt: skip
        for r in csv.DictReader(x for x in out.splitlines() if x.strip()):
            if not r.get("sa") or r["ts"].startswith("Summary"):
                break  # the summary lines after the records
            if r["in"] == str(ifindex):
                rows.append(tuple(r[k].strip() for k in CSV_FIELDS))
    return rows


def _fmt_rows(folder: Path) -> list[tuple[str, Row]]:
    """Every record with times to the ms (nfdump's fmt output) and its ingress interface."""
    fmt = "fmt:%ts;%te;%sa;%da;%sp;%dp;%pr;%ipkt;%ibyt;%opkt;%obyt;%svln;%in"
    out = subprocess.run(
        ["nfdump", "-R", str(folder), "-q", "-N", "-o", fmt], check=True, capture_output=True,
        text=True, timeout=120, env={**os.environ, "TZ": "UTC"},
    ).stdout  # fmt: skip
    rows = []
    for line in out.splitlines():
        c = [x.strip() for x in line.split(";")]
        if len(c) < 13:
            continue
        rows.append((c[12], Row(_ms(c[0]), _ms(c[1]), c[2], c[3], c[4], c[5], c[6],
                                *map(int, c[7:12]))))  # fmt: skip
    return rows


def _softflowd(pcap: Path, port: int) -> None:
    """softflowd reads the capture and exports IPFIX to 127.0.0.1:port. `-c none`: no control
    socket (it would wait on it forever); `-m 200000`: its default table of 8192 splits flows;
    `-T vlan`: the VLAN is part of its key and exported; `-A milli`: absolute ms times; `-6`:
    IPv6 too; `-d`: in the foreground."""
    subprocess.run(
        ["softflowd", "-r", str(pcap), "-c", "none", "-m", "200000", "-v", "10", "-T", "vlan",
         "-A", "milli", "-6", "-d", "-n", f"127.0.0.1:{port}"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip


def _udp_queue(port: int) -> int:
    """Bytes waiting in the receive queue of the UDP socket bound to 127.0.0.1:port."""
    out = subprocess.run(
        ["ss", "-Hlun", f"sport = :{port}"], capture_output=True, text=True, timeout=30
    ).stdout.split()
    return int(out[1]) if len(out) > 1 else -1


def _run_bus_and_agent(pki: Path, work: Path, capture: KnownCapture, nfcapd_port: int) -> int:
    """A real agent meters the capture (PcapFlows) and delivers through a real bus that exports
    biflows to nfcapd; returns how many flows the bus stored."""
    trust = work / "trust_map.yaml"
    trust.write_text((pki / "trust_map.yaml").read_text().replace("agents/", f"{pki}/agents/"))
    collector = CollectorConfig(f"127.0.0.1:{nfcapd_port}", "udp", "biflow")
    cfg = EventBusConfig(host="127.0.0.1", port=0, metrics_port=0, health_port=0)
    cfg.tls = TlsConfig(cert_dir=pki)
    cfg.trust_map = trust
    cfg.export = ExportConfig(IpfixConfig(collectors=[collector], interfaces={"eth1": IFINDEX}))
    cfg.validate()
    bus = BusServer(BusSettings(eventbus=cfg, storage=StorageConfig(data_dir=work / "bus"))).start()
    try:
        flows = PcapFlows(capture.path, "eth1")
        acfg = AgentConfig(
            bus=[f"127.0.0.1:{bus.port}"], server_name="localhost", metrics_port=-1,
            tls=AgentTls(cert_dir=pki / "agents" / AGENT, ca=str(pki / "ca.crt")),
        )  # fmt: skip
        acfg.validate()
        wal = Wal.open(WalConfig(path=work / "wal", flush_interval_ms=50))
        agent = Agent(acfg, load_identity(acfg), wal, flows, None, work)
        agent.start()
        try:
            wait_for(lambda: flows.summary is not None, "the agent to meter the capture", 180)
            exporter = bus.export.exporters[0]
            wait_for(lambda: exporter.flows_delivered >= flows.flows, "the bus to export", 180)
        finally:
            agent.stop()
        assert flows.summary is not None and flows.summary.frames == capture.frames
        reader = open_reader(bus.store.path)
        try:
            return int(
                reader.execute("SELECT count(*) FROM records WHERE kind = 'flow'").fetchone()[0]
            )
        finally:
            reader.close()
    finally:
        bus.stop()


@pytest.fixture(scope="module")
def exports(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exports]:
    require_peers()
    work = tmp_path_factory.mktemp("export-capture")
    capture = build_known_capture(work / "known.pcap", seed=17)
    nfcapd = Nfcapd.start(work / "nf")
    try:
        stored = _run_bus_and_agent(pki, work, capture, nfcapd.port)
        _softflowd(capture.path, nfcapd.port)
        wait_for(lambda: _udp_queue(nfcapd.port) == 0, "nfcapd to read what softflowd sent")
    finally:
        nfcapd.stop()
    rows = _fmt_rows(nfcapd.folder)
    assert {i for i, _ in rows} == {str(IFINDEX), "0"}
    ours = [r for i, r in rows if i == str(IFINDEX)]
    peer = [r for i, r in rows if i == "0"]
    yield Exports(capture, ours, peer, stored, _csv_rows(nfcapd.folder, IFINDEX))


def _truth_row(c: Conversation) -> Row:
    icmp = c.proto in (1, 58)
    dport = f"{(128 if c.proto == 58 else 8)}.0" if icmp else str(c.dport)
    return Row(
        c.first_ns // 1_000_000, c.last_ns // 1_000_000, c.src, c.dst, str(c.sport), dport,
        str(c.proto), c.fwd.packets, c.fwd.ip_bytes, c.rev.packets, c.rev.ip_bytes, c.vlan,
    )  # fmt: skip


def test_nfcapd_shows_every_flow_of_the_capture_once_after_agent_and_bus(
    exports: Exports,
) -> None:
    """pcap -> meter -> agent (seal, WAL, mTLS) -> bus (verify, store) -> IPFIX -> nfcapd:
    addresses, ports, protocol, packets and bytes each way, first and last packet (ms) and VLAN
    of every conversation written into the capture, each exactly once."""
    want = collections.Counter(_truth_row(c) for c in exports.capture.conversations)
    assert exports.stored_flows == len(exports.capture.conversations)
    assert collections.Counter(exports.ours) == want


def _truth_csv(c: Conversation) -> tuple[str, ...]:
    import datetime as dt

    def second(ns: int) -> str:
        return dt.datetime.fromtimestamp(ns // 1_000_000_000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")

    icmp_type = {1: 8, 58: 128}.get(c.proto)
    dport = str(icmp_type << 8) if icmp_type is not None else str(c.dport)
    td = f"{(c.last_ns // 1_000_000 - c.first_ns // 1_000_000) / 1000:.3f}"
    name = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMP6"}[c.proto]
    return (second(c.first_ns), second(c.last_ns), td, c.src, c.dst, str(c.sport), dport, name,
            str(c.fwd.packets), str(c.fwd.ip_bytes), str(c.rev.packets), str(c.rev.ip_bytes),
            str(c.vlan))  # fmt: skip


def test_nfdump_csv_shows_every_flow_of_the_capture_once(exports: Exports) -> None:
    """The acceptance command itself, `nfdump -r FILE -o csv`: the same flows, once each."""
    want = collections.Counter(_truth_csv(c) for c in exports.capture.conversations)
    assert collections.Counter(exports.ours_csv) == want


Key = tuple[frozenset[tuple[str, str]], str, int]


def _key(sa: str, da: str, sp: str, dp: str, pr: str, vlan: int) -> Key:
    """A conversation's key as both meters share it: the two endpoints (address, port)
    unordered, protocol, VLAN. ICMP: addresses only (softflowd keys ICMP without the echo id,
    and puts type.code where a port would be)."""
    if pr in ("1", "58"):
        return frozenset({(sa, ""), (da, "")}), pr, vlan
    return frozenset({(sa, sp), (da, dp)}), pr, vlan


@dataclass
class Conv:
    """One conversation as a collector sees it: per direction (src, dst) packets and bytes;
    first and last packet over both directions (ms)."""

    packets: collections.Counter[tuple[str, str]]
    octets: collections.Counter[tuple[str, str]]
    first: int = 2**63
    last: int = 0
    records: int = 0

    def add(self, src: str, dst: str, packets: int, octets: int, first: int, last: int) -> None:
        if packets:
            self.packets[(src, dst)] += packets
            self.octets[(src, dst)] += octets
        self.first, self.last = min(self.first, first), max(self.last, last)
        self.records += 1


def _conversations(rows: list[Row], *, biflow: bool) -> dict[Key, Conv]:
    out: dict[Key, Conv] = collections.defaultdict(
        lambda: Conv(collections.Counter(), collections.Counter())
    )
    for r in rows:
        conv = out[_key(r.sa, r.da, r.sp, r.dp, r.pr, r.vlan)]
        conv.add(r.sa, r.da, r.ipkt, r.ibyt, r.ts, r.te)
        if biflow and r.opkt:
            conv.add(r.da, r.sa, r.opkt, r.obyt, r.ts, r.te)
            conv.records -= 1
    return dict(out)


def test_softflowd_and_the_bus_agree_flow_by_flow_where_definitions_match(
    exports: Exports,
) -> None:
    """The same capture through `softflowd -v 10` (one uniflow per direction) and through the
    agent and bus (one biflow per flow), in one nfcapd. Per conversation: the same endpoints,
    protocol and VLAN; the same packets each way; the same first and last packet (ms). The
    differences, each as docs/EXPORT.md explains them: softflowd's bytes include the Ethernet
    padding of short frames (ours are IP total length, octetDeltaCount's definition); its ICMP
    key has no echo id, so two pings with different ids between the same hosts are one flow
    there and two here; it reports a direction's own first and last packet, we the flow's."""
    ours = _conversations(exports.ours, biflow=True)
    peer = _conversations(exports.peer, biflow=False)
    assert set(peer) == set(ours)
    assert sum(c.records for c in peer.values()) == len(exports.peer)  # uniflows only

    padding: collections.Counter[tuple[Key, str, str]] = collections.Counter()
    ping_ids: collections.Counter[Key] = collections.Counter()
    for c in exports.capture.conversations:
        dport = "128.0" if c.proto == 58 else "8.0" if c.proto == 1 else str(c.dport)
        key = _key(c.src, c.dst, str(c.sport), dport, str(c.proto), c.vlan)
        padding[(key, c.src, c.dst)] += c.fwd.padding
        padding[(key, c.dst, c.src)] += c.rev.padding
        ping_ids[key] += c.proto in (1, 58)
    merged = {k for k, n in ping_ids.items() if n > 1}
    assert merged and any(padding.values()), "the capture shows both differences"

    for key, mine in ours.items():
        theirs = peer[key]
        assert theirs.packets == mine.packets, key
        want_octets = {d: n + padding[(key, *d)] for d, n in mine.octets.items()}
        assert dict(theirs.octets) == want_octets, key
        assert (theirs.first, theirs.last) == (mine.first, mine.last), key
        assert mine.records == (2 if key in merged else 1), key
