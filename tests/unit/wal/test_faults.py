"""Faults: power loss with torn pages, flipped bits, garbage files, ENOSPC, failed fsync."""

from __future__ import annotations

import errno
import logging
import os
import random
import zlib
from pathlib import Path

import pytest
from testsupport.wal_helpers import SEG, small_config

from appliance.devkit.wal.ledger import DeliveryLedger, payload_for
from appliance.devkit.wal.simdisk import PowerCut, SimDisk
from appliance.wal import Wal, WalConfig
from appliance.wal.format import CURSOR_SLOT, PAGE
from appliance.wal.storage import FileStorage


def open_sim(disk: SimDisk, cfg: WalConfig) -> Wal:
    return Wal.open(cfg, storage=disk, background=False)


def delivered(wal: Wal) -> list[tuple[bytes, bytes]]:
    return [(r.key, r.payload) for r in wal.read(1_000_000)]


def test_power_loss_at_random_points_keeps_every_promise(tmp_path: Path) -> None:
    rng = random.Random(20261127)
    disk = SimDisk()
    cfg = small_config(tmp_path, segments=10, cursor_every_acks=40)
    ledger = DeliveryLedger()
    wal = open_sim(disk, cfg)
    n = 0
    for life in range(150):
        for _ in range(rng.randint(1, 12)):
            op = rng.random()
            if op < 0.5:
                batch = [f"{life}:{n + i}".encode() for i in range(rng.randint(1, 60))]
                n += len(batch)
                for key in batch:
                    wal.append(key, payload_for(key))
                ledger.appended(batch)
            elif op < 0.7:
                wal.flush()
                ledger.flushed()
            else:
                recs = wal.read(rng.randint(1, 80))
                chosen = [r for r in recs if rng.random() < 0.9]
                ledger.acked(r.key for r in chosen)  # first: a cut inside ack() may persist it
                before = wal.cursor_writes
                wal.ack(r.seq for r in chosen)
                if wal.cursor_writes > before:
                    ledger.cursor_written()
                if rng.random() < 0.2:
                    wal.sync_cursor()
                    ledger.cursor_written()
        assert wal.stats().dropped_records == 0
        disk.power_loss(rng, tear=True)
        wal = open_sim(disk, cfg)
        problems = ledger.check(delivered(wal))
        assert not problems, (life, problems[:5])
    wal.close()


def write_and_flush(wal: Wal, start: int, count: int) -> list[bytes]:
    keys = [f"k{i}".encode() for i in range(start, start + count)]
    for key in keys:
        wal.append(key, payload_for(key, 300))
    wal.flush()
    return keys


def seg_files(path: Path) -> list[Path]:
    return sorted(path.glob("seg-*.wal"))


def test_replay_skips_torn_tail_record_in_a_real_file(tmp_path: Path) -> None:
    cfg = small_config(tmp_path)
    wal = Wal.open(cfg, background=False)
    kept = write_and_flush(wal, 0, 20)
    head = wal.stats().bytes_written  # header page + first flush
    torn = write_and_flush(wal, 20, 5)
    wal.close()
    (seg,) = seg_files(tmp_path)
    with seg.open("r+b") as f:  # power cut mid-write: second half of the last flush missing
        f.seek(head + 700)
        f.write(os.urandom(PAGE))
    wal = Wal.open(cfg, background=False)
    got = [k for k, _ in delivered(wal)]
    assert got[:20] == kept
    assert set(got[20:]) < set(torn)  # the records before the tear survive, none after
    assert wal.recovery is not None and wal.recovery.torn_tails + wal.recovery.corrupt_records
    # writing goes on after the torn tail and is read back after another reopen
    more = write_and_flush(wal, 100, 3)
    wal.close()
    wal = Wal.open(cfg, background=False)
    assert [k for k, _ in delivered(wal)] == got + more
    wal.close()


def test_flipped_bit_skips_only_the_damaged_record(tmp_path: Path) -> None:
    cfg = small_config(tmp_path)
    wal = Wal.open(cfg, background=False)
    keys = write_and_flush(wal, 0, 50)
    wal.close()
    (seg,) = seg_files(tmp_path)
    data = bytearray(seg.read_bytes())
    victim_at = data.find(keys[17])
    data[victim_at + 40] ^= 0x04  # inside record 17's payload
    seg.write_bytes(bytes(data))
    wal = Wal.open(cfg, background=False)
    assert [k for k, _ in delivered(wal)] == keys[:17] + keys[18:]
    assert wal.recovery is not None and wal.recovery.corrupt_records == 1
    assert wal.stats().corrupt_records == 1
    wal.close()


def test_bit_rot_after_open_is_caught_when_reading(tmp_path: Path) -> None:
    disk = SimDisk()
    cfg = small_config(tmp_path)
    wal = open_sim(disk, cfg)
    keys = write_and_flush(wal, 0, 10)
    (seg,) = [n for n in disk.names() if n.startswith("seg-")]
    at = bytes(disk.files[seg].current).find(keys[3])
    disk.flip_bit(seg, at + 5, 3)
    got = [k for k, _ in delivered(wal)]
    assert got == keys[:3] + keys[4:]
    assert wal.stats().corrupt_records == 1
    assert [k for k, _ in delivered(wal)] == got  # and it is not returned later either
    wal.close()


def test_garbage_and_odd_files_never_crash_open(tmp_path: Path) -> None:
    cfg = small_config(tmp_path)
    wal = Wal.open(cfg, background=False)
    keys = write_and_flush(wal, 0, 30)
    wal.close()
    (tmp_path / "seg-0007.wal").write_bytes(os.urandom(SEG))  # random content, right size
    (tmp_path / "seg-0008.wal").write_bytes(os.urandom(1000))  # impossible size
    (tmp_path / "seg-0009.wal.tmp").write_bytes(b"half-made")  # interrupted creation
    (tmp_path / "notes.txt").write_text("not ours")
    wal = Wal.open(cfg, background=False)
    assert [k for k, _ in delivered(wal)] == keys
    assert wal.recovery is not None and wal.recovery.unusable_files == 1
    assert not (tmp_path / "seg-0009.wal.tmp").exists()
    wal.close()
    cursor = tmp_path / "cursor"
    cursor.write_bytes(os.urandom(2 * CURSOR_SLOT))  # both slots destroyed: nothing acked
    wal = Wal.open(cfg, background=False)
    assert [k for k, _ in delivered(wal)] == keys
    wal.close()


def test_torn_cursor_slot_falls_back_to_the_previous_one(tmp_path: Path) -> None:
    cfg = small_config(tmp_path)
    wal = Wal.open(cfg, background=False)
    keys = write_and_flush(wal, 0, 10)
    recs = wal.read(10)
    wal.ack([recs[0].seq, recs[1].seq])
    wal.sync_cursor()  # gen 1 -> slot 1
    wal.ack([recs[2].seq])
    wal.sync_cursor()  # gen 2 -> slot 0
    wal.close()
    with (tmp_path / "cursor").open("r+b") as f:
        f.seek(20)
        f.write(b"\xff\xff")  # tear the newest slot
    wal = Wal.open(cfg, background=False)
    assert [k for k, _ in delivered(wal)] == keys[2:]  # ack of k2 lost: delivered again
    assert wal.recovery is not None and wal.recovery.cursor_gen == 1
    wal.close()


def test_enospc_creating_segments_lowers_the_bound_and_keeps_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    disk = SimDisk(capacity=2 * CURSOR_SLOT + 3 * SEG)  # the filesystem holds 3 segments
    cfg = small_config(tmp_path, segments=8)
    wal = open_sim(disk, cfg)
    with caplog.at_level(logging.WARNING, logger="appliance.wal"):
        for i in range(3000):
            key = f"k{i}".encode()
            assert wal.append(key, payload_for(key, 200))
            assert disk.used_bytes() <= disk.capacity  # type: ignore[operator]
    st = wal.stats()
    assert st.dropped_records > 0 and st.write_errors >= 1
    assert st.segments_in_use + st.segments_free == 3
    assert "bound lowered to 3 segments" in caplog.text
    assert "policy drop_oldest" in caplog.text
    got = delivered(wal)
    assert len(got) == 3000 - st.dropped_records
    assert got[-1][0] == b"k2999"
    wal.close()


def test_enospc_on_write_moves_records_to_another_segment(tmp_path: Path) -> None:
    disk = SimDisk()
    cfg = small_config(tmp_path)
    wal = open_sim(disk, cfg)
    first = write_and_flush(wal, 0, 5)
    disk.fail_writes = 1  # e.g. f2fs out of free sections when overwriting
    second = write_and_flush(wal, 5, 5)
    st = wal.stats()
    assert st.write_errors == 1 and st.dropped_records == 0
    assert [k for k, _ in delivered(wal)] == first + second
    disk.power_loss(random.Random(1))
    wal = open_sim(disk, cfg)
    assert [k for k, _ in delivered(wal)] == first + second
    wal.close()


def test_failed_fsync_rewrites_records_elsewhere_and_recovery_keeps_one_copy(
    tmp_path: Path,
) -> None:
    disk = SimDisk()
    cfg = small_config(tmp_path)
    wal = open_sim(disk, cfg)
    first = write_and_flush(wal, 0, 5)
    disk.fail_syncs = 1
    second = write_and_flush(wal, 5, 5)
    assert wal.stats().write_errors == 1
    # the failed segment's pages may reach the disk after all: both copies on disk
    for f in disk.files.values():
        f.durable[:] = f.current
        f.dirty.clear()
    disk.power_loss(random.Random(2))
    wal = open_sim(disk, cfg)
    assert [k for k, _ in delivered(wal)] == first + second
    assert wal.recovery is not None and wal.recovery.duplicates_skipped == 5
    wal.close()


def test_writes_failing_everywhere_drop_by_count_and_recover_later(tmp_path: Path) -> None:
    disk = SimDisk()
    cfg = small_config(tmp_path)
    wal = open_sim(disk, cfg)
    first = write_and_flush(wal, 0, 5)
    disk.fail_writes, disk.fail_errno = 100, errno.EIO
    write_and_flush(wal, 5, 5)
    st = wal.stats()
    assert st.dropped_records == 5
    disk.fail_writes = 0
    third = write_and_flush(wal, 10, 5)
    assert [k for k, _ in delivered(wal)] == first + third
    wal.close()


def test_disk_usage_never_exceeds_max_wal_bytes_during_a_long_overrun(tmp_path: Path) -> None:
    cfg = small_config(tmp_path, segments=4)
    wal = Wal.open(cfg, storage=FileStorage(tmp_path), background=False)
    for i in range(12_000):  # about 10x the bound, nothing acked
        key = f"k{i}".encode()
        wal.append(key, payload_for(key, 220))
        if i % 97 == 0:
            files = [p for p in tmp_path.iterdir() if p.is_file()]
            on_disk = sum(max(p.stat().st_size, p.stat().st_blocks * 512) for p in files)
            assert on_disk <= cfg.max_wal_bytes
            assert wal.stats().disk_bytes <= cfg.max_wal_bytes
    assert wal.stats().dropped_records > 0
    wal.close()


def test_lowering_the_bound_removes_surplus_segments_once_free(tmp_path: Path) -> None:
    wal = Wal.open(small_config(tmp_path, segments=6), background=False)
    write_and_flush(wal, 0, 1000)
    wal.ack(r.seq for r in wal.read(2000))
    wal.close()
    assert len(seg_files(tmp_path)) >= 4
    wal = Wal.open(small_config(tmp_path, segments=2), background=False)
    assert len(seg_files(tmp_path)) <= 2
    wal.close()


def test_power_loss_during_compaction_keeps_every_promise(tmp_path: Path) -> None:
    """Stuck records (unacked for a few lives) force merges in a small WAL; power fails."""
    rng = random.Random(4242)
    disk = SimDisk()
    cfg = small_config(tmp_path, segments=5, cursor_every_acks=50)
    ledger = DeliveryLedger()
    wal = open_sim(disk, cfg)
    compactions = 0
    n = 0

    def ship(release_stuck: bool) -> None:
        recs = wal.read(10_000)
        # about 1 record in 40 is stuck (the bus keeps answering RETRY) until released
        chosen = [r for r in recs if release_stuck or zlib.crc32(r.key) % 40]
        ledger.acked(r.key for r in chosen)
        before = wal.cursor_writes
        wal.ack(r.seq for r in chosen)
        if wal.cursor_writes > before:
            ledger.cursor_written()

    for life in range(60):
        ship(release_stuck=life % 4 == 0)  # the agent drains what came back first
        for _ in range(rng.randint(5, 20)):
            batch = [f"{life}:{n + i}".encode() for i in range(rng.randint(20, 80))]
            n += len(batch)
            for key in batch:
                wal.append(key, payload_for(key))
            ledger.appended(batch)
            if rng.random() < 0.5:
                wal.flush()
                ledger.flushed()
            ship(release_stuck=False)
        stats = wal.stats()
        assert stats.dropped_records == 0, life
        compactions += stats.compactions
        disk.power_loss(rng, tear=True)
        wal = open_sim(disk, cfg)
        problems = ledger.check(delivered(wal))
        assert not problems, (life, problems[:5])
    wal.close()
    assert compactions > 0


def test_power_cut_inside_any_write_or_sync_keeps_every_promise(tmp_path: Path) -> None:
    """The power goes at a random pwrite/fdatasync: mid-flush, mid-roll, mid-merge, mid-cursor."""
    rng = random.Random(777)
    disk = SimDisk()
    cfg = small_config(tmp_path, segments=5, cursor_every_acks=30)
    ledger = DeliveryLedger()
    cuts = compactions = 0
    n = 0
    for life in range(200):
        wal = open_sim(disk, cfg)
        problems = ledger.check(delivered(wal))
        assert not problems, (life, problems[:5])
        disk.cut_after = rng.randint(0, 60)
        try:
            for step in range(rng.randint(5, 25)):
                recs = wal.read(10_000)
                release = step == 0 and life % 10 == 0  # the bus recovers now and then
                chosen = [r for r in recs if release or zlib.crc32(r.key) % 30]
                ledger.acked(r.key for r in chosen)  # first: a cut inside ack() may persist it
                before = wal.cursor_writes
                wal.ack(r.seq for r in chosen)
                if wal.cursor_writes > before:
                    ledger.cursor_written()
                batch = [f"{life}:{n + i}".encode() for i in range(rng.randint(10, 60))]
                n += len(batch)
                ledger.appended(batch)
                for key in batch:
                    wal.append(key, payload_for(key))
                if rng.random() < 0.4:
                    wal.flush()
                    ledger.flushed()
        except PowerCut:
            cuts += 1
        else:
            disk.cut_after = None
        stats = wal.stats()
        assert stats.dropped_records == 0, life
        compactions += stats.compactions
        disk.power_loss(rng, tear=True)
    assert cuts > 100 and compactions > 0


def test_unopenable_cursor_is_a_one_line_error_not_a_crash(tmp_path: Path) -> None:
    from appliance.wal import WalUnavailable

    (tmp_path / "cursor").mkdir()  # not a file at all
    with pytest.raises(WalUnavailable, match="move the damaged cursor aside"):
        Wal.open(small_config(tmp_path), background=False)
    (tmp_path / "cursor").rmdir()
    wal = Wal.open(small_config(tmp_path), background=False)  # the failed open let go of its lock
    wal.close()
