"""ENOSPC on a real, tiny ext4 filesystem on a loop device (root)."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.devkit.wal.ledger import payload_for
from appliance.wal import Wal, WalConfig, WalUnavailable

SEG = 256 * 1024


def sh(*argv: str | Path) -> str:
    return subprocess.run(
        [str(a) for a in argv], check=True, capture_output=True, text=True, timeout=60
    ).stdout


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB ext4 image (about 2.5 MB free) mounted on a loop device; always cleaned up."""
    image = tmp_path / "tiny.img"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with image.open("wb") as f:
        f.truncate(4 * 1024 * 1024)
    sh("mkfs.ext4", "-q", "-F", image)
    device = sh("losetup", "-f", "--show", image).strip()
    try:
        sh("mount", "-t", "ext4", device, mnt)
        try:
            yield mnt
        finally:
            try:
                sh("umount", mnt)
            except subprocess.CalledProcessError:
                sh("umount", "-l", mnt)  # a test left a file open: detach anyway
    finally:
        sh("losetup", "-d", device)


def config(path: Path, **kw: object) -> WalConfig:
    cfg = WalConfig(path=path, segment_bytes=SEG, max_wal_bytes=8192 + 64 * SEG)  # 16 MiB
    for key, value in kw.items():
        setattr(cfg, key, value)
    return cfg


def usage(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.iterdir() if p.is_file())


def test_filesystem_full_wal_keeps_running_and_drops_only_by_policy(
    tiny_fs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tiny_fs / "wal"
    wal = Wal.open(config(path), background=False)
    total = 40_000  # ~10 MB of records into ~2.5 MB of filesystem
    with caplog.at_level(logging.WARNING, logger="appliance.wal"):
        for i in range(total):
            key = f"k{i}".encode()
            assert wal.append(key, payload_for(key, 220))
            if i % 1000 == 0:
                wal.flush()
    wal.flush()
    st = wal.stats()
    assert st.write_errors >= 1  # the segment creation that hit ENOSPC
    assert 3 <= st.segments_in_use + st.segments_free < 64
    assert st.dropped_records > 0
    assert "bound lowered" in caplog.text and "policy drop_oldest" in caplog.text
    got = wal.read(total)
    assert len(got) == total - st.dropped_records
    assert [r.key for r in got] == [f"k{i}".encode() for i in range(st.dropped_records, total)]
    assert all(r.payload == payload_for(r.key, 220) for r in got)
    wal.ack(r.seq for r in got[: len(got) // 2])
    wal.close()
    assert usage(path) <= config(path).max_wal_bytes
    # reopened on the full filesystem: everything not acked is still there
    wal = Wal.open(config(path), background=False)
    assert [r.key for r in wal.read(total)] == [r.key for r in got[len(got) // 2 :]]
    wal.close()


def test_refuse_policy_on_a_full_filesystem_pushes_back(tiny_fs: Path) -> None:
    path = tiny_fs / "wal"
    wal = Wal.open(config(path, full_policy="refuse"), background=False)
    stored = 0
    from appliance.wal import WalFull

    with pytest.raises(WalFull):
        while stored < 40_000:
            key = f"k{stored}".encode()
            wal.append(key, payload_for(key, 220))
            stored += 1
    assert wal.stats().dropped_records == 0
    assert len(wal.read(stored)) == stored
    wal.close()


def test_no_room_even_for_the_cursor_is_a_clear_error(tiny_fs: Path) -> None:
    fd = os.open(tiny_fs / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (64 * 1024, 4096, 1024):
            try:
                while True:
                    os.write(fd, bytes(chunk))
            except OSError:
                pass
        os.fsync(fd)
    finally:
        os.close(fd)
    with pytest.raises(WalUnavailable, match="free space"):
        Wal.open(config(tiny_fs / "wal"), background=False).close()
