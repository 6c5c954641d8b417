"""Power-cut campaign: a provisioned box metering mirrored traffic loses its power at random
points, again and again, and after each cut it comes back, recovers its WAL and delivers.

The plan is `INFRASPECTRE_POWERCUTS` (BOARD:CUTS,...; CI's default is one cut on virt; `make
soak-board` runs 16 on virt and 4 on raspi3b); the cut points come from
`INFRASPECTRE_POWERCUT_SEED` (random when unset) and the seed is printed, so any campaign can be
replayed. Each board gets its own card, provisioned once over its console as a technician does.

Invariants checked after every cut, at the host bus (the box runs as in production: no shell):
- the box boots to READY again and its agent delivers records sealed after the cut;
- exactly once: no sequence number, no idempotency key and no conversation is stored twice;
- the chain breaks only at the cuts: the bus's chain runs number cuts + 1 (a record lost inside
  a run, i.e. a durable record not delivered while a later one was, would split a run) and its
  restart events (an empty prev_sig: the agent's mark of an unclean stop) number the cuts;
- what was lost is accounted for: the conversations of a cut's traffic that never arrived are
  counted, and they are a tail of what was sent (records are sealed in order and the WAL makes
  a prefix durable, so a lost conversation followed by a delivered one is a durable record
  lost); a conversation sent after the reboot is delivered (the capture runs again).
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from appliance.bus.config import BusSettings, EventBusConfig, TlsConfig
from appliance.bus.server import BusServer
from appliance.capture.config import MeterConfig
from appliance.config import StorageConfig
from appliance.devkit.qemu.fixtures import MirrorPort
from appliance.image import settings
from appliance.pki import init_pki
from appliance.qemu import boards
from appliance.qemu.machine import GUESTFWD_ADDR, Machine
from appliance.wal.config import WalConfig

pytestmark = pytest.mark.timeout(0)  # bounded by the plan: every wait below has its own bound

SERVER = ("198.51.100.30", 443)
#: when the cut falls, after the first conversation of the traffic reached the bus (uniform)
TRAFFIC_S = (0.0, 10.0)
#: bounds of the waits for the box (a loaded 2-core host, TCG)
BOOT_S, DELIVER_S = 420.0, 420.0
#: how far behind the host's traffic the emulated guest may meter on a loaded host (TCG)
GUEST_LAG_S = 15.0
#: the longest tail of conversations a cut may lose: those closed too recently to be records
#: yet, and records not yet durable, with the guest's lag (the box runs the default settings)
LOSS_WINDOW_S = MeterConfig().close_linger_s + WalConfig().flush_interval_ms / 1000 + GUEST_LAG_S


def _plan() -> list[tuple[str, int]]:
    spec = os.environ.get("INFRASPECTRE_POWERCUTS", "virt:1")
    plan = []
    for item in spec.split(","):
        board, _, cuts = item.partition(":")
        if board not in boards.names() or not cuts.isdigit() or int(cuts) < 1:
            raise ValueError(f"INFRASPECTRE_POWERCUTS: {item!r} is not BOARD:CUTS (boards: "
                             f"{', '.join(boards.names())})")  # fmt: skip
        plan.append((board, int(cuts)))
    return plan


SEED = int(os.environ.get("INFRASPECTRE_POWERCUT_SEED") or random.SystemRandom().randrange(2**32))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    init_pki(d, [GUESTFWD_ADDR])
    return d


@pytest.fixture
def bus(pki: Path, tmp_path: Path) -> Iterator[BusServer]:
    cfg = EventBusConfig(host="127.0.0.1", port=0, metrics_port=-1, health_port=-1)
    cfg.tls = TlsConfig(cert_dir=pki)
    cfg.validate()
    with BusServer(BusSettings(eventbus=cfg, storage=StorageConfig(data_dir=tmp_path))) as b:
        yield b


def _conversation(port: int) -> list[bytes]:
    """One TCP conversation from 192.0.2.x:port, closed by FIN both ways (exported promptly)."""
    client = (f"192.0.2.{port % 200 + 1}", port)
    steps = [(True, "S", 0), (False, "SA", 0), (True, "A", 0), (True, "PA", 100),
             (False, "PA", 300), (True, "FA", 0), (False, "FA", 0), (True, "A", 0)]  # fmt: skip
    frames = []
    for from_client, flags, payload in steps:
        src, dst = (client, SERVER) if from_client else (SERVER, client)
        frames.append(bytes(
            Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:00:14")
            / IP(src=src[0], dst=dst[0]) / TCP(sport=src[1], dport=dst[1], flags=flags)
            / (b"d" * payload)
        ))  # fmt: skip
    return frames


class Traffic:
    """Sends conversations with increasing client ports onto the mirror port until stopped."""

    def __init__(self, mirror: MirrorPort, first_port: int) -> None:
        self.mirror = mirror
        self.next_port = first_port
        self.sent: list[int] = []
        #: host monotonic time at which each conversation of sent ended (its last frame)
        self.sent_at: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set() and self.next_port < 65000:
            for frame in _conversation(self.next_port):
                self.mirror.send(frame)
                time.sleep(0.01)
            self.sent.append(self.next_port)
            self.sent_at.append(time.monotonic())
            self.next_port += 1
            time.sleep(0.05)


def _rows(bus: BusServer, sql: str, *args: object) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{bus.store.path}?mode=ro", uri=True, timeout=30)
    try:
        return list(conn.execute(sql, args))
    finally:
        conn.close()


def _wait_rows(bus: BusServer, agent_id: str, more_than: int, timeout: float) -> int:
    """The agent's stored records, once more than more_than (or at timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        n = int(str(_rows(bus, "SELECT count(*) FROM records WHERE agent_id = ?", agent_id)[0][0]))
        if n > more_than or time.monotonic() > deadline:
            return n
        time.sleep(2)


@pytest.mark.parametrize(("board", "cuts"), _plan())
def test_power_cuts_during_mirrored_traffic(  # type: ignore[no-untyped-def]
    board: str, cuts: int, pki: Path, bus: BusServer, tmp_path: Path, rpi_image: Path,
    capsys: pytest.CaptureFixture[str], provision_over_console,
) -> None:  # fmt: skip
    rng = random.Random(f"{SEED}:{board}")
    with capsys.disabled():
        print(f"\npower-cut campaign: seed {SEED}, {cuts} cut(s) on {board}", file=sys.stderr)
    agent_id = f"cut-{board}"
    card = tmp_path / "card.img"
    shutil.copyfile(rpi_image, card)
    settings.configure(card, {"agent_id": agent_id, "bus": f"{GUESTFWD_ADDR}:50051"}, [])
    mirror = MirrorPort()
    box = Machine(boards.load(board), card, tmp_path / board, uplink_port=bus.port,
                  mirror=mirror.mirror, console_shell=False)  # fmt: skip
    flows_sql = "SELECT src_port FROM records WHERE agent_id = ? AND kind = 'flow'"
    try:
        box.boot(BOOT_S)
        provision_over_console(box, pki, agent_id)
        assert bus.reload_trust_map()
        assert _wait_rows(bus, agent_id, 0, DELIVER_S) > 0, "the agent never delivered"
        port = 20000
        lost_per_cut: list[int] = []
        tails: list[float] = []
        for cut in range(1, cuts + 1):
            traffic_s = rng.uniform(*TRAFFIC_S)
            with Traffic(mirror, port) as traffic:
                # the cut falls at a random point after the pipeline is seen delivering this
                # traffic, so that each cut has records on both sides of it
                first = port
                deadline = time.monotonic() + DELIVER_S
                while (first,) not in _rows(bus, flows_sql, agent_id):
                    assert time.monotonic() < deadline, f"cut {cut}: traffic never delivered"
                    time.sleep(0.5)
                time.sleep(traffic_s)
                box.power_cut()
                cut_at = time.monotonic()
            port = traffic.next_port
            before = _wait_rows(bus, agent_id, -1, 0)
            ready_s = box.boot(BOOT_S)
            # the new run delivers (its counters, then the WAL's backlog and new flows)
            after = _wait_rows(bus, agent_id, before, DELIVER_S)
            assert after > before, f"cut {cut}: nothing delivered after the cut"
            # one more conversation after the reboot proves the capture runs again
            probe = port
            port += 1
            for frame in _conversation(probe):
                mirror.send(frame)
                time.sleep(0.01)
            deadline = time.monotonic() + DELIVER_S
            while time.monotonic() < deadline:
                if (probe,) in _rows(bus, flows_sql, agent_id):
                    break
                time.sleep(2)
            flows = [int(str(r[0])) for r in _rows(bus, flows_sql, agent_id)]
            assert probe in flows, f"cut {cut}: the capture did not resume after the reboot"
            # exactly once
            assert len(flows) == len(set(flows)), f"cut {cut}: a conversation stored twice"
            seqs = [int(str(r[0])) for r in _rows(
                bus, "SELECT seq FROM records WHERE agent_id = ?", agent_id)]  # fmt: skip
            assert len(seqs) == len(set(seqs)), f"cut {cut}: a sequence number stored twice"
            # the chain breaks only at the cuts
            runs = _rows(bus, "SELECT lo, hi FROM chain_runs WHERE agent_id = ? ORDER BY lo",
                         agent_id)  # fmt: skip
            restarts = _rows(bus, "SELECT seq_lo FROM chain_events WHERE agent_id = ? "
                             "AND kind = 'restart'", agent_id)  # fmt: skip
            assert len(runs) == cut + 1, f"cut {cut}: chain runs {runs} (a hole inside a run)"
            assert len(restarts) == cut, f"cut {cut}: restart events {restarts}"
            # accounted loss: only conversations of the last window before this cut
            delivered = [p in set(flows) for p in traffic.sent]
            lost = delivered.count(False)
            assert delivered == sorted(delivered, reverse=True), (
                f"cut {cut}: a conversation was lost before a later one was delivered "
                f"(ports {traffic.sent[0]}..{traffic.sent[-1] if traffic.sent else '-'})"
            )
            # the tail lost: from the end of its first conversation to the cut
            tail_s = cut_at - traffic.sent_at[delivered.index(False)] if lost else 0.0
            assert tail_s <= LOSS_WINDOW_S, (
                f"cut {cut}: conversations ended {tail_s:.1f} s before the cut were lost "
                f"(loss window {LOSS_WINDOW_S:.0f} s)"
            )
            lost_per_cut.append(lost)
            tails.append(round(tail_s, 1))
            with capsys.disabled():
                print(f"  cut {cut}/{cuts} {traffic_s:.1f} s after the first delivery: "
                      f"{len(traffic.sent)} conversations sent, {lost} lost in the window "
                      f"(the last {tail_s:.1f} s), "
                      f"back to READY in {ready_s:.0f} s", file=sys.stderr)  # fmt: skip
        with capsys.disabled():
            print(f"  {board}: {cuts} cuts, conversations lost per cut {lost_per_cut}, "
                  f"lost tails in seconds {tails}", file=sys.stderr)  # fmt: skip
    finally:
        box.power_cut()
        mirror.close()
