"""The WAL's surface: timers, config section, the seed's queue interface, metrics."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from testsupport.wal_helpers import small_config

from appliance.config import ConfigError
from appliance.devkit.wal.simdisk import SimDisk
from appliance.wal import Wal, WalUnavailable, load_wal_config
from appliance.wal.format import PAGE
from appliance.wal.metrics import register_metrics


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_interval_flush_and_cursor_write_happen_on_their_timers(tmp_path: Path) -> None:
    clock = FakeClock()
    cfg = small_config(tmp_path, flush_interval_ms=1000, cursor_interval_ms=2000)
    wal = Wal.open(cfg, storage=SimDisk(), background=False, clock=clock)
    wal.append("a", b"x" * 100)
    clock.now += 0.5
    wal.tick()
    assert wal.stats().fsyncs == 0
    clock.now += 0.6
    wal.tick()
    assert wal.stats().fsyncs == 1
    wal.ack(r.seq for r in wal.read(1))
    clock.now += 1.9
    wal.tick()
    assert wal.cursor_writes == 0
    clock.now += 0.2
    wal.tick()
    assert wal.cursor_writes == 1
    wal.close()


def test_background_thread_flushes_an_idle_writer(tmp_path: Path) -> None:
    disk = SimDisk()
    wal = Wal.open(small_config(tmp_path, flush_interval_ms=10), storage=disk)
    wal.append("a", b"x")
    for _ in range(500):  # bounded wait for the thread, not a timing assertion
        if wal.stats().fsyncs:
            break
        time.sleep(0.01)
    assert wal.stats().fsyncs >= 1
    wal.close()


def test_flush_never_rewrites_a_page_holding_durable_records(tmp_path: Path) -> None:
    disk = SimDisk()
    wal = Wal.open(small_config(tmp_path), storage=disk, background=False)
    wal.append("a", b"x" * 100)
    wal.flush()
    (name,) = [n for n in disk.names() if n.startswith("seg-")]
    first = bytes(disk.files[name].durable[: 2 * PAGE])
    wal.append("b", b"y" * 100)
    wal.flush()
    after = bytes(disk.files[name].durable)
    assert after[: 2 * PAGE] == first
    assert b"y" * 100 in after[2 * PAGE : 3 * PAGE]
    assert wal.stats().bytes_written == 3 * PAGE  # header + one page per flush
    wal.close()


def test_wal_section_is_strict_and_takes_is_wal_path() -> None:
    cfg = load_wal_config({"wal": {"flush_interval_ms": 500}}, env={"IS_WAL_PATH": "/data/wal"})
    assert cfg.path == Path("/data/wal") and cfg.flush_interval_ms == 500
    with pytest.raises(ConfigError, match=r"wal\.flush_intervall_ms: unknown key"):
        load_wal_config({"wal": {"flush_intervall_ms": 5}}, env={})
    with pytest.raises(ConfigError, match=r"wal\.segment_bytes"):
        load_wal_config({"wal": {"segment_bytes": 1000}}, env={})
    with pytest.raises(ConfigError, match=r"wal\.max_wal_bytes"):
        load_wal_config({"wal": {"max_wal_bytes": 4 * 1024 * 1024}}, env={})
    with pytest.raises(ConfigError, match=r"wal\.full_policy"):
        load_wal_config({"wal": {"full_policy": "panic"}}, env={})


def test_metrics_register_into_the_given_registry(tmp_path: Path) -> None:
    wal = Wal.open(small_config(tmp_path), storage=SimDisk(), background=False)
    wal.append("a", b"x" * 50)
    wal.flush()
    registry = CollectorRegistry()
    register_metrics(registry, wal)
    text = generate_latest(registry).decode()
    assert "wal_payload_bytes_total 50.0" in text
    assert "wal_fsyncs_total 1.0" in text
    assert "wal_backlog_records 1.0" in text
    assert "wal_write_amplification" in text
    wal.close()


def test_wal_inspect_reports_backlog_without_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from appliance.cli import main

    wal = Wal.open(small_config(tmp_path), background=False)
    wal.append("a", b"x" * 10)
    wal.append("b", b"y" * 10)
    wal.close()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert main(["wal", "inspect", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["stats"]["backlog_records"] == 2
    assert report["recovery"]["corrupt_records"] == 0
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert main(["wal", "inspect", str(tmp_path / "nothing")]) == 1


def _tree(path: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mode, p.read_bytes()) for p in sorted(path.iterdir())}


def test_wal_inspect_leaves_the_folder_byte_identical_even_with_temporary_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A `.tmp` left by a crash mid-create is the agent's to clean up at its next open; a
    read-only command must not delete it (nor create, preallocate or rewrite anything)."""
    from appliance.cli import main

    wal = Wal.open(small_config(tmp_path), background=False)
    wal.append("a", b"x" * 10)
    wal.flush()
    wal.abandon()
    (tmp_path / "seg-0000000009.wal.tmp").write_bytes(b"half a segment")
    before = _tree(tmp_path)
    assert main(["wal", "inspect", str(tmp_path)]) == 0
    assert "pending records   1" in capsys.readouterr().out
    assert _tree(tmp_path) == before


def test_wal_open_read_only_refuses_every_write(tmp_path: Path) -> None:
    wal = Wal.open(small_config(tmp_path), background=False)
    wal.append("a", b"x" * 10)
    wal.close()
    before = _tree(tmp_path)
    ro = Wal.open_read_only(small_config(tmp_path))
    assert [r.key for r in ro.read(10)] == [b"a"]
    with pytest.raises(WalUnavailable, match="read-only"):
        ro.append("b", b"y")
    ro.ack([1])
    ro.close()
    assert _tree(tmp_path) == before


def test_wal_open_read_only_refuses_a_folder_the_agent_holds(tmp_path: Path) -> None:
    from appliance.wal.log import WalLocked

    wal = Wal.open(small_config(tmp_path), background=False)
    with pytest.raises(WalLocked):
        Wal.open_read_only(small_config(tmp_path))
    wal.close()
