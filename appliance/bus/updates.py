"""Updates delivered through the bus: the bundles it holds, the version each box should run,
what each box reports, and the two calls boxes make (proto `Updates`: Check, Fetch).

Store (under `storage.data_dir / eventbus.update.dir`):

- `bundles/<sha256>.bundle`: each uploaded bundle, named by the SHA-256 of its bytes; written
  to a temporary name, fsynced and renamed, so a file under its final name is always whole;
- `updates.sqlite` (WAL mode): `bundles` (sha256, version, build, board, size, uploaded_at),
  `desired` (scope "agent" or "group", name, sha256), `reports` (one row per agent: its latest
  UpdateStatus and when it arrived).

Invariants:

- a bundle is stored only after everything a device checks that does not depend on the device
  passed: the header, the manifest, the Ed25519 signature by one of the update keys the bus is
  given (`eventbus.update.keys`), every chunk's and file's hash, and the exact length. A refusal
  is one line (appliance.update.bundle.BundleError), and nothing is stored;
- the desired version of a box is its own (`--agent`) if set, else its group's (`--group`);
  it is offered only to a box of the bundle's board, and only while the box does not already
  run that version and build;
- Fetch serves bytes of a stored bundle by offset, at most `max_chunk_bytes` per call and at
  most `rate_bytes_per_peer` bytes per second per certificate name (a token bucket with one
  second of burst): above it the call ends RESOURCE_EXHAUSTED with `retry-after-ms`, before a
  byte is read from disk. Calls pass the gate first (appliance/bus/gate.py) like every publish.

The box, not the bus, decides whether to install: the device verifies everything again
(appliance/update/device.py) and refuses a downgrade; the bus only stores, offers and serves.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from nacl.signing import VerifyKey
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from appliance.bus.gate import Caller
from appliance.errors import CommandError
from appliance.update import bundle
from appliance.wire import pb

#: the gRPC service of the update calls
UPDATES_SERVICE = "infraspectre.Updates"
DB_NAME = "updates.sqlite"
#: a box's own reported strings are cut to this before they are stored
MAX_TEXT = 200

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bundles (
  sha256 TEXT PRIMARY KEY, version TEXT NOT NULL, build INTEGER NOT NULL, board TEXT NOT NULL,
  size INTEGER NOT NULL, uploaded_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS desired (
  scope TEXT NOT NULL, name TEXT NOT NULL, sha256 TEXT NOT NULL, set_at INTEGER NOT NULL,
  PRIMARY KEY (scope, name)
);
CREATE TABLE IF NOT EXISTS reports (
  agent_id TEXT PRIMARY KEY, version TEXT, build INTEGER, board TEXT, slot TEXT, state TEXT,
  last_result TEXT, last_reason TEXT, last_version TEXT, last_at INTEGER, update_group TEXT,
  download TEXT, downloaded INTEGER, reported_at INTEGER, fetched INTEGER
);
"""

REPORT_COLUMNS = (
    "agent_id", "version", "build", "board", "slot", "state", "last_result", "last_reason",
    "last_version", "last_at", "update_group", "download", "downloaded", "reported_at",
    "fetched",
)  # fmt: skip


def _columns(conn: sqlite3.Connection) -> str:
    """REPORT_COLUMNS to select: `fetched` is 0 where a store made before it lacks the column
    (read-only readers) or a row recorded before it has none."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(reports)")}
    picked = {"fetched": "COALESCE(fetched, 0)" if "fetched" in have else "0"}
    return ", ".join(picked.get(c, c) for c in REPORT_COLUMNS)


@dataclass(frozen=True)
class BundleInfo:
    """A stored bundle."""

    sha256: str
    version: str
    build: int
    board: str
    size: int
    uploaded_at: int


@dataclass(frozen=True)
class Report:
    """A box's latest update status, as the bus received it."""

    agent_id: str
    version: str = ""
    build: int = 0
    board: str = ""
    slot: str = ""
    state: str = ""
    last_result: str = ""
    last_reason: str = ""
    last_version: str = ""
    last_at: int = 0
    update_group: str = ""
    download: str = ""
    downloaded: int = 0
    reported_at: int = 0
    #: bytes of the download fetched over the network (a delta fetches what the box lacked)
    fetched: int = 0

    def as_json(self) -> dict[str, object]:
        return dict(self.__dict__)


def load_update_keys(paths: Sequence[Path]) -> list[VerifyKey]:
    """The update keys the bus checks uploads against (each a `pki init-update-key` .pub)."""
    from appliance.crypto.keys import load_verify_key

    keys = []
    for path in paths:
        if not path.exists():
            raise CommandError(
                f"no update key {path}: run `infraspectre pki init-update-key DIR` or set "
                "eventbus.update.keys"
            )
        keys.append(load_verify_key(path))
    return keys


def verify_bundle(path: Path, keys: Sequence[VerifyKey]) -> tuple[bundle.Manifest, str]:
    """Check a bundle file the way a device will (signature, every hash, the exact length);
    return its manifest and the SHA-256 of the file. BundleError (one line) otherwise."""
    whole = hashlib.sha256()

    class Hashing:
        def __init__(self, fh: Any) -> None:
            self.fh = fh

        def read(self, n: int = -1) -> bytes:
            data: bytes = self.fh.read(n)
            whole.update(data)
            return data

    try:
        fh = path.open("rb")
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}") from exc
    with fh:
        stream: Any = Hashing(fh)
        manifest = bundle.read_manifest(stream, keys)
        for _ in bundle.payload(stream, manifest):
            pass
    return manifest, whole.hexdigest()


class UpdateStore:
    """Bundles, desired versions and reports (see the module docstring). Thread-safe: one
    connection behind a lock (the bus's update calls are few and small)."""

    def __init__(self, directory: Path, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.bundles_dir = directory / "bundles"
        try:
            self.bundles_dir.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                directory / DB_NAME, check_same_thread=False, isolation_level=None, timeout=10
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.executescript(_SCHEMA)
            have = {row[1] for row in self._conn.execute("PRAGMA table_info(reports)")}
            if "fetched" not in have:  # a store made before delta downloads
                self._conn.execute("ALTER TABLE reports ADD COLUMN fetched INTEGER")
        except (OSError, sqlite3.Error) as exc:
            raise CommandError(f"cannot open the update store in {directory}: {exc}") from exc
        self._lock = threading.Lock()
        self._clock = clock

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    # -- bundles -----------------------------------------------------------------------------

    def upload(self, path: Path, keys: Sequence[VerifyKey]) -> BundleInfo:
        """Verify path (verify_bundle) and store a copy; the same bundle twice is stored once."""
        if not keys:
            raise CommandError("no update key configured (eventbus.update.keys)")
        manifest, sha = verify_bundle(path, keys)
        final = self.bundle_path(sha)
        if not final.exists():
            tmp = final.with_name(final.name + ".tmp")
            with path.open("rb") as src, tmp.open("wb") as dst:
                copied = hashlib.sha256()
                while data := src.read(1 << 20):
                    copied.update(data)
                    dst.write(data)
                dst.flush()
                os.fsync(dst.fileno())
            if copied.hexdigest() != sha:  # changed while we read it
                tmp.unlink()
                raise CommandError(f"{path} changed while it was uploaded: upload it again")
            os.replace(tmp, final)
            fd = os.open(self.bundles_dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        info = BundleInfo(
            sha, manifest.version, manifest.build, manifest.board, manifest.total,
            int(self._clock()),
        )  # fmt: skip
        with self._tx() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO bundles VALUES (?, ?, ?, ?, ?, ?)",
                (info.sha256, info.version, info.build, info.board, info.size, info.uploaded_at),
            )
        return self.bundle(sha) or info

    def bundle_path(self, sha: str) -> Path:
        return self.bundles_dir / f"{sha}.bundle"

    def bundle(self, sha: str) -> BundleInfo | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM bundles WHERE sha256 = ?", (sha,)).fetchone()
        return BundleInfo(*row) if row else None

    def bundles(self) -> list[BundleInfo]:
        with self._lock:
            rows = self._conn.execute("SELECT * FROM bundles ORDER BY version, build").fetchall()
        return [BundleInfo(*r) for r in rows]

    # -- desired versions --------------------------------------------------------------------

    def set_desired(self, scope: str, name: str, version: str) -> BundleInfo:
        """Make version (the newest build of it that is stored; or a bundle's sha256) what the
        agent or group should run."""
        if scope not in ("agent", "group") or not name:
            raise CommandError("give --agent ID or --group NAME")
        with self._lock:
            row = self._conn.execute(
                "SELECT * FROM bundles WHERE version = ? OR sha256 = ? ORDER BY build DESC LIMIT 1",
                (version, version),
            ).fetchone()
        if row is None:
            raise CommandError(
                f"no bundle of version {version!r} is stored: `bus update upload FILE` first"
            )
        info = BundleInfo(*row)
        with self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO desired VALUES (?, ?, ?, ?)",
                (scope, name, info.sha256, int(self._clock())),
            )
        return info

    def clear_desired(self, scope: str, name: str) -> bool:
        with self._tx() as conn:
            return (
                conn.execute(
                    "DELETE FROM desired WHERE scope = ? AND name = ?", (scope, name)
                ).rowcount
                > 0
            )

    def desired(self) -> list[tuple[str, str, BundleInfo]]:
        """(scope, name, bundle) of every desired version."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT d.scope, d.name, b.* FROM desired d JOIN bundles b USING (sha256) "
                "ORDER BY d.scope, d.name"
            ).fetchall()
        return [(r[0], r[1], BundleInfo(*r[2:])) for r in rows]

    def desired_for(self, agent: str, group: str) -> BundleInfo | None:
        """The agent's own desired bundle, else its group's."""
        with self._lock:
            for scope, name in (("agent", agent), ("group", group)):
                row = self._conn.execute(
                    "SELECT b.* FROM desired d JOIN bundles b USING (sha256) "
                    "WHERE d.scope = ? AND d.name = ?",
                    (scope, name),
                ).fetchone()
                if row:
                    return BundleInfo(*row)
        return None

    # -- reports -----------------------------------------------------------------------------

    def record(self, agent: str, status: Any) -> Report:
        """Store an UpdateStatus as the agent's latest report."""

        def t(s: str) -> str:
            return s[:MAX_TEXT]

        rep = Report(
            agent, t(status.version), status.build, t(status.board), t(status.slot),
            t(status.state), t(status.last_result), t(status.last_reason), t(status.last_version),
            status.last_at, t(status.group), t(status.download), status.downloaded,
            int(self._clock()), status.fetched,
        )  # fmt: skip
        with self._tx() as conn:
            conn.execute(
                f"INSERT OR REPLACE INTO reports ({', '.join(REPORT_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(REPORT_COLUMNS))})",
                tuple(getattr(rep, c) for c in REPORT_COLUMNS),
            )
        return rep

    def reports(self) -> list[Report]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_columns(self._conn)} FROM reports ORDER BY agent_id"
            ).fetchall()
        return [Report(*r) for r in rows]


def read_reports(directory: Path) -> dict[str, Report]:
    """The reports of an update store, read-only (for `bus agents`); empty when none."""
    path = directory / DB_NAME
    if not path.exists():
        return {}
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            query = f"SELECT {_columns(conn)} FROM reports ORDER BY agent_id"
            rows = conn.execute(query).fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise CommandError(f"cannot read the update store {path}: {exc}") from exc
    return {r[0]: Report(*r) for r in rows}


@dataclass
class PeerRate:
    """A token bucket of bytes per second for each certificate name, one second of burst.
    Thread-safe; no I/O."""

    rate: float
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, peer: str, n: int) -> float:
        """Take n bytes for peer: 0 when granted, else the seconds until they would be."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        with self._lock:
            tokens, at = self._buckets.get(peer, (self.rate, now))
            tokens = min(self.rate, tokens + (now - at) * self.rate)
            if tokens >= n:
                self._buckets[peer] = (tokens - n, now)
                return 0.0
            self._buckets[peer] = (tokens, now)
            return (n - tokens) / self.rate


class UpdateMetrics:
    """The update service's own counters, on the bus's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.checks_total = Counter(
            "bus_update_checks", "Update checks answered (a box's report and question)",
            registry=registry,
        )  # fmt: skip
        self.offers_total = Counter(
            "bus_update_offers", "Checks answered with a version to install", registry=registry
        )
        self.chunks_total = Counter("bus_update_chunks", "Bundle chunks served", registry=registry)
        self.bytes_total = Counter("bus_update_bytes", "Bundle bytes served", registry=registry)
        self.throttled_total = Counter(
            "bus_update_throttled",
            "Fetch calls refused above eventbus.update.rate_bytes_per_peer",
            registry=registry,
        )


class UpdateService:
    """The Check and Fetch handlers (behind the gate: Handler signature of gate.py)."""

    def __init__(
        self,
        store: UpdateStore,
        metrics: UpdateMetrics,
        *,
        max_chunk: int,
        rate_bytes_per_peer: float,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.max_chunk = max_chunk
        self.rate = PeerRate(rate_bytes_per_peer)

    def check(self, request: bytes, context: grpc.ServicerContext, caller: Caller) -> bytes:
        try:
            req = pb.UpdateCheckRequest.FromString(request)
        except DecodeError:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "undecodable update check")
        status = req.status
        self.store.record(caller.cn, status)
        self.metrics.checks_total.inc()
        offer = pb.UpdateOffer(max_chunk=self.max_chunk)
        want = self.store.desired_for(caller.cn, status.group)
        if (
            want is not None
            and want.board == status.board
            and ((want.version, want.build) != (status.version, status.build))
        ):
            offer.version, offer.build = want.version, want.build
            offer.bundle, offer.size = want.sha256, want.size
            self.metrics.offers_total.inc()
        return offer.SerializeToString()

    def fetch(self, request: bytes, context: grpc.ServicerContext, caller: Caller) -> bytes:
        try:
            req = pb.UpdateFetchRequest.FromString(request)
        except DecodeError:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "undecodable fetch")
        info = self.store.bundle(req.bundle)
        if info is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no bundle {req.bundle[:64]!r} on this bus")
        length = min(req.length or self.max_chunk, self.max_chunk)
        wait = self.rate.take(caller.cn, length)
        if wait:
            self.metrics.throttled_total.inc()
            hint = str(max(1, int(wait * 1000)))
            context.set_trailing_metadata(
                (("retry-after-ms", hint), ("grpc-retry-pushback-ms", hint))
            )
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"update download above {self.rate.rate:.0f} bytes/s for {caller.cn!r}",
            )
        try:
            with self.store.bundle_path(info.sha256).open("rb") as fh:
                fh.seek(req.offset)
                data = fh.read(length)
                eof = fh.tell() >= os.fstat(fh.fileno()).st_size
        except OSError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"bundle unreadable: {exc.strerror}")
        self.metrics.chunks_total.inc()
        self.metrics.bytes_total.inc(len(data))
        return pb.UpdateChunk(offset=req.offset, data=data, eof=eof).SerializeToString()


class UpdateCollector(Collector):
    """Per-agent update series at scrape time: what each box runs and how its last update
    ended (bounded like fleet.AgentCollector: trust-map agents that reported)."""

    def __init__(
        self, reports: Callable[[], list[Report]], trusted: Callable[[], Sequence[str]]
    ) -> None:
        self._reports = reports
        self._trusted = trusted

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        trusted = set(self._trusted())
        info = GaugeMetricFamily(
            "bus_agent_update_info",
            "What the box runs and its update state (value 1): system version, slot, state, "
            "last result",
            labels=["agent", "version", "slot", "state", "result"],
        )
        at = GaugeMetricFamily(
            "bus_agent_update_result_timestamp_seconds",
            "When the box recorded its last update result",
            labels=["agent", "result"],
        )
        for r in self._reports():
            if r.agent_id not in trusted:
                continue
            info.add_metric([r.agent_id, r.version, r.slot, r.state, r.last_result or "none"], 1)
            if r.last_result:
                at.add_metric([r.agent_id, r.last_result], r.last_at)
        yield info
        yield at
