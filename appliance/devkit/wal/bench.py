"""`infraspectre bench wal`: our WAL against SQLite, in device bytes, on a loop device.

Each subject runs the same two workloads in a fresh directory of an ext4 image attached to a
loop device, and the bytes it caused are read from that loop device's own sectors-written
counter (/sys/block/loopN/stat field 7; field 16 counts flush requests, i.e. fsyncs reaching
the device). Before each measured run the filesystem is unmounted and mounted again so that
set-up writes are already on the device; after it, the unmount pushes out everything the run
left in caches (journal commits and checkpoints included). The bytes of an idle unmount/mount
cycle are measured once and subtracted.

Subjects: `ours` (this WAL, segments pre-allocated before the run as on the device);
`sqlite_commit_each` (the seed's design made durable: rollback journal, synchronous=FULL, one
commit per record, one per ack batch); `sqlite_group` (WAL journal, synchronous=FULL,
committing on the same triggers as ours: every flush_bytes of payload or flush interval).

On the device itself (`--on-dir /data/bench`, e.g. inside the emulated board), the counter is
the block device holding that directory instead: the f2fs data partition's own stat file
(/sys/dev/block/MAJ:MIN/stat), settled with syncfs; the filesystem stays mounted, so what the
rest of the system writes meanwhile is in the figure (the idle cycle measured first estimates
it). Without root or loop devices, it falls back to /proc/self/io write_bytes on a directory of the
current filesystem and says so in "counter".
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from appliance.errors import CommandError
from appliance.wal.config import WalConfig
from appliance.wal.log import Wal

SUBJECTS = ("ours", "sqlite_commit_each", "sqlite_group")
WAL_SEGMENT_BYTES = 4 * 1024 * 1024


def register(sub: Any) -> None:
    """Add `bench wal`."""
    p = sub.add_parser("wal", help="WAL write amplification vs SQLite on a loop device")
    p.add_argument("--json", action="store_true", help="one JSON object on standard output")
    p.add_argument("--records", type=int, default=50_000, help="saturation records (50000)")
    p.add_argument("--record-bytes", type=int, default=220, help="payload bytes (220)")
    p.add_argument("--batch", type=int, default=100, help="drain/ack batch (100)")
    p.add_argument("--paced-rate", type=int, default=50, help="paced records per second (50)")
    p.add_argument(
        "--paced-seconds",
        type=float,
        default=20.0,
        help="paced duration (20; less for a quick run)",
    )
    p.add_argument(
        "--subjects",
        default=",".join(SUBJECTS),
        help=f"comma-separated subset of {','.join(SUBJECTS)}",
    )
    p.add_argument(
        "--workdir", type=Path, default=Path("/var/tmp"), help="where the ext4 image file goes"
    )
    p.add_argument("--image-mib", type=int, default=384, help="ext4 image size (384 MiB)")
    p.add_argument(
        "--on-dir",
        type=Path,
        help="measure on the block device holding this directory (the board's /data) "
        "instead of a loop device",
    )
    p.add_argument(
        "--mount-options",
        default="noatime",
        help="ext4 mount options (default noatime, as the device mounts its data partition)",
    )
    p.set_defaults(func=_command)


# ---------------------------------------------------------------- the byte counters


class Counter(Protocol):
    """Where the bench's files live and how many bytes the device took."""

    name: str
    root: Path

    def settle(self) -> None:
        """Push every cached write of the filesystem to the device."""

    def read(self) -> tuple[int, int | None]:
        """(bytes written, flush requests or None) since the device was attached."""


class LoopCounter:
    """An ext4 image on a loop device; unmount + mount settles everything."""

    name = "loop-device"

    def __init__(self, workdir: Path, mib: int, mount_options: str) -> None:
        self._tmp = Path(tempfile.mkdtemp(prefix="wal-bench-", dir=workdir))
        self.image = self._tmp / "ext4.img"
        self.root = self._tmp / "mnt"
        self.device = ""
        self.mount_options = mount_options
        with self.image.open("wb") as f:
            f.truncate(mib * 1024 * 1024)
        # Initialise inode tables and journal now, or ext4 zeroes them in the background
        # during the measurement.
        _run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", self.image)
        self.device = _run("losetup", "-f", "--show", self.image).strip()
        self.root.mkdir()
        self._mount()

    def _mount(self) -> None:
        _run("mount", "-t", "ext4", "-o", self.mount_options, self.device, self.root)

    def settle(self) -> None:
        _run("umount", self.root)
        self._mount()

    def read(self) -> tuple[int, int | None]:
        name = Path(self.device).name
        fields = Path(f"/sys/block/{name}/stat").read_text().split()
        flushes = int(fields[15]) if len(fields) > 15 else None
        return int(fields[6]) * 512, flushes

    def close(self) -> None:
        with contextlib.suppress(CommandError):
            _run("umount", self.root)
        if self.device:
            with contextlib.suppress(CommandError):
                _run("losetup", "-d", self.device)
        shutil.rmtree(self._tmp, ignore_errors=True)


class BlockDirCounter:
    """A directory on a mounted block device (the board's f2fs /data): that device's counter."""

    name = "block-device"

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.root = directory
        st = os.stat(directory)
        self.stat = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/stat")
        if not self.stat.is_file():
            raise CommandError(f"{directory} is not on a block device (no {self.stat})")
        self.device = self.stat.resolve().parent.name
        self.mount_options = "as mounted"

    def settle(self) -> None:
        fd = os.open(self.root, os.O_RDONLY)
        try:  # syncfs(2): os.syncfs is Python 3.12+, the device runs 3.11
            if ctypes.CDLL(None, use_errno=True).syncfs(fd) != 0:
                raise CommandError(f"syncfs {self.root}: {os.strerror(ctypes.get_errno())}")
        finally:
            os.close(fd)

    def read(self) -> tuple[int, int | None]:
        fields = self.stat.read_text().split()
        flushes = int(fields[15]) if len(fields) > 15 else None
        return int(fields[6]) * 512, flushes

    def close(self) -> None:
        pass


class ProcIoCounter:
    """Fallback: this process's write_bytes (/proc/self/io); can overcharge page-cache chunks."""

    name = "proc-self-io"

    def __init__(self, workdir: Path) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="wal-bench-", dir=workdir))

    def settle(self) -> None:
        os.sync()

    def read(self) -> tuple[int, int | None]:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1]), None
        raise CommandError("/proc/self/io has no write_bytes: no counter for the WAL bench")

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _run(*argv: object) -> str:
    try:
        done = subprocess.run(
            [str(a) for a in argv], check=True, capture_output=True, text=True, timeout=120
        )
    except FileNotFoundError as exc:
        raise CommandError(
            f"{argv[0]} not found: install it (see the Makefile's apt list)"
        ) from exc
    except subprocess.CalledProcessError as exc:
        raise CommandError(f"{argv[0]} failed: {exc.stderr.strip() or exc}") from exc
    return done.stdout


# ---------------------------------------------------------------- the subjects


class Subject(Protocol):
    """One storage design under test; used by one workload run at a time."""

    def prepare(self, path: Path) -> None:
        """Set up what exists before the run on a device (files, schema, pre-allocation)."""

    def open(self, path: Path) -> None: ...

    def append(self, key: bytes, payload: bytes) -> None: ...

    def drain_ack(self, limit: int) -> int:
        """Read up to limit pending records and ack them; returns how many."""

    def tick(self, now: float) -> None:
        """Called about every 20 ms in the paced workload."""

    def flush(self) -> None:
        """Make everything appended durable (end of the appending phase)."""

    def close(self) -> None: ...

    def own_counts(self) -> dict[str, int]:
        """The subject's own counters (fdatasync calls, bytes it wrote), if it keeps any."""


class OursSubject:
    """This WAL with its defaults (flush every 1 s or 1 MiB, cursor every 10k acks or 1 s)."""

    def __init__(self) -> None:
        self._wal: Wal | None = None
        self._own: dict[str, int] = {}

    def _config(self, path: Path) -> WalConfig:
        return WalConfig(
            path=path,
            segment_bytes=WAL_SEGMENT_BYTES,
            max_wal_bytes=8192 + 8 * WAL_SEGMENT_BYTES,
            preallocate=True,
        )

    def prepare(self, path: Path) -> None:
        Wal.open(self._config(path), background=False).close()

    def open(self, path: Path) -> None:
        self._wal = Wal.open(self._config(path))

    def append(self, key: bytes, payload: bytes) -> None:
        assert self._wal is not None
        self._wal.append(key, payload)

    def drain_ack(self, limit: int) -> int:
        assert self._wal is not None
        recs = self._wal.read(limit)
        self._wal.ack([r.seq for r in recs])
        return len(recs)

    def tick(self, now: float) -> None:
        pass  # the WAL's own flusher thread keeps the interval

    def flush(self) -> None:
        assert self._wal is not None
        self._wal.flush()

    def close(self) -> None:
        assert self._wal is not None
        self._wal.close()
        stats = self._wal.stats()
        self._own = {
            "own_fdatasyncs": stats.fsyncs,
            "own_bytes_written": stats.bytes_written,
            "own_cursor_writes": stats.cursor_writes,
        }

    def own_counts(self) -> dict[str, int]:
        return self._own


class SqliteSubject:
    """A SQLite table as a queue; commit per record, or grouped on the same triggers as ours.

    The group variant drains through a second connection, so it sees committed rows only: a
    record is durable before it can be acked (otherwise rows inserted and deleted inside one
    transaction would never be written, and nothing would have been made durable at all).
    """

    def __init__(self, *, group: bool, flush_bytes: int = 1024 * 1024, interval: float = 1.0):
        self.group = group
        self._flush_bytes = flush_bytes
        self._interval = interval
        self._db: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._pending_bytes = 0
        self._last_commit = 0.0

    def _connect(self, path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path / "queue.db", isolation_level=None)
        db.execute("PRAGMA journal_mode=" + ("WAL" if self.group else "DELETE"))
        db.execute("PRAGMA synchronous=FULL")
        return db

    def prepare(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        db = self._connect(path)
        db.execute(
            "CREATE TABLE IF NOT EXISTS queue "
            "(id INTEGER PRIMARY KEY, key BLOB UNIQUE NOT NULL, payload BLOB NOT NULL)"
        )
        db.close()

    def open(self, path: Path) -> None:
        self._db = self._connect(path)
        self._reader = self._connect(path) if self.group else self._db
        self._last_commit = time.monotonic()
        if self.group:
            self._db.execute("BEGIN")

    def _commit(self) -> None:
        assert self._db is not None
        self._db.execute("COMMIT")
        self._db.execute("BEGIN")
        self._pending_bytes = 0
        self._last_commit = time.monotonic()

    def append(self, key: bytes, payload: bytes) -> None:
        assert self._db is not None
        self._db.execute("INSERT OR IGNORE INTO queue (key, payload) VALUES (?, ?)", (key, payload))
        if self.group:
            self._pending_bytes += len(payload)
            if self._pending_bytes >= self._flush_bytes:
                self._commit()

    def drain_ack(self, limit: int) -> int:
        assert self._db is not None and self._reader is not None
        rows = self._reader.execute(
            "SELECT id, key, payload FROM queue ORDER BY id LIMIT ?", (limit,)
        ).fetchall()
        if not rows:
            return 0
        ids = [r[0] for r in rows]
        marks = ",".join("?" * len(ids))
        if not self.group:
            self._db.execute("BEGIN")
        self._db.execute(f"DELETE FROM queue WHERE id IN ({marks})", ids)
        if not self.group:
            self._db.execute("COMMIT")
        else:
            # acked rows stay visible to the reader until the next commit: commit now, as
            # the agent would before asking for more (acks wait at most one batch here)
            self._commit()
        return len(rows)

    def tick(self, now: float) -> None:
        if self.group and now - self._last_commit >= self._interval:
            self._commit()

    def flush(self) -> None:
        if self.group:
            self._commit()

    def close(self) -> None:
        assert self._db is not None
        if self.group:
            self._db.execute("COMMIT")
            assert self._reader is not None
            self._reader.close()
        self._db.close()

    def own_counts(self) -> dict[str, int]:
        return {}


def _subject(name: str) -> Subject:
    if name == "ours":
        return OursSubject()
    return SqliteSubject(group=name == "sqlite_group")


# ---------------------------------------------------------------- the workloads


@dataclass
class Workload:
    records: int
    record_bytes: int
    batch: int
    paced_rate: int
    paced_seconds: float


def _key(i: int) -> bytes:
    return b"r%09d" % i


def _saturation(s: Subject, w: Workload) -> int:
    payload = os.urandom(w.record_bytes)
    done = 0
    for start in range(0, w.records, w.batch):
        for i in range(start, min(w.records, start + w.batch)):
            s.append(_key(i), payload)
        done += s.drain_ack(w.batch)
    s.flush()
    while done < w.records:
        n = s.drain_ack(w.batch)
        if n == 0:
            break
        done += n
    return w.records


def _paced(s: Subject, w: Workload) -> int:
    payload = os.urandom(w.record_bytes)
    total = int(w.paced_rate * w.paced_seconds)
    start = time.monotonic()
    for i in range(total):
        due = start + i / w.paced_rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
            now = due
        s.append(_key(i), payload)
        s.tick(now)
        if (i + 1) % w.paced_rate == 0:  # the forwarder ships once a second
            s.drain_ack(w.batch)
    s.flush()
    while s.drain_ack(w.batch):
        pass
    return total


def _measure(
    counter: Counter,
    name: str,
    workload: Callable[[Subject, Workload], int],
    label: str,
    w: Workload,
    idle: int,
) -> dict[str, Any]:
    subject = _subject(name)
    path = counter.root / f"{name}-{label}"
    subject.prepare(path)
    counter.settle()
    bytes0, flush0 = counter.read()
    started = time.perf_counter()
    subject.open(path)
    records = workload(subject, w)
    subject.close()
    elapsed = time.perf_counter() - started
    counter.settle()
    bytes1, flush1 = counter.read()
    device = max(0, bytes1 - bytes0 - idle)
    payload = records * w.record_bytes
    out: dict[str, Any] = {
        "records": records,
        "records_per_s": round(records / elapsed, 1),
        "device_bytes": device,
        "device_bytes_per_record": round(device / records, 1),
        "write_amplification": round(device / payload, 3),
        "fsyncs": None if flush0 is None or flush1 is None else flush1 - flush0,
        "seconds": round(elapsed, 3),
    }
    out.update(subject.own_counts())
    if label == "paced":
        out["device_bytes_per_second"] = round(device / w.paced_seconds, 1)
    shutil.rmtree(path, ignore_errors=True)
    return out


def run_bench(
    w: Workload,
    subjects: list[str],
    workdir: Path,
    image_mib: int,
    progress: bool,
    mount_options: str = "noatime",
    on_dir: Path | None = None,
) -> dict[str, Any]:
    """Run every subject over both workloads; the JSON-ready result."""
    counter: LoopCounter | ProcIoCounter | BlockDirCounter
    if on_dir is not None:
        counter = BlockDirCounter(on_dir)
    elif os.geteuid() == 0 and shutil.which("losetup") and Path("/sys/block").is_dir():
        counter = LoopCounter(workdir, image_mib, mount_options)
    else:
        counter = ProcIoCounter(workdir)
    try:
        counter.settle()
        b0, _ = counter.read()
        counter.settle()
        b1, _ = counter.read()
        idle = b1 - b0
        result: dict[str, Any] = {
            "counter": counter.name,
            "filesystem": {LoopCounter: "ext4", BlockDirCounter: "as mounted"}.get(
                type(counter), "host"
            ),
            "device": getattr(counter, "device", None),
            "mount_options": getattr(counter, "mount_options", None),
            "idle_cycle_bytes_subtracted": idle,
            "workload": {
                "saturation": {
                    "records": w.records,
                    "record_bytes": w.record_bytes,
                    "ack_batch": w.batch,
                },
                "paced": {
                    "rate_per_s": w.paced_rate,
                    "seconds": w.paced_seconds,
                    "record_bytes": w.record_bytes,
                },
            },
            "ours_config": {
                "segment_bytes": WAL_SEGMENT_BYTES,
                "flush_interval_ms": WalConfig().flush_interval_ms,
                "flush_bytes": WalConfig().flush_bytes,
                "cursor_every_acks": WalConfig().cursor_every_acks,
                "cursor_interval_ms": WalConfig().cursor_interval_ms,
            },
        }
        for name in subjects:
            entry: dict[str, Any] = {}
            for label, fn in (("saturation", _saturation), ("paced", _paced)):
                if progress:
                    print(f"bench wal: {name} {label}...", flush=True)
                entry[label] = _measure(counter, name, fn, label, w, idle)
            result[name] = entry
        return result
    finally:
        counter.close()


def _command(args: argparse.Namespace) -> int:
    subjects = [s.strip() for s in args.subjects.split(",") if s.strip()]
    unknown = [s for s in subjects if s not in SUBJECTS]
    if unknown:
        raise CommandError(f"unknown bench subject {unknown[0]!r} (known: {', '.join(SUBJECTS)})")
    if args.records <= 0 or args.paced_seconds <= 0 or args.paced_rate <= 0:
        raise CommandError("--records, --paced-rate and --paced-seconds must be positive")
    w = Workload(args.records, args.record_bytes, args.batch, args.paced_rate, args.paced_seconds)
    result = run_bench(
        w, subjects, args.workdir, args.image_mib, not args.json, args.mount_options, args.on_dir
    )
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"counter: {result['counter']} ({result['filesystem']}, {result['mount_options']})")
    print(f"{'subject':<20}{'workload':<12}{'rec/s':>12}{'B/rec':>10}{'WA':>9}{'fsyncs':>8}")
    for name in subjects:
        for label in ("saturation", "paced"):
            r = result[name][label]
            print(
                f"{name:<20}{label:<12}{r['records_per_s']:>12,.0f}"
                f"{r['device_bytes_per_record']:>10,.1f}{r['write_amplification']:>9.3f}"
                f"{r['fsyncs'] if r['fsyncs'] is not None else '-':>8}"
            )
    return 0
