"""The agent's update poller: ask the bus, download the bundle, hand it to the updater, report.

Over the box's own outbound mTLS connection to the bus (the agent's identity, the bus
addresses of `agent.bus`, tried in order): nothing listens on the box.

    every agent.update.interval_s (the first time a few seconds after start):
      Check(status)          status = the updater's persisted record (/data/update/state.json)
                             + the running release and slot: reported at every check, so the
                             result of an update reaches the bus after the reboot it caused
      offer empty            nothing to do (any stale download is deleted)
      offer already tried    skip: refused before (a marker per bundle) or rolled back (the
                             record's last result names that version and build)
      download               Fetch by offset into <data>/update-download/<sha256>.part, at most
                             rate_bytes_s; each chunk appended and fsynced, so after a power cut
                             the download resumes at the file's length; RESOURCE_EXHAUSTED from
                             the bus waits its retry-after-ms
      hand over              Updater.apply(file): it verifies everything again, writes the
                             inactive slot, switches the trial boot and reboots; a refusal (bad
                             signature, hash, truncation, downgrade, another board) is one line
                             recorded by the updater, a marker stops retrying that bundle, and
                             an immediate Check carries the reason to the bus

The poller never decides what is safe to install: the updater (appliance/update/device.py)
does, on the bytes it is handed. Errors talking to the bus are logged and retried at the next
interval; they never stop the agent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from appliance.agent.config import AgentUpdate
from appliance.agent.transport import Identity
from appliance.errors import CommandError
from appliance.update import bundle, delta, device, slots
from appliance.update.state import replace_durably
from appliance.wire import pb
from appliance.wire.channel import mtls_channel

log = logging.getLogger(__name__)

CHECK_METHOD = "/infraspectre.Updates/Check"
FETCH_METHOD = "/infraspectre.Updates/Fetch"
#: the first check after start: soon, so that a result recorded before a reboot is reported
FIRST_CHECK_S = 2.0
CALL_TIMEOUT_S = 30.0
#: room a download always leaves on /data (the WAL's and the update state's)
DATA_RESERVE = 64 << 20
#: a failed check is tried again after this (or interval_s, when shorter)
RETRY_S = 60.0
#: how often the poller looks at the updater's record for a change to report
WATCH_S = 5.0
_SHA = re.compile(r"^[0-9a-f]{64}$")


def device_paths(root: Path) -> device.Paths:
    """The updater's paths with `root` standing for `/`."""
    if root == Path("/"):
        return device.Paths()
    defaults = device.Paths()
    return device.Paths(
        **{
            f.name: root / str(getattr(defaults, f.name)).lstrip("/")
            for f in dataclasses.fields(device.Paths)
        }
    )


class FolderSystem:
    """The updater's System on a test rig, where device_root is a folder: slots are files, the
    boot partition a folder (nothing to remount), and a reboot is recorded in
    <root>/run/appliance/reboot-requested ("tryboot" or "plain") instead of done."""

    def __init__(self, paths: device.Paths) -> None:
        self.paths = paths

    def remount_boot(self, writable: bool) -> None:
        pass

    def reboot(self, tryboot: bool) -> None:
        target = self.paths.reboot_arg.with_name("reboot-requested")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("tryboot\n" if tryboot else "plain\n")

    def health(self) -> list[str]:
        return device.probe_health(self.paths, "http://127.0.0.1:9100")


class UpdateClient:
    """The Updates calls over mTLS to the bus addresses, in order."""

    def __init__(self, addresses: Sequence[str], identity: Identity) -> None:
        self.addresses = list(addresses)
        self.identity = identity
        self._channel: grpc.Channel | None = None
        self._at = 0

    def _call(self, method: str, request: bytes) -> bytes:
        last: grpc.RpcError | None = None
        for _ in range(len(self.addresses)):
            if self._channel is None:
                self._channel = mtls_channel(
                    self.addresses[self._at],
                    ca=self.identity.ca,
                    cert=self.identity.cert,
                    key=self.identity.key,
                    server_name=self.identity.server_name,
                )
            try:
                answer: bytes = self._channel.unary_unary(method, None, None)(
                    request, timeout=CALL_TIMEOUT_S
                )
                return answer
            except grpc.RpcError as err:
                if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNIMPLEMENTED):
                    raise
                last = err
                self.close()
                self._at = (self._at + 1) % len(self.addresses)
        assert last is not None
        raise last

    def check(self, status: Any) -> Any:
        raw = self._call(CHECK_METHOD, pb.UpdateCheckRequest(status=status).SerializeToString())
        return pb.UpdateOffer.FromString(raw)

    def fetch(self, sha: str, offset: int, length: int) -> Any:
        req = pb.UpdateFetchRequest(bundle=sha, offset=offset, length=length)
        return pb.UpdateChunk.FromString(self._call(FETCH_METHOD, req.SerializeToString()))

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None


def retry_after_s(err: grpc.RpcError) -> float:
    """The bus's retry-after-ms of a RESOURCE_EXHAUSTED answer, in seconds (1 s if none)."""
    metadata: Any = err.trailing_metadata() or ()
    for key, value in metadata:
        if key == "retry-after-ms" and str(value).isdigit():
            return int(str(value)) / 1000
    return 1.0


class UpdatePoller:
    """The poller thread (see the module docstring). start() and stop() from the agent's main
    thread; everything else runs on the poller's own thread."""

    def __init__(
        self,
        cfg: AgentUpdate,
        client: UpdateClient,
        data_dir: Path,
        *,
        updater: device.Updater | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.client = client
        self.dir = data_dir / "update-download"
        paths = device_paths(cfg.device_root)
        system = device.Board(paths) if cfg.device_root == Path("/") else FolderSystem(paths)
        self.paths = paths
        self.updater = updater or device.Updater(
            paths, system, log=lambda line: log.info("update: %s", line)
        )
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agent-updates", daemon=True)
        #: the download in progress: (sha256, bytes on the box)
        self._download: tuple[str, int] = ("", 0)
        #: bytes fetched over the network for the download in progress, or the last one (kept
        #: in the agent's data across the update's reboot, so the new system reports it)
        self._fetched_file = data_dir / "agent" / "update-fetched.json"
        self._fetched = self._last_fetched()
        #: the updater's (state, last result time) as last reported to the bus
        self._reported: tuple[str, str] = ("", "")

    @property
    def enabled(self) -> bool:
        """Polling is on, and this system is one the updater can update (it has a release)."""
        return self.cfg.interval_s > 0 and self.paths.release.exists()

    def start(self) -> None:
        if not self.enabled:
            log.info(
                "update checks off (%s)",
                "agent.update.interval_s is 0"
                if self.cfg.interval_s <= 0
                else f"no {self.paths.release}: not an updatable system",
            )
            return
        self._thread.start()

    def stop(self) -> None:
        """Stop asking; an update being written continues until the process ends (the updater
        resumes a cut write at its next apply)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        self.client.close()

    def _run(self) -> None:
        due = self._clock() + FIRST_CHECK_S
        while not self._stop.wait(min(WATCH_S, max(0.0, due - self._clock()))):
            # a change of the updater's record (a commit or rollback by `update boot` after
            # the reboot) is reported at once, not at the next interval
            if self._clock() < due and self._record_key() == self._reported:
                continue
            # a failed check is tried again within a minute: the bus may be back by then
            due = self._clock() + min(self.cfg.interval_s, RETRY_S)
            try:
                self.check_once()
            except grpc.RpcError as err:
                log.warning("update check failed: %s", err.details() or err.code().name)
            except CommandError as exc:
                log.warning("update check failed: %s", exc)
            except Exception:
                log.exception("update check failed")
            else:
                due = self._clock() + self.cfg.interval_s

    def _record_key(self) -> tuple[str, str]:
        try:
            rec = self.updater.store.load()
        except CommandError:
            return ("", "")
        return rec.state.value, str((rec.last_result or {}).get("at", ""))

    # -- one round -------------------------------------------------------------------------

    def status(self) -> Any:
        """What the box reports: the running release and slot, and the updater's record."""
        rec = self.updater.store.load()
        try:
            rel = device.release(self.paths)
        except CommandError:
            rel = {}
        try:
            slot = slots.running_slot(self.paths.cmdline.read_text()) or ""
        except OSError:
            slot = ""
        last = rec.last_result or {}
        return pb.UpdateStatus(
            version=str(rel.get("version", "")),
            build=int(str(rel.get("build", 0)) or 0),
            board=str(rel.get("board", "")),
            slot=slot,
            state=rec.state.value,
            last_result=str(last.get("result", "")),
            last_reason=str(last.get("reason", "")),
            last_version=str(last.get("version", "")),
            last_at=int(last.get("at", 0) or 0),
            group=self.cfg.group,
            download=self._download[0],
            downloaded=self._download[1],
            fetched=self._fetched,
        )

    def check_once(self) -> str:
        """One round; returns what happened: idle, skipped, refused, applied, stopped."""
        offer = self._report()
        if not offer.version:
            self._clean(keep="")
            return "idle"
        sha = offer.bundle
        if not _SHA.match(sha):
            raise CommandError(f"the bus offered a malformed bundle name {sha[:80]!r}")
        if self._tried(offer) or self.updater.store.load().state.value == "trying":
            return "skipped"
        self._clean(keep=sha)
        log.info("update %s (build %d) offered: downloading", offer.version, offer.build)
        path = self.download(offer)
        if path is None:
            return "stopped"
        try:
            self.updater.apply(path, health_timeout=self.cfg.health_timeout_s, reboot=True)
        except CommandError as exc:
            self._download = ("", 0)
            reason = str(exc).splitlines()[0] if str(exc) else "refused"
            log.error("update %s refused: %s", offer.version, reason)
            self._mark(sha, reason)
            self._report()  # the reason reaches the bus now
            return "refused"
        self._download = ("", 0)
        path.unlink(missing_ok=True)
        self._report()  # "trying": the reboot follows
        return "applied"

    def _report(self) -> Any:
        """Check with the bus, sending the status; remember what it was told."""
        key = self._record_key()
        offer = self.client.check(self.status())
        self._reported = key
        return offer

    def _tried(self, offer: Any) -> bool:
        if (self.dir / f"{offer.bundle}.refused").exists():
            return True
        last = self.updater.store.load().last_result or {}
        return bool(
            last.get("result") == "rolled_back"
            and last.get("version") == offer.version
            and int(last.get("build", 0) or 0) == offer.build
        )

    def _mark(self, sha: str, reason: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / f"{sha}.refused").write_text(reason + "\n")
        with contextlib.suppress(FileNotFoundError):
            (self.dir / f"{sha}.part").unlink()

    def _clean(self, keep: str) -> None:
        """Delete downloads of bundles no longer offered (markers stay: they are tiny)."""
        if not self.dir.is_dir():
            return
        for part in self.dir.glob("*.part"):
            if part.stem != keep:
                part.unlink(missing_ok=True)

    def download(self, offer: Any) -> Path | None:
        """The offered bundle in <data>/update-download/<sha>.part, fetching only what the box
        lacks (appliance.update.delta); None if the poller was stopped.

        The head (header, manifest, signature) comes first and is verified with the update
        keys this system trusts; then each payload chunk that neither the file nor the running
        slot holds is fetched and written at its offset into a file of the bundle's full
        length (what the running slot holds stays a hole, which `update apply` fills from the
        slot). A power cut loses nothing: the next round re-checks every chunk. A head that
        does not verify, or a bundle the bus serves shorter than offered, is handed to the
        updater as it is, which refuses it with its own one-line reason."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"{offer.bundle}.part"
        usage = shutil.disk_usage(self.dir)
        if offer.size + DATA_RESERVE > usage.total:
            raise CommandError(
                f"no room for the {offer.size}-byte bundle in {self.dir} ({usage.total} bytes in "
                f"all, {DATA_RESERVE} kept for the WAL)"
            )
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size > offer.size:  # longer than the bundle: start over
                os.ftruncate(fd, 0)
            os.ftruncate(fd, offer.size)  # full length: what is never fetched stays a hole
            self._download = (offer.bundle, 0)
            self._fetched = 0
            fetch = _Fetch(self, offer, fd)
            manifest = fetch.head(path)
            if manifest is None or manifest.total != offer.size:
                return None if self._stop.is_set() else path
            plan = delta.plan(manifest, self._seed(), have=path)
            need = plan.fetch_bytes
            free = shutil.disk_usage(self.dir).free
            if need + DATA_RESERVE > free:
                # the WAL lives here too: a download never takes its last room
                raise CommandError(
                    f"no room for the {need} bytes to fetch in {self.dir} ({free} bytes free, "
                    f"{DATA_RESERVE} kept for the WAL)"
                )
            log.info(
                "update %s: fetching %d of its %d bytes (%d held by the running slot, "
                "%d already downloaded)",
                offer.bundle[:12], need, offer.size, plan.in_seed, plan.in_file,
            )  # fmt: skip
            self._download = (offer.bundle, offer.size - need)
            if not fetch.chunks(plan, path):
                return None if self._stop.is_set() else path
        finally:
            os.close(fd)
        log.info(
            "downloaded %s: fetched %d of its %d bytes",
            offer.bundle[:12], fetch.fetched, offer.size,
        )  # fmt: skip
        self._keep_fetched(offer.bundle, plan.in_file + fetch.fetched)  # earlier rounds too
        return path

    def _last_fetched(self) -> int:
        try:
            doc = json.loads(self._fetched_file.read_text())
            return max(0, int(doc["fetched"]))
        except (OSError, ValueError, KeyError, TypeError):
            return 0  # none yet, or unreadable: a statistic, never a reason to stop

    def _keep_fetched(self, sha: str, fetched: int) -> None:
        """The completed download's bytes over the network: this round's, and the chunks
        earlier rounds completed (the pieces of a chunk a power cut interrupted are not
        counted again, so after a cut the figure can be short by up to one chunk)."""
        self._fetched = fetched
        doc = {"bundle": sha, "fetched": fetched}
        try:
            replace_durably(self._fetched_file, (json.dumps(doc) + "\n").encode())
        except OSError as exc:
            log.warning("cannot keep the download's byte count: %s", exc)

    def _seed(self) -> delta.Seed | None:
        """The running slot's copies (None when this is not a slotted system)."""
        try:
            slot = slots.running_slot(self.paths.cmdline.read_text())
            return None if slot is None else self.updater.seed(slot)
        except OSError:  # no command line, or no card (/run/appliance/disk): fetch it all
            return None


class _Fetch:
    """One download round of an offered bundle into its file (descriptor fd): pieces on a
    grid of the served chunk size from the bundle's start, each fetched at most once, written
    at its offset and fsynced, at most agent.update.rate_bytes_s."""

    def __init__(self, poller: UpdatePoller, offer: Any, fd: int) -> None:
        self.poller = poller
        self.offer = offer
        self.fd = fd
        cfg = poller.cfg
        self.piece = min(cfg.chunk_bytes, offer.max_chunk or cfg.chunk_bytes)
        self.done: set[int] = set()
        self.fetched = 0
        self.pieces = 0
        self.started = poller._clock()

    def head(self, path: Path) -> bundle.Manifest | None:
        """The bundle's verified manifest: from the file when its head is already there and
        verifies, else fetched; None when it does not verify (or the poller stopped)."""
        keys = device.trusted_keys(self.poller.paths)
        try:
            with path.open("rb") as fh:
                return bundle.read_manifest(fh, keys)
        except bundle.BundleError:
            pass
        if not self._get(0, bundle.HEADER.size):
            return None
        with path.open("rb") as fh:
            raw = fh.read(bundle.HEADER.size)
        length = bundle.HEADER.unpack(raw)[3] if raw[:8] == bundle.MAGIC else 0
        head = bundle.HEADER.size + length + bundle.SIG_LEN
        if 0 < length <= bundle.MAX_MANIFEST and not self._get(0, head):
            return None
        try:
            with path.open("rb") as fh:
                return bundle.read_manifest(fh, keys)
        except bundle.BundleError as exc:
            log.warning("update %s: %s", self.offer.bundle[:12], exc)
            return None

    def chunks(self, plan: delta.Plan, path: Path) -> bool:
        """Fetch what plan lacks; False when it ended early (stopped, or served short).

        A piece already written whole (no hole in it: a round cut by a power cut wrote it)
        is not fetched again; a chunk that still does not hash right afterwards (a piece torn
        by the cut) has its pieces fetched once more. What is wrong after that is the
        updater's to refuse."""
        for offset, _ in delta.ranges(plan.fetch, self.piece):
            if self._written(offset):
                self.done.add(offset // self.piece)
            elif not self._get(offset, offset + 1):
                return False
        wrong = tuple(
            c
            for c in plan.fetch
            if not delta.hashes_right(delta.read_at(path, c.offset, c.size), c.sha256)
        )
        for offset, _ in delta.ranges(wrong, self.piece):
            self.done.discard(offset // self.piece)
            if not self._get(offset, offset + 1):
                return False
        return True

    def _written(self, offset: int) -> bool:
        """The piece at offset is all data in the file (no hole: it was written)."""
        end: int = min(offset + self.piece, self.offer.size)
        try:
            return os.lseek(self.fd, offset, os.SEEK_HOLE) >= end
        except OSError:
            return False

    def _get(self, begin: int, end: int) -> bool:
        """Make sure the grid pieces covering [begin, end) of the bundle are in the file."""
        size = self.offer.size
        for k in range(begin // self.piece, (min(end, size) - 1) // self.piece + 1):
            if k in self.done:
                continue
            offset = k * self.piece
            if not self._piece(offset, min(self.piece, size - offset)):
                return False
            self.done.add(k)
        return True

    def _piece(self, offset: int, length: int) -> bool:
        poller, fd = self.poller, self.fd
        got = 0
        while got < length:
            if poller._stop.is_set():
                return False
            try:
                piece = poller.client.fetch(self.offer.bundle, offset + got, length - got)
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                poller._stop.wait(retry_after_s(err))
                continue
            if piece.offset != offset + got:
                raise CommandError(f"the bus answered offset {piece.offset} for {offset + got}")
            if piece.data:
                os.pwrite(fd, piece.data, offset + got)
                got += len(piece.data)
            if not piece.data or (piece.eof and got < length):
                # the bundle as served ends here: a short file, which the updater refuses
                os.ftruncate(fd, offset + got)
                os.fsync(fd)
                self.fetched += got
                poller._fetched = self.fetched
                return False
        os.fsync(fd)  # a piece is on the card before the next is asked for
        self.fetched += got
        self.pieces += 1
        sha, have = poller._download
        poller._download = (self.offer.bundle, (have if sha == self.offer.bundle else 0) + got)
        poller._fetched = self.fetched
        poller.updater.checkpoint(f"download-{self.pieces}")
        rate = poller.cfg.rate_bytes_s
        if rate:
            ahead = self.started + self.fetched / rate - poller._clock()
            if ahead > 0:
                poller._stop.wait(ahead)
        return True
