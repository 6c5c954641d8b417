"""The device side of an update: apply a bundle to the inactive slot, try it, commit or roll back.

    apply (console, USB)                       boot (every boot, from rcS, in the background)
    --------------------                       ---------------------------------------------
    verify header, signature, board, version   state trying, running the trial slot:
    stream the payload into the other slot,      count the trial boot; wait for health
      chunk by chunk, progress on /data          (READY, the agent's /ready, one delivery
    read the slot back, every hash               acknowledged when a bus is configured);
    tryboot.txt -> the new slot's boot set       healthy: config.txt -> new slot (commit)
    reboot "0 tryboot"                           not healthy in time: mark the slot bad,
                                                 config.txt -> old slot, reboot
                                               state trying, running the old slot: the trial
                                                 ended without a commit: mark it bad

The firmware's tryboot flag is one-shot: any reset during the trial (a crash, a panic, a power
cut, a hang ended by a watchdog) brings back config.txt, which still names the old slot until
the commit. The state machine is appliance.update.state; every edge (files, the boot
partition's mount, the reboot, the health probe) is passed in, so the logic runs in unit tests
against plain files.

Commit = rewriting config.txt in place with the same length: the only byte that changes is the
slot letter of `os_prefix=slot-X/`, which the image keeps in the file's first 512-byte sector,
so a power cut leaves either the old or the new file, never a torn one (no FAT chain, size or
directory change).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, Protocol

from nacl.signing import VerifyKey

from appliance.errors import CommandError
from appliance.update import bundle, delta, firmware, slots
from appliance.update.state import (
    Event,
    Record,
    State,
    Store,
    advance,
    fsync_dir,
    result,
    with_result,
)

#: the MBR disk identifier in every boot set's cmdline (appliance.image.sdcard.DISK_ID)
DISK_ID = "5ec7e0a1"
#: a boot set's command line is small; a bigger one is refused rather than buffered
MAX_CMDLINE = 4096


@dataclasses.dataclass(frozen=True)
class Paths:
    """Where the device keeps what the updater reads and writes."""

    state_dir: Path = Path("/data/update")
    boot_dir: Path = Path("/boot/firmware")
    release: Path = Path("/etc/appliance/release")
    keys_dir: Path = Path("/etc/appliance/update-keys")
    cmdline: Path = Path("/proc/cmdline")
    disk_file: Path = Path("/run/appliance/disk")
    ready_file: Path = Path("/run/appliance/ready")
    settings: Path = Path("/run/appliance/settings")
    console: Path = Path("/dev/console")
    dev_dir: Path = Path("/dev")
    sys_block: Path = Path("/sys/class/block")
    reboot_arg: Path = Path("/run/appliance/reboot-arg")

    @property
    def pause(self) -> Path:
        """Fault injection for power-cut tests: the checkpoint named in this file pauses."""
        return self.state_dir / "pause"

    def partition(self, number: int) -> Path:
        disk = self.disk_file.read_text().strip()
        name = f"{disk}p{number}" if disk[-1:].isdigit() else f"{disk}{number}"
        return self.dev_dir / name

    def partition_size(self, number: int) -> int:
        name = self.partition(number).name
        return int((self.sys_block / name / "size").read_text()) * 512


class System(Protocol):
    """The device's edges the updater acts through."""

    def remount_boot(self, writable: bool) -> None:
        """Mount the boot partition read-write (True) or back read-only (False)."""

    def reboot(self, tryboot: bool) -> None:
        """An orderly reboot; tryboot: with the firmware's one-shot tryboot flag set."""

    def health(self) -> list[str]:
        """What keeps the running system from being healthy (empty: healthy)."""


class Board:
    """The real device: busybox mount, init's reboot, the agent's own endpoints."""

    def __init__(self, paths: Paths, agent_url: str = "http://127.0.0.1:9100") -> None:
        self.paths = paths
        self.agent_url = agent_url

    def remount_boot(self, writable: bool) -> None:
        opts = "remount,rw" if writable else "remount,ro"
        proc = subprocess.run(
            ["mount", "-o", opts, str(self.paths.boot_dir)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise CommandError(f"cannot {opts} {self.paths.boot_dir}: {proc.stderr.strip()}")

    def reboot(self, tryboot: bool) -> None:
        # busybox reboot takes no argument: rcK passes this one to the kernel (reboot(2),
        # LINUX_REBOOT_CMD_RESTART2) after /data is unmounted; the Raspberry Pi kernel's
        # firmware driver turns "tryboot" into the firmware's one-shot flag
        if tryboot:
            self.paths.reboot_arg.write_text("0 tryboot\n")
        else:
            self.paths.reboot_arg.unlink(missing_ok=True)
        subprocess.run(["reboot"], check=False)

    def health(self) -> list[str]:
        return probe_health(self.paths, self.agent_url)


def probe_health(paths: Paths, agent_url: str) -> list[str]:
    """READY on the console, the agent's /ready, and, when a bus is configured, at least one
    envelope acknowledged OK by it (the agent's agent_publish counter: per process, so since
    this boot)."""
    missing = []
    if not paths.ready_file.exists():
        missing.append("system not READY")
    try:
        with urllib.request.urlopen(f"{agent_url}/ready", timeout=5):
            pass
    except urllib.error.HTTPError:  # it answers: running, but not ready (503)
        missing.append("agent not ready")
    except OSError:
        missing.append("agent not running")
        return missing
    if _setting(paths.settings, "bus"):
        try:
            with urllib.request.urlopen(f"{agent_url}/metrics", timeout=5) as resp:
                metrics = resp.read().decode()
        except OSError:
            metrics = ""
        found = re.search(r'^agent_publish_total\{status="(?i:ok)"\} ([0-9.e+]+)$', metrics, re.M)
        if not found or float(found.group(1)) < 1:
            missing.append("no delivery acknowledged by the bus yet")
    return missing


def _setting(path: Path, key: str) -> str:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return ""
    values = [line.split("=", 1)[1] for line in lines if line.startswith(f"{key}=")]
    return values[-1] if values else ""


def release(paths: Paths) -> dict[str, object]:
    """The running system's /etc/appliance/release: version, build, board."""
    try:
        doc = json.loads(paths.release.read_text())
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot read {paths.release}: {exc}") from exc
    return dict(doc)


def trusted_keys(paths: Paths) -> list[VerifyKey]:
    """The update keys this root trusts (/etc/appliance/update-keys/*.pub)."""
    from appliance.crypto.keys import load_verify_key

    return [load_verify_key(p) for p in sorted(paths.keys_dir.glob("*.pub"))]


def version_key(version: str, build: int) -> tuple[tuple[int, ...], int, str, int]:
    """Order of (version, build): the dotted release numbers first (trailing zeros ignored);
    a suffix (`0.2.0rc1`, `0.2.0.dev3`) makes a pre-release, before the plain release and
    compared as text with other suffixes; then the build time."""
    found = re.fullmatch(r"(\d+(?:\.\d+)*)([.a-z+-][0-9a-z.+-]*)?", version.strip().lower())
    if not found:
        raise CommandError(f"version {version!r} is not a release number (N.N.N[suffix])")
    numbers = tuple(int(n) for n in found.group(1).split("."))
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers = numbers[:-1]
    suffix = found.group(2) or ""
    return numbers, 0 if suffix else 1, suffix, build


class Updater:
    """Apply, boot-time check, commit and rollback over one device's Paths and System."""

    def __init__(
        self,
        paths: Paths,
        system: System,
        *,
        log: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.paths = paths
        self.system = system
        self.store = Store(paths.state_dir)
        self.log = log or (lambda line: print(f"update: {line}", file=sys.stderr, flush=True))
        self.sleep = sleep
        self.clock = clock

    # -- what is where ---------------------------------------------------------------------

    def running_slot(self) -> str:
        slot = slots.running_slot(self.paths.cmdline.read_text())
        if slot is None:
            raise CommandError(
                f"the kernel command line has no {slots.CMDLINE_ARG}=a|b: not a slotted system"
            )
        return slot

    def committed_slot(self) -> str | None:
        text = (self.paths.boot_dir / firmware.CONFIG).read_text()
        return slots.slot_of_prefix(firmware.os_prefix(text) or "")

    def status(self) -> dict[str, object]:
        """The record plus what is running and committed (for `update status`)."""
        rec = self.store.load()
        doc = rec.to_json()
        doc["running"] = {"slot": self.running_slot(), **release(self.paths)}
        doc["committed_slot"] = self.committed_slot()
        return doc

    # -- fault injection -------------------------------------------------------------------

    def checkpoint(self, name: str) -> None:
        """A named point where the power-cut tests cut the power: if /data/update/pause names
        it, the file is removed (one shot) and the updater stops here for good."""
        try:
            wanted = self.paths.pause.read_text().strip()
        except OSError:
            return
        if wanted != name:
            return
        self.paths.pause.unlink()
        fsync_dir(self.paths.state_dir)
        line = f"UPDATE-PAUSED {name}"
        self.log(line)
        try:
            with self.paths.console.open("w") as console:
                console.write(line + "\n")
        except OSError:
            pass
        while True:
            self.sleep(3600)

    # -- apply -----------------------------------------------------------------------------

    def apply(
        self,
        source: Path,
        *,
        allow_downgrade: bool = False,
        health_timeout: float = 300.0,
        reboot: bool = True,
    ) -> Record:
        """Verify source, write it into the inactive slot, switch the trial to it and reboot
        (unless reboot=False). A refusal raises BundleError/CommandError with one line, after
        recording it; nothing has been switched then."""
        rec = self.store.load()
        if rec.state is State.TRYING:
            raise CommandError(
                f"slot {rec.target} is being tried ({rec.version}): wait for its commit or rollback"
            )
        running = self.running_slot()
        target = slots.other(running)
        try:
            stream = source.open("rb")
        except OSError as exc:
            raise CommandError(f"cannot read {source}: {exc.strerror}") from exc
        with stream:
            same = rec.bundle
            rec = advance(rec, Event.START, source=str(source))
            self.store.save(rec)
            try:
                manifest = self._verify(stream, running, allow_downgrade)
            except CommandError as exc:
                self._refuse(rec, str(exc))
                raise
            resume = (
                same == manifest.digest
                and rec.target == target
                and rec.slots.get(target, {}).get("status") in ("writing", "written")
            )
            start = rec.progress if resume else (0, 0)
            if resume:
                self.log(
                    f"resuming the write of {manifest.version} at file {start[0]}, chunk {start[1]}"
                )
            slot_state = {**rec.slots, target: {"status": "writing", "version": manifest.version,
                                                "build": manifest.build}}  # fmt: skip
            rec = advance(
                rec, Event.VERIFIED, bundle=manifest.digest, version=manifest.version,
                build=manifest.build, target=target, previous=running, progress=start,
                health_timeout=health_timeout, trial_boots=0, slots=slot_state,
            )  # fmt: skip
            self.store.save(rec)
            self.checkpoint("verified")
            try:
                rec = self._write(stream, manifest, rec, target, self.seed(running))
                self._read_back(manifest, target)
            except CommandError as exc:
                self._refuse(rec, str(exc))
                raise
            except OSError as exc:
                self._refuse(rec, f"cannot write slot {target}: {exc}")
                raise CommandError(f"cannot write slot {target}: {exc}") from exc
        slot_state = {**rec.slots, target: {**rec.slots[target], "status": "written"}}
        rec = advance(rec, Event.WRITTEN, slots=slot_state)
        self.store.save(rec)
        self.log(f"slot {target} holds {manifest.version} (build {manifest.build}), verified")
        self.checkpoint("written")
        self._set_config(firmware.TRYBOOT, target, create=True)
        self.checkpoint("tryboot-written")
        rec = advance(rec, Event.TRY)
        self.store.save(rec)
        self.log(f"trying slot {target}: rebooting with the tryboot flag")
        self.checkpoint("switched")
        if reboot:
            self.system.reboot(tryboot=True)
        return rec

    def _verify(self, stream: IO[bytes], running: str, allow_downgrade: bool) -> bundle.Manifest:
        manifest = bundle.read_manifest(stream, trusted_keys(self.paths))  # type: ignore[arg-type]
        if stream.seekable():
            bundle.check_length(stream, manifest)  # type: ignore[arg-type]
        mine = release(self.paths)
        if manifest.board != mine.get("board"):
            raise bundle.BundleError(
                f"bundle refused: it is for board {manifest.board}, this is {mine.get('board')}"
            )
        new = version_key(manifest.version, manifest.build)
        old = version_key(str(mine.get("version")), int(str(mine.get("build", 0))))
        if new <= old and not allow_downgrade:
            what = "the running version" if new == old else "older than the running"
            raise bundle.BundleError(
                f"bundle refused: {manifest.version} (build {manifest.build}) is {what} "
                f"{mine.get('version')} (build {mine.get('build')}); "
                "--allow-downgrade to install it"
            )
        room = self.paths.partition_size(slots.PARTITION[slots.other(running)])
        if manifest.root.size > room:
            raise bundle.BundleError(
                f"bundle refused: its root ({manifest.root.size} bytes) exceeds the slot ({room})"
            )
        cmdline = next(f for f in manifest.boot if f.name == bundle.CMDLINE)
        if cmdline.size > MAX_CMDLINE:
            raise bundle.BundleError("bundle refused: its cmdline.txt is too long")
        return manifest

    def _refuse(self, rec: Record, reason: str) -> None:
        line = reason.splitlines()[0] if reason else "refused"
        entry = result(rec, "refused", line)
        slot_state = dict(rec.slots)
        if rec.target in slot_state and slot_state[rec.target].get("status") == "writing":
            slot_state[rec.target] = {**slot_state[rec.target], "status": "bad"}
        # not logged: the caller raises it, and `update apply` prints it as its one error line
        self.store.save(advance(rec, Event.REFUSED, slots=slot_state, **with_result(rec, entry)))

    def _boot_path(self, target: str, name: str) -> Path:
        return self.paths.boot_dir / slots.prefix(target) / name

    def seed(self, running: str) -> delta.Seed:
        """The running slot's copies of a bundle's files (appliance.update.delta): what a
        delta download left out is taken from there."""
        return delta.Seed.running(
            self.paths.partition(slots.PARTITION[running]), self.paths.boot_dir, running
        )

    def _write(
        self,
        stream: IO[bytes],
        manifest: bundle.Manifest,
        rec: Record,
        target: str,
        seed: delta.Seed,
    ) -> Record:
        start = rec.progress
        filled = [0]

        def fill(entry: bundle.FileEntry, n: int, size: int) -> bytes | None:
            data = seed.read(entry, n, size, manifest.chunk)
            filled[0] += 1
            return data

        if stream.seekable():
            stream.seek(manifest.offset(*start))
        else:  # a pipe: skip what is already on the card
            _skip(stream, manifest.offset(*start) - manifest.payload_offset)
        device = self.paths.partition(slots.PARTITION[target])
        boot_rw = False
        out: IO[bytes] | None = None
        current = -1
        try:
            chunks = bundle.payload(stream, manifest, start, fill)  # type: ignore[arg-type]
            for index, n, data in chunks:
                entry = manifest.files[index]
                if index != current:
                    if out is not None:
                        _close_durably(out)
                    if entry.target == "boot" and not boot_rw:
                        self.system.remount_boot(True)
                        boot_rw = True
                        self._clear_boot_set(target, manifest)
                    out = self._open_target(device, target, entry, n)
                    current = index
                assert out is not None
                if entry.name == bundle.CMDLINE:
                    template = data.decode()
                    data = slots.cmdline_for(template, target, DISK_ID).encode()
                out.seek(0 if entry.name == bundle.CMDLINE else n * manifest.chunk)
                out.write(data)
                if entry.target == "boot":
                    out.truncate()
                out.flush()
                os.fsync(out.fileno())
                _drop_cache(out)
                last = n + 1 == len(entry.chunks)
                nxt = (index + 1, 0) if last else (index, n + 1)
                rec = advance(rec, Event.CHUNK, progress=nxt)
                self.store.save(rec)
                if last and entry.target == "slot":
                    self.log(f"slot {target}: root written ({entry.size} bytes)")
                self.checkpoint(f"chunk-{index}-{n}")
            if out is not None:
                _close_durably(out)
                out = None
            if filled[0]:
                self.log(f"{filled[0]} chunks taken from the running slot (a delta download)")
            # an empty boot file yields no chunk: create it
            for entry in manifest.boot:
                if entry.size == 0:
                    if not boot_rw:
                        self.system.remount_boot(True)
                        boot_rw = True
                    self._boot_path(target, entry.name).write_bytes(b"")
                    fsync_dir(self._boot_path(target, entry.name).parent)
        finally:
            if out is not None:
                out.close()
            if boot_rw:
                self.system.remount_boot(False)
        return rec

    def _clear_boot_set(self, target: str, manifest: bundle.Manifest) -> None:
        folder = self.paths.boot_dir / slots.prefix(target)
        if not folder.is_dir():
            folder.mkdir(parents=True)
            fsync_dir(folder.parent)
        keep = {f.name.lower() for f in manifest.boot}
        for stale in folder.iterdir():
            if stale.is_file() and stale.name.lower() not in keep:
                stale.unlink()
        fsync_dir(folder)

    def _open_target(self, device: Path, target: str, entry: bundle.FileEntry, n: int) -> IO[bytes]:
        if entry.target == "slot":
            return device.open("r+b")
        path = self._boot_path(target, entry.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        if n == 0 or not path.exists():
            fh = path.open("w+b")
            # the new name must outlive a power cut once a chunk of it is recorded as written:
            # on vfat a long name spans several directory entries that fsync of the file alone
            # does not write (a cut then left the resumed write without its DTB)
            fsync_dir(path.parent)
            return fh
        return path.open("r+b")

    def _read_back(self, manifest: bundle.Manifest, target: str) -> None:
        """Read the slot and its boot set back from the card: every chunk's hash."""
        device = self.paths.partition(slots.PARTITION[target])
        for entry in manifest.files:
            if entry.name == bundle.CMDLINE:
                path = self._boot_path(target, entry.name)
                if not path.is_file() or "@ROOT@" in path.read_text():
                    raise bundle.BundleError(f"slot {target}: {entry.name} did not read back")
                continue
            path = device if entry.target == "slot" else self._boot_path(target, entry.name)
            with path.open("rb") as fh:
                _drop_cache(fh)
                for n, want in enumerate(entry.chunks):
                    size = min(manifest.chunk, entry.size - n * manifest.chunk)
                    if hashlib.sha256(fh.read(size)).hexdigest() != want:
                        raise bundle.BundleError(
                            f"slot {target}: {entry.name} chunk {n} reads back differently"
                        )
        self.log(f"slot {target}: every chunk read back and verified")

    def _set_config(self, name: str, slot: str, *, create: bool = False) -> bool:
        """Make the boot partition's config file `name` select slot's boot set; in place and
        with the same length when it exists. Returns whether anything was written."""
        config = self.paths.boot_dir / firmware.CONFIG
        path = self.paths.boot_dir / name
        base = path if path.exists() else config
        if not path.exists() and not create:
            raise CommandError(f"no {path}")
        text = base.read_text()
        new = firmware.with_os_prefix(text, slots.prefix(slot))
        if path.exists() and new == text:
            return False
        self.system.remount_boot(True)
        try:
            if path.exists() and len(new.encode()) == path.stat().st_size:
                with path.open("r+b") as fh:
                    fh.write(new.encode())
                    fh.flush()
                    os.fsync(fh.fileno())
            else:
                with path.open("wb") as fh:
                    fh.write(new.encode())
                    fh.flush()
                    os.fsync(fh.fileno())
            with contextlib.suppress(OSError):  # vfat: the remount read-only flushes it too
                fsync_dir(path.parent)
        finally:
            self.system.remount_boot(False)
        return True

    # -- every boot ------------------------------------------------------------------------

    def on_boot(self) -> Record:
        """Reconcile the record with the slot the box came up on; on a trial boot, wait for
        health and commit, or roll back."""
        rec = self.store.load()
        if rec.state is not State.TRYING:
            return rec
        running = self.running_slot()
        if running != rec.target:
            if rec.trial_boots == 0:
                why = (
                    f"the trial boot of slot {rec.target} never reached its system "
                    "(reset, power cut, or a kernel or init that did not start)"
                )
            else:
                why = (
                    f"slot {rec.target} was reset before it was healthy (crash, hang or power cut)"
                )
            return self._roll_back(rec, why, reboot=False)
        rec = dataclasses.replace(rec, trial_boots=rec.trial_boots + 1)
        self.store.save(rec)
        self.log(
            f"trial boot {rec.trial_boots} of slot {rec.target} ({rec.version}): waiting for health"
        )
        self.checkpoint("trial-boot")
        deadline = self.clock() + rec.health_timeout
        missing = self.system.health()
        while missing and self.clock() < deadline:
            self.sleep(2.0)
            missing = self.system.health()
        if missing:
            why = f"slot {rec.target} not healthy after {rec.health_timeout:.0f} s: " + ", ".join(
                missing
            )
            return self._roll_back(rec, why, reboot=True)
        return self._commit(rec)

    def _commit(self, rec: Record) -> Record:
        self.checkpoint("before-commit")
        self._set_config(firmware.CONFIG, rec.target)
        self.checkpoint("config-written")
        slot_state = {**rec.slots, rec.target: {**rec.slots.get(rec.target, {}), "status": "good"}}
        entry = result(rec, "committed", f"slot {rec.target} healthy and committed")
        rec = advance(rec, Event.HEALTHY, slots=slot_state, **with_result(rec, entry))
        self.store.save(rec)
        self.log(f"committed slot {rec.target} ({rec.version})")
        self.checkpoint("committed")
        return rec

    def _roll_back(self, rec: Record, why: str, *, reboot: bool) -> Record:
        # the old slot must be the committed one before anything else (a commit may have
        # rewritten config.txt just before a power cut)
        self._set_config(firmware.CONFIG, rec.previous)
        slot_state = {**rec.slots, rec.target: {**rec.slots.get(rec.target, {}), "status": "bad"}}
        entry = result(rec, "rolled_back", why)
        rec = advance(rec, Event.FAILED, slots=slot_state, **with_result(rec, entry))
        self.store.save(rec)
        self.log(f"rolled back to slot {rec.previous}: {why}")
        if reboot:
            self.system.reboot(tryboot=False)
        return rec


def _skip(stream: IO[bytes], n: int) -> None:
    while n > 0:
        got = stream.read(min(n, 1 << 20))
        if not got:
            raise bundle.BundleError("bundle refused: truncated")
        n -= len(got)


def _drop_cache(fh: IO[bytes]) -> None:
    """Forget the file's cached pages: the read-back must come from the card, and a 100 MB
    slot write must not evict everything else."""
    with contextlib.suppress(OSError):
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def _close_durably(fh: IO[bytes]) -> None:
    fh.flush()
    os.fsync(fh.fileno())
    fh.close()
