"""The exporter's delivery rules with a scripted transport over a real (temporary) store:
TCP re-sends exactly what the collector never acknowledged, the position survives a restart,
UDP templates come again after template_refresh_s."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ipfix.ie
import ipfix.message
from testsupport.flows import recent_flow

from appliance.bus.export.config import CollectorConfig, IpfixConfig
from appliance.bus.export.exporter import Exporter, StateFile
from appliance.bus.store import COLUMNS, INSERT, _migrate
from appliance.wire import Envelope

ipfix.ie.use_iana_default()
ipfix.ie.use_5103_default()


def _store(path: Path, start: int, n: int) -> None:
    """n flow rows (bytes_tx = start + i) and a counters row between them."""
    conn = sqlite3.connect(path, isolation_level=None)
    _migrate(conn)
    for i in range(start, start + n):
        f = recent_flow(i)
        env = Envelope(version="v1", agent_id="branch-1", seq=i + 1, flow=f)
        row = dict.fromkeys(COLUMNS)
        row.update(agent_id="branch-1", idem_key=f"k{i}", seq=i + 1, ts_ns=1, received_ns=1,
                   kind="flow", envelope=env.SerializeToString(), key_id="k")  # fmt: skip
        conn.execute(INSERT, tuple(row[c] for c in COLUMNS))
        if i % 7 == 0:
            row.update(idem_key=f"c{i}", seq=10**6 + i, kind="counters", envelope=b"")
            conn.execute(INSERT, tuple(row[c] for c in COLUMNS))
    conn.close()


class Script:
    """A transport whose sessions follow a script: session k acknowledges bytes up to
    acks[k] (None: all) and fails its send of message fail_at[k] (None: never)."""

    def __init__(self, reliable: bool, acks: list[int | None], fail_at: list[int | None]) -> None:
        self.reliable = reliable
        self.acks, self.fail_at = acks, fail_at
        self.sessions: list[list[bytes]] = []
        self.written = 0
        self.finished = threading.Event()

    def open(self) -> None:
        self.sessions.append([])
        self.written = 0

    def send(self, data: bytes) -> None:
        k = len(self.sessions) - 1
        fail = self.fail_at[k] if k < len(self.fail_at) else None
        if fail is not None and len(self.sessions[k]) == fail:
            self.written += len(data) // 2  # half of it went out, then the connection broke
            self.sessions[k].append(data)
            raise ConnectionResetError("scripted")
        self.sessions[k].append(data)
        self.written += len(data)

    def acked(self) -> int:
        k = len(self.sessions) - 1
        cap = self.acks[k] if k < len(self.acks) else None
        return self.written if cap is None else min(cap, self.written)

    def closing(self) -> bool:
        return False

    def close(self, drain_s: float) -> int:
        return self.acked()

    def received(self) -> list[dict[str, Any]]:
        """What a collector decoded: each session's bytes up to what was acknowledged."""
        out = []
        for k, session in enumerate(self.sessions):
            cap = self.acks[k] if k < len(self.acks) else None
            stream, buf = b"".join(session), ipfix.message.MessageBuffer()
            stream = stream if cap is None else stream[:cap]
            offset = 0
            while offset + 16 <= len(stream):
                length = int.from_bytes(stream[offset + 2 : offset + 4], "big")
                if offset + length > len(stream):
                    break  # cut short: the collector never sees its end
                buf.from_bytes(stream[offset : offset + length])
                out += [r for r in buf.namedict_iterator() if "octetDeltaCount" in r]
                offset += length
        return out


def _run(exporter: Exporter, until: Callable[[], bool]) -> None:
    exporter.start()
    _wait(until)
    exporter.stop()
    assert exporter.error is None


def _exporter(tmp_path: Path, script: Script, **cfg: Any) -> Exporter:
    collector = CollectorConfig("127.0.0.1:4739", "tcp" if script.reliable else "udp")
    config = IpfixConfig(collectors=[collector], batch_flows=20, start_at="oldest",
                         max_message_bytes=600, **cfg)  # fmt: skip
    return Exporter(
        collector, config, tmp_path / "bus.sqlite", transport=script,
        state=StateFile(tmp_path / "state.json"),
    )  # fmt: skip


def test_tcp_sends_again_only_what_was_never_acknowledged(tmp_path: Path) -> None:
    _store(tmp_path / "bus.sqlite", 0, 200)
    # session 1 acknowledges 3000 bytes and breaks on its 9th message; session 2 everything
    script = Script(True, [3000, None], [8, None])
    e = _exporter(tmp_path, script)
    _run(e, lambda: e.flows_delivered == 200)
    got = sorted(r["octetDeltaCount"] for r in script.received())
    assert got == [1000 + i for i in range(200)]
    assert len(script.sessions) == 2


def test_the_position_survives_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "bus.sqlite"
    _store(db, 0, 50)
    first = Script(False, [None], [None])
    e = _exporter(tmp_path, first)
    _run(e, lambda: e.flows_delivered == 50)
    _store(db, 50, 30)
    second = Script(False, [None], [None])
    e = _exporter(tmp_path, second)
    _run(e, lambda: e.flows_delivered == 30)
    assert sorted(r["octetDeltaCount"] for r in second.received()) == [1050 + i for i in range(30)]


def test_udp_templates_come_again_after_the_refresh_time(tmp_path: Path) -> None:
    db = tmp_path / "bus.sqlite"
    _store(db, 0, 5)
    now = [1000.0]
    script = Script(False, [None], [None])
    e = _exporter(tmp_path, script, template_refresh_s=60, template_refresh_messages=1000)
    e.clock = lambda: now[0]
    e.start()
    firsts = []
    sent = 0  # messages before the round's: counted once the previous round is delivered
    for step, total in ((0.0, 5), (30.0, 10), (31.0, 15)):  # at 0 s, 30 s and 61 s
        now[0] += step
        if total > 5:
            _store(db, total - 5, 5)
        _wait(lambda total=total: e.flows_delivered == total)  # type: ignore[misc]
        firsts.append(int.from_bytes(script.sessions[0][sent][16:18], "big"))
        sent = len(script.sessions[0])
    e.stop()
    assert firsts == [2, 256, 2]  # a template set first, then data only, then templates again


def _wait(check: Callable[[], bool]) -> None:
    for _ in range(600):
        if check():
            return
        threading.Event().wait(0.05)
    raise AssertionError("timed out")
