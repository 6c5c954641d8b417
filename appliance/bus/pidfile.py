"""The bus's pidfile, `storage.data_dir/bus.pid`: which process is the bus of a data_dir.

Written by `bus serve` before it opens anything, removed when it stops; `bus reload` reads it
to send SIGHUP. The file is held with an exclusive flock for the bus's whole life, so:
- a second bus on the same data_dir is refused at start (the lock is taken);
- a pidfile nobody holds (a bus killed with -9 leaves its file) is stale: `bus reload` refuses
  it rather than signal whatever process has that pid now, and the next `bus serve` takes it
  over.
The lock goes with the process, whatever way it ends.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from appliance.errors import CommandError

PIDFILE = "bus.pid"


def _pid_in(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


class PidFile:
    """A held pidfile; release() removes it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def acquire(cls, path: Path) -> PidFile:
        """Take path for this process, or CommandError if a running bus holds it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _pid_in(fd)
            os.close(fd)
            raise CommandError(
                f"another bus (pid {pid}) is running on {path.parent}: "
                "stop it, or give this one its own storage.data_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        """Remove the file, then let go of the lock (in this order: no window for a reader)."""
        self.path.unlink(missing_ok=True)
        os.close(self._fd)


def running_bus(path: Path) -> int:
    """The pid of the bus holding path; CommandError if there is none or the file is stale."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CommandError(
            f"no {path}: is the bus running, with storage.data_dir {path.parent}?"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _pid_in(fd)
        else:
            raise CommandError(
                f"{path} is stale: no bus holds it (one was killed?); remove it, then start the bus"
            )
    finally:
        os.close(fd)
    if pid is None:
        raise CommandError(f"{path} holds no process id")
    return pid
